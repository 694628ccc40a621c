//! Synchronous rtnetlink, over neli, in the calling thread's network namespace.
//!
//! [`Netlink`] is one `NETLINK_ROUTE` socket with extended ACKs on. Message bodies are neli's
//! typed structs (`Rtmsg`, `Ifinfomsg`, `Ifaddrmsg`) and attribute buffers; this module frames
//! them, matches every answer to its request by sequence number and turns kernel errors into
//! [`Error`]s that carry the extended-ack text.
//!
//! The domain modules build on it: [`link`], [`addr`] and [`route`] (with the LWT BPF encap and a
//! pipelined [`route::RouteBatch`]).
//!
//! A socket belongs to the namespace it was opened in, whatever thread later uses it: open it
//! inside [`crate::netns::NetNs::run`] to work in another namespace.

pub mod addr;
pub mod attr;
pub mod link;
pub(crate) mod lookup;
pub mod neigh;
pub mod netdev;
pub mod nexthop;
pub mod route;
pub mod tc;

use std::io::Cursor;
use std::os::fd::AsRawFd;

use neli::consts::nl::{NlType, NlmF};
use neli::consts::socket::{Msg, NlFamily};
use neli::nl::{NlPayload, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::utils::Groups;
use neli::{FromBytesWithInput, Size, ToBytes};

use crate::error::{Error, ErrorKind, Result};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Requests sent in one `sendmsg` by the pipelined path, before their ACKs are read.
pub(crate) const PIPELINE_WINDOW: usize = 256;
/// The size at which the pipelined path closes a window early (bytes): a `sendmsg` above the
/// socket's send buffer (212992 bytes by default) fails with `EMSGSIZE`, and the kernel copies
/// each `sendmsg` into one buffer, so larger windows need larger contiguous allocations there.
pub(crate) const PIPELINE_BYTES: usize = 32 << 10;
const RECV_BUF: usize = 1 << 20;

/// One rtnetlink socket.
///
/// `Send + Sync`; every call takes `&mut self` (one request at a time: the socket's sequence
/// counter and receive buffer). To share one between threads or tasks, put it behind a `Mutex`
/// (with the `tokio` feature, `lwtun::aio::AsyncNetlink` does), or open one per thread.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::Netlink;
///
/// let mut nl = Netlink::open()?;
/// for link in nl.links()? {
///     println!("{} {}", link.index, link.name);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Netlink {
    sock: NlSocket,
    seq: u32,
    buf: Vec<u8>,
    /// The namespace the socket works in, found once when first asked.
    netns_id: std::sync::OnceLock<crate::netns::NetNsId>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("fd", &self.sock.as_raw_fd())
            .finish()
    }
}

