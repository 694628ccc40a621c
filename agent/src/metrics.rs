//! What the agent exports to Prometheus, and its health: [`Metrics`] (the agent's own counters,
//! updated as it works) and [`Observed`] (the data plane's counters, read when scraped).
//!
//! The data plane's counters (per peer, misses, decap) live in BPF maps; they are read at each
//! scrape through [`Observed`], never polled. The agent's own figures (reconcile runs,
//! convergence, rejected records, etcd state) are recorded by the agent as they happen. The
//! readiness check compares the table with the desired table of the last sync
//! ([`crate::fleet::diff`]) at the moment it is asked. [`crate::http`] serves all three.
//!
//! ```
//! use lwtun_agent::metrics::Metrics;
//!
//! let m = Metrics::default();
//! m.reconcile(lwtun_agent::metrics::Run::Full);
//! let text = m.encode();
//! assert!(text.contains("# TYPE lwtun_agent_reconcile_runs counter"), "{text}");
//! assert!(text.contains("lwtun_agent_reconcile_runs_total{kind=\"full\"} 1\n"), "{text}");
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lwtun::decap::DecapCounters;
use lwtun::peer::MissCounters;
use lwtun::tunnel::{DirectStatus, PathCounters};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::dataplane::{DataPlane, MemoryTable, PeerSink};
use crate::fleet::{diff, Fleet, PeerMap};
use crate::AgentError;

/// One label set of a family (`[("kind", "watch")]`).
type Labels = Vec<(&'static str, String)>;

/// The counters of one peer, as a scrape shows them.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use lwtun_agent::dataplane::{MemoryTable, PeerSink};
/// use lwtun_agent::fleet::Diff;
/// use lwtun_agent::metrics::Observed;
/// use lwtun::peer::{Encap, EncapPeer};
///
/// let mut t = MemoryTable::default();
/// let peer = EncapPeer::new("10.99.0.2".parse().unwrap(), "10.99.0.1".parse().unwrap(), Encap::Ipip);
/// t.apply(&Diff { insert: vec![("10.7.0.0/16".parse().unwrap(), peer)], ..Diff::default() })?;
/// let c = Mutex::new(t).counters()?;
/// assert_eq!((c.peers[0].remote, c.peers[0].packets), (peer.remote, 0));
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCounters {
    /// The inner prefix.
    pub prefix: IpNetwork,
    /// The far endpoint.
    pub remote: IpAddr,
    /// Packets encapsulated towards it.
    pub packets: u64,
    /// Inner bytes encapsulated towards it.
    pub bytes: u64,
    /// Packets that matched it but could not be encapsulated.
    pub errors: u64,
}

/// The data plane's counters at one moment.
///
/// # Examples
///
/// ```
/// let c = lwtun_agent::metrics::PlaneCounters::default();
/// assert!(c.peers.is_empty() && c.misses.is_none() && c.decap.is_none());
/// ```
#[derive(Debug, Clone, Default)]
pub struct PlaneCounters {
    /// Every peer of the table with its counters.
    pub peers: Vec<PeerCounters>,
    /// The table-wide misses and drops (`None`: a table without a kernel behind it).
    pub misses: Option<MissCounters>,
    /// The decap's verdict counters (`None`: no decap).
    pub decap: Option<DecapCounters>,
    /// How the tunnel sent its packets on (direct or rerouted), and what its direct-path check
    /// decided (`None`: a table without a tunnel behind it).
    pub paths: Option<(PathCounters, DirectStatus)>,
}

/// The data plane as a scrape or a readiness check sees it, read when asked.
///
/// # Examples
///
/// ```
/// use std::sync::Mutex;
/// use lwtun_agent::dataplane::MemoryTable;
/// use lwtun_agent::metrics::Observed;
///
/// let table = Mutex::new(MemoryTable::default());
/// assert!(table.table().0.is_empty());
/// assert!(table.counters()?.misses.is_none());
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
pub trait Observed: Send + Sync + 'static {
    /// The peers and the decap's accepted sources, as the table holds them now.
    fn table(&self) -> (PeerMap, BTreeSet<IpAddr>);

    /// The counters now.
    ///
    /// # Errors
    ///
    /// The kernel's error reading a map.
    fn counters(&self) -> Result<PlaneCounters, AgentError>;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data as consistent as the table's
    // own copy: keep serving it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observed for Mutex<DataPlane> {
    fn table(&self) -> (PeerMap, BTreeSet<IpAddr>) {
        let plane = lock(self);
        (plane.current(), plane.remote_endpoints())
    }

    fn counters(&self) -> Result<PlaneCounters, AgentError> {
        let plane = lock(self);
        let peers = plane.tunnel().peers();
        let mut out = PlaneCounters {
            peers: Vec::with_capacity(peers.len()),
            misses: Some(peers.miss_counters()?),
            decap: Some(plane.decap().counters()?),
            paths: Some((
                plane.tunnel().path_counters()?,
                plane.tunnel().direct_status(),
            )),
        };
        for (prefix, peer) in peers.iter() {
            let s = peers.stats(prefix)?;
            out.peers.push(PeerCounters {
                prefix,
                remote: peer.remote,
                packets: s.packets,
                bytes: s.bytes,
                errors: s.errors,
            });
        }
        Ok(out)
    }
}

