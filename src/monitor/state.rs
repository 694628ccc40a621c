//! What a monitor knows: the last description of every object of the subscribed kinds, keyed
//! as the kernel tells objects apart. Kernel messages update it (and so become `*Added` or
//! `*Changed`); after an overrun a dump is compared with it to find what was missed.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{Event, EventKinds};
use crate::error::Result;
use crate::netlink::addr::Address;
use crate::netlink::link::Link;
use crate::netlink::neigh::Neighbour;
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::{Route, RouteFilter, RT_TABLE_LOCAL};
use crate::netlink::Netlink;

/// `RTA_CACHEINFO`: IPv6 route ages and counters, which change without the route changing.
const RTA_CACHEINFO: u16 = 12;

/// How the kernel tells routes apart: table, destination, TOS and metric (IPv4's fib alias;
/// IPv6's fib6 node and metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct RouteKey {
    table: u32,
    dst: IpNetwork,
    tos: u8,
    metric: u32,
}

impl RouteKey {
    pub(crate) fn of(r: &Route) -> RouteKey {
        RouteKey {
            table: r.table,
            dst: r.dst,
            tos: r.tos,
            metric: r.metric.unwrap_or(0),
        }
    }
}

/// One object of a kernel message: new (`RTM_NEW*`) or removed (`RTM_DEL*`).
pub(super) enum Change {
    Route(Route),
    Link(Link),
    Address(Address),
    Neighbour(Neighbour),
    Nexthop(Nexthop),
}

/// One kind's table, with what makes two descriptions of an object "the same" for it.
#[derive(Debug)]
struct Table<K, V> {
    map: HashMap<K, V>,
    key: fn(&V) -> K,
    same: fn(&V, &V) -> bool,
}

impl<K: Eq + Hash + Clone, V: Clone> Table<K, V> {
    fn new(key: fn(&V) -> K, same: fn(&V, &V) -> bool) -> Self {
        Table {
            map: HashMap::new(),
            key,
            same,
        }
    }

    /// Records `v`; `None` when it says nothing new, else whether the key was known.
    fn upsert(&mut self, v: V) -> Option<bool> {
        let k = (self.key)(&v);
        match self.map.insert(k, v.clone()) {
            Some(old) if (self.same)(&old, &v) => None,
            Some(_) => Some(true),
            None => Some(false),
        }
    }

    fn remove(&mut self, v: &V) {
        self.map.remove(&(self.key)(v));
    }

    /// Replaces the table with `now` and returns (added, changed, removed).
    fn converge(&mut self, now: Vec<V>) -> (Vec<V>, Vec<V>, Vec<V>) {
        let mut fresh: HashMap<K, V> = HashMap::with_capacity(now.len());
        for v in now {
            fresh.insert((self.key)(&v), v);
        }
        let mut added = Vec::new();
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        for (k, old) in &self.map {
            match fresh.get(k) {
                None => removed.push(old.clone()),
                Some(v) if !(self.same)(old, v) => changed.push(v.clone()),
                Some(_) => {}
            }
        }
        for (k, v) in &fresh {
            if !self.map.contains_key(k) {
                added.push(v.clone());
            }
        }
        self.map = fresh;
        (added, changed, removed)
    }
}

fn same_route(a: &Route, b: &Route) -> bool {
    let strip = |r: &Route| {
        let mut r = r.clone();
        r.extra.retain(|x| x.kind != RTA_CACHEINFO);
        r
    };
    strip(a) == strip(b)
}

fn same_link(a: &Link, b: &Link) -> bool {
    (
        &a.name,
        &a.kind,
        a.mtu,
        a.up,
        a.flags,
        a.mac,
        a.master,
        a.link,
        a.xdp_prog_id,
    ) == (
        &b.name,
        &b.kind,
        b.mtu,
        b.up,
        b.flags,
        b.mac,
        b.master,
        b.link,
        b.xdp_prog_id,
    )
}

fn same_address(a: &Address, b: &Address) -> bool {
    (a.peer, a.broadcast, a.scope, a.flags, &a.label)
        == (b.peer, b.broadcast, b.scope, b.flags, &b.label)
}

fn same_neighbour(a: &Neighbour, b: &Neighbour) -> bool {
    (&a.lladdr, a.state, a.flags) == (&b.lladdr, b.state, b.flags)
}

