//! Typed device maps: the egress ports an XDP program redirects to.

use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use super::program::{check_sizes, XdpProgram};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::netlink::netdev::{xdp_features, XdpFeatures};
use std::os::fd::{AsFd, AsRawFd};

/// Which kind of device map.
///
/// Kernel: Linux 4.14+ (`Hash`: 5.4+).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevMapKind {
    /// `BPF_MAP_TYPE_DEVMAP`: keys are indexes `0..max_entries`.
    #[doc(alias = "BPF_MAP_TYPE_DEVMAP")]
    Array,
    /// `BPF_MAP_TYPE_DEVMAP_HASH`: any `u32` key (lwtun's router uses the ifindex).
    #[doc(alias = "BPF_MAP_TYPE_DEVMAP_HASH")]
    Hash,
}

/// One egress port as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressPort {
    /// The device frames are sent out of.
    pub ifindex: u32,
    /// The id of the per-port XDP program that runs before transmission, if any.
    pub program_id: Option<u32>,
}

/// A typed `BPF_MAP_TYPE_DEVMAP` / `BPF_MAP_TYPE_DEVMAP_HASH`: set, get and remove egress ports,
/// each with an optional per-port program (an XDP program of attach type `BPF_XDP_DEVMAP`, such
/// as [`XdpRedirect::egress_program`](super::XdpRedirect::egress_program)).
///
/// Kernel: Linux 4.14+ ([`DevMapKind::Hash`]: 5.4+; a program per port: 5.8+).
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netns::NetNs, xdp::XdpRedirect};
///
/// let fwd = XdpRedirect::load()?;
/// let out = NetNs::open("router")?.device("veth1")?;
/// fwd.ports().set(0, &out, None)?;         // port 0 sends out of veth1 in `router`
/// assert_eq!(fwd.ports().get(0)?.unwrap().ifindex, out.index());
/// fwd.ports().remove(0)?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
#[doc(alias = "BPF_MAP_TYPE_DEVMAP")]
pub struct DevMap {
    map: MapHandle,
    kind: DevMapKind,
}

impl DevMap {
    /// Creates a standalone device map (for programs of your own that look it up by id or fd).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for `max_entries == 0`; [`ErrorKind::Permission`](crate::ErrorKind::Permission) without
    /// CAP_BPF.
    pub fn create(kind: DevMapKind, max_entries: u32) -> Result<Self> {
        let op = "create devmap";
        if max_entries == 0 {
            return Err(Error::invalid_input(op, "max_entries must be at least 1"));
        }
        let ty = match kind {
            DevMapKind::Array => MapType::Devmap,
            DevMapKind::Hash => MapType::DevmapHash,
        };
        // SAFETY: zeroed bpf_map_create_opts with sz set is the documented default.
        let mut opts: libbpf_sys::bpf_map_create_opts = unsafe { std::mem::zeroed() };
        opts.sz = std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _;
        let map = MapHandle::create(ty, Some("lwtun_devmap"), 4, 8, max_entries, &opts)
            .map_err(|e| Error::bpf(op, e))?;
        DevMap::from_handle(map)
    }

    pub(crate) fn from_handle(map: MapHandle) -> Result<Self> {
        let op = "open devmap";
        let kind = match map.map_type() {
            MapType::Devmap => DevMapKind::Array,
            MapType::DevmapHash => DevMapKind::Hash,
            other => {
                return Err(Error::invalid_input(
                    op,
                    format!("map type {other:?} is not a devmap"),
                ))
            }
        };
        check_sizes(op, &map, 4, 8)?;
        Ok(DevMap { map, kind })
    }

    /// The kind of map.
    pub fn kind(&self) -> DevMapKind {
        self.kind
    }

    /// How many ports the map holds at most.
    pub fn capacity(&self) -> u32 {
        self.map.max_entries()
    }

    fn check_key(&self, op: &str, key: u32) -> Result<()> {
        if self.kind == DevMapKind::Array && key >= self.map.max_entries() {
            return Err(Error::invalid_input(
                op,
                format!(
                    "port {key} is outside the devmap's 0..{}",
                    self.map.max_entries()
                ),
            ));
        }
        Ok(())
    }