impl Observed for Mutex<MemoryTable> {
    fn table(&self) -> (PeerMap, BTreeSet<IpAddr>) {
        let t = lock(self);
        (t.peers.clone(), t.endpoints.clone())
    }

    /// Its peers with zero counters: nothing is sent through a table in memory.
    fn counters(&self) -> Result<PlaneCounters, AgentError> {
        let t = lock(self);
        Ok(PlaneCounters {
            peers: t
                .peers
                .iter()
                .map(|(p, e)| PeerCounters {
                    prefix: *p,
                    remote: e.remote,
                    packets: 0,
                    bytes: 0,
                    errors: 0,
                })
                .collect(),
            misses: None,
            decap: None,
            paths: None,
        })
    }
}

/// Why a published record was refused, as a label value: the kind of rule it broke (the full
/// reason, with the offending value, is in the status file and the log).
///
/// # Examples
///
/// ```
/// use lwtun_agent::metrics::rejection_reason;
///
/// assert_eq!(rejection_reason("prefix \"10.0.0.1/8\": not a network address"), "prefix");
/// assert_eq!(rejection_reason("endpoint 10.0.0.1 is this host's own endpoint"), "own_endpoint");
/// ```
pub fn rejection_reason(why: &str) -> &'static str {
    if why.starts_with("not a host record") {
        "json"
    } else if why.contains("is not of the family") {
        "family"
    } else if why.contains("is this host's own endpoint") {
        "own_endpoint"
    } else if why.starts_with("endpoint") {
        "endpoint"
    } else if why.starts_with("encap") {
        "encap"
    } else if why.starts_with("prefix ") {
        "prefix"
    } else if why.contains("prefixes, more than") {
        "too_many_prefixes"
    } else {
        "other"
    }
}

/// Claims of other hosts that get no peer in this host's table because an older claim of the
/// same prefix (or this host itself) holds it (see [`crate::fleet`]), given the table the fleet
/// asks for: the claims counted, less the peers. It costs one step per host, not per prefix,
/// so it runs at every sync.
///
/// # Examples
///
/// ```
/// use lwtun_agent::fleet::Fleet;
/// use lwtun_agent::layout::Layout;
/// use lwtun_agent::metrics::prefix_conflicts;
///
/// let mut f = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "a", "10.99.0.1".parse().unwrap());
/// let rec = |ep: &str| format!(r#"{{"endpoint":"{ep}","encap":"ipip","prefixes":["10.7.0.0/16"]}}"#);
/// f.put(b"/lwtun/fleet/f/hosts/b", rec("10.99.0.2").as_bytes(), 2);
/// assert_eq!(prefix_conflicts(&f, &f.desired()), 0);
/// f.put(b"/lwtun/fleet/f/hosts/c", rec("10.99.0.3").as_bytes(), 3);
/// assert_eq!(prefix_conflicts(&f, &f.desired()), 1, "c's claim loses to b's");
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
pub fn prefix_conflicts(fleet: &Fleet, desired: &PeerMap) -> usize {
    let claims: usize = fleet
        .members()
        .iter()
        .filter(|(h, _)| h.as_str() != fleet.me())
        .map(|(_, m)| m.record.prefixes.len())
        .sum();
    claims.saturating_sub(desired.len())
}

