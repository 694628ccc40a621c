//! The fleet as etcd holds it, and the peer table one host should have: [`Fleet`], [`diff`].
//!
//! A host's table maps every prefix published by the *other* hosts to the publisher's
//! endpoint, encapsulated as the publisher asks, from this host's own endpoint.
//!
//! # Rules for hostile or conflicting values
//!
//! - A value that is not a valid [`HostRecord`] (bad JSON, bad prefix, bad endpoint, ...) is
//!   refused whole and the host is treated as absent; the refusal and its reason are kept in
//!   [`Fleet::rejected`] (the agent reports them in its status). Its previous good value is *not*
//!   kept: a host that publishes garbage loses its peers, it does not freeze them.
//! - A host with no endpoint of a family this host has an endpoint of, or with one of this
//!   host's own endpoints, is refused too (this host cannot send to it).
//! - Endpoints by family: a host may publish an IPv4 and an IPv6 endpoint, and this host may
//!   have both too ([`Fleet::with_endpoint`]). A prefix's peer uses the outer family of the
//!   prefix when both hosts have it (IPv4 prefixes in IPv4, IPv6 prefixes in IPv6), else the
//!   family both have (an IPv6 prefix rides IPv4 to a host reachable only by IPv4, and the
//!   reverse); the outer source is this host's endpoint of that family.
//! - Two hosts claiming the same prefix (exactly the same network and length): the claim whose
//!   key was created first in etcd (lowest create revision; the host name breaks a tie, which
//!   etcd never makes) wins; the later claimant gets no peer for that prefix until the earlier
//!   one withdraws it. Every agent applies the same rule to the same data, so the fleet agrees.
//! - A prefix this host publishes itself is never a peer in its own table, whoever else claims
//!   it: its own traffic for it is local.
//! - Overlapping but different prefixes (`10.1.0.0/16` and `10.1.2.0/24`) are no conflict: the
//!   table is longest-prefix-match.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use lwtun::peer::EncapPeer;

use crate::layout::Layout;
use crate::record::HostRecord;

/// One accepted host of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// What it published.
    pub record: HostRecord,
    /// The etcd create revision of its key (older claims win conflicts).
    pub create_revision: i64,
}

/// The peer table a host should have: prefix → peer.
pub type PeerMap = BTreeMap<IpNetwork, EncapPeer>;

/// The fleet seen from one host: every accepted member, every refused value.
///
/// # Examples
///
/// ```
/// use lwtun_agent::fleet::Fleet;
/// use lwtun_agent::layout::Layout;
///
/// let layout = Layout::new("/lwtun/fleet", "f")?;
/// let mut fleet = Fleet::new(layout, "a", "10.99.0.1".parse().unwrap());
/// fleet.put(b"/lwtun/fleet/f/hosts/b",
///     br#"{"endpoint":"10.99.0.2","encap":"ipip","prefixes":["10.200.2.0/24"]}"#, 5);
/// let want = fleet.desired();
/// assert_eq!(want.len(), 1);
/// assert_eq!(want[&"10.200.2.0/24".parse().unwrap()].remote, "10.99.0.2".parse::<std::net::IpAddr>().unwrap());
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fleet {
    layout: Layout,
    me: String,
    /// This host's endpoints, at most one per family.
    endpoints: Vec<IpAddr>,
    members: BTreeMap<String, Member>,
    rejected: BTreeMap<String, String>,
    /// Who claims each prefix, oldest claim first (the other hosts' accepted members only).
    claims: BTreeMap<IpNetwork, BTreeSet<(i64, String)>>,
    /// The prefixes this host publishes itself (never peers).
    own: BTreeSet<IpNetwork>,
    /// Prefixes whose peer may have changed since [`Fleet::take_changed`]; `None`: all of them
    /// (after [`Fleet::clear`]).
    changed: Option<BTreeSet<IpNetwork>>,
}

