//! Packet capture at a chain's exit hook (xdpcap's idea, at XDP, tc and the LWT hooks), to pcap or
//! pcapng files, a tcpdump-syntax filter and a terminal view.
//!
//! ```text
//!  chain stages ──▶ exit hook ──(attached: capture program)──▶ ring buffer ──▶ Capture::poll
//!                      │                                                  │
//!                      └──(detached: empty slot, one failed tail call)    ├─▶ Filter (libpcap)
//!                                                                         ├─▶ CaptureWriter (pcap/pcapng)
//!                                                                         └─▶ Packet::summary / dump
//! ```
//!
//! Every lwtun chain exits through its exit hook ([`ProgChain::set_exit`]); the capture program
//! copies each packet (up to the snap length) and its metadata (hook, interface, verdict, time)
//! into a ring buffer and returns the chain's verdict unchanged. Packets at the LWT hooks start at
//! the IP header and are written with link type RAW (101); XDP and tc packets with ETHERNET (1).
//!
//! The filter is compiled by libpcap (`pcap_compile`, the `pcap` crate) and run in user space on
//! each record: the BPF side stays one fixed, verified program, a filter change needs no reload,
//! and the expression means exactly what it means to tcpdump. The price is that every packet
//! crosses the ring buffer, filtered or not.

mod decode;
mod filter;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use libbpf_rs::{MapCore, Object, RingBuffer, RingBufferBuilder};

use crate::chain::{ChainHook, ProgChain};
use crate::error::{Error, ErrorKind, Result};
use crate::skel::capture::types::lwtun_capture_meta;

pub use filter::Filter;
pub use writer::{CaptureFormat, CaptureWriter, LinkType};

/// Largest snap length (`LWTUN_CAPTURE_MAX`).
pub const MAX_SNAPLEN: u32 = 1536;

/// Options of a [`Capture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Bytes kept of each packet (at most [`MAX_SNAPLEN`]).
    pub snaplen: u32,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            snaplen: MAX_SNAPLEN,
        }
    }
}

/// One captured packet with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// When the capture program saw it (wall clock, converted from the kernel's monotonic clock).
    pub time: SystemTime,
    /// The hook it was captured at.
    pub hook: ChainHook,
    /// The interface index (the ingress device at XDP; the skb's device at tc and LWT).
    pub ifindex: u32,
    /// The chain's verdict for it (the hook's return code).
    pub verdict: i32,
    /// The packet's full length.
    pub len: u32,
    /// `skb->protocol` (EtherType) in host order; 0 at XDP.
    pub protocol: u16,
    /// The captured bytes (from the IP header at the LWT hooks, the Ethernet header otherwise).
    pub data: Vec<u8>,
}

impl Packet {
    /// The pcap link type of the packet's bytes.
    pub fn link_type(&self) -> LinkType {
        LinkType::of(self.hook)
    }

    /// One line, tcpdump-like: time, hook, interface, verdict name and the decoded headers,
    /// through lwtun's encapsulations (IP-in-IP, GRE with its key, FOU with its port) to the
    /// inner packet, with the lengths tcpdump prints (the ICMP message, the TCP or UDP payload).
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun::capture::Packet;
    /// # fn show(p: &Packet) {
    /// // 12:00:01.000042 tc if3 next IP 10.66.0.1 > 10.66.0.2: GREv0, key=77, length 92:
    /// //   IP 10.30.0.1 > 10.20.0.9: ICMP echo request, id 25180, seq 1, length 64
    /// println!("{}", p.summary());
    /// # }
    /// ```
    pub fn summary(&self) -> String {
        decode::summary(self)
    }

    /// The kernel's name of [`verdict`](Self::verdict) at the packet's hook: `XDP_PASS`,
    /// `TC_ACT_SHOT`, `next` (tc's `TC_ACT_UNSPEC`, tcx's `TCX_NEXT`: the next program decides),
    /// `BPF_OK`, ...; `unknown verdict N` for a code the hook does not define.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun::capture::Packet;
    /// # fn show(p: &Packet) {
    /// println!("{} at {}", p.verdict_name(), p.hook);
    /// # }
    /// ```
    pub fn verdict_name(&self) -> String {
        decode::verdict_text(self)
    }

