//! What a [`super::Monitor`] delivers: the [`Event`]s, the [`EventKinds`] that choose them and
//! the [`Stamped`] wrapper with the monitor's sequence number and the time of arrival.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use bitflags::bitflags;
use ipnetwork::IpNetwork;

use crate::error::{Error, Result};
use crate::netlink::addr::Address;
use crate::netlink::link::Link;
use crate::netlink::neigh::Neighbour;
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::Route;
use crate::peer::{ChangeOrigin, EncapPeer};

bitflags! {
    /// Which changes a [`super::Monitor`] subscribes to; each kind but `PEER` is one or two
    /// rtnetlink multicast groups.
    ///
    /// | kind | groups | events |
    /// |------|--------|--------|
    /// | `ROUTE` | `RTNLGRP_IPV4_ROUTE`, `RTNLGRP_IPV6_ROUTE` | `Route*` |
    /// | `LINK` | `RTNLGRP_LINK` | `Link*` |
    /// | `ADDRESS` | `RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR` | `Address*` |
    /// | `NEIGH` | `RTNLGRP_NEIGH` | `Neighbour*` |
    /// | `NEXTHOP` | `RTNLGRP_NEXTHOP` (Linux 5.3+) | `Nexthop*` |
    /// | `PEER` | the peer journals of [`Monitor::watch_peers`](super::Monitor::watch_peers) | `Peer*` |
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::EventKinds;
    ///
    /// let kinds = EventKinds::ROUTE | EventKinds::LINK;
    /// assert!(kinds.contains(EventKinds::ROUTE));
    /// assert_eq!(EventKinds::from_names(["route", "link"])?, kinds);
    /// assert!(EventKinds::from_names(["peers?"]).is_err());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct EventKinds: u32 {
        /// IPv4 and IPv6 routes of every table, with their LWT encaps decoded.
        const ROUTE = 1;
        /// Network interfaces.
        const LINK = 1 << 1;
        /// Interface addresses, IPv4 and IPv6.
        const ADDRESS = 1 << 2;
        /// Neighbours (ARP and NDP entries).
        const NEIGH = 1 << 3;
        /// Nexthop objects (Linux 5.3+).
        const NEXTHOP = 1 << 4;
        /// The peers of pinned tunnels, from their peer journals: only for the folders given
        /// to [`Monitor::watch_peers`](super::Monitor::watch_peers).
        const PEER = 1 << 5;
    }
}

/// The names [`EventKinds::from_names`] reads, with their kinds.
const NAMES: [(&str, EventKinds); 6] = [
    ("route", EventKinds::ROUTE),
    ("link", EventKinds::LINK),
    ("address", EventKinds::ADDRESS),
    ("neigh", EventKinds::NEIGH),
    ("nexthop", EventKinds::NEXTHOP),
    ("peer", EventKinds::PEER),
];

impl EventKinds {
    /// The kinds named by words as `ip monitor` spells them: `route`, `link`, `address`
    /// (also `addr`), `neigh` (also `neighbour`), `nexthop`, lwtun's `peer` (also `peers`),
    /// and `all`. No words: all kinds.
    ///
    /// # Errors
    ///
    /// [`crate::ErrorKind::InvalidInput`] for another word, listing the known ones.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::EventKinds;
    ///
    /// assert_eq!(EventKinds::from_names(["addr"])?, EventKinds::ADDRESS);
    /// assert_eq!(EventKinds::from_names(Vec::<String>::new())?, EventKinds::all());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn from_names<I, S>(names: I) -> Result<EventKinds>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut kinds = EventKinds::empty();
        let mut any = false;
        for name in names {
            any = true;
            let name = name.as_ref();
            let kind = match name {
                "all" => EventKinds::all(),
                "addr" => EventKinds::ADDRESS,
                "neighbour" | "neighbor" => EventKinds::NEIGH,
                "peers" => EventKinds::PEER,
                _ => NAMES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, k)| *k)
                    .ok_or_else(|| {
                        Error::invalid_input(
                            "choose event kinds",
                            format!(
                                "unknown event kind '{name}': use route, link, address, neigh, \
                                 nexthop, peer or all"
                            ),
                        )
                    })?,
            };
            kinds |= kind;
        }
        Ok(if any { kinds } else { EventKinds::all() })
    }

    /// The name of a single kind (`route`, `link`, `address`, `neigh`, `nexthop`, `peer`);
    /// `None` for several kinds or none.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::EventKinds;
    ///
    /// assert_eq!(EventKinds::NEIGH.name(), Some("neigh"));
    /// assert_eq!(EventKinds::all().name(), None);
    /// ```
    pub fn name(self) -> Option<&'static str> {
        NAMES.iter().find(|(_, k)| *k == self).map(|(n, _)| *n)
    }
}