/// What a [`Fleet::put`] or [`Fleet::delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The key is not a host of this fleet (ignored).
    Ignored,
    /// The key is this host's own.
    Own,
    /// Another host's member entry changed (added, replaced, refused or removed).
    Other,
}

impl Fleet {
    /// The fleet of `layout` seen from host `me`, whose tunnel endpoint is `endpoint`.
    pub fn new(layout: Layout, me: &str, endpoint: IpAddr) -> Self {
        Fleet {
            layout,
            me: me.to_string(),
            endpoints: vec![endpoint],
            members: BTreeMap::new(),
            rejected: BTreeMap::new(),
            claims: BTreeMap::new(),
            own: BTreeSet::new(),
            changed: None,
        }
    }

    /// The fleet seen from a host that has `other` as a second endpoint, of the other address
    /// family than the first: hosts reachable only by that family are accepted, and prefixes of
    /// that family go in it where the publisher has it too (see the module docs). An address of
    /// a family this host has already replaces that endpoint.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::fleet::Fleet;
    /// use lwtun_agent::layout::Layout;
    ///
    /// let mut fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "a", "10.99.0.1".parse().unwrap())
    ///     .with_endpoint("fd99::1".parse().unwrap());
    /// fleet.put(b"/lwtun/fleet/f/hosts/b",
    ///     br#"{"endpoint":"fd99::2","encap":"ipip","prefixes":["10.200.2.0/24"]}"#, 5);
    /// let peer = fleet.desired()[&"10.200.2.0/24".parse().unwrap()];
    /// assert_eq!(peer.local, "fd99::1".parse::<std::net::IpAddr>().unwrap(), "4in6: b has only IPv6");
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn with_endpoint(mut self, other: IpAddr) -> Self {
        self.endpoints.retain(|e| e.is_ipv4() != other.is_ipv4());
        self.endpoints.push(other);
        self
    }

    /// This host's endpoints (one per family).
    pub fn endpoints(&self) -> &[IpAddr] {
        &self.endpoints
    }

    /// This host's endpoint of `addr`'s family.
    fn local_for(&self, addr: IpAddr) -> Option<IpAddr> {
        self.endpoints
            .iter()
            .copied()
            .find(|e| e.is_ipv4() == addr.is_ipv4())
    }

    /// The key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This host's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Forgets everything (before a full resync).
    pub fn clear(&mut self) {
        self.members.clear();
        self.rejected.clear();
        self.claims.clear();
        self.own.clear();
        self.changed = None;
    }

    /// The prefixes whose peer may have changed since the last call (`None`: any prefix may
    /// have, as after [`Fleet::clear`]); the next call starts from none.
    ///
    /// An agent that applied [`Fleet::desired`] once then needs only
    /// [`Fleet::desired_of`] of these: with 100 hosts of 1 000 prefixes, one host's change
    /// costs 1 000 look-ups instead of a diff of 99 000 peers.
    pub fn take_changed(&mut self) -> Option<BTreeSet<IpNetwork>> {
        self.changed.replace(BTreeSet::new())
    }

    /// Marks `host`'s prefixes (as its member entry has them now) changed, and adds or
    /// withdraws its claims.
    fn touch(&mut self, host: &str, claim: bool) {
        let Some(m) = self.members.get(host) else {
            return;
        };
        let prefixes = m.record.prefixes.clone();
        let create_revision = m.create_revision;
        self.claim(host, create_revision, &prefixes, claim);
    }

    /// Marks `prefixes` changed, and adds or withdraws `host`'s claims on them.
    fn claim(&mut self, host: &str, create_revision: i64, prefixes: &[IpNetwork], claim: bool) {
        let own = host == self.me;
        let id = (create_revision, host.to_string());
        for p in prefixes {
            if let Some(changed) = &mut self.changed {
                changed.insert(*p);
            }
            if own {
                if claim {
                    self.own.insert(*p);
                } else {
                    self.own.remove(p);
                }
            } else if claim {
                self.claims.entry(*p).or_default().insert(id.clone());
            } else if let Some(c) = self.claims.get_mut(p) {
                c.remove(&id);
                if c.is_empty() {
                    self.claims.remove(p);
                }
            }
        }
    }

