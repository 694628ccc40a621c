//! Self-repair: what the agent put back after someone else changed its data plane, and the
//! counts it keeps of it ([`RepairStats`], in the status file and for metrics).
//!
//! The agent owns three things on its host, and puts each back when it changes from outside:
//!
//! | what                        | changed by (e.g.)                          | noticed by                                  | put back by |
//! |-----------------------------|--------------------------------------------|---------------------------------------------|-------------|
//! | routes of the steered prefixes | `ip route del`, a script flushing routes | rtnetlink events ([`lwtun::keeper`]); the reconcile for routes flushed without an event (device down) | the route keeper, at once (sub-millisecond); the reconcile steers again |
//! | peers of the tunnel tables  | `bpftool map delete/update pinned …`       | the periodic reconcile (kernel tables vs. what was written) | [`lwtun::peer::PeerTable::restore`] |
//! | decap (tc ingress program, its accepted sources) | `bpftool link detach`, `tc filter del`, `bpftool map delete` | the periodic reconcile | re-attached / re-added |
//!
//! `lwtun peer add|del|replace` cannot change a live agent's pinned tables: it takes the pin
//! folder's owner lock, which the agent holds, and is refused naming the agent's process. So
//! the only outside edits of the peers are unjournaled ones (bpftool), which no event reports:
//! the reconcile (every `--reconcile-interval`, default 10 s) is what catches them.
//!
//! ```
//! use std::time::Duration;
//! use lwtun_agent::repair::{Repair, RepairStats};
//!
//! let mut stats = RepairStats::default();
//! let r = Repair::PeersRestored { edits: 1 };
//! stats.count(&r, 1_764_769_000_000_000);
//! stats.reconciled(Duration::from_micros(420));
//! assert_eq!(stats.peers_restored, 1);
//! assert_eq!(stats.reconcile_runs, 1);
//! assert_eq!(stats.last_repair.as_deref(), Some("peer table: 1 edit(s) put back"));
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default interval of the full reconcile (`--reconcile-interval`).
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(10);

/// One thing the agent put back (or could not).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lwtun_agent::repair::Repair;
///
/// let r = Repair::RouteRestored { route: "10.192.0.0/10 dev ul0".into(), after: Duration::from_micros(250) };
/// assert_eq!(r.to_string(), "route 10.192.0.0/10 dev ul0 restored 0.2 ms after its deletion");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repair {
    /// A steered route deleted from outside was added again.
    RouteRestored {
        /// The route, as `ip route` would show it.
        route: String,
        /// From the deletion's event to the route being back.
        after: Duration,
    },
    /// A steered route found gone by the reconcile (flushed without an event, e.g. IPv4
    /// routes when their device went down) was installed again.
    RouteResteered {
        /// The route.
        route: String,
    },
    /// A steered route deleted from outside could not be added again.
    RouteNotRestored {
        /// The route.
        route: String,
        /// The kernel's answer.
        error: String,
    },
    /// The peer table differed from the fleet (changed from outside) and was put back.
    PeersRestored {
        /// Edits the reconcile made.
        edits: usize,
    },
    /// The kernel's peer tables could not be read or rewritten (retried at the next
    /// reconcile).
    PeersNotRestored {
        /// The kernel's error.
        error: String,
    },
    /// The decap program was no longer on the device's tc ingress and was attached again.
    DecapReattached {
        /// The device.
        device: String,
    },
    /// Accepted outer sources of the decap were removed from outside; they are added again
    /// by the same reconcile.
    DecapPeersRestored {
        /// How many were missing.
        missing: usize,
    },
    /// This host's own endpoints were removed from the decap's local addresses from outside
    /// (the decap would drop what other hosts send them); added again.
    DecapLocalsRestored {
        /// The addresses put back.
        addresses: Vec<std::net::IpAddr>,
    },
    /// A decap check or re-attach failed (retried at the next reconcile).
    DecapNotRepaired {
        /// What failed.
        error: String,
    },
}

impl Repair {
    /// The repair in one word, as the metric `lwtun_agent_repairs_total` labels it.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::repair::Repair;
    ///
    /// assert_eq!(Repair::PeersRestored { edits: 2 }.kind(), "peers_restored");
    /// ```
    pub fn kind(&self) -> &'static str {
        match self {
            Repair::RouteRestored { .. } => "route_restored",
            Repair::RouteResteered { .. } => "route_resteered",
            Repair::RouteNotRestored { .. } => "route_not_restored",
            Repair::PeersRestored { .. } => "peers_restored",
            Repair::PeersNotRestored { .. } => "peers_not_restored",
            Repair::DecapReattached { .. } => "decap_reattached",
            Repair::DecapPeersRestored { .. } => "decap_peers_restored",
            Repair::DecapLocalsRestored { .. } => "decap_locals_restored",
            Repair::DecapNotRepaired { .. } => "decap_not_repaired",
        }
    }
}

