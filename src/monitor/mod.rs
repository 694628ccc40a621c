//! Events: what changes in a network namespace, as `ip monitor` shows it, as typed values.
//!
//! A [`Monitor`] is one `NETLINK_ROUTE` socket that joined the rtnetlink multicast groups of the
//! [`EventKinds`] it was opened with (routes v4/v6 with their LWT BPF programs decoded as
//! [`Encap::Bpf`](crate::netlink::route::Encap::Bpf), nexthop objects, links, addresses,
//! neighbours). Each kernel message becomes an [`Event`], stamped ([`Stamped`]) with the
//! monitor's sequence number and the time it was read.
//!
//! # What the monitor knows
//!
//! At open the monitor dumps the objects of its kinds; it then keeps the last description of
//! every object, keyed as the kernel tells them apart. That is how it says `*Added` (a key it
//! did not know) from `*Changed` (`ip route replace`, a link going up), and how it drops
//! messages that change nothing it models (a repeated description).
//!
//! # When the kernel drops events
//!
//! Events are queued in the socket's receive buffer (8 MiB by default, see
//! [`MonitorBuilder::receive_buffer`]). When a consumer reads slower than changes come and the
//! buffer fills, the kernel drops events and the next read fails with `ENOBUFS`: the classic
//! `ip monitor` loss. The monitor then **resyncs**: it drops what is still queued, dumps the
//! objects of its kinds, and delivers [`Event::Resync`] followed by the `*Added`, `*Changed` and
//! `*Removed` events that take its previous view to the dump. A consumer that applies every
//! event to its own view therefore converges on the kernel's state, and never loses a change
//! without a `Resync` telling it so. Intermediate states between two dumps (a route added and
//! deleted while events were lost) are not reported: only their net effect.
//!
//! What the kernel does without a message is not seen either: IPv4 routes through a device
//! that goes down or away are flushed without `RTM_DELROUTE`.
//!
//! # Peers of pinned tunnels
//!
//! A BPF map update tells nobody, so peer changes do not come from the kernel: lwtun's writers
//! journal them beside the tables ([`crate::peer::PeerJournal`]). [`Monitor::watch_peers`] adds
//! a tunnel's pin folder; the monitor then reads its journal every
//! [`MonitorBuilder::peer_interval`] (10 ms by default) and delivers [`Event::PeerAdded`],
//! [`Event::PeerChanged`] and [`Event::PeerRemoved`], each with the writer's pid and command
//! and the time it wrote ([`ChangeOrigin`](crate::peer::ChangeOrigin)). A change therefore
//! reaches the consumer at most one interval after it was written (plus the time to hand out
//! the events before it); reading a journal where nothing changed costs about 3 µs, so a
//! monitor of a few folders costs well under 0.1% of a core at 10 ms.
//!
//! There is one resync story: when a journal cannot say every change (its ring overflowed
//! before the monitor read it, the tunnel was pinned anew, a record is unreadable), the monitor
//! reads that tunnel's tables whole and delivers [`Event::Resync`] with
//! [`ResyncReason::Journal`], followed by the `Peer*` events (without origin) that take what it
//! knew to the tables. Changes made behind lwtun's back (a raw `bpftool map update`) are not
//! journaled and not seen.
//!
//! # Order
//!
//! Events of one source come in that source's order: rtnetlink events in the kernel's order,
//! the peer events of one folder in the journal's order. Across sources (rtnetlink and each
//! folder) events come in the order the monitor read them, which is not the order they
//! happened: a peer change can come up to an interval after a route change made later.
//! [`Stamped::time`] is when the monitor read the event; for peer events
//! [`ChangeOrigin::time`](crate::peer::ChangeOrigin) is when the writer made it.
//!
//! # Namespaces
//!
//! A socket belongs to the namespace it was made in: [`Monitor::open`] watches the calling
//! thread's namespace and [`Monitor::open_in`] another one, whichever thread reads it later.
//!
//! # Event loops
//!
//! [`Monitor::try_next`] never blocks: it hands out what it has decoded, then reads the
//! journals (when their timer expired) and the socket once more, and answers `Ok(None)` when
//! nothing is queued. The monitor is [`AsFd`]: an event loop waits for its descriptor to be
//! readable and calls `try_next` until `None`. The descriptor is an epoll instance holding the
//! event socket and, once peers are watched, the journals' periodic timer: it is readable when
//! the socket is or the timer expired (a wake-up after which `try_next` may answer `None`).
//!
//! ```no_run
//! use lwtun::monitor::{Event, EventKinds, Monitor};
//! use lwtun::netns::NetNs;
//!
//! let ns = NetNs::open("lab")?;
//! let mut monitor = Monitor::open_in(&ns, EventKinds::ROUTE | EventKinds::LINK)?;
//! loop {
//!     let event = monitor.next()?;
//!     match &*event {
//!         Event::RouteRemoved(r) => println!("#{}: {} deleted", event.seq, r.dst),
//!         Event::Resync { missed, .. } => println!("events lost; {missed} changes follow"),
//!         other => println!("{other}"),
//!     }
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```

mod event;
mod fib_changes;
mod peers;
mod socket;
mod state;
mod wake;

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

pub use event::{Event, EventKinds, ResyncReason, Stamped};
pub(crate) use fib_changes::{FibChanges, FibNotice, ROUTING_GROUPS};
pub(crate) use state::RouteKey;

use crate::error::{Error, Result};
use crate::netlink::addr::decode_address;
use crate::netlink::link::decode_link;
use crate::netlink::neigh::Neighbour;
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;
use crate::netlink::{split_messages, Answer, Netlink};
use crate::netns::NetNs;
use peers::Watched;
use socket::{Recv, Subscription};
use state::{is_cloned, Change, Snapshot, State};
use wake::Wake;

/// The receive buffer a monitor asks for unless told otherwise: room for tens of thousands of
/// route events.
///
/// # Examples
///
/// ```
/// assert_eq!(lwtun::monitor::DEFAULT_RECEIVE_BUFFER, 8 << 20);
/// ```
pub const DEFAULT_RECEIVE_BUFFER: usize = 8 << 20;
/// The largest datagram read at once: rtnetlink event messages fit in a page or two.
const DATAGRAM: usize = 64 << 10;
/// How often a monitor reads the peer journals it watches unless told otherwise.
///
/// # Examples
///
/// ```
/// assert_eq!(lwtun::monitor::DEFAULT_PEER_INTERVAL.as_millis(), 10);
/// ```
pub const DEFAULT_PEER_INTERVAL: Duration = Duration::from_millis(10);

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;