/// Why a [`super::Monitor`] resynchronised ([`Event::Resync`]).
///
/// # Examples
///
/// ```
/// use lwtun::monitor::ResyncReason;
/// use lwtun::peer::ResyncReason as JournalReason;
///
/// assert_eq!(ResyncReason::Overrun.to_string(), "overrun");
/// let lost = ResyncReason::Journal(JournalReason::Overflow { missed: 12 });
/// assert_eq!(lost.to_string(), "peer journal overflow, 12 records lost");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResyncReason {
    /// The kernel dropped events because the socket's receive buffer was full (`recvmsg`
    /// answered `ENOBUFS`): the consumer read too slowly for the rate of changes.
    Overrun,
    /// A watched tunnel's peer journal could not say every change (it overflowed, was pinned
    /// anew, or the tables were written behind lwtun's back): the monitor read that tunnel's
    /// peer tables whole, and the `Peer*` events that follow (all of that folder) are the
    /// difference with what it knew. See [`crate::peer::ResyncReason`].
    Journal(crate::peer::ResyncReason),
}

impl fmt::Display for ResyncReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::peer::ResyncReason as Journal;
        match self {
            ResyncReason::Overrun => f.write_str("overrun"),
            ResyncReason::Journal(Journal::Overflow { missed }) => {
                write!(f, "peer journal overflow, {missed} records lost")
            }
            ResyncReason::Journal(Journal::Replaced) => f.write_str("peer journal replaced"),
            ResyncReason::Journal(Journal::Untracked) => {
                f.write_str("peer tables written behind lwtun's back")
            }
        }
    }
}

/// One change in the namespace a [`super::Monitor`] watches.
///
/// `*Added`, `*Changed` and `*Removed` carry the object as the kernel described it (a removed
/// object as it was when removed). `*Changed` is a new description of an object the monitor
/// knew under the same key (a route's table, destination, TOS and metric; a link's index; an
/// address's interface and prefix; a neighbour's interface and IP; a nexthop's id), such as
/// `ip route replace` or a link going up. [`Event::Resync`] says the kernel dropped events;
/// the events that follow it, up to the next kernel event, are what the monitor found changed
/// in a fresh dump (see the [module documentation](super)).
///
/// Its [`Display`](fmt::Display) is one line in the words of `ip monitor`, with the kind first:
/// `route add 10.1.0.0/16 dev#2 encap bpf xmit lwtun:count_xmit:42`.
///
/// # Examples
///
/// ```
/// use lwtun::monitor::{Event, EventKinds};
/// use lwtun::netlink::route::Route;
///
/// let mut r = Route::new("10.1.0.0/16".parse().unwrap());
/// r.oif = Some(2);
/// let e = Event::RouteAdded(r);
/// assert_eq!(e.kind(), Some(EventKinds::ROUTE));
/// assert_eq!(e.to_string(), "route add 10.1.0.0/16 dev#2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A route was added (`RTM_NEWROUTE` for a key the monitor did not know).
    RouteAdded(Route),
    /// A known route was replaced (`RTM_NEWROUTE` for a key the monitor knew).
    RouteChanged(Route),
    /// A route was deleted (`RTM_DELROUTE`).
    RouteRemoved(Route),
    /// A nexthop object was added.
    NexthopAdded(Nexthop),
    /// A known nexthop object was replaced.
    NexthopChanged(Nexthop),
    /// A nexthop object was deleted.
    NexthopRemoved(Nexthop),
    /// A network interface appeared (created or moved into the namespace).
    LinkAdded(Link),
    /// A known interface changed (up/down, carrier, MTU, name, XDP program...).
    LinkChanged(Link),
    /// An interface disappeared (deleted or moved out of the namespace).
    LinkRemoved(Link),
    /// An address was added.
    AddressAdded(Address),
    /// A known address changed (flags such as the end of duplicate address detection).
    AddressChanged(Address),
    /// An address was removed.
    AddressRemoved(Address),
    /// A neighbour entry appeared.
    NeighbourAdded(Neighbour),
    /// A known neighbour entry changed (state, link-layer address).
    NeighbourChanged(Neighbour),
    /// A neighbour entry was removed.
    NeighbourRemoved(Neighbour),
    /// A peer was added to a watched tunnel's tables ([`EventKinds::PEER`]).
    PeerAdded {
        /// The tunnel's pin folder, as given to [`Monitor::watch_peers`](super::Monitor::watch_peers).
        folder: PathBuf,
        /// The destination prefix the peer serves.
        prefix: IpNetwork,
        /// The peer.
        peer: EncapPeer,
        /// Who wrote it and when; `None` for a change a resync found.
        origin: Option<ChangeOrigin>,
    },
    /// A peer of a watched tunnel was replaced by a different one (`lwtun peer replace`).
    PeerChanged {
        /// The tunnel's pin folder.
        folder: PathBuf,
        /// The destination prefix.
        prefix: IpNetwork,
        /// The peer before.
        old: EncapPeer,
        /// The peer now.
        new: EncapPeer,
        /// Who wrote it and when; `None` for a change a resync found.
        origin: Option<ChangeOrigin>,
    },
    /// A peer was removed from a watched tunnel's tables.
    PeerRemoved {
        /// The tunnel's pin folder.
        folder: PathBuf,
        /// The destination prefix.
        prefix: IpNetwork,
        /// The peer as it was.
        peer: EncapPeer,
        /// Who removed it and when; `None` for a change a resync found.
        origin: Option<ChangeOrigin>,
    },
    /// A route a [`RouteKeeper`](crate::keeper::RouteKeeper) keeps was deleted by someone
    /// else and the keeper added it again. Reported by the keeper, not by a [`super::Monitor`].
    RouteRestored {
        /// The route as it was when deleted.
        route: Route,
        /// From the deletion's event to the route being back.
        after: std::time::Duration,
    },
    /// A route a [`RouteKeeper`](crate::keeper::RouteKeeper) keeps was deleted by someone
    /// else and could not be added again (its device is gone, say). Reported by the keeper.
    RouteNotRestored {
        /// The route as it was when deleted.
        route: Route,
        /// The kernel's answer to the keeper's add.
        error: String,
    },
    /// The kernel dropped events, or a peer journal could not say every change
    /// ([`ResyncReason::Journal`]); the monitor dumped the current state (the rtnetlink kinds,
    /// or that one tunnel's peers). The next `missed` events are the differences it found
    /// between what it knew and the dump.
    Resync {
        /// Why the monitor resynchronised.
        reason: ResyncReason,
        /// How many `*Added`/`*Changed`/`*Removed` events follow that the dump showed.
        missed: usize,
    },
}

