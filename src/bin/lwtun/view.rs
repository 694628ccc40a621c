//! What the show commands print: one serde type per JSON object, whose field names are the
//! documented, stable JSON names (see the README's `lwtun` section), and the human tables.

use serde::Serialize;

use ipnetwork::IpNetwork;
use lwtun::netlink::route::{Encap as RouteEncap, Route};
use lwtun::peer::{Encap, EncapPeer, MissCounters, MissPolicy, OuterField, PeerStats};
use lwtun::program::{id_of_route_name, ROUTE_NAME_PREFIX};
use lwtun::route::RTPROT_LWTUN;

/// An outer TTL or TOS: a number, or the string `"inherit"`.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Outer {
    /// A fixed value.
    Fixed(u8),
    /// `"inherit"`.
    Inherit(&'static str),
}

impl From<OuterField> for Outer {
    fn from(f: OuterField) -> Self {
        match f {
            OuterField::Fixed(v) => Outer::Fixed(v),
            OuterField::Inherit => Outer::Inherit("inherit"),
        }
    }
}

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outer::Fixed(v) => write!(f, "{v}"),
            Outer::Inherit(s) => f.write_str(s),
        }
    }
}

/// One peer (`lwtun peer show`).
#[derive(Serialize)]
pub struct PeerView {
    pub prefix: String,
    pub remote: String,
    pub local: String,
    /// `ipip`, `gre` or `udp`.
    pub encap: &'static str,
    pub gre_key: Option<u32>,
    pub gre_checksum: bool,
    pub udp_port: Option<u16>,
    pub ttl: Outer,
    pub tos: Outer,
}

impl PeerView {
    pub fn new(prefix: IpNetwork, p: &EncapPeer) -> Self {
        let (gre_key, gre_checksum, udp_port) = match p.encap {
            Encap::Gre { key, checksum } => (key, checksum, None),
            Encap::Udp { port } => (None, false, Some(port)),
            _ => (None, false, None),
        };
        let encap = p.encap.name();
        PeerView {
            prefix: prefix.to_string(),
            remote: p.remote.to_string(),
            local: p.local.to_string(),
            encap,
            gre_key,
            gre_checksum,
            udp_port,
            ttl: p.ttl.into(),
            tos: p.tos.into(),
        }
    }
}

/// One peer's counters (`lwtun peer stats`).
#[derive(Serialize)]
pub struct PeerStatsView {
    pub prefix: String,
    pub packets: u64,
    pub bytes: u64,
    pub errors: u64,
}

impl PeerStatsView {
    pub fn new(prefix: IpNetwork, s: PeerStats) -> Self {
        PeerStatsView {
            prefix: prefix.to_string(),
            packets: s.packets,
            bytes: s.bytes,
            errors: s.errors,
        }
    }
}

/// The table-wide counters.
#[derive(Serialize)]
pub struct MissView {
    pub dropped_v4: u64,
    pub dropped_v6: u64,
    pub passed_v4: u64,
    pub passed_v6: u64,
    pub not_ip: u64,
}

impl From<MissCounters> for MissView {
    fn from(m: MissCounters) -> Self {
        MissView {
            dropped_v4: m.dropped_v4,
            dropped_v6: m.dropped_v6,
            passed_v4: m.passed_v4,
            passed_v6: m.passed_v6,
            not_ip: m.not_ip,
        }
    }
}

/// `lwtun peer stats`.
#[derive(Serialize)]
pub struct StatsView {
    pub peers: Vec<PeerStatsView>,
    pub misses: MissView,
}

/// A map of the tunnel (`bpftool map dump id ID`).
#[derive(Serialize)]
pub struct MapView {
    pub name: String,
    pub id: u32,
}

/// `lwtun tunnel show` (and what `tunnel load` made).
#[derive(Serialize)]
pub struct TunnelView {
    pub pin: String,
    pub capacity: u32,
    pub peers_v4: usize,
    pub peers_v6: usize,
    /// `drop` or `pass`.
    pub miss_policy_v4: &'static str,
    pub miss_policy_v6: &'static str,
    pub misses: MissView,
    pub maps: Vec<MapView>,
}

pub fn policy_name(p: MissPolicy) -> &'static str {
    match p {
        MissPolicy::Drop => "drop",
        MissPolicy::Pass => "pass",
    }
}

/// A program at one hook of a route.
#[derive(Serialize)]
pub struct HookView {
    /// `in`, `out`, `xmit` or `seg6local`.
    pub hook: &'static str,
    /// The name stored with the route.
    pub name: String,
    /// The program's id, when lwtun named it (`lwtun:<program>:<id>`).
    pub program_id: Option<u32>,
}

/// One LWT BPF route (`lwtun route show`, `lwtun leftovers`).
#[derive(Serialize)]
pub struct RouteView {
    pub dst: String,
    pub table: u32,
    pub protocol: u8,
    /// Whether lwtun made it (protocol 76 or `lwtun:` program names).
    pub lwtun: bool,
    pub dev: Option<String>,
    pub oif: Option<u32>,
    pub gateway: Option<String>,
    pub src: Option<String>,
    pub metric: Option<u32>,
    pub hooks: Vec<HookView>,
}

impl RouteView {
    pub fn new(r: &Route, dev: Option<String>) -> Self {
        let mut hooks = Vec::new();
        let mut push = |hook: &'static str, name: &str| {
            hooks.push(HookView {
                hook,
                name: name.to_string(),
                program_id: id_of_route_name(name),
            })
        };
        match &r.encap {
            Some(RouteEncap::Bpf(b)) => {
                for (hook, p) in [("in", &b.input), ("out", &b.output), ("xmit", &b.xmit)] {
                    if let Some(p) = p {
                        push(hook, &p.name);
                    }
                }
            }
            Some(RouteEncap::Seg6LocalBpf(p)) => push("seg6local", &p.name),
            _ => {}
        }
        let lwtun = r.protocol == RTPROT_LWTUN
            || hooks.iter().any(|h| h.name.starts_with(ROUTE_NAME_PREFIX));
        RouteView {
            dst: r.dst.to_string(),
            table: r.table,
            protocol: r.protocol,
            lwtun,
            dev,
            oif: r.oif,
            gateway: r.gateway.map(|g| g.to_string()),
            src: r.prefsrc.map(|g| g.to_string()),
            metric: r.metric,
            hooks,
        }
    }
}

/// Prints rows as a table whose columns are as wide as their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = *w));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `-` for an absent value.
pub fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".to_string(), T::to_string)
}