fn same_nexthop(a: &Nexthop, b: &Nexthop) -> bool {
    a == b
}

/// The tables of every kind (only the subscribed ones are filled).
#[derive(Debug)]
pub(super) struct State {
    routes: Table<RouteKey, Route>,
    links: Table<u32, Link>,
    addresses: Table<(u32, IpNetwork), Address>,
    neighbours: Table<(u32, IpAddr), Neighbour>,
    nexthops: Table<u32, Nexthop>,
}

impl State {
    pub(super) fn new() -> State {
        State {
            routes: Table::new(RouteKey::of, same_route),
            links: Table::new(|l| l.index, same_link),
            addresses: Table::new(|a| (a.index, a.network), same_address),
            neighbours: Table::new(|n| (n.index, n.ip), same_neighbour),
            nexthops: Table::new(|n| n.id, same_nexthop),
        }
    }

    /// Applies one kernel message; the event it makes, or `None` when it changes nothing the
    /// monitor models (a repeated description).
    pub(super) fn apply(&mut self, change: Change, new: bool) -> Option<Event> {
        fn pick<T>(
            known: Option<bool>,
            added: fn(T) -> Event,
            changed: fn(T) -> Event,
            v: T,
        ) -> Option<Event> {
            known.map(|k| if k { changed(v) } else { added(v) })
        }
        Some(match (change, new) {
            (Change::Route(r), true) => {
                return pick(
                    self.routes.upsert(r.clone()),
                    Event::RouteAdded,
                    Event::RouteChanged,
                    r,
                )
            }
            (Change::Route(r), false) => {
                self.routes.remove(&r);
                Event::RouteRemoved(r)
            }
            (Change::Link(l), true) => {
                return pick(
                    self.links.upsert(l.clone()),
                    Event::LinkAdded,
                    Event::LinkChanged,
                    l,
                )
            }
            (Change::Link(l), false) => {
                self.links.remove(&l);
                Event::LinkRemoved(l)
            }
            (Change::Address(a), true) => {
                return pick(
                    self.addresses.upsert(a.clone()),
                    Event::AddressAdded,
                    Event::AddressChanged,
                    a,
                )
            }
            (Change::Address(a), false) => {
                self.addresses.remove(&a);
                Event::AddressRemoved(a)
            }
            (Change::Neighbour(n), true) => {
                return pick(
                    self.neighbours.upsert(n.clone()),
                    Event::NeighbourAdded,
                    Event::NeighbourChanged,
                    n,
                )
            }
            (Change::Neighbour(n), false) => {
                self.neighbours.remove(&n);
                Event::NeighbourRemoved(n)
            }
            (Change::Nexthop(n), true) => {
                return pick(
                    self.nexthops.upsert(n.clone()),
                    Event::NexthopAdded,
                    Event::NexthopChanged,
                    n,
                )
            }
            (Change::Nexthop(n), false) => {
                self.nexthops.remove(&n);
                Event::NexthopRemoved(n)
            }
        })
    }

    /// Replaces the tables of `kinds` with `dump` and returns the events that take a consumer
    /// from the old state to it: per kind, removals, then changes, then additions.
    pub(super) fn converge(&mut self, dump: Snapshot) -> Vec<Event> {
        let mut out = Vec::new();
        fn push<V>(
            out: &mut Vec<Event>,
            (a, c, r): (Vec<V>, Vec<V>, Vec<V>),
            add: fn(V) -> Event,
            change: fn(V) -> Event,
            remove: fn(V) -> Event,
        ) {
            out.extend(r.into_iter().map(remove));
            out.extend(c.into_iter().map(change));
            out.extend(a.into_iter().map(add));
        }
        // Links first (routes and addresses refer to them), routes last.
        if let Some(v) = dump.links {
            push(
                &mut out,
                self.links.converge(v),
                Event::LinkAdded,
                Event::LinkChanged,
                Event::LinkRemoved,
            );
        }
        if let Some(v) = dump.addresses {
            push(
                &mut out,
                self.addresses.converge(v),
                Event::AddressAdded,
                Event::AddressChanged,
                Event::AddressRemoved,
            );
        }
        if let Some(v) = dump.neighbours {
            push(
                &mut out,
                self.neighbours.converge(v),
                Event::NeighbourAdded,
                Event::NeighbourChanged,
                Event::NeighbourRemoved,
            );
        }
        if let Some(v) = dump.nexthops {
            push(
                &mut out,
                self.nexthops.converge(v),
                Event::NexthopAdded,
                Event::NexthopChanged,
                Event::NexthopRemoved,
            );
        }
        if let Some(v) = dump.routes {
            push(
                &mut out,
                self.routes.converge(v),
                Event::RouteAdded,
                Event::RouteChanged,
                Event::RouteRemoved,
            );
        }
        out
    }