impl Event {
    /// The kind of the object the event is about; `None` for [`Event::Resync`].
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::{Event, ResyncReason};
    ///
    /// let e = Event::Resync { reason: ResyncReason::Overrun, missed: 0 };
    /// assert_eq!(e.kind(), None);
    /// ```
    pub fn kind(&self) -> Option<EventKinds> {
        use Event::*;
        Some(match self {
            RouteAdded(_) | RouteChanged(_) | RouteRemoved(_) => EventKinds::ROUTE,
            RouteRestored { .. } | RouteNotRestored { .. } => EventKinds::ROUTE,
            NexthopAdded(_) | NexthopChanged(_) | NexthopRemoved(_) => EventKinds::NEXTHOP,
            LinkAdded(_) | LinkChanged(_) | LinkRemoved(_) => EventKinds::LINK,
            AddressAdded(_) | AddressChanged(_) | AddressRemoved(_) => EventKinds::ADDRESS,
            NeighbourAdded(_) | NeighbourChanged(_) | NeighbourRemoved(_) => EventKinds::NEIGH,
            PeerAdded { .. } | PeerChanged { .. } | PeerRemoved { .. } => EventKinds::PEER,
            Resync { .. } => return None,
        })
    }

    /// What happened, in one word: `add`, `change`, `del` or `resync`.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::Event;
    /// use lwtun::netlink::route::Route;
    ///
    /// assert_eq!(Event::RouteRemoved(Route::new("10.0.0.0/8".parse().unwrap())).action(), "del");
    /// ```
    pub fn action(&self) -> &'static str {
        use Event::*;
        match self {
            RouteAdded(_)
            | NexthopAdded(_)
            | LinkAdded(_)
            | AddressAdded(_)
            | NeighbourAdded(_)
            | PeerAdded { .. } => "add",
            RouteChanged(_)
            | NexthopChanged(_)
            | LinkChanged(_)
            | AddressChanged(_)
            | NeighbourChanged(_)
            | PeerChanged { .. } => "change",
            RouteRemoved(_)
            | NexthopRemoved(_)
            | LinkRemoved(_)
            | AddressRemoved(_)
            | NeighbourRemoved(_)
            | PeerRemoved { .. } => "del",
            RouteRestored { .. } => "restore",
            RouteNotRestored { .. } => "lost",
            Resync { .. } => "resync",
        }
    }

    /// The route of a `Route*` event.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::monitor::Event;
    /// use lwtun::netlink::route::Route;
    ///
    /// let e = Event::RouteAdded(Route::new("10.0.0.0/8".parse().unwrap()));
    /// assert_eq!(e.route().unwrap().dst.to_string(), "10.0.0.0/8");
    /// ```
    pub fn route(&self) -> Option<&Route> {
        match self {
            Event::RouteAdded(r) | Event::RouteChanged(r) | Event::RouteRemoved(r) => Some(r),
            Event::RouteRestored { route, .. } | Event::RouteNotRestored { route, .. } => {
                Some(route)
            }
            _ => None,
        }
    }
}