    /// A layer-by-layer dump with every header field and a hex dump of the bytes.
    pub fn dump(&self) -> String {
        decode::dump(self)
    }

    /// The packet's headers as typed values (the `etherparse` crate's lax slicer, which also
    /// reads packets cut short by the snap length): Ethernet at XDP and tc, IP at the LWT
    /// hooks, then the transport header.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`] when not even the first header can be read.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun::capture::Packet;
    /// # fn check(p: &Packet) -> lwtun::Result<()> {
    /// use etherparse::{LaxNetSlice, TransportSlice};
    ///
    /// let headers = p.headers()?;
    /// if let Some(LaxNetSlice::Ipv4(ip)) = &headers.net {
    ///     println!("from {}", ip.header().source_addr());
    /// }
    /// if let Some(TransportSlice::Udp(udp)) = &headers.transport {
    ///     println!("to port {}", udp.destination_port());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn headers(&self) -> Result<etherparse::LaxSlicedPacket<'_>> {
        let parsed = match self.link_type() {
            LinkType::Raw => {
                etherparse::LaxSlicedPacket::from_ip(&self.data).map_err(|e| e.to_string())
            }
            LinkType::Ethernet => {
                etherparse::LaxSlicedPacket::from_ethernet(&self.data).map_err(|e| e.to_string())
            }
        };
        parsed.map_err(|e| {
            Error::invalid_input(
                "decode captured packet",
                format!("{e} ({} of {} bytes captured)", self.data.len(), self.len),
            )
        })
    }

    /// Source and destination of the outermost IP header, if the packet has one.
    pub fn ip_addrs(&self) -> Option<(IpAddr, IpAddr)> {
        match self.headers().ok()?.net? {
            etherparse::LaxNetSlice::Ipv4(ip) => Some((
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            )),
            etherparse::LaxNetSlice::Ipv6(ip) => Some((
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            )),
            _ => None,
        }
    }

    /// The ICMP or ICMPv6 echo request or reply this packet carries, if any.
    pub fn echo(&self) -> Option<Echo> {
        use etherparse::{Icmpv4Type, Icmpv6Type, TransportSlice};
        let (request, h) = match self.headers().ok()?.transport? {
            TransportSlice::Icmpv4(i) => match i.icmp_type() {
                Icmpv4Type::EchoRequest(h) => (true, h),
                Icmpv4Type::EchoReply(h) => (false, h),
                _ => return None,
            },
            TransportSlice::Icmpv6(i) => match i.icmp_type() {
                Icmpv6Type::EchoRequest(h) => (true, h),
                Icmpv6Type::EchoReply(h) => (false, h),
                _ => return None,
            },
            _ => return None,
        };
        Some(Echo {
            request,
            id: h.id,
            seq: h.seq,
        })
    }
}

/// An ICMP / ICMPv6 echo, as [`Packet::echo`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Echo {
    /// A request (ping) rather than a reply.
    pub request: bool,
    /// The identifier.
    pub id: u16,
    /// The sequence number.
    pub seq: u16,
}