    /// The routes the monitor knows.
    pub(super) fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.map.values()
    }
}

/// A dump of the subscribed kinds (`None` for the others).
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    routes: Option<Vec<Route>>,
    links: Option<Vec<Link>>,
    addresses: Option<Vec<Address>>,
    neighbours: Option<Vec<Neighbour>>,
    nexthops: Option<Vec<Nexthop>>,
}

impl Snapshot {
    /// Dumps the objects of `kinds` over `nl`.
    pub(super) fn take(nl: &mut Netlink, kinds: EventKinds) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        if kinds.contains(EventKinds::ROUTE) {
            // Every table: the filter's "all" leaves the local table out, so ask for it too.
            let mut routes = nl.routes(&RouteFilter::all())?;
            routes.extend(nl.routes(&RouteFilter {
                table: Some(RT_TABLE_LOCAL),
                ..RouteFilter::all()
            })?);
            routes.retain(|r| !is_cloned(r));
            s.routes = Some(routes);
        }
        if kinds.contains(EventKinds::LINK) {
            s.links = Some(nl.links()?);
        }
        if kinds.contains(EventKinds::ADDRESS) {
            s.addresses = Some(nl.addresses(None)?);
        }
        if kinds.contains(EventKinds::NEIGH) {
            s.neighbours = Some(nl.neighbours()?);
        }
        if kinds.contains(EventKinds::NEXTHOP) {
            s.nexthops = Some(nl.nexthops()?);
        }
        Ok(s)
    }
}

/// `RTM_F_CLONED`: a cached route (an IPv6 exception or an IPv4 cache entry), not a route of
/// the table; dumps leave them out, and so do events.
pub(super) fn is_cloned(r: &Route) -> bool {
    r.flags & libc::RTM_F_CLONED != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, oif: u32) -> Route {
        let mut r = Route::new(dst.parse().unwrap());
        r.oif = Some(oif);
        r
    }

    #[test]
    fn new_then_replaced_then_repeated_then_removed() {
        let mut s = State::new();
        let e = s.apply(Change::Route(route("10.0.0.0/24", 2)), true);
        assert!(matches!(e, Some(Event::RouteAdded(_))));
        let e = s.apply(Change::Route(route("10.0.0.0/24", 3)), true);
        assert!(matches!(e, Some(Event::RouteChanged(r)) if r.oif == Some(3)));
        assert!(s
            .apply(Change::Route(route("10.0.0.0/24", 3)), true)
            .is_none());
        let e = s.apply(Change::Route(route("10.0.0.0/24", 3)), false);
        assert!(matches!(e, Some(Event::RouteRemoved(_))));
        assert_eq!(s.routes().count(), 0);
    }

    #[test]
    fn a_dump_converges_the_state_with_removals_changes_and_additions() {
        let mut s = State::new();
        for (dst, oif) in [("10.0.1.0/24", 2), ("10.0.2.0/24", 2), ("10.0.3.0/24", 2)] {
            s.apply(Change::Route(route(dst, oif)), true);
        }
        let dump = Snapshot {
            routes: Some(vec![
                route("10.0.2.0/24", 2),
                route("10.0.3.0/24", 5),
                route("10.0.4.0/24", 2),
            ]),
            ..Default::default()
        };
        let events: Vec<String> = s.converge(dump).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            events,
            [
                "route del 10.0.1.0/24 dev#2",
                "route change 10.0.3.0/24 dev#5",
                "route add 10.0.4.0/24 dev#2"
            ]
        );
        let mut now: Vec<String> = s.routes().map(|r| r.to_string()).collect();
        now.sort();
        assert_eq!(
            now,
            [
                "10.0.2.0/24 dev#2",
                "10.0.3.0/24 dev#5",
                "10.0.4.0/24 dev#2"
            ]
        );
    }
}