/// What the last sync left: what readiness compares the table with.
#[derive(Default)]
struct SyncState {
    /// A sync completed without error at least once.
    initial_done: bool,
    /// Connected to etcd and watching.
    connected: bool,
    /// Why the last etcd session ended (kept after a reconnect: it explains the past).
    session_error: Option<String>,
    /// Why the last sync failed (`None`: it succeeded).
    sync_error: Option<String>,
    /// The table the last sync wanted (`None` while the agent edits it: a sync is under way),
    /// and the decap sources.
    desired: Weak<PeerMap>,
    /// The table given by value to [`Metrics::synced`] (kept here; `desired` points at it).
    owned: Option<Arc<PeerMap>>,
    endpoints: BTreeSet<IpAddr>,
    /// Remote endpoint → host name, for the per-peer `host` label.
    hosts: HashMap<IpAddr, String>,
    /// The reasons of the refused records of the last sync (host → reason).
    rejected: BTreeMap<String, String>,
    /// The agent's last sign of life.
    beat: Option<Instant>,
    /// How long without a sign of life counts as stuck.
    stale_after: Duration,
}

/// The agent's metrics and health state; cheap to clone (one shared state).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lwtun_agent::metrics::Metrics;
///
/// let m = Metrics::default();
/// assert!(m.ready(None).is_err(), "no sync yet");
/// m.beat();
/// assert!(m.healthy().is_ok());
/// m.converged(Duration::from_millis(3));
/// assert!(m.encode().contains("lwtun_agent_convergence_seconds_count 1"));
/// ```
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    state: Arc<Mutex<SyncState>>,
    runs: Family<Labels, Counter>,
    sync_errors: Counter,
    rejected_total: Family<Labels, Counter>,
    rejected_now: Family<Labels, Gauge>,
    repairs: Family<Labels, Counter>,
    conflicts: Gauge,
    connected: Gauge,
    reconnects: Counter,
    revision: Gauge,
    desired: Gauge,
    convergence: Histogram,
    watch_lag: Histogram,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::build(None)
    }
}

/// Reads the data plane's counters at scrape time.
struct PlaneCollector {
    plane: Arc<dyn Observed>,
    state: Arc<Mutex<SyncState>>,
}

impl fmt::Debug for PlaneCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaneCollector")
    }
}

