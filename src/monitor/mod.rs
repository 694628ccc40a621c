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
//! # Namespaces
//!
//! A socket belongs to the namespace it was made in: [`Monitor::open`] watches the calling
//! thread's namespace and [`Monitor::open_in`] another one, whichever thread reads it later.
//!
//! # Event loops
//!
//! [`Monitor::try_next`] never blocks: it hands out what it has decoded, then reads the socket
//! once more, and answers `Ok(None)` when nothing is queued. The monitor is [`AsFd`]: an event
//! loop waits for its descriptor to be readable and calls `try_next` until `None`.
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
mod socket;
mod state;

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant, SystemTime};

pub use event::{Event, EventKinds, ResyncReason, Stamped};
pub(crate) use state::RouteKey;

use crate::error::{Error, Result};
use crate::netlink::addr::decode_address;
use crate::netlink::link::decode_link;
use crate::netlink::neigh::Neighbour;
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;
use crate::netlink::{split_messages, Answer, Netlink};
use crate::netns::NetNs;
use socket::{Recv, Subscription};
use state::{is_cloned, Change, Snapshot, State};

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
                 NEXTHOP",
            ));
        }
        let sock = Subscription::open(self.kinds, self.receive_buffer)?;
        let mut dumper = Netlink::open()?;
        let mut state = State::new();
        // Subscribed first, dumped second: nothing falls between the two.
        state.converge(Snapshot::take(&mut dumper, self.kinds)?);
        Ok(Monitor {
            sock,
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
            self.sock.wait(None)?;
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
            if left.is_zero() || !self.sock.wait(Some(left))? {
                return Ok(None);
            }
        }
    }

    /// The next event if one is decoded or queued in the socket, without blocking: first the
    /// events already decoded, then one read of the socket (non-blocking); `Ok(None)` when the
    /// socket has nothing (`EAGAIN`). After the descriptor ([`AsFd`]) polls readable, call it
    /// until `None`.
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
    /// The event socket: readable when [`Monitor::try_next`] has something to read. Events
    /// already decoded are not signalled by it: call `try_next` until `None` after each
    /// wake-up.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl std::os::fd::AsRawFd for Monitor {
    /// As [`AsFd::as_fd`].
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_fd().as_raw_fd()
    }
}