/// How to open a [`Monitor`]: the kinds and the receive buffer.
///
/// # Examples
///
/// ```no_run
/// use lwtun::monitor::{EventKinds, Monitor};
///
/// let monitor = Monitor::builder(EventKinds::ROUTE)
///     .receive_buffer(32 << 20)
///     .open()?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct MonitorBuilder {
    kinds: EventKinds,
    receive_buffer: usize,
    peer_interval: Duration,
}

impl MonitorBuilder {
    /// The receive buffer to ask for, in bytes (default [`DEFAULT_RECEIVE_BUFFER`]). With
    /// `CAP_NET_ADMIN` it is granted as asked (`SO_RCVBUFFORCE`), else capped by
    /// `net.core.rmem_max`. A small one makes overruns (and resyncs) likely.
    ///
    /// # Examples
    ///
    /// ```
    /// let b = lwtun::monitor::Monitor::builder(lwtun::monitor::EventKinds::all()).receive_buffer(1 << 20);
    /// # let _ = b;
    /// ```
    pub fn receive_buffer(mut self, bytes: usize) -> Self {
        self.receive_buffer = bytes;
        self
    }

    /// How often the monitor reads the peer journals of [`Monitor::watch_peers`] (default
    /// [`DEFAULT_PEER_INTERVAL`], 10 ms; at least 1 ms): the longest a peer change waits before
    /// the monitor sees it. The timer runs only once a folder is watched.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lwtun::monitor::{EventKinds, Monitor};
    ///
    /// let b = Monitor::builder(EventKinds::PEER).peer_interval(Duration::from_millis(50));
    /// # let _ = b;
    /// ```
    pub fn peer_interval(mut self, interval: Duration) -> Self {
        self.peer_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Opens the monitor in the calling thread's namespace.
    ///
    /// # Errors
    ///
    /// As [`Monitor::open`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let m = lwtun::monitor::Monitor::builder(lwtun::monitor::EventKinds::LINK).open()?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open(self) -> Result<Monitor> {
        if self.kinds.is_empty() {
            return Err(Error::invalid_input(
                "open event monitor",
                "no event kinds: give at least one of EventKinds::ROUTE, LINK, ADDRESS, NEIGH, \
                 NEXTHOP, PEER",
            ));
        }
        let sock = Subscription::open(self.kinds, self.receive_buffer)?;
        let wake = Wake::new(sock.as_fd())?;
        let mut dumper = Netlink::open()?;
        let mut state = State::new();
        // Subscribed first, dumped second: nothing falls between the two.
        state.converge(Snapshot::take(&mut dumper, self.kinds)?);
        Ok(Monitor {
            sock,
            wake,
            peers: Watched::default(),
            peer_interval: self.peer_interval,
            dumper,
            kinds: self.kinds,
            state,
            pending: VecDeque::new(),
            seq: 0,
            resyncs: 0,
            undecodable: 0,
            resync_due: None,
            buf: vec![0; DATAGRAM],
        })
    }