/// A capture program at a chain's exit hook, and the ring buffer it fills.
///
/// Kernel: Linux 5.18+ (`bpf_xdp_load_bytes` in the XDP hook; BPF ring buffer 5.8, global data 5.2).
///
/// [`Capture::attach`] loads it and attaches it; [`Capture::detach`] (or dropping the chain's exit
/// with [`ProgChain::clear_exit`]) takes it off, after which the chain pays one failed tail call.
/// A `Capture` is `Send + Sync`: a reader thread can own it, and threads can share it behind an
/// `Arc` for what reads by `&self` ([`Capture::lost`], [`Capture::program`]). Reading packets takes
/// `&mut self` (libbpf's ring buffer consumer is single-threaded), so one reader polls at a time.
/// Records are lost (counted by [`Capture::lost`]) when the 4 MiB ring fills faster than it is
/// polled.
///
/// An event loop drives it through its file descriptor ([`AsFd`]: the ring's epoll descriptor,
/// readable when records wait) and [`Capture::try_packet`], which never blocks; with the `tokio`
/// feature, `lwtun::aio::AsyncCapture` does that as a `futures` `Stream`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lwtun::capture::{Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter};
/// use lwtun::chain::{ChainHook, ProgChain};
///
/// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
/// // ... give chain.lwt_entry()? to a route ...
/// let mut capture = Capture::attach(&mut chain, CaptureOptions::default())?;
/// let filter = Filter::compile("icmp", capture.link_type())?;
/// let file = std::fs::File::create("/tmp/out.pcap").unwrap();
/// let mut out = CaptureWriter::new(file, CaptureFormat::Pcap, capture.link_type(), 1536)?;
/// for p in capture.packets(Duration::from_secs(1)) {       // for one second
///     let p = p?;
///     if filter.matches(&p) {
///         println!("{}", p.summary());
///         if let Some(echo) = p.echo() {
///             println!("  echo seq {} from {:?}", echo.seq, p.ip_addrs());
///         }
///         out.write(&p)?;
///     }
/// }
/// capture.detach(&mut chain)?;
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Capture {
    /// Locked only through `&mut self` (`Mutex::get_mut`, no locking cost): the mutex is what makes
    /// the ring, which libbpf-rs marks `Send` but not `Sync`, shareable.
    ring: Mutex<RingBuffer<'static>>,
    /// The ring's epoll descriptor, owned by `ring` (valid as long as `self`).
    epoll: RawFd,
    queue: Arc<Mutex<VecDeque<std::result::Result<Packet, String>>>>,
    program: OwnedFd,
    object: Object,
    hook: ChainHook,
}

impl fmt::Debug for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture")
            .field("hook", &self.hook)
            .field("program", &self.program)
            .finish()
    }
}

impl Capture {
    /// Loads a capture program for `chain` (not attached yet: see [`Capture::attach`]).
    ///
    /// # Errors
    ///
    /// InvalidInput for a snap length of 0 or above [`MAX_SNAPLEN`]; Permission without CAP_BPF;
    /// Unsupported for an XDP chain on a kernel without `bpf_xdp_load_bytes` (before 5.18).
    pub fn load(chain: &ProgChain, options: CaptureOptions) -> Result<Self> {
        if options.snaplen == 0 || options.snaplen > MAX_SNAPLEN {
            return Err(Error::invalid_input(
                "load capture",
                format!("snap length {}: use 1..={MAX_SNAPLEN}", options.snaplen),
            ));
        }
        if chain.hook() == ChainHook::Xdp {
            crate::probe::Feature::XdpLoadBytes.require("load an XDP capture")?;
        }
        let snap_offset = std::mem::offset_of!(crate::skel::capture::types::rodata, snaplen);
        let object = chain.open_member(
            "capture",
            crate::skel::capture::OBJECT,
            std::mem::offset_of!(crate::skel::capture::types::rodata, lwtun_chain_abi),
            |open| {
                crate::program::set_rodata(
                    open,
                    "set capture snap length",
                    snap_offset,
                    &options.snaplen.to_ne_bytes(),
                )
            },
        )?;
        let hook = chain.hook();
        let program = chain.member_program(&object, &format!("capture_{hook}"))?;
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let clock = ClockOffset::now();
        let ring = {
            let map = object
                .maps()
                .find(|m| m.name().to_str() == Some("capture_ring"))
                .ok_or_else(|| Error::not_found("load capture", "map capture_ring"))?;
            let sink = Arc::clone(&queue);
            let mut builder = RingBufferBuilder::new();
            builder
                .add(&map, move |bytes: &[u8]| {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(parse_record(bytes, clock));
                    0
                })
                .map_err(|e| Error::bpf("open capture ring", e))?;
            builder
                .build()
                .map_err(|e| Error::bpf("open capture ring", e))?
        };
        let epoll = ring.epoll_fd();
        Ok(Capture {
            ring: Mutex::new(ring),
            epoll,
            queue,
            program,
            object,
            hook,
        })
    }