    /// Removes `host`'s member entry (and its claims).
    fn remove_member(&mut self, host: &str) {
        self.touch(host, false);
        self.members.remove(host);
    }

    /// A key was put (from a Get or a watch event) with its create revision.
    pub fn put(&mut self, key: &[u8], value: &[u8], create_revision: i64) -> Change {
        let Some(host) = self.layout.host_of(key) else {
            return Change::Ignored;
        };
        let host = host.to_string();
        let checked = HostRecord::decode(value)
            .map_err(|e| e.to_string())
            .and_then(|r| self.check_member(&host, r));
        let same = match &checked {
            Ok(record) => self.prefixes_only(&host, record, create_revision),
            Err(_) => false,
        };
        if let (true, Ok(record), Some(m)) = (same, &checked, self.members.get_mut(&host)) {
            // The same host, endpoints and encap: only the prefixes it added or withdrew
            // change (a host republishing 1 000 prefixes with one more touches one).
            let before: HashSet<IpNetwork> = m.record.prefixes.iter().copied().collect();
            let after: HashSet<IpNetwork> = record.prefixes.iter().copied().collect();
            let gone: Vec<IpNetwork> = before.difference(&after).copied().collect();
            let added: Vec<IpNetwork> = after.difference(&before).copied().collect();
            m.record.prefixes.clone_from(&record.prefixes);
            self.claim(&host, create_revision, &gone, false);
            self.claim(&host, create_revision, &added, true);
            return if host == self.me {
                Change::Own
            } else {
                Change::Other
            };
        }
        self.remove_member(&host);
        match checked {
            Ok(record) => {
                self.rejected.remove(&host);
                self.members.insert(
                    host.clone(),
                    Member {
                        record,
                        create_revision,
                    },
                );
                self.touch(&host, true);
            }
            Err(why) => {
                self.rejected.insert(host.clone(), why);
            }
        }
        if host == self.me {
            Change::Own
        } else {
            Change::Other
        }
    }

    /// A key was deleted (or its lease expired).
    pub fn delete(&mut self, key: &[u8]) -> Change {
        let Some(host) = self.layout.host_of(key) else {
            return Change::Ignored;
        };
        self.remove_member(host);
        self.rejected.remove(host);
        if host == self.me {
            Change::Own
        } else {
            Change::Other
        }
    }

    /// Whether `record` differs from `host`'s accepted entry of the same creation only in its
    /// prefixes.
    fn prefixes_only(&self, host: &str, record: &HostRecord, create_revision: i64) -> bool {
        self.members.get(host).is_some_and(|m| {
            m.create_revision == create_revision
                && m.record.endpoint == record.endpoint
                && m.record.other_endpoint == record.other_endpoint
                && m.record.encap == record.encap
        })
    }

