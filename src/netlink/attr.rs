//! Netlink attribute (TLV) helpers for nests that neli carries as opaque payloads.
//!
//! Top-level attributes are neli `Rtattr`s; what a nest holds (the LWT BPF encap, `IFLA_LINKINFO`,
//! seg6local) is written with [`Nest`] and read with [`iter`], both in the kernel's layout:
//! `u16 len, u16 type, value, padding to 4`.

use super::align4;

/// One attribute lwtun keeps as it came from the kernel, because it does not decode it (fully)
/// into a typed field: the type (flag bits masked off) and the value bytes. Links, addresses,
/// routes and nexthops keep what they do not model in a list of these, so a dump loses nothing.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::attr::RawAttribute;
///
/// let mtu = RawAttribute { kind: 4, value: 1500u32.to_ne_bytes().to_vec() };
/// assert_eq!(lwtun::netlink::attr::u32_of(&mtu.value), Some(1500));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    /// The attribute type without flag bits, such as `IFLA_STATS64` (23) or `RTA_METRICS` (8).
    pub kind: u16,
    /// The value, without header or padding.
    pub value: Vec<u8>,
}

/// `NLA_F_NESTED`: set on nest headers, as iproute2 does; readers mask it off.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// The bits of `nla_type` that hold the type.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// Walks the attributes in `data`: `(type without flag bits, value)`. Stops at the first
/// malformed header.
pub fn iter(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

/// The first attribute of type `ty` in `data`.
pub fn find(data: &[u8], ty: u16) -> Option<&[u8]> {
    iter(data).find(|(t, _)| *t == ty).map(|(_, v)| v)
}

/// A NUL-terminated (or not) string value, lossily decoded.
pub fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A native-endian u32 value, if it is 4 bytes long.
pub fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.try_into().ok()?))
}

/// Appends one attribute (`u16 len, u16 type, value`, padded to 4 bytes) to `out`: the one
/// attribute writer of lwtun's netlink layer ([`Nest`] and the route and nexthop encoders
/// write through it).
///
/// # Examples
///
/// ```
/// use lwtun::netlink::attr::{iter, put};
///
/// let mut out = Vec::new();
/// put(&mut out, 4, &1500u32.to_ne_bytes());
/// put(&mut out, 3, b"ab\0");
/// assert_eq!(out.len(), 16);
/// assert_eq!(iter(&out).nth(1), Some((3, &b"ab\0"[..])));
/// ```
pub fn put(out: &mut Vec<u8>, ty: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&[0; 3][..align4(value.len()) - value.len()]);
}

/// Appends a NUL-terminated string attribute to `out` (no copy of the string is made).
pub fn put_str(out: &mut Vec<u8>, ty: u16, s: &str) {
    let len = s.len() + 1;
    out.extend_from_slice(&((4 + len) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    out.extend_from_slice(&[0; 3][..align4(len) - len]);
}

/// Appends an IPv4 (4 bytes) or IPv6 (16 bytes) address attribute to `out`.
pub fn put_ip(out: &mut Vec<u8>, ty: u16, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(a) => put(out, ty, &a.octets()),
        std::net::IpAddr::V6(a) => put(out, ty, &a.octets()),
    }
}

/// Opens a nest of type `ty` (with `NLA_F_NESTED`) at the end of `out`; [`end`] writes its
/// length once its attributes are written.
pub fn begin(out: &mut Vec<u8>, ty: u16) -> usize {
    let at = out.len();
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    at
}

/// Closes the nest [`begin`] opened at `at`.
pub fn end(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Writes attributes into a byte buffer of its own, with nests (through [`put`], [`begin`] and
/// [`end`]).
///
/// # Examples
///
/// ```
/// use lwtun::netlink::attr::{Nest, iter};
///
/// let mut n = Nest::new();
/// let outer = n.begin(1);
/// n.u32(2, 7);
/// n.end(outer);
/// let (ty, value) = iter(n.bytes()).next().unwrap();
/// assert_eq!(ty, 1);
/// assert_eq!(iter(value).next().unwrap(), (2, &7u32.to_ne_bytes()[..]));
/// ```
#[derive(Debug, Default, Clone)]
pub struct Nest {
    buf: Vec<u8>,
}

impl Nest {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one attribute with `value`, padded to 4 bytes.
    pub fn put(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        put(&mut self.buf, ty, value);
        self
    }

    /// Adds a native-endian u32.
    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// Adds a native-endian u16.
    pub fn u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// Adds a u8.
    pub fn u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.put(ty, &[v])
    }

    /// Adds a NUL-terminated string.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        put_str(&mut self.buf, ty, s);
        self
    }

    /// Opens a nest of type `ty` (with `NLA_F_NESTED`); close it with [`Nest::end`].
    pub fn begin(&mut self, ty: u16) -> usize {
        begin(&mut self.buf, ty)
    }

    /// Closes the nest opened at `at`, writing its length.
    pub fn end(&mut self, at: usize) {
        end(&mut self.buf, at)
    }

    /// The bytes written so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}