    /// Loads a capture program and attaches it at `chain`'s exit hook.
    ///
    /// # Errors
    ///
    /// As [`Capture::load`] and [`ProgChain::set_exit`].
    pub fn attach(chain: &mut ProgChain, options: CaptureOptions) -> Result<Self> {
        let capture = Self::load(chain, options)?;
        chain.set_exit(capture.program())?;
        Ok(capture)
    }

    /// Takes the capture program off `chain`'s exit hook (when it is the one there). Packets
    /// already in the ring can still be polled.
    ///
    /// # Errors
    ///
    /// The kernel's error.
    pub fn detach(&self, chain: &mut ProgChain) -> Result<()> {
        let ours = crate::program::program_info(self.program.as_fd())?.id;
        if chain.exit().map(|p| p.id) == Some(ours) {
            chain.clear_exit()?;
        }
        Ok(())
    }

    /// The capture program, for [`ProgChain::set_exit`].
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// The hook the capture is for.
    pub fn hook(&self) -> ChainHook {
        self.hook
    }

    /// The link type of the captured bytes.
    pub fn link_type(&self) -> LinkType {
        LinkType::of(self.hook)
    }

    /// Waits up to `timeout` for packets and returns those the ring buffer holds (possibly
    /// none).
    ///
    /// # Errors
    ///
    /// The kernel's error polling; Kernel for a malformed record.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<Packet>> {
        self.ring()
            .poll(timeout)
            .map_err(|e| Error::bpf("poll capture ring", e))?;
        self.drain()
    }

    /// Returns what the ring buffer holds now, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Capture::poll`].
    pub fn drain(&mut self) -> Result<Vec<Packet>> {
        self.consume()?;
        self.queued().drain(..).map(record_result).collect()
    }

    /// The next packet if one is waiting, without blocking: `Ok(None)` when the ring is empty.
    /// With the descriptor ([`AsFd`]) in an event loop (epoll, mio, tokio's `AsyncFd`), call it
    /// when the descriptor is readable until it returns `None`.
    ///
    /// # Errors
    ///
    /// As [`Capture::poll`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::os::fd::AsFd;
    /// use lwtun::capture::{Capture, CaptureOptions};
    /// use lwtun::chain::{ChainHook, ProgChain};
    ///
    /// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
    /// let mut capture = Capture::attach(&mut chain, CaptureOptions::default())?;
    /// // Register capture.as_fd() with the event loop; when it is readable:
    /// while let Some(p) = capture.try_packet()? {
    ///     println!("{}", p.summary());
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_packet(&mut self) -> Result<Option<Packet>> {
        if let Some(r) = self.queued().pop_front() {
            return record_result(r).map(Some);
        }
        self.consume()?;
        self.queued().pop_front().map(record_result).transpose()
    }

    /// Moves every record the ring holds into the queue, without waiting. The zero-timeout
    /// `epoll_wait` also refreshes the epoll descriptor's ready list, so that a level-triggered
    /// poller of [`AsFd`] sees it idle once the ring is empty.
    fn consume(&mut self) -> Result<()> {
        let ring = self.ring();
        ring.poll(Duration::ZERO)
            .map_err(|e| Error::bpf("read capture ring", e))?;
        ring.consume()
            .map_err(|e| Error::bpf("read capture ring", e))
    }

    fn ring(&mut self) -> &mut RingBuffer<'static> {
        self.ring.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, VecDeque<std::result::Result<Packet, String>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next packet, waiting up to `timeout` for one; `None` when none came.
    ///
    /// # Errors
    ///
    /// As [`Capture::poll`].
    pub fn next_packet(&mut self, timeout: Duration) -> Result<Option<Packet>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.queued().pop_front() {
                return record_result(r).map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.ring()
                .poll(left)
                .map_err(|e| Error::bpf("poll capture ring", e))?;
            if self.queued().is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// The packets that arrive within `timeout` from now, one at a time as they come: the
    /// iterator ends when the time is up (or at the first error, which it yields).
    pub fn packets(&mut self, timeout: Duration) -> Packets<'_> {
        Packets {
            deadline: Instant::now() + timeout,
            capture: self,
            failed: false,
        }
    }

    /// Records lost because the ring buffer was full (the reader fell behind).
    ///
    /// # Errors
    ///
    /// The kernel's error reading the counter.
    pub fn lost(&self) -> Result<u64> {
        let map = self
            .object
            .maps()
            .find(|m| m.name().to_str() == Some("capture_lost"))
            .ok_or_else(|| Error::not_found("read capture losses", "map capture_lost"))?;
        let values = map
            .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
            .map_err(|e| Error::bpf("read capture losses", e))?
            .unwrap_or_default();
        Ok(values
            .iter()
            .filter_map(|v| v.get(..8))
            .map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")))
            .sum())
    }
}