    fn check_member(&self, host: &str, record: HostRecord) -> Result<HostRecord, String> {
        if host == self.me {
            return Ok(record);
        }
        if let Some(e) = record.endpoints().find(|e| self.endpoints.contains(e)) {
            return Err(format!("endpoint {e} is this host's own endpoint"));
        }
        if !record.endpoints().any(|e| self.local_for(e).is_some()) {
            let list = |v: Vec<IpAddr>| {
                v.iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(format!(
                "endpoint {} is not of the family of this host's endpoint {}",
                list(record.endpoints().collect()),
                list(self.endpoints.clone())
            ));
        }
        Ok(record)
    }

    /// The accepted members, this host's own entry included when present.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Hosts whose value was refused, with the reason.
    pub fn rejected(&self) -> &BTreeMap<String, String> {
        &self.rejected
    }

    /// The endpoints of the other accepted members of the families this host has (the outer
    /// sources this host decapsulates from).
    pub fn remote_endpoints(&self) -> BTreeSet<IpAddr> {
        self.members
            .iter()
            .filter(|(h, _)| **h != self.me)
            .flat_map(|(_, m)| m.record.endpoints())
            .filter(|e| self.local_for(*e).is_some())
            .collect()
    }

    /// The peer towards `record`'s host for `prefix`: outer family of the prefix when both
    /// hosts have it, else the first family both have.
    fn peer(&self, record: &HostRecord, prefix: &IpNetwork) -> Option<EncapPeer> {
        let reachable = || {
            record
                .endpoints()
                .filter_map(|r| Some((r, self.local_for(r)?)))
        };
        let (remote, local) = reachable()
            .find(|(r, _)| r.is_ipv4() == prefix.is_ipv4())
            .or_else(|| reachable().next())?;
        Some(EncapPeer::new(remote, local, record.encap))
    }

    /// The peer `prefix` should have (by the rules in the module docs), if any.
    pub fn desired_of(&self, prefix: &IpNetwork) -> Option<EncapPeer> {
        if self.own.contains(prefix) {
            return None;
        }
        let (_, host) = self.claims.get(prefix)?.first()?;
        self.peer(&self.members.get(host)?.record, prefix)
    }

    /// The peer table this host should have, by the rules in the module docs.
    pub fn desired(&self) -> PeerMap {
        let mut want = PeerMap::new();
        for (p, claimants) in &self.claims {
            if self.own.contains(p) {
                continue;
            }
            // the oldest claim wins
            let Some((_, host)) = claimants.first() else {
                continue;
            };
            if let Some(peer) = self.members.get(host).and_then(|m| self.peer(&m.record, p)) {
                want.insert(*p, peer);
            }
        }
        want
    }
}

/// The edits that turn one peer table into another.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Prefixes to add, with their peer.
    pub insert: Vec<(IpNetwork, EncapPeer)>,
    /// Prefixes whose peer changes, with the new peer.
    pub replace: Vec<(IpNetwork, EncapPeer)>,
    /// Prefixes to remove.
    pub remove: Vec<IpNetwork>,
}

impl Diff {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.insert.is_empty() && self.replace.is_empty() && self.remove.is_empty()
    }

    /// Edits in all.
    pub fn len(&self) -> usize {
        self.insert.len() + self.replace.len() + self.remove.len()
    }
}