/// One counter family: a descriptor and a sample per label set.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, u64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in &rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One gauge without labels.
fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    ConstGauge::new(v).encode(enc.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

/// One gauge family.
fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: Vec<(Labels, i64)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in &rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn l1(k: &'static str, v: impl Into<String>) -> Labels {
    vec![(k, v.into())]
}

impl Collector for PlaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let read = self.plane.counters();
        let (peers_now, decap_now) = self.plane.table();
        let mut v4 = 0;
        for p in peers_now.keys() {
            v4 += i64::from(p.is_ipv4());
        }
        gauges(
            &mut enc,
            "lwtun_agent_peers",
            "Peers in the tunnel table, by family",
            vec![
                (l1("family", "ipv4"), v4),
                (l1("family", "ipv6"), peers_now.len() as i64 - v4),
            ],
        )?;
        gauge(
            &mut enc,
            "lwtun_agent_decap_peers",
            "Outer sources the decap accepts (the other hosts' endpoints)",
            decap_now.len() as i64,
        )?;
        gauge(
            &mut enc,
            "lwtun_agent_dataplane_readable",
            "1 when this scrape could read the data plane's counters, 0 when the kernel refused",
            i64::from(read.is_ok()),
        )?;
        let Ok(c) = read else { return Ok(()) };
        let hosts = lock(&self.state).hosts.clone();
        let peer_rows = |f: fn(&PeerCounters) -> u64| -> Vec<(Labels, u64)> {
            c.peers
                .iter()
                .map(|p| {
                    let host = hosts.get(&p.remote).cloned().unwrap_or_default();
                    (vec![("prefix", p.prefix.to_string()), ("host", host)], f(p))
                })
                .collect()
        };
        counters(
            &mut enc,
            "lwtun_agent_peer_packets",
            "Packets encapsulated towards a peer (wire packets: a GSO packet counts its segments)",
            peer_rows(|p| p.packets),
        )?;
        counters(
            &mut enc,
            "lwtun_agent_peer_bytes",
            "Inner bytes encapsulated towards a peer",
            peer_rows(|p| p.bytes),
        )?;
        counters(
            &mut enc,
            "lwtun_agent_peer_errors",
            "Packets that matched a peer but could not be encapsulated (dropped)",
            peer_rows(|p| p.errors),
        )?;
        if let Some(m) = c.misses {
            let fv = |f: &str, v: &str| vec![("family", f.to_string()), ("verdict", v.to_string())];
            counters(
                &mut enc,
                "lwtun_agent_tunnel_misses",
                "Packets routed into the tunnel that matched no peer, by family and what the miss policy did",
                vec![
                    (fv("ipv4", "dropped"), m.dropped_v4),
                    (fv("ipv6", "dropped"), m.dropped_v6),
                    (fv("ipv4", "passed"), m.passed_v4),
                    (fv("ipv6", "passed"), m.passed_v6),
                ],
            )?;
            counters(
                &mut enc,
                "lwtun_agent_tunnel_drops",
                "Packets the tunnel dropped for another reason than a miss: not_ip (not IP or truncated), too_big (forwarded, over the forward MTU once encapsulated)",
                vec![
                    (l1("reason", "not_ip"), m.not_ip),
                    (l1("reason", "too_big"), m.too_big),
                ],
            )?;
        }
        if let Some((paths, direct)) = &c.paths {
            counters(
                &mut enc,
                "lwtun_agent_tunnel_path_packets",
                "Encapsulated packets by how they left: direct (the inner route's next hop, checked) or rerouted (a second route lookup by the outer destination)",
                vec![
                    (l1("path", "direct"), paths.direct_packets),
                    (l1("path", "rerouted"), paths.rerouted_packets),
                ],
            )?;
            gauges(
                &mut enc,
                "lwtun_agent_direct_remotes",
                "IPv4 peer remotes the tunnel's last direct-path check let go direct, and those it left rerouted",
                vec![
                    (l1("state", "direct"), direct.direct_remotes as i64),
                    (l1("state", "rerouted"), direct.rerouted_remotes as i64),
                ],
            )?;
            gauge(
                &mut enc,
                "lwtun_agent_direct_checking",
                "1 while the tunnel's direct-path check runs and holds its lease",
                i64::from(direct.checking),
            )?;
        }
        if let Some(d) = c.decap {
            let verdicts = [
                ("ipip", d.ipip),
                ("gre", d.gre),
                ("udp", d.udp),
                ("unknown_peer", d.unknown_peer),
                ("malformed", d.malformed),
                ("not_for_us", d.not_for_us),
                ("fragment", d.fragment),
                ("bad_checksum", d.bad_checksum),
                ("key_mismatch", d.key_mismatch),
                ("unsupported", d.unsupported),
                ("error", d.error),
                ("ecn", d.ecn),
            ];
            counters(
                &mut enc,
                "lwtun_agent_decap_packets",
                "Packets seen by the decap at the underlay's ingress, by verdict: ipip/gre/udp decapsulated, not_for_us passed on, any other dropped",
                verdicts.iter().map(|(v, c)| (l1("verdict", *v), c.packets)).collect(),
            )?;
            counters(
                &mut enc,
                "lwtun_agent_decap_bytes",
                "Outer bytes (Ethernet header included) seen by the decap, by verdict",
                verdicts
                    .iter()
                    .map(|(v, c)| (l1("verdict", *v), c.bytes))
                    .collect(),
            )?;
        }
        Ok(())
    }
}

/// What kind of reconcile ran: labels of `lwtun_agent_reconcile_runs`.
///
/// # Examples
///
/// ```
/// use lwtun_agent::metrics::{Metrics, Run};
///
/// let m = Metrics::default();
/// m.reconcile(Run::Watch);
/// assert!(m.encode().contains("lwtun_agent_reconcile_runs_total{kind=\"watch\"} 1"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    /// A Get of the whole fleet and its diff (start, compaction).
    Full,
    /// The diff of one watch response.
    Watch,
    /// A retry of a sync that failed.
    Retry,
    /// The periodic reconcile of self-repair (table and decap against the fleet).
    Repair,
}