impl fmt::Display for Repair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repair::RouteRestored { route, after } => write!(
                f,
                "route {route} restored {:.1} ms after its deletion",
                after.as_secs_f64() * 1e3
            ),
            Repair::RouteResteered { route } => {
                write!(f, "route {route} was gone: steered again by the reconcile")
            }
            Repair::RouteNotRestored { route, error } => {
                write!(f, "route {route} deleted and not restored: {error}")
            }
            Repair::PeersRestored { edits } => {
                write!(f, "peer table: {edits} edit(s) put back")
            }
            Repair::PeersNotRestored { error } => {
                write!(f, "peer table not put back: {error}")
            }
            Repair::DecapReattached { device } => {
                write!(f, "decap re-attached at tc ingress of {device}")
            }
            Repair::DecapPeersRestored { missing } => {
                write!(f, "decap: {missing} accepted source(s) put back")
            }
            Repair::DecapLocalsRestored { addresses } => write!(
                f,
                "decap: local address(es) {} put back",
                addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Repair::DecapNotRepaired { error } => write!(f, "decap not repaired: {error}"),
        }
    }
}

/// What the agent repaired since it started: part of the status file (`"repairs"`), and what
/// a metrics exporter reads ([`crate::agent::Agent::repair_stats`], always current). The
/// status file is written after each repair and each table change, not after a reconcile
/// that found nothing, so its `reconcile_runs` and `last_reconcile_us` are as of its last
/// write.
///
/// # Examples
///
/// ```
/// let s = lwtun_agent::repair::RepairStats::default();
/// assert_eq!(s.routes_restored + s.peers_restored + s.decap_reattached, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepairStats {
    /// Routes deleted from outside and added again.
    pub routes_restored: u64,
    /// Routes deleted from outside that could not be added again.
    pub routes_not_restored: u64,
    /// Peer edits made to put back a table changed from outside.
    pub peers_restored: u64,
    /// Times the decap program was attached again.
    pub decap_reattached: u64,
    /// Accepted decap sources put back.
    pub decap_peers_restored: u64,
    /// This host's endpoints put back among the decap's local addresses.
    pub decap_locals_restored: u64,
    /// Full reconciles run (table vs. fleet, decap attached).
    pub reconcile_runs: u64,
    /// How long the last full reconcile took (µs).
    pub last_reconcile_us: u64,
    /// When the last repair happened (µs since the Unix epoch; 0: never).
    pub last_repair_at_us: u64,
    /// The last repair, in one line.
    pub last_repair: Option<String>,
}

impl RepairStats {
    /// Counts `repair`, made at `at_us` (µs since the Unix epoch).
    pub fn count(&mut self, repair: &Repair, at_us: u64) {
        match repair {
            Repair::RouteRestored { .. } | Repair::RouteResteered { .. } => {
                self.routes_restored += 1
            }
            Repair::RouteNotRestored { .. } => self.routes_not_restored += 1,
            Repair::PeersRestored { edits } => self.peers_restored += *edits as u64,
            Repair::DecapReattached { .. } => self.decap_reattached += 1,
            Repair::DecapPeersRestored { missing } => self.decap_peers_restored += *missing as u64,
            Repair::DecapLocalsRestored { addresses } => {
                self.decap_locals_restored += addresses.len() as u64
            }
            Repair::DecapNotRepaired { .. } | Repair::PeersNotRestored { .. } => {}
        }
        self.last_repair_at_us = at_us;
        self.last_repair = Some(repair.to_string());
    }

    /// Counts a full reconcile that took `took`.
    pub fn reconciled(&mut self, took: Duration) {
        self.reconcile_runs += 1;
        self.last_reconcile_us = took.as_micros() as u64;
    }
}

/// Parses an interval: `500ms`, `10s`, `1m`, or a number of seconds (`2.5`).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lwtun_agent::repair::parse_interval;
///
/// assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_interval("10"), Ok(Duration::from_secs(10)));
/// assert!(parse_interval("0s").is_err());
/// ```
///
/// # Errors
///
/// A message saying what is accepted, for anything else (and for zero).
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => t.split_at(at),
        None => (t, "s"),
    };
    let scale = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        _ => f64::NAN,
    };
    let secs = number.trim().parse::<f64>().ok().map(|n| n * scale);
    match secs {
        Some(s) if (0.001..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{text:?}: give an interval from 1ms to 24h, as 500ms, 10s, 1m or a number of seconds"
        )),
    }
}