    /// Opens the monitor in the namespace `netns`; it watches that namespace whichever thread
    /// reads it.
    ///
    /// # Errors
    ///
    /// As [`Monitor::open_in`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let ns = lwtun::NetNs::open("lab")?;
    /// let m = lwtun::monitor::Monitor::builder(lwtun::monitor::EventKinds::ROUTE).open_in(&ns)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open_in(self, netns: &NetNs) -> Result<Monitor> {
        netns.enter(|| self.open())
    }
}

/// A stream of [`Event`]s from one network namespace (see the [module documentation](self)).
///
/// A monitor is `Send`: open it in one thread and read it in another (or in an async task).
/// It is not `Sync`, and need not be: every read takes `&mut self`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use lwtun::monitor::{EventKinds, Monitor};
///
/// let mut monitor = Monitor::open(EventKinds::ROUTE)?;
/// while let Some(event) = monitor.next_timeout(Duration::from_secs(1))? {
///     println!("{} {event}", event.seq);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct Monitor {
    sock: Subscription,
    /// The descriptor an event loop waits on: the socket and the journals' timer.
    wake: Wake,
    /// The peer journals of [`Monitor::watch_peers`].
    peers: Watched,
    peer_interval: Duration,
    /// A second socket, for the dumps of a resync.
    dumper: Netlink,
    kinds: EventKinds,
    state: State,
    /// Events decoded and not handed out yet, with the time they were read.
    pending: VecDeque<(Event, SystemTime)>,
    seq: u64,
    resyncs: u64,
    undecodable: u64,
    /// A resync that has to happen before the next read (its dump failed last time).
    resync_due: Option<ResyncReason>,
    buf: Vec<u8>,
}