impl Run {
    fn label(self) -> &'static str {
        match self {
            Run::Full => "full",
            Run::Watch => "watch",
            Run::Retry => "retry",
            Run::Repair => "repair",
        }
    }
}

impl Metrics {
    /// Metrics whose scrape also reads `plane`'s counters.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use lwtun_agent::dataplane::MemoryTable;
    /// use lwtun_agent::metrics::Metrics;
    ///
    /// let m = Metrics::new(Arc::new(Mutex::new(MemoryTable::default())));
    /// assert!(m.encode().contains("lwtun_agent_peers{family=\"ipv4\"} 0"));
    /// ```
    pub fn new(plane: Arc<dyn Observed>) -> Self {
        Metrics::build(Some(plane))
    }

    fn build(plane: Option<Arc<dyn Observed>>) -> Self {
        let state = Arc::new(Mutex::new(SyncState {
            stale_after: Duration::from_secs(30),
            ..SyncState::default()
        }));
        let buckets = || exponential_buckets(0.0001, 2.0, 17);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            state: state.clone(),
            runs: Family::default(),
            sync_errors: Counter::default(),
            rejected_total: Family::default(),
            rejected_now: Family::default(),
            repairs: Family::default(),
            conflicts: Gauge::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            revision: Gauge::default(),
            desired: Gauge::default(),
            convergence: Histogram::new(buckets()),
            watch_lag: Histogram::new(buckets()),
        };
        let mut r = Registry::default();
        r.register(
            "lwtun_agent_reconcile_runs",
            "Syncs of the table with the fleet, by kind: full (Get + diff), watch (one watch response), retry (after a failed sync)",
            m.runs.clone(),
        );
        r.register(
            "lwtun_agent_repairs",
            "What self-repair put back (or could not), by what: route_restored, route_resteered, route_not_restored, peers_restored, peers_not_restored, decap_reattached, decap_peers_restored, decap_locals_restored, decap_not_repaired",
            m.repairs.clone(),
        );
        r.register(
            "lwtun_agent_reconcile_errors",
            "Syncs the data plane refused (retried at the next keep-alive tick)",
            m.sync_errors.clone(),
        );
        r.register(
            "lwtun_agent_records_rejected",
            "Records refused (a host entering the refused set, or refused for a new reason), by reason",
            m.rejected_total.clone(),
        );
        r.register(
            "lwtun_agent_records_refused",
            "Hosts whose current record is refused, by reason",
            m.rejected_now.clone(),
        );
        r.register(
            "lwtun_agent_prefix_conflicts",
            "Claims of other hosts that get no peer here: an older claim of the same prefix, or this host, holds it",
            m.conflicts.clone(),
        );
        r.register(
            "lwtun_agent_etcd_connected",
            "1 while connected to etcd and watching",
            m.connected.clone(),
        );
        r.register(
            "lwtun_agent_etcd_reconnects",
            "etcd sessions lost",
            m.reconnects.clone(),
        );
        r.register(
            "lwtun_agent_etcd_revision",
            "The etcd revision the table reflects",
            m.revision.clone(),
        );
        r.register(
            "lwtun_agent_desired_peers",
            "Peers the fleet in etcd asks this host's table to hold",
            m.desired.clone(),
        );
        r.register(
            "lwtun_agent_convergence_seconds",
            "From a watch response's arrival to the table equal to the fleet it describes",
            m.convergence.clone(),
        );
        r.register(
            "lwtun_agent_etcd_watch_lag_seconds",
            "From a watch progress request (one per keep-alive tick) to etcd's answer, sent once the watch has delivered every event up to the store's revision: how far the watch runs behind etcd",
            m.watch_lag.clone(),
        );
        if let Some(plane) = plane {
            r.register_collector(Box::new(PlaneCollector { plane, state }));
        }
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The metrics in the OpenMetrics text format (`# EOF` last).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String does not fail, and the collectors only fail on a write.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A sign of life of the agent's loop (see [`Metrics::healthy`]).
    pub fn beat(&self) {
        lock(&self.state).beat = Some(Instant::now());
    }

    /// How long the loop may stay silent before [`Metrics::healthy`] fails (30 s by default).
    pub fn set_stale_after(&self, d: Duration) {
        lock(&self.state).stale_after = d;
    }