/// The edits from `current` (what the table holds) to `desired`, in prefix order.
///
/// # Examples
///
/// ```
/// use lwtun::peer::{Encap, EncapPeer};
/// use lwtun_agent::fleet::{diff, PeerMap};
///
/// let peer = |r: &str| EncapPeer::new(r.parse().unwrap(), "10.0.0.1".parse().unwrap(), Encap::Ipip);
/// let mut current = PeerMap::new();
/// current.insert("10.1.0.0/16".parse().unwrap(), peer("10.0.0.2"));
/// current.insert("10.2.0.0/16".parse().unwrap(), peer("10.0.0.2"));
/// let mut desired = PeerMap::new();
/// desired.insert("10.2.0.0/16".parse().unwrap(), peer("10.0.0.3"));
/// desired.insert("10.3.0.0/16".parse().unwrap(), peer("10.0.0.3"));
/// let d = diff(current.iter().map(|(p, e)| (*p, e)), &desired);
/// assert_eq!(d.remove, vec!["10.1.0.0/16".parse().unwrap()]);
/// assert_eq!(d.replace.len(), 1);
/// assert_eq!(d.insert.len(), 1);
/// ```
pub fn diff<'a>(
    current: impl IntoIterator<Item = (IpNetwork, &'a EncapPeer)>,
    desired: &PeerMap,
) -> Diff {
    let mut d = Diff::default();
    let mut seen = BTreeSet::new();
    for (prefix, peer) in current {
        seen.insert(prefix);
        match desired.get(&prefix) {
            None => d.remove.push(prefix),
            Some(want) if want != peer => d.replace.push((prefix, *want)),
            Some(_) => {}
        }
    }
    d.insert = desired
        .iter()
        .filter(|(p, _)| !seen.contains(*p))
        .map(|(p, e)| (*p, *e))
        .collect();
    d.remove.sort();
    d.replace.sort_by_key(|(p, _)| *p);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwtun::peer::Encap;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn fleet() -> Fleet {
        Fleet::new(
            Layout::new("/lwtun/fleet", "f").unwrap(),
            "me",
            "10.99.0.1".parse().unwrap(),
        )
    }

    fn key(h: &str) -> Vec<u8> {
        format!("/lwtun/fleet/f/hosts/{h}").into_bytes()
    }

    fn rec(ep: &str, prefixes: &[&str]) -> Vec<u8> {
        let p: Vec<String> = prefixes.iter().map(|p| format!("\"{p}\"")).collect();
        format!(
            r#"{{"endpoint":"{ep}","encap":"udp","udp_port":6081,"prefixes":[{}]}}"#,
            p.join(",")
        )
        .into_bytes()
    }

    fn apply(table: &mut PeerMap, d: &Diff) {
        for p in &d.remove {
            table.remove(p);
        }
        for (p, e) in d.replace.iter().chain(&d.insert) {
            table.insert(*p, *e);
        }
    }

    #[test]
    fn diff_turns_any_table_into_the_desired_one() {
        let peer = |r: u8, port: u16| {
            EncapPeer::new(
                IpAddr::from([10, 99, 0, r]),
                "10.99.0.1".parse().unwrap(),
                Encap::Udp { port },
            )
        };
        // a few shapes: empty → full, full → empty, mixed, identical
        let a: PeerMap = (0..50u8)
            .map(|i| (net(&format!("10.{i}.0.0/16")), peer(i % 5 + 2, 1)))
            .collect();
        let b: PeerMap = (25..80u8)
            .map(|i| {
                (
                    net(&format!("10.{i}.0.0/16")),
                    peer(i % 7 + 2, 1 + u16::from(i % 2)),
                )
            })
            .collect();
        for (from, to) in [
            (&PeerMap::new(), &a),
            (&a, &PeerMap::new()),
            (&a, &b),
            (&b, &a),
            (&a, &a),
        ] {
            let d = diff(from.iter().map(|(p, e)| (*p, e)), to);
            let mut t = from.clone();
            apply(&mut t, &d);
            assert_eq!(&t, to);
            // minimal: one edit per prefix that differs, none for the others
            let keys: BTreeSet<&IpNetwork> = from.keys().chain(to.keys()).collect();
            let differ = keys.iter().filter(|p| from.get(p) != to.get(p)).count();
            assert_eq!(d.len(), differ);
        }
        assert!(diff(a.iter().map(|(p, e)| (*p, e)), &a).is_empty());
    }

    #[test]
    fn other_hosts_prefixes_become_peers_and_own_do_not() {
        let mut f = fleet();
        assert_eq!(
            f.put(&key("me"), &rec("10.99.0.1", &["10.200.1.0/24"]), 2),
            Change::Own
        );
        assert_eq!(
            f.put(
                &key("b"),
                &rec("10.99.0.2", &["10.200.2.0/24", "10.200.1.0/24"]),
                3
            ),
            Change::Other
        );
        assert_eq!(
            f.put(b"/elsewhere/b", &rec("10.99.0.9", &["10.9.0.0/16"]), 4),
            Change::Ignored
        );
        let want = f.desired();
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            vec![net("10.200.2.0/24")]
        );
        let p = want[&net("10.200.2.0/24")];
        assert_eq!(p.remote, "10.99.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(p.local, "10.99.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(p.encap, Encap::Udp { port: 6081 });
        assert_eq!(f.remote_endpoints().len(), 1);
        assert_eq!(f.delete(&key("b")), Change::Other);
        assert!(f.desired().is_empty());
    }

    #[test]
    fn the_oldest_claim_of_a_prefix_wins_whatever_the_order_seen() {
        let shared = "10.210.0.0/24";
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut f = fleet();
            let hosts = [
                ("c", "10.99.0.3", 10),
                ("b", "10.99.0.2", 20),
                ("a", "10.99.0.4", 30),
            ];
            for i in order {
                let (h, ep, rev) = hosts[i];
                f.put(&key(h), &rec(ep, &[shared]), rev);
            }
            assert_eq!(
                f.desired()[&net(shared)].remote,
                "10.99.0.3".parse::<IpAddr>().unwrap()
            );
            // the winner withdraws: the next oldest takes over
            f.put(&key("c"), &rec("10.99.0.3", &[]), 10);
            assert_eq!(
                f.desired()[&net(shared)].remote,
                "10.99.0.2".parse::<IpAddr>().unwrap()
            );
        }
    }

    #[test]
    fn hostile_values_remove_the_host_and_are_reported() {
        let mut f = fleet();
        f.put(&key("b"), &rec("10.99.0.2", &["10.200.2.0/24"]), 3);
        assert_eq!(f.desired().len(), 1);
        // garbage replaces a good value: the host's peers go, the reason is kept
        f.put(&key("b"), b"{\"endpoint\":", 3);
        assert!(f.desired().is_empty());
        assert!(
            f.rejected()["b"].contains("not a host record"),
            "{:?}",
            f.rejected()
        );
        // bad prefix, another family, this host's own endpoint
        f.put(&key("c"), &rec("10.99.0.3", &["10.200.3.7/24"]), 4);
        f.put(&key("d"), &rec("fd99::4", &["10.200.4.0/24"]), 5);
        f.put(&key("e"), &rec("10.99.0.1", &["10.200.5.0/24"]), 6);
        assert!(f.desired().is_empty());
        assert_eq!(f.rejected().len(), 4);
        assert!(f.rejected()["e"].contains("own endpoint"));
        assert!(f.rejected()["d"].contains("family"));
        // a good value again clears the refusal
        f.put(&key("b"), &rec("10.99.0.2", &["10.200.2.0/24"]), 3);
        assert_eq!(f.desired().len(), 1);
        assert!(!f.rejected().contains_key("b"));
        // a deleted key clears its refusal too
        f.delete(&key("c"));
        assert!(!f.rejected().contains_key("c"));
    }

    fn rec2(eps: &[&str], prefixes: &[&str]) -> Vec<u8> {
        let q = |v: &[&str]| {
            v.iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            r#"{{"endpoint":"{}","endpoints":[{}],"encap":"ipip","prefixes":[{}]}}"#,
            eps[0],
            q(eps),
            q(prefixes)
        )
        .into_bytes()
    }

    #[test]
    fn each_prefix_rides_the_outer_family_both_hosts_have() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let both = || fleet().with_endpoint(ip("fd99::1"));
        // b has both families: v4 prefixes in v4, v6 prefixes in v6
        let mut f = both();
        f.put(
            &key("b"),
            &rec2(&["10.99.0.2", "fd99::2"], &["10.200.2.0/24", "fd20:2::/64"]),
            3,
        );
        let want = f.desired();
        let v4 = want[&net("10.200.2.0/24")];
        let v6 = want[&net("fd20:2::/64")];
        assert_eq!((v4.remote, v4.local), (ip("10.99.0.2"), ip("10.99.0.1")));
        assert_eq!((v6.remote, v6.local), (ip("fd99::2"), ip("fd99::1")));
        assert_eq!(f.remote_endpoints().len(), 2);
        // c has IPv4 only: its IPv6 prefix rides IPv4 (6in4)
        f.put(&key("c"), &rec("10.99.0.3", &["fd20:3::/64"]), 4);
        let p = f.desired()[&net("fd20:3::/64")];
        assert_eq!((p.remote, p.local), (ip("10.99.0.3"), ip("10.99.0.1")));
        // a host with IPv4 only sees b by IPv4 for both prefixes, and decapsulates IPv4 only
        let mut g = fleet();
        g.put(
            &key("b"),
            &rec2(&["fd99::2", "10.99.0.2"], &["10.200.2.0/24", "fd20:2::/64"]),
            3,
        );
        assert!(g.desired().values().all(|p| p.remote == ip("10.99.0.2")));
        assert_eq!(g.remote_endpoints().len(), 1);
        // a host publishing one of this host's endpoints, as its second, is refused
        g.put(&key("d"), &rec2(&["fd99::4", "10.99.0.1"], &[]), 5);
        assert!(
            g.rejected()["d"].contains("own endpoint"),
            "{:?}",
            g.rejected()
        );
    }

    #[test]
    fn changed_prefixes_are_exactly_those_whose_peer_may_differ() {
        let mut f = fleet();
        assert_eq!(f.take_changed(), None, "nothing applied yet: everything");
        assert_eq!(f.take_changed(), Some(BTreeSet::new()));
        f.put(
            &key("b"),
            &rec("10.99.0.2", &["10.1.0.0/16", "10.2.0.0/16"]),
            3,
        );
        f.put(&key("c"), &rec("10.99.0.3", &["10.3.0.0/16"]), 4);
        let mut table = PeerMap::new();
        // replay the changes as an agent does: desired_of each changed prefix
        let replay = |f: &mut Fleet, table: &mut PeerMap| {
            for p in f.take_changed().unwrap() {
                match f.desired_of(&p) {
                    Some(e) => table.insert(p, e),
                    None => table.remove(&p),
                };
            }
            assert_eq!(*table, f.desired());
        };
        replay(&mut f, &mut table);
        assert_eq!(table.len(), 3);
        // b drops a prefix, c claims b's other one (older claim b keeps it), own claims one
        f.put(&key("b"), &rec("10.99.0.2", &["10.2.0.0/16"]), 3);
        f.put(
            &key("c"),
            &rec("10.99.0.3", &["10.3.0.0/16", "10.2.0.0/16"]),
            4,
        );
        f.put(&key("me"), &rec("10.99.0.1", &["10.3.0.0/16"]), 5);
        replay(&mut f, &mut table);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table[&net("10.2.0.0/16")].remote,
            "10.99.0.2".parse::<IpAddr>().unwrap()
        );
        // b goes (deleted) and garbage replaces c: c's claim passes, then nothing is left
        f.delete(&key("b"));
        replay(&mut f, &mut table);
        assert_eq!(
            table[&net("10.2.0.0/16")].remote,
            "10.99.0.3".parse::<IpAddr>().unwrap()
        );
        f.put(&key("c"), b"garbage", 4);
        replay(&mut f, &mut table);
        assert!(table.is_empty());
        // a host republishing its prefixes with one more: that one changed, not the others
        let many: Vec<String> = (0..50).map(|i| format!("10.50.{i}.0/24")).collect();
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        f.put(&key("d"), &rec("10.99.0.4", &refs(&many)), 9);
        replay(&mut f, &mut table);
        let mut more = many.clone();
        more.push("10.51.0.0/24".into());
        f.put(&key("d"), &rec("10.99.0.4", &refs(&more)), 9);
        assert_eq!(f.changed.as_ref().map(|c| c.len()), Some(1));
        replay(&mut f, &mut table);
        assert_eq!(table.len(), 51);
        // ... and a new endpoint: every prefix of the host changed
        f.put(&key("d"), &rec("10.99.0.5", &refs(&more)), 9);
        assert_eq!(f.changed.as_ref().map(|c| c.len()), Some(51));
        replay(&mut f, &mut table);
        assert!(table
            .values()
            .all(|e| e.remote == "10.99.0.5".parse::<IpAddr>().unwrap()));
    }
}