/// A peer in one line: `10.20.0.0/16 via 10.77.0.2 gre key 7 (pid 1234 lwtun)`, the peer it
/// replaced after `was`.
fn write_peer(
    f: &mut fmt::Formatter<'_>,
    prefix: &IpNetwork,
    peer: &EncapPeer,
    old: Option<&EncapPeer>,
    origin: &Option<ChangeOrigin>,
) -> fmt::Result {
    write!(f, "{prefix} via {} {}", peer.remote, peer.encap)?;
    if let Some(old) = old {
        write!(f, " was via {} {}", old.remote, old.encap)?;
    }
    match origin {
        Some(o) => match &o.writer.command {
            Some(c) => write!(f, " (pid {} {c})", o.writer.pid),
            None => write!(f, " (pid {})", o.writer.pid),
        },
        None => Ok(()),
    }
}

/// A link in one line: `3: veth0 (veth) up mtu 1500`.
fn write_link(f: &mut fmt::Formatter<'_>, l: &Link) -> fmt::Result {
    write!(f, "{}: {}", l.index, l.name)?;
    if let Some(kind) = &l.kind {
        write!(f, " ({kind})")?;
    }
    let state = if l.up { "up" } else { "down" };
    let carrier = if l.flags & libc::IFF_LOWER_UP as u32 != 0 {
        " lower_up"
    } else {
        ""
    };
    write!(f, " {state}{carrier} mtu {}", l.mtu)?;
    if let Some(m) = l.master {
        write!(f, " master#{m}")?;
    }
    if let Some(id) = l.xdp_prog_id {
        write!(f, " xdp id {id}")?;
    }
    Ok(())
}

fn write_address(f: &mut fmt::Formatter<'_>, a: &Address) -> fmt::Result {
    write!(f, "{} dev#{}", a.network, a.index)?;
    if let Some(p) = a.peer {
        write!(f, " peer {p}")?;
    }
    if let Some(label) = &a.label {
        write!(f, " label {label}")?;
    }
    Ok(())
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Event::*;
        if let Resync { reason, missed } = self {
            return write!(f, "resync ({reason}): {missed} missed change(s) follow");
        }
        let kind = self.kind().and_then(EventKinds::name).unwrap_or("?");
        write!(f, "{kind} {} ", self.action())?;
        match self {
            RouteAdded(r) | RouteChanged(r) | RouteRemoved(r) => write!(f, "{r}"),
            RouteRestored { route, after } => {
                write!(f, "{route} after {:.1} ms", after.as_secs_f64() * 1e3)
            }
            RouteNotRestored { route, error } => write!(f, "{route}: {error}"),
            NexthopAdded(n) | NexthopChanged(n) | NexthopRemoved(n) => write!(f, "{n}"),
            LinkAdded(l) | LinkChanged(l) | LinkRemoved(l) => write_link(f, l),
            AddressAdded(a) | AddressChanged(a) | AddressRemoved(a) => write_address(f, a),
            NeighbourAdded(n) | NeighbourChanged(n) | NeighbourRemoved(n) => write!(f, "{n}"),
            PeerAdded {
                prefix,
                peer,
                origin,
                ..
            }
            | PeerRemoved {
                prefix,
                peer,
                origin,
                ..
            } => write_peer(f, prefix, peer, None, origin),
            PeerChanged {
                prefix,
                old,
                new,
                origin,
                ..
            } => write_peer(f, prefix, new, Some(old), origin),
            Resync { .. } => Ok(()),
        }
    }
}

/// An event with the monitor's sequence number and the time the monitor read it.
///
/// `seq` starts at 1 and grows by one for every event a [`super::Monitor`] delivers
/// (resynchronisation events included), so a consumer can tell two events apart and order
/// them. `time` is when the monitor read the kernel's message (for events a resync found: when
/// it dumped). It dereferences to the event.
///
/// # Examples
///
/// ```no_run
/// use lwtun::monitor::{Event, EventKinds, Monitor};
///
/// let mut monitor = Monitor::open(EventKinds::ROUTE)?;
/// let stamped = monitor.next()?;
/// if let Event::RouteRemoved(r) = &*stamped {
///     println!("#{} at {:?}: {} deleted", stamped.seq, stamped.time, r.dst);
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped<T> {
    /// The monitor's sequence number of this event (1, 2, 3...).
    pub seq: u64,
    /// When the monitor read it.
    pub time: SystemTime,
    /// The event.
    pub event: T,
}

impl<T> std::ops::Deref for Stamped<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.event
    }
}

impl<T: fmt::Display> fmt::Display for Stamped<T> {
    /// The event's line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.event.fmt(f)
    }
}