    /// Ok while the agent's loop gave a sign of life within the stale time; else why not.
    ///
    /// # Errors
    ///
    /// The reason, one line.
    pub fn healthy(&self) -> Result<(), String> {
        let s = lock(&self.state);
        match s.beat {
            None => Err("the agent loop has not started".into()),
            Some(at) if at.elapsed() > s.stale_after => Err(format!(
                "the agent loop gave no sign of life for {:.1} s (limit {} s)",
                at.elapsed().as_secs_f64(),
                s.stale_after.as_secs()
            )),
            Some(_) => Ok(()),
        }
    }

    /// Ok when the initial sync is done, etcd is connected and `plane` (if given) holds the
    /// table and decap sources the last sync wanted; else why not.
    ///
    /// # Errors
    ///
    /// The reason, one line.
    pub fn ready(&self, plane: Option<&dyn Observed>) -> Result<(), String> {
        let (desired, endpoints) = {
            let s = lock(&self.state);
            if !s.initial_done {
                return Err(match s.sync_error.as_ref().or(s.session_error.as_ref()) {
                    Some(e) => format!("initial sync not done: {e}"),
                    None => "initial sync not done".into(),
                });
            }
            if !s.connected {
                return Err(format!(
                    "not connected to etcd: {}",
                    s.session_error.as_deref().unwrap_or("connecting")
                ));
            }
            if let Some(e) = &s.sync_error {
                return Err(format!("last sync failed: {e}"));
            }
            match s.desired.upgrade() {
                Some(desired) => (desired, s.endpoints.clone()),
                None => return Err("a sync is under way".into()),
            }
        };
        if let Some(plane) = plane {
            let (current, sources) = plane.table();
            let d = diff(current.iter().map(|(p, e)| (*p, e)), &desired);
            if !d.is_empty() {
                return Err(format!(
                    "the table differs from the fleet: {} to add, {} to change, {} to remove",
                    d.insert.len(),
                    d.replace.len(),
                    d.remove.len()
                ));
            }
            if sources != endpoints {
                return Err(format!(
                    "the decap accepts {} sources, the fleet has {}",
                    sources.len(),
                    endpoints.len()
                ));
            }
        }
        Ok(())
    }

    /// Self-repair did `what` (a [`crate::repair::Repair::kind`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let m = lwtun_agent::metrics::Metrics::default();
    /// m.repaired("route_restored");
    /// assert!(m.encode().contains("lwtun_agent_repairs_total{what=\"route_restored\"} 1"));
    /// ```
    pub fn repaired(&self, what: &'static str) {
        self.repairs.get_or_create(&l1("what", what)).inc();
    }

    /// A reconcile of `kind` starts.
    pub fn reconcile(&self, kind: Run) {
        self.runs.get_or_create(&l1("kind", kind.label())).inc();
    }

    /// A sync ended: the fleet it applied, the table it wanted, and its error if any.
    pub fn synced(&self, fleet: &Fleet, desired: PeerMap, revision: i64, error: Option<&str>) {
        let desired = Arc::new(desired);
        self.synced_shared(fleet, &desired, revision, error);
        lock(&self.state).owned = Some(desired);
    }

    /// [`Metrics::synced`] for a table the agent keeps and edits in place: only a weak
    /// reference is kept, so the agent's next edit (`Arc::make_mut`) does not copy it, and a
    /// readiness check made during that edit says a sync is under way.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use lwtun_agent::fleet::{Fleet, PeerMap};
    /// use lwtun_agent::layout::Layout;
    /// use lwtun_agent::metrics::Metrics;
    ///
    /// let f = Fleet::new(Layout::new("/lwtun/fleet", "f").unwrap(), "a", "10.99.0.1".parse().unwrap());
    /// let m = Metrics::default();
    /// let mut table = Arc::new(PeerMap::default());
    /// m.synced_shared(&f, &table, 1, None);
    /// assert!(m.ready(None).is_err(), "not connected to etcd yet");
    /// Arc::make_mut(&mut table).clear(); // no copy: the metrics hold a weak reference
    /// ```
    pub fn synced_shared(
        &self,
        fleet: &Fleet,
        desired: &Arc<PeerMap>,
        revision: i64,
        error: Option<&str>,
    ) {
        if error.is_some() {
            self.sync_errors.inc();
        }
        let refused = fleet.rejected();
        let mut s = lock(&self.state);
        for (host, why) in refused {
            if s.rejected.get(host) != Some(why) {
                self.rejected_total
                    .get_or_create(&l1("reason", rejection_reason(why)))
                    .inc();
            }
        }
        self.rejected_now.clear();
        for why in refused.values() {
            self.rejected_now
                .get_or_create(&l1("reason", rejection_reason(why)))
                .inc();
        }
        s.rejected = refused.clone();
        self.conflicts.set(prefix_conflicts(fleet, desired) as i64);
        self.revision.set(revision);
        self.desired.set(desired.len() as i64);
        s.hosts = fleet
            .members()
            .iter()
            .filter(|(h, _)| h.as_str() != fleet.me())
            .flat_map(|(h, m)| m.record.endpoints().map(move |e| (e, h.clone())))
            .collect();
        s.endpoints = fleet.remote_endpoints();
        s.desired = Arc::downgrade(desired);
        s.owned = None;
        s.sync_error = error.map(str::to_string);
        s.initial_done |= error.is_none();
    }