/// The ring buffer's epoll descriptor: readable while records wait in the ring. Poll it (epoll,
/// mio, tokio's `AsyncFd`) and read with [`Capture::try_packet`] or [`Capture::drain`]; it is
/// owned by the capture and valid as long as it.
///
/// # Examples
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use lwtun::capture::{Capture, CaptureOptions};
/// use lwtun::chain::{ChainHook, ProgChain};
///
/// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
/// let capture = Capture::attach(&mut chain, CaptureOptions::default())?;
/// let mut fds = [libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&capture.as_fd()), events: libc::POLLIN, revents: 0 }];
/// // SAFETY: one valid pollfd.
/// unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
/// # Ok::<(), lwtun::Error>(())
/// ```
impl AsFd for Capture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `epoll` is the ring's epoll descriptor, which the ring (owned by `self`)
        // closes only when it is dropped, so it stays open for the borrow's lifetime.
        unsafe { BorrowedFd::borrow_raw(self.epoll) }
    }
}

impl AsRawFd for Capture {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll
    }
}

/// The packets of [`Capture::packets`].
#[derive(Debug)]
pub struct Packets<'a> {
    capture: &'a mut Capture,
    deadline: Instant,
    failed: bool,
}

impl Iterator for Packets<'_> {
    type Item = Result<Packet>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.capture.next_packet(left) {
            Ok(p) => p.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn record_result(r: std::result::Result<Packet, String>) -> Result<Packet> {
    r.map_err(|m| Error::other(ErrorKind::Kernel, "read capture record", m))
}

/// Wall clock minus monotonic clock, to date records stamped with bpf_ktime_get_ns.
#[derive(Debug, Clone, Copy)]
struct ClockOffset {
    wall: SystemTime,
    mono_ns: u64,
}

impl ClockOffset {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ClockOffset {
            wall: SystemTime::now(),
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    fn wall(&self, mono_ns: u64) -> SystemTime {
        if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        }
    }
}

fn parse_record(bytes: &[u8], clock: ClockOffset) -> std::result::Result<Packet, String> {
    let head = std::mem::size_of::<lwtun_capture_meta>();
    if bytes.len() < head {
        return Err(format!("record of {} bytes, header is {head}", bytes.len()));
    }
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().expect("4"));
    let timestamp = u64::from_ne_bytes(bytes[0..8].try_into().expect("8"));
    let (ifindex, len, caplen, hook, verdict) = (
        u32_at(8),
        u32_at(12),
        u32_at(16),
        u32_at(20),
        u32_at(24) as i32,
    );
    let protocol = u16::from_be_bytes([bytes[28], bytes[29]]);
    let hook = ChainHook::from_code(hook).ok_or_else(|| format!("unknown hook code {hook}"))?;
    let data = bytes
        .get(head..head + caplen as usize)
        .ok_or_else(|| format!("caplen {caplen} beyond the record"))?
        .to_vec();
    Ok(Packet {
        time: clock.wall(timestamp),
        hook,
        ifindex,
        verdict,
        len,
        protocol,
        data,
    })
}