impl Monitor {
    /// How to open a monitor with options ([`MonitorBuilder::receive_buffer`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::monitor::{EventKinds, Monitor};
    ///
    /// let m = Monitor::builder(EventKinds::ROUTE).receive_buffer(64 << 10).open()?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn builder(kinds: EventKinds) -> MonitorBuilder {
        MonitorBuilder {
            kinds,
            receive_buffer: DEFAULT_RECEIVE_BUFFER,
            peer_interval: DEFAULT_PEER_INTERVAL,
        }
    }

    /// Subscribes to `kinds` in the calling thread's namespace and dumps what exists now (the
    /// start of the monitor's view; no events for it).
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidInput`] for no kinds;
    /// [`crate::ErrorKind::Unsupported`] for [`EventKinds::NEXTHOP`] on a kernel without
    /// nexthop objects (before Linux 5.3); [`crate::ErrorKind::Io`] when a socket cannot be
    /// made.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::monitor::{EventKinds, Monitor};
    ///
    /// let mut monitor = Monitor::open(EventKinds::all())?;
    /// println!("{}", monitor.next()?);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open(kinds: EventKinds) -> Result<Monitor> {
        Monitor::builder(kinds).open()
    }

    /// Subscribes to `kinds` in the namespace `netns` (the sockets are made inside it and stay
    /// bound to it).
    ///
    /// # Errors
    ///
    /// As [`Monitor::open`]; [`crate::ErrorKind::Permission`] without `CAP_SYS_ADMIN` (to
    /// enter the namespace).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::monitor::{EventKinds, Monitor};
    /// use lwtun::netns::NetNs;
    ///
    /// let ns = NetNs::create_unique("mon")?;
    /// let mut monitor = Monitor::open_in(&ns, EventKinds::LINK)?;
    /// ns.output("ip", ["link", "add", "d0", "type", "dummy"])?;
    /// println!("{}", monitor.next()?); // link add 2: d0 (dummy) down mtu 1500
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn open_in(netns: &NetNs, kinds: EventKinds) -> Result<Monitor> {
        Monitor::builder(kinds).open_in(netns)
    }

    /// The kinds this monitor delivers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::monitor::{EventKinds, Monitor};
    ///
    /// assert_eq!(Monitor::open(EventKinds::ROUTE)?.kinds(), EventKinds::ROUTE);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn kinds(&self) -> EventKinds {
        self.kinds
    }

    /// Watches the peers of the tunnel pinned in `folder` (a folder of `Tunnel::builder().pin`
    /// or `lwtun tunnel load --pin`): from now on the monitor delivers its peer changes
    /// ([`Event::PeerAdded`], [`Event::PeerChanged`], [`Event::PeerRemoved`]) as it reads
    /// them from the tunnel's journal, and adds [`EventKinds::PEER`] to its kinds. The peers
    /// pinned now are the start of its view (no events for them). Several folders can be
    /// watched; a folder watched already is left as it is.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::NotFound`] when `folder` holds no tunnel's pins (nothing is
    /// watched then); [`crate::ErrorKind::Io`] when the timer cannot be made.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::monitor::{Event, EventKinds, Monitor};
    ///
    /// let mut monitor = Monitor::open(EventKinds::ROUTE)?;
    /// monitor.watch_peers("/sys/fs/bpf/lwtun/t0")?;
    /// loop {
    ///     let event = monitor.next()?;
    ///     if let Event::PeerRemoved { prefix, origin: Some(o), .. } = &*event {
    ///         println!("{prefix} removed by {}", o.writer);
    ///     }
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn watch_peers(&mut self, folder: impl AsRef<Path>) -> Result<()> {
        if self.peers.watch(folder.as_ref())? {
            self.wake.arm(self.peer_interval)?;
            self.kinds |= EventKinds::PEER;
        }
        Ok(())
    }

    /// The pin folders whose peers the monitor watches, in the order given.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::PEER)?;
    /// m.watch_peers("/sys/fs/bpf/lwtun/t0")?;
    /// assert_eq!(m.peer_folders().count(), 1);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn peer_folders(&self) -> impl Iterator<Item = &Path> {
        self.peers.folders()
    }

    /// How many times the monitor resynchronised (one [`Event::Resync`] each).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// assert_eq!(m.resyncs(), 0);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// How many kernel messages of a subscribed kind could not be decoded (and were skipped).
    /// Zero unless the kernel sent something lwtun's decoders refuse.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// assert_eq!(m.undecodable(), 0);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// The receive buffer the kernel granted the event socket, in bytes (`SO_RCVBUF`, which
    /// counts the kernel's bookkeeping too).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// println!("{} bytes", m.receive_buffer());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn receive_buffer(&self) -> usize {
        self.sock.receive_buffer()
    }

    /// The routes the monitor knows now: the dump at open with every event handed out or
    /// decoded since applied (with [`EventKinds::ROUTE`]; empty without).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// for r in m.known_routes() {
    ///     println!("{r}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn known_routes(&self) -> impl Iterator<Item = &Route> {
        self.state.routes()
    }

    /// The next event, waiting as long as it takes.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::Io`] when the socket fails; the dump's error when a resync cannot
    /// dump (the monitor stays usable: the next call tries again).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// let e = m.next()?;
    /// println!("{} {e}", e.seq);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Stamped<Event>> {
        loop {
            if let Some(e) = self.try_next()? {
                return Ok(e);
            }
            self.wake.wait(None)?;
        }
    }

    /// The next event, waiting at most `timeout`; `None` when none came in time.
    ///
    /// # Errors
    ///
    /// As [`Monitor::next`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let mut m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// if m.next_timeout(Duration::from_millis(100))?.is_none() {
    ///     println!("quiet");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Stamped<Event>>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_next()? {
                return Ok(Some(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wake.wait(Some(left))? {
                return Ok(None);
            }
        }
    }

    /// The next event if one is decoded or queued in the socket, without blocking: first the
    /// events already decoded, then the watched peer journals if their timer expired, then one
    /// read of the socket (non-blocking); `Ok(None)` when nothing is there (`EAGAIN`). After
    /// the descriptor ([`AsFd`]) polls readable, call it until `None`.
    ///
    /// # Errors
    ///
    /// As [`Monitor::next`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let mut m = lwtun::monitor::Monitor::open(lwtun::monitor::EventKinds::ROUTE)?;
    /// while let Some(e) = m.try_next()? {
    ///     println!("{e}");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn try_next(&mut self) -> Result<Option<Stamped<Event>>> {
        loop {
            if let Some((event, time)) = self.pending.pop_front() {
                self.seq += 1;
                return Ok(Some(Stamped {
                    seq: self.seq,
                    time,
                    event,
                }));
            }
            if self.wake.expired()? {
                let now = SystemTime::now();
                self.peers.poll(now, &mut self.pending, &mut self.resyncs)?;
                if !self.pending.is_empty() {
                    continue;
                }
            }
            let mut buf = std::mem::take(&mut self.buf);
            let got = match self.resync_due {
                Some(reason) => Ok(Recv::Overrun).map(|r| (r, reason)),
                None => self.sock.recv(&mut buf).map(|r| (r, ResyncReason::Overrun)),
            };
            let result = match got {
                Ok((Recv::Empty, _)) => Ok(false),
                Ok((Recv::Data(n), _)) => {
                    self.decode(&buf[..n]);
                    Ok(true)
                }
                Ok((Recv::Overrun, reason)) => {
                    // Until a dump succeeds, every call starts with it again.
                    self.resync_due = Some(reason);
                    self.resync(&mut buf, reason).map(|()| {
                        self.resync_due = None;
                        true
                    })
                }
                Err(e) => Err(e),
            };
            self.buf = buf;
            if !result? {
                return Ok(None);
            }
        }
    }

    /// Turns the messages of one datagram into pending events.
    fn decode(&mut self, datagram: &[u8]) {
        let time = SystemTime::now();
        for answer in split_messages(datagram) {
            let Answer::Payload { ty, body } = answer else {
                continue;
            };
            let new = matches!(
                ty,
                RTM_NEWLINK | RTM_NEWADDR | RTM_NEWROUTE | RTM_NEWNEIGH | RTM_NEWNEXTHOP
            );
            let change = match ty {
                RTM_NEWROUTE | RTM_DELROUTE => {
                    Route::decode(body).map(|r| r.filter(|r| !is_cloned(r)).map(Change::Route))
                }
                RTM_NEWLINK | RTM_DELLINK => decode_link(body).map(|l| Some(Change::Link(l))),
                RTM_NEWADDR | RTM_DELADDR => decode_address(body).map(|a| a.map(Change::Address)),
                RTM_NEWNEIGH | RTM_DELNEIGH => {
                    Neighbour::decode(body).map(|n| n.map(Change::Neighbour))
                }
                RTM_NEWNEXTHOP | RTM_DELNEXTHOP => {
                    Nexthop::decode(body).map(|n| n.map(Change::Nexthop))
                }
                _ => Ok(None),
            };
            match change {
                Ok(Some(change)) => {
                    if let Some(event) = self.state.apply(change, new) {
                        self.pending.push_back((event, time));
                    }
                }
                Ok(None) => {}
                Err(_) => self.undecodable += 1,
            }
        }
    }

    /// Drops what is queued, dumps, and queues `Resync` and the differences.
    fn resync(&mut self, buf: &mut [u8], reason: ResyncReason) -> Result<()> {
        self.sock.drain(buf)?;
        let snapshot = Snapshot::take(&mut self.dumper, self.kinds)?;
        let time = SystemTime::now();
        let events = self.state.converge(snapshot);
        self.resyncs += 1;
        self.pending.push_back((
            Event::Resync {
                reason,
                missed: events.len(),
            },
            time,
        ));
        self.pending.extend(events.into_iter().map(|e| (e, time)));
        Ok(())
    }
}

impl AsFd for Monitor {
    /// The monitor's epoll descriptor, holding the event socket and (once peers are watched)
    /// the journals' timer: readable when [`Monitor::try_next`] has something to read or the
    /// journals are due a look. It is the same descriptor for the monitor's life. Events
    /// already decoded are not signalled by it: call `try_next` until `None` after each
    /// wake-up.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

impl std::os::fd::AsRawFd for Monitor {
    /// As [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.wake.as_fd().as_raw_fd()
    }
}