    /// Connected to etcd and watching (`true`), or the session was lost (`false`, with why).
    pub fn connected(&self, up: bool, why: Option<&str>) {
        self.connected.set(i64::from(up));
        let mut s = lock(&self.state);
        if !up {
            self.reconnects.inc();
            s.session_error = why.map(str::to_string);
        }
        s.connected = up;
        s.beat = Some(Instant::now());
    }

    /// A watch response was applied, `took` after it arrived.
    pub fn converged(&self, took: Duration) {
        self.convergence.observe(took.as_secs_f64());
    }

    /// etcd answered a watch progress request `lag` after it was sent (the watch had
    /// delivered every event up to the store's revision by then).
    pub fn watch_lag(&self, lag: Duration) {
        self.watch_lag.observe(lag.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;
    use crate::record::HostRecord;

    #[test]
    fn every_refusal_of_a_record_has_a_reason_label() {
        let f = Fleet::new(
            Layout::new("/lwtun/fleet", "f").unwrap(),
            "a",
            "10.99.0.1".parse().unwrap(),
        );
        let mut f = f;
        let cases: [(&[u8], &str); 6] = [
            (b"{", "json"),
            (br#"{"endpoint":"::","encap":"ipip"}"#, "endpoint"),
            (br#"{"endpoint":"10.99.0.5","encap":"udp"}"#, "encap"),
            (
                br#"{"endpoint":"10.99.0.5","encap":"ipip","prefixes":["10.1.2.3/8"]}"#,
                "prefix",
            ),
            (br#"{"endpoint":"fd00::5","encap":"ipip"}"#, "family"),
            (
                br#"{"endpoint":"10.99.0.1","encap":"ipip"}"#,
                "own_endpoint",
            ),
        ];
        for (i, (value, want)) in cases.iter().enumerate() {
            let key = format!("/lwtun/fleet/f/hosts/h{i}");
            f.put(key.as_bytes(), value, 2);
            let why = &f.rejected()[&format!("h{i}")];
            assert_eq!(rejection_reason(why), *want, "{why}");
        }
        let many: Vec<String> = (0..=crate::record::MAX_PREFIXES)
            .map(|k| format!("\"10.{}.{}.{}/32\"", k >> 16, (k >> 8) & 255, k & 255))
            .collect();
        let value = format!(
            r#"{{"endpoint":"10.99.0.5","encap":"ipip","prefixes":[{}]}}"#,
            many.join(",")
        );
        let why = HostRecord::decode(value.as_bytes())
            .unwrap_err()
            .to_string();
        assert_eq!(rejection_reason(&why), "too_many_prefixes", "{why}");
    }

    #[test]
    fn readiness_compares_the_table_with_the_last_sync_when_asked() {
        use crate::dataplane::PeerSink;
        let plane = Mutex::new(MemoryTable::default());
        let m = Metrics::default();
        let mut f = Fleet::new(
            Layout::new("/lwtun/fleet", "f").unwrap(),
            "a",
            "10.99.0.1".parse().unwrap(),
        );
        f.put(
            b"/lwtun/fleet/f/hosts/b",
            br#"{"endpoint":"10.99.0.2","encap":"ipip","prefixes":["10.7.0.0/16"]}"#,
            2,
        );
        m.connected(true, None);
        assert_eq!(m.ready(Some(&plane)), Err("initial sync not done".into()));
        m.synced(&f, f.desired(), 2, None);
        assert_eq!(
            m.ready(Some(&plane)),
            Err("the table differs from the fleet: 1 to add, 0 to change, 0 to remove".into())
        );
        {
            let mut t = lock(&plane);
            t.apply(&diff([], &f.desired())).unwrap();
            t.set_remote_endpoints(&f.remote_endpoints()).unwrap();
        }
        assert_eq!(m.ready(Some(&plane)), Ok(()));
        // someone removes the peer behind the agent's back
        lock(&plane).peers.clear();
        assert!(m.ready(Some(&plane)).unwrap_err().contains("1 to add"));
        m.connected(false, Some("etcd at x refused the connection"));
        assert_eq!(
            m.ready(None),
            Err("not connected to etcd: etcd at x refused the connection".into())
        );
        // the watch resumes without a change to apply: ready again at once
        m.connected(true, None);
        assert_eq!(m.ready(None), Ok(()));
        m.synced(&f, f.desired(), 3, Some("apply 1 peer edits: table full"));
        assert_eq!(
            m.ready(None),
            Err("last sync failed: apply 1 peer edits: table full".into())
        );
    }

    #[test]
    fn health_fails_when_the_loop_goes_silent() {
        let m = Metrics::default();
        assert!(m.healthy().unwrap_err().contains("not started"));
        m.set_stale_after(Duration::from_millis(20));
        m.beat();
        assert_eq!(m.healthy(), Ok(()));
        std::thread::sleep(Duration::from_millis(40));
        assert!(m.healthy().unwrap_err().contains("no sign of life"));
    }

    #[test]
    fn conflicts_count_the_losing_claims_and_those_of_own_prefixes() {
        let mut f = Fleet::new(
            Layout::new("/lwtun/fleet", "f").unwrap(),
            "a",
            "10.99.0.1".parse().unwrap(),
        );
        let rec = |ep: &str, p: &str| {
            format!(r#"{{"endpoint":"{ep}","encap":"ipip","prefixes":[{p}]}}"#).into_bytes()
        };
        f.put(
            b"/lwtun/fleet/f/hosts/a",
            &rec("10.99.0.1", "\"10.1.0.0/16\""),
            1,
        );
        f.put(
            b"/lwtun/fleet/f/hosts/b",
            &rec("10.99.0.2", "\"10.1.0.0/16\",\"10.2.0.0/16\""),
            2,
        );
        f.put(
            b"/lwtun/fleet/f/hosts/c",
            &rec("10.99.0.3", "\"10.2.0.0/16\""),
            3,
        );
        f.put(
            b"/lwtun/fleet/f/hosts/d",
            &rec("10.99.0.4", "\"10.2.0.0/16\""),
            4,
        );
        // b's 10.1/16 (own), c's and d's 10.2/16 (b's is older)
        assert_eq!(prefix_conflicts(&f, &f.desired()), 3);
        let m = Metrics::default();
        m.synced(&f, f.desired(), 4, None);
        assert!(m.encode().contains("lwtun_agent_prefix_conflicts 3\n"));
    }

    #[test]
    fn a_refusal_is_counted_once_and_the_current_ones_are_a_gauge() {
        let m = Metrics::default();
        let mut f = Fleet::new(
            Layout::new("/lwtun/fleet", "f").unwrap(),
            "a",
            "10.99.0.1".parse().unwrap(),
        );
        f.put(b"/lwtun/fleet/f/hosts/b", b"{", 2);
        m.synced(&f, PeerMap::new(), 2, None);
        m.synced(&f, PeerMap::new(), 3, None);
        let text = m.encode();
        assert!(
            text.contains("lwtun_agent_records_rejected_total{reason=\"json\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("lwtun_agent_records_refused{reason=\"json\"} 1\n"));
        f.delete(b"/lwtun/fleet/f/hosts/b");
        m.synced(&f, PeerMap::new(), 4, None);
        let text = m.encode();
        assert!(text.contains("lwtun_agent_records_rejected_total{reason=\"json\"} 1\n"));
        assert!(!text.contains("lwtun_agent_records_refused{"), "{text}");
    }
}