    /// Sets port `key` to send out of `device`, running `program` (if any) on each frame first.
    ///
    /// The kernel resolves the device's index in the namespace of the thread that writes the
    /// map, so the write happens in `device`'s namespace: a [`Device`] from a test or router
    /// namespace lands on that device, not on the host's device of the same index.
    ///
    /// A device that would drop every redirected frame is refused: where the kernel reports
    /// XDP features (Linux 6.3), the device must have `ndo-xmit`. A veth gets it while its
    /// peer runs an XDP program (or has GRO on); attach one first, for example with
    /// [`XdpPass::attach_receiver`](super::XdpPass::attach_receiver).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] for a key outside an array devmap, a program that is not a
    /// devmap program, or a device that cannot take redirected frames;
    /// [`ErrorKind::NotFound`] when the device is gone.
    pub fn set(&self, key: u32, device: &Device, program: Option<&XdpProgram>) -> Result<()> {
        let op = "set devmap port";
        self.check_key(op, key)?;
        let ifindex = device.index();
        let object = || format!("port {key} -> {device}");
        device
            .enter(|| {
                check_receives(op, ifindex)?;
                let mut value = [0u8; 8];
                value[..4].copy_from_slice(&ifindex.to_ne_bytes());
                let fd = program.map(|p| p.as_fd().as_raw_fd()).unwrap_or(-1);
                value[4..].copy_from_slice(&fd.to_ne_bytes());
                self.map
                    .update(&key.to_ne_bytes(), &value, MapFlags::ANY)
                    .map_err(|e| Error::bpf(op, e))
            })
            .map_err(|e| e.with_object(object()))
    }

    /// The port at `key`, or `None` when it is empty.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a key outside an array devmap.
    pub fn get(&self, key: u32) -> Result<Option<EgressPort>> {
        let op = "read devmap port";
        self.check_key(op, key)?;
        let value = self
            .map
            .lookup(&key.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?;
        Ok(value.and_then(|v| decode_port(&v)))
    }

    /// Empties port `key`; returns whether it held a port.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a key outside an array devmap.
    pub fn remove(&self, key: u32) -> Result<bool> {
        let op = "remove devmap port";
        self.check_key(op, key)?;
        if self.get(key)?.is_none() {
            return Ok(false);
        }
        match self.map.delete(&key.to_ne_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::bpf(op, e)),
        }
    }

    /// Every non-empty port, by key.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the map cannot be read.
    pub fn ports(&self) -> Result<Vec<(u32, EgressPort)>> {
        let mut out = Vec::new();
        for key in self.map.keys() {
            let Ok(k) = <[u8; 4]>::try_from(key.as_slice()) else {
                continue;
            };
            let k = u32::from_ne_bytes(k);
            if let Some(port) = self.get(k)? {
                out.push((k, port));
            }
        }
        Ok(out)
    }
}

/// Fails when the kernel says device `ifindex` (in the calling thread's namespace) cannot
/// take redirected frames.
fn check_receives(op: &str, ifindex: u32) -> Result<()> {
    match xdp_features(ifindex) {
        Ok(Some(f)) if !f.contains(XdpFeatures::NDO_XMIT) => Err(Error::invalid_input(
            op,
            format!(
                "the device cannot take redirected XDP frames (its XDP features are {f:?}, \
                 without NDO_XMIT), so every frame sent to this port would be dropped; for a \
                 veth, attach an XDP program to its peer first (XdpPass::attach_receiver) or \
                 turn GRO on there"
            ),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(e),
        // Older kernels, or no netdev family: nothing can be told.
        _ => Ok(()),
    }
}

fn decode_port(v: &[u8]) -> Option<EgressPort> {
    let ifindex = u32::from_ne_bytes(v.get(..4)?.try_into().ok()?);
    let id = u32::from_ne_bytes(v.get(4..8)?.try_into().ok()?);
    if ifindex == 0 {
        return None;
    }
    Some(EgressPort {
        ifindex,
        program_id: (id != 0).then_some(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_ports() {
        let mut v = [0u8; 8];
        assert_eq!(decode_port(&v), None);
        v[..4].copy_from_slice(&5u32.to_ne_bytes());
        assert_eq!(
            decode_port(&v),
            Some(EgressPort {
                ifindex: 5,
                program_id: None
            })
        );
        v[4..].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(decode_port(&v).unwrap().program_id, Some(9));
    }
}