/// One parsed answer from the kernel: a payload (for dumps and events) or the result of an
/// ACKed request.
pub(crate) enum Answer<'a> {
    Payload {
        ty: u16,
        body: &'a [u8],
    },
    Ack {
        seq: u32,
        result: Result<(), (i32, Option<String>)>,
    },
    Done,
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket in the calling thread's network namespace, with extended
    /// ACKs and capped ACKs (errors do not echo the whole request) turned on.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the socket cannot be made (for example out of file descriptors).
    pub fn open() -> Result<Self> {
        let op = "open rtnetlink socket";
        let sock = NlSocket::connect(NlFamily::Route, None, Groups::empty())
            .map_err(|e| Error::io(op, e))?;
        sock.block().map_err(|e| Error::io(op, e))?;
        sock.enable_ext_ack(true).map_err(|e| Error::io(op, e))?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one` for its size; the fd is a live netlink socket.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_CAP_ACK,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // Large dumps and pipelined batches need room; SO_RCVBUFFORCE works with CAP_NET_ADMIN,
        // SO_RCVBUF (capped by rmem_max) otherwise.
        let size: libc::c_int = 8 << 20;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: as above.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        Ok(Netlink {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
            netns_id: std::sync::OnceLock::new(),
        })
    }

    /// Opens a socket in the network namespace `netns` without moving the calling thread for
    /// longer than the `socket` call: the socket stays bound to that namespace, whichever
    /// thread uses it later.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`] without `CAP_SYS_ADMIN` (needed by `setns`);
    /// [`ErrorKind::NotFound`] when the namespace is gone.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netlink::Netlink, netns::NetNs};
    ///
    /// let ns = NetNs::create_unique("nl")?;
    /// let mut nl = Netlink::open_in(&ns)?;
    /// let lo = nl.device("lo")?;                 // a Device bound to `ns`
    /// assert!(lo.is_in(&ns)?);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open_in(netns: &crate::netns::NetNs) -> Result<Self> {
        netns.enter(Netlink::open)
    }

    /// Opens a socket in the namespace a descriptor refers to (of `/run/netns/NAME` or
    /// `/proc/PID/ns/net`).
    ///
    /// # Errors
    ///
    /// As [`Netlink::open_in`]; [`ErrorKind::InvalidInput`] when `netns` is not a network
    /// namespace.
    #[deprecated(
        since = "0.2.0",
        note = "use Netlink::open_in(&NetNs); NetNs::of_fd wraps a descriptor"
    )]
    pub fn open_in_fd(netns: std::os::fd::BorrowedFd<'_>) -> Result<Self> {
        let fd = netns
            .try_clone_to_owned()
            .map_err(|e| Error::io("open rtnetlink socket in namespace", e))?;
        Netlink::open_in(&crate::netns::NetNs::of_fd(fd)?)
    }

    /// The identity of the namespace this socket works in.
    ///
    /// # Errors
    ///
    /// As [`Netlink::netns`].
    pub fn netns_id(&self) -> Result<crate::netns::NetNsId> {
        if let Some(id) = self.netns_id.get() {
            return Ok(*id);
        }
        let fd = self.netns()?;
        let id = crate::netns::NetNsId::of(std::os::fd::AsFd::as_fd(&fd))?;
        Ok(*self.netns_id.get_or_init(|| id))
    }

    /// The network namespace this socket works in, as an fd (`SIOCGSKNS`).
    ///
    /// # Errors
    ///
    /// Permission without CAP_NET_ADMIN over the namespace.
    pub fn netns(&self) -> Result<std::os::fd::OwnedFd> {
        const SIOCGSKNS: libc::c_ulong = 0x894C;
        // SAFETY: SIOCGSKNS takes no argument and returns a new fd or -1.
        let fd = unsafe { libc::ioctl(self.sock.as_raw_fd(), SIOCGSKNS as _) };
        if fd < 0 {
            return Err(Error::io(
                "find the socket's network namespace",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the kernel returned a fresh fd that nothing else owns.
        Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    }

    /// A second, independent socket in the same network namespace.
    ///
    /// # Errors
    ///
    /// As [`Netlink::netns`] and [`Netlink::open_in`].
    pub fn try_clone(&self) -> Result<Self> {
        let ns = crate::netns::NetNs::of_fd(self.netns()?)?;
        let nl = Self::open_in(&ns)?;
        if let Some(id) = self.netns_id.get() {
            let _ = nl.netns_id.set(*id);
        }
        Ok(nl)
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        if self.seq == 0 {
            self.seq = 1;
        }
        self.seq
    }

    /// Appends one framed request to `out` and returns its sequence number.
    pub(crate) fn encode<T, P>(&mut self, out: &mut Vec<u8>, ty: T, flags: NlmF, body: P) -> u32
    where
        T: NlType,
        P: Size + ToBytes,
    {
        let seq = self.next_seq();
        encode_message(out, ty, flags | NlmF::REQUEST, seq, body);
        seq
    }

    fn send(&self, op: &str, bytes: &[u8]) -> Result<()> {
        let sent = self
            .sock
            .send(bytes, Msg::empty())
            .map_err(|e| Error::io(op.to_string(), e))?;
        if sent != bytes.len() {
            return Err(Error::other(
                ErrorKind::Io,
                op.to_string(),
                format!("short netlink send: {sent} of {} bytes", bytes.len()),
            ));
        }
        Ok(())
    }

    /// Receives one datagram and calls `each` for every message in it; stops early when `each`
    /// returns `false`.
    fn recv_each(&mut self, op: &str, mut each: impl FnMut(Answer<'_>) -> bool) -> Result<()> {
        let n = loop {
            match self.sock.recv(&mut self.buf[..], Msg::empty()) {
                Ok((n, _)) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(op.to_string(), e)),
            }
        };
        for msg in split_messages(&self.buf[..n]) {
            if !each(msg) {
                break;
            }
        }
        Ok(())
    }

    /// Sends one request with `NLM_F_ACK` and waits for its answer.
    ///
    /// `op` and `object` name what is being done, for the error.
    pub(crate) fn request<T, P>(
        &mut self,
        op: &str,
        object: &dyn std::fmt::Display,
        ty: T,
        flags: NlmF,
        body: P,
    ) -> Result<()>
    where
        T: NlType,
        P: Size + ToBytes,
    {
        let mut out = Vec::with_capacity(256);
        let seq = self.encode(&mut out, ty, flags | NlmF::ACK, body);
        self.send(op, &out)?;
        let mut result = None;
        while result.is_none() {
            self.recv_each(op, |a| {
                if let Answer::Ack { seq: s, result: r } = a {
                    if s == seq {
                        result = Some(r);
                        return false;
                    }
                }
                true
            })?;
        }
        match result {
            Some(Ok(())) => Ok(()),
            Some(Err((errno, ext_ack))) => {
                Err(Error::netlink(op.to_string(), errno, ext_ack).with_object(object.to_string()))
            }
            None => unreachable!("loop ends only with a result"),
        }
    }

    /// Sends one request that `write(seq, out)` frames into `out` (lwtun's own encoders, for
    /// messages neli has no type for), with `NLM_F_ACK` set here, and waits for its answer.
    /// Returns the messages the kernel sent before the ACK (`NLM_F_ECHO` answers), as
    /// `(type, body)`.
    pub(crate) fn request_raw(
        &mut self,
        op: &str,
        object: &dyn std::fmt::Display,
        write: impl FnOnce(u32, &mut Vec<u8>),
    ) -> Result<Vec<(u16, Vec<u8>)>> {
        let mut out = Vec::with_capacity(256);
        let seq = self.next_seq();
        write(seq, &mut out);
        set_ack(&mut out);
        self.send(op, &out)?;
        let mut result = None;
        let mut echoed = Vec::new();
        while result.is_none() {
            self.recv_each(op, |a| match a {
                Answer::Ack { seq: s, result: r } if s == seq => {
                    result = Some(r);
                    false
                }
                Answer::Payload { ty, body } => {
                    echoed.push((ty, body.to_vec()));
                    true
                }
                _ => true,
            })?;
        }
        match result {
            Some(Ok(())) => Ok(echoed),
            Some(Err((errno, ext_ack))) => {
                Err(Error::netlink(op.to_string(), errno, ext_ack).with_object(object.to_string()))
            }
            None => unreachable!("loop ends only with a result"),
        }
    }

    /// Sends a dump request that `write(seq, out)` frames (with `NLM_F_DUMP`) and decodes every
    /// answer with `decode`, as [`Netlink::dump`] does.
    pub(crate) fn dump_raw<R>(
        &mut self,
        op: &str,
        write: impl FnOnce(u32, &mut Vec<u8>),
        decode: impl FnMut(u16, &[u8]) -> Result<Option<R>>,
    ) -> Result<Vec<R>> {
        let mut out = Vec::with_capacity(64);
        let seq = self.next_seq();
        write(seq, &mut out);
        self.send(op, &out)?;
        self.collect_dump(op, decode)
    }

    /// Sends a dump request and decodes every answer with `decode`, which sees the message type
    /// and body and may skip a message by returning `None`.
    pub(crate) fn dump<T, P, R>(
        &mut self,
        op: &str,
        ty: T,
        body: P,
        decode: impl FnMut(u16, &[u8]) -> Result<Option<R>>,
    ) -> Result<Vec<R>>
    where
        T: NlType,
        P: Size + ToBytes,
    {
        let mut out = Vec::with_capacity(64);
        self.encode(&mut out, ty, NlmF::DUMP, body);
        self.send(op, &out)?;
        self.collect_dump(op, decode)
    }

    /// Reads the answers of a dump request just sent, up to `NLMSG_DONE` or an error.
    fn collect_dump<R>(
        &mut self,
        op: &str,
        mut decode: impl FnMut(u16, &[u8]) -> Result<Option<R>>,
    ) -> Result<Vec<R>> {
        let mut items = Vec::new();
        let mut done = false;
        let mut failure: Option<Error> = None;
        while !done {
            self.recv_each(op, |a| {
                match a {
                    Answer::Payload { ty, body } => match decode(ty, body) {
                        Ok(Some(item)) => items.push(item),
                        Ok(None) => {}
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    },
                    Answer::Done => done = true,
                    Answer::Ack {
                        result: Err((errno, ext)),
                        ..
                    } => {
                        failure.get_or_insert(Error::netlink(op.to_string(), errno, ext));
                        done = true;
                    }
                    Answer::Ack { .. } => {}
                }
                !done
            })?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(items),
        }
    }

    /// Sends `n` requests, at most [`PIPELINE_WINDOW`] and about [`PIPELINE_BYTES`] per
    /// `sendmsg`, and collects the answers. Only the last request of each window carries
    /// `NLM_F_ACK`: rtnetlink handles a window inside `sendmsg`, in order, and answers every
    /// *failed* request whether or not it asked for an ACK, so the last request's ACK is a
    /// barrier after which every failure of the window has arrived. One `recvmsg` per window
    /// instead of one per request.
    ///
    /// `encode(i, seq, out)` appends request `i` with sequence number `seq`, without
    /// `NLM_F_ACK`, to `out`; the ACK flag is set here on the request that closes a window. A
    /// window is encoded right before it is sent, into one buffer reused for every window: the
    /// bytes of a whole batch are never held at once, and the buffer stays in the CPU's cache.
    /// A window closes after [`PIPELINE_WINDOW`] requests or at the first request that reaches
    /// [`PIPELINE_BYTES`], whichever comes first, so large requests (long program names on three
    /// hooks, long segment lists) never make a `sendmsg` larger than the socket's send buffer.
    ///
    /// The result has one entry per request, in order: `None` for success, or the errno and
    /// extended-ack text.
    pub(crate) fn pipeline(
        &mut self,
        op: &str,
        n: usize,
        mut encode: impl FnMut(usize, u32, &mut Vec<u8>),
    ) -> Result<Vec<Failure>> {
        let mut results: Vec<Failure> = vec![None; n];
        let mut out = Vec::with_capacity(PIPELINE_BYTES + 4096);
        let mut lo = 0;
        while lo < n {
            out.clear();
            // Sequence numbers of a window are contiguous (next_seq skips 0 on wrapping).
            if self.seq > u32::MAX - PIPELINE_WINDOW as u32 {
                self.seq = 0;
            }
            let base_seq = self.seq + 1;
            let mut hi = lo;
            let mut last = 0;
            while hi < n && hi - lo < PIPELINE_WINDOW && out.len() < PIPELINE_BYTES {
                last = out.len();
                let seq = self.next_seq();
                encode(hi, seq, &mut out);
                hi += 1;
            }
            let barrier = self.seq;
            set_ack(&mut out[last..]);
            self.send(op, &out)?;
            let mut done = false;
            while !done {
                self.recv_each(op, |a| {
                    if let Answer::Ack { seq, result } = a {
                        let k = seq.wrapping_sub(base_seq) as usize;
                        if k < hi - lo {
                            results[lo + k] = result.err();
                        }
                        done |= seq == barrier;
                    }
                    true
                })?;
            }
            lo = hi;
        }
        Ok(results)
    }
}

/// Sets `NLM_F_ACK` in the header of the netlink message at the start of `msg`.
fn set_ack(msg: &mut [u8]) {
    if msg.len() >= NLMSG_HDRLEN {
        let flags = u16::from_ne_bytes([msg[6], msg[7]]) | libc::NLM_F_ACK as u16;
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// What a pipelined request's answer says: `None` for success, or the errno and extended-ack
/// text of its failure.
pub(crate) type Failure = Option<(i32, Option<String>)>;

/// Frames one netlink message into `out`.
pub(crate) fn encode_message<T, P>(out: &mut Vec<u8>, ty: T, flags: NlmF, seq: u32, body: P)
where
    T: NlType,
    P: Size + ToBytes,
{
    let msg = NlmsghdrBuilder::default()
        .nl_type(ty)
        .nl_flags(flags)
        .nl_seq(seq)
        .nl_pid(0)
        .nl_payload(NlPayload::Payload(body))
        .build()
        .expect("every field of the header is set");
    let mut cursor = Cursor::new(Vec::with_capacity(msg.padded_size()));
    msg.to_bytes(&mut cursor)
        .expect("writing into a Vec cannot fail");
    out.extend_from_slice(cursor.get_ref());
}

/// Decodes a message body with neli's typed parser.
pub(crate) fn decode_body<R>(op: &str, body: &[u8]) -> Result<R>
where
    R: FromBytesWithInput<Input = usize>,
{
    R::from_bytes_with_input(&mut Cursor::new(body), body.len()).map_err(|e| {
        Error::other(
            ErrorKind::Kernel,
            op.to_string(),
            format!("undecodable netlink message: {e}"),
        )
    })
}

/// Splits a received datagram into messages. Malformed trailing bytes end the walk.
pub(crate) fn split_messages(mut data: &[u8]) -> impl Iterator<Item = Answer<'_>> {
    std::iter::from_fn(move || loop {
        if data.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(data[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return None;
        }
        let ty = u16::from_ne_bytes(data[4..6].try_into().unwrap());
        let flags = u16::from_ne_bytes(data[6..8].try_into().unwrap());
        let seq = u32::from_ne_bytes(data[8..12].try_into().unwrap());
        let msg = &data[..len];
        data = &data[align4(len).min(data.len())..];
        let body = &msg[NLMSG_HDRLEN..];
        match ty {
            NLMSG_NOOP => continue,
            NLMSG_DONE => return Some(Answer::Done),
            NLMSG_ERROR => return Some(parse_error(seq, flags, body)),
            _ => return Some(Answer::Payload { ty, body }),
        }
    })
}

/// Parses an `NLMSG_ERROR` body: errno, the (capped or full) original header, then the
/// extended-ack attributes when `NLM_F_ACK_TLVS` is set.
fn parse_error(seq: u32, flags: u16, body: &[u8]) -> Answer<'_> {
    if body.len() < 4 {
        return Answer::Ack {
            seq,
            result: Err((libc::EPROTO, None)),
        };
    }
    let code = i32::from_ne_bytes(body[0..4].try_into().unwrap());
    let mut ext_ack = None;
    if flags & NlmF::ACK_TLVS.bits() != 0 && body.len() >= 4 + NLMSG_HDRLEN {
        let orig_len = u32::from_ne_bytes(body[4..8].try_into().unwrap()) as usize;
        let skip = if flags & NlmF::CAPPED.bits() != 0 || code == 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig_len)
        };
        if let Some(tlvs) = body.get(4 + skip..) {
            ext_ack = attr::iter(tlvs)
                .find(|(t, _)| *t == NLMSGERR_ATTR_MSG)
                .map(|(_, v)| attr::cstr(v));
        }
    }
    Answer::Ack {
        seq,
        result: if code == 0 {
            Ok(())
        } else {
            Err((-code, ext_ack))
        },
    }
}

pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_error_with_ext_ack_from_capped_ack() {
        // NLMSG_ERROR, flags CAPPED|ACK_TLVS, seq 7: errno -19, capped header, MSG "Unknown device".
        let mut b = Vec::new();
        let msg = b"Unknown device\0";
        let tlv_len = 4 + msg.len();
        let total = 16 + 4 + 16 + align4(tlv_len);
        b.extend_from_slice(&(total as u32).to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&((NlmF::CAPPED | NlmF::ACK_TLVS).bits()).to_ne_bytes());
        b.extend_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(-19i32).to_ne_bytes());
        b.extend_from_slice(&[0u8; 16]);
        b.extend_from_slice(&(tlv_len as u16).to_ne_bytes());
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(msg);
        b.resize(total, 0);
        let answers: Vec<_> = split_messages(&b).collect();
        assert_eq!(answers.len(), 1);
        match &answers[0] {
            Answer::Ack { seq, result } => {
                assert_eq!(*seq, 7);
                assert_eq!(
                    result.as_ref().unwrap_err(),
                    &(19, Some("Unknown device".to_string()))
                );
            }
            _ => panic!("expected an ack"),
        }
    }

    #[test]
    fn truncated_datagrams_end_the_walk() {
        assert_eq!(split_messages(&[1, 2, 3]).count(), 0);
        let mut b = vec![0u8; 16];
        b[0..4].copy_from_slice(&64u32.to_ne_bytes()); // claims more than there is
        assert_eq!(split_messages(&b).count(), 0);
    }
}