/// The ring-buffer record decoder, for fuzz tests. Not part of lwtun's API.
#[doc(hidden)]
pub mod wire {
    use super::*;

    /// Decodes one capture record as the capture program writes it into the ring buffer.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`] for a malformed record.
    pub fn decode_record(bytes: &[u8]) -> Result<Packet> {
        record_result(parse_record(bytes, ClockOffset::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_can_move_to_a_reader_thread_and_be_shared() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Capture>();
        send::<Packet>();
    }

    fn packet(hook: ChainHook, data: Vec<u8>) -> Packet {
        Packet {
            time: SystemTime::UNIX_EPOCH,
            hook,
            ifindex: 1,
            verdict: 0,
            len: data.len() as u32,
            protocol: 0x0800,
            data,
        }
    }

    #[test]
    fn typed_headers_of_an_echo_request() {
        // IPv4 10.0.0.1 -> 10.0.0.2, ICMP echo request id 0x1234 seq 7, 4 bytes of payload.
        let mut ip = vec![
            0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 7, 1, 2, 3, 4]);
        let p = packet(ChainHook::LwtXmit, ip.clone());
        assert_eq!(
            p.ip_addrs(),
            Some(("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()))
        );
        assert_eq!(
            p.echo(),
            Some(Echo {
                request: true,
                id: 0x1234,
                seq: 7
            })
        );
        // The same behind an Ethernet header, as XDP and tc capture it.
        let mut eth = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        eth.extend_from_slice(&ip);
        let p = packet(ChainHook::Tc, eth);
        assert_eq!(p.echo().map(|e| e.seq), Some(7));
        // Cut short by the snap length: the IP header still reads.
        let mut cut = packet(ChainHook::LwtXmit, ip[..24].to_vec());
        cut.len = 32;
        assert!(cut.ip_addrs().is_some());
        // Hostile bytes: an error or None, never a panic.
        for n in 0..ip.len() {
            let mut bad = packet(ChainHook::LwtXmit, ip[..n].to_vec());
            bad.data.iter_mut().for_each(|b| *b ^= 0xa5);
            let _ = bad.headers();
            let _ = (bad.ip_addrs(), bad.echo());
        }
        assert!(packet(ChainHook::LwtXmit, vec![]).headers().is_err());
    }

    #[test]
    fn records_parse_and_malformed_ones_are_refused() {
        let clock = ClockOffset::now();
        let mut rec = vec![0u8; 32];
        rec[0..8].copy_from_slice(&(clock.mono_ns + 1_000).to_ne_bytes());
        rec[8..12].copy_from_slice(&7u32.to_ne_bytes());
        rec[12..16].copy_from_slice(&84u32.to_ne_bytes());
        rec[16..20].copy_from_slice(&4u32.to_ne_bytes());
        rec[20..24].copy_from_slice(&4u32.to_ne_bytes());
        rec[24..28].copy_from_slice(&0i32.to_ne_bytes());
        rec[28..30].copy_from_slice(&0x0800u16.to_be_bytes());
        rec.extend_from_slice(&[0x45, 0, 0, 84]);
        let p = parse_record(&rec, clock).unwrap();
        assert_eq!(p.hook, ChainHook::LwtXmit);
        assert_eq!((p.ifindex, p.len, p.protocol), (7, 84, 0x0800));
        assert_eq!(p.data, vec![0x45, 0, 0, 84]);
        assert_eq!(p.link_type(), LinkType::Raw);
        assert_eq!(p.time, clock.wall + Duration::from_micros(1));
        assert!(parse_record(&rec[..20], clock).is_err());
        assert!(
            parse_record(&rec[..33], clock).is_err(),
            "caplen past the end"
        );
        rec[20] = 9;
        assert!(parse_record(&rec, clock).is_err(), "unknown hook");
    }
}
