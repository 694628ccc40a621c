//! The etcd loop: publish this host under a lease, full sync, watch, resume or resync.
//!
//! ```text
//!  connect ─► lease (reuse the old one while it lives, else grant) ─► put own record
//!     ▲        ─► first time or after compaction: Get prefix, one batch (diff vs table)
//!     │        ─► watch from the last applied revision + 1
//!     │             ├ events: update the fleet, apply the diff (one batch per response)
//!     │             ├ compacted ("required revision has been compacted"): Get + diff again
//!     │             ├ own key deleted: put it again
//!     │             └ keep-alive every TTL/3; lease gone: grant a new one, put again
//!     └──── stream or connection lost: back off (100 ms doubling to TTL/4, at most 2 s), table
//!           kept as is
//! ```
//!
//! The table is never flushed because etcd is unreachable: the data plane keeps forwarding
//! with what it had, and converges again when the watch resumes.
//!
//! While watching, the agent also repairs what someone else changed ([`crate::repair`]):
//! every [`ROUTE_REPAIR_POLL`] it reports the routes its data plane put back, and every
//! reconcile interval ([`Agent::with_reconcile_interval`], default
//! [`DEFAULT_RECONCILE_INTERVAL`]) it checks the data plane (the kernel's tables against what
//! the agent wrote, the decap, the routes), putting back what differs; one reconcile in six
//! (and every one while the table is unknown or a sync failed) also compares the whole table
//! with the fleet. Each repair is one log line and counted in [`RepairStats`].
//! While etcd is away the data plane is still repaired (routes at once by the keeper, the
//! reconcile towards the fleet last seen, between reconnection attempts), and reported.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::dataplane::{PeerSink, ROUTE_REPAIR_POLL};
use crate::etcd::EtcdAccess;
use crate::fleet::{diff, Change, Diff, Fleet, PeerMap};
use crate::lease::{LeaseEnd, LeaseKeeper};
use crate::metrics::{Metrics, Run};
use crate::record::HostRecord;
use crate::repair::{Repair, RepairStats, DEFAULT_RECONCILE_INTERVAL};
use crate::report::{self, Reporter};
use crate::status::{now_us, Status, StatusPeer};
use crate::AgentError;

/// How long one unary etcd call may take before the session counts as lost.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// One reconcile in this many compares the whole table with the fleet (see
/// [`Agent::with_reconcile_interval`]); the others check the data plane only.
const FULL_COMPARE_EVERY: u32 = 6;

/// The largest etcd answer taken (a Get of the whole fleet): gRPC's default of 4 MiB would hold
/// only a few large records (etcd takes values up to 1.5 MiB each).
const MAX_MESSAGE: usize = 1 << 30;

/// How many connections in a row etcd closes without a word before the first session make a
/// TLS mismatch (see [`EtcdAccess::closed_early`]).
const CLOSED_AT_START: u32 = 3;

/// What the agent is asked to do from outside (signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Withdraw this host (revoke the lease) and stop.
    Shutdown,
    /// Publish this record instead of the current one (a new prefix list).
    Publish(HostRecord),
}

/// The agent's settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// etcd client URLs (`http://127.0.0.1:2379`).
    pub etcd: Vec<String>,
    /// This host's name.
    pub host: String,
    /// What this host publishes.
    pub record: HostRecord,
    /// The lease TTL of the published record, in seconds: a host that stops sending
    /// keep-alives is gone from every table this long after.
    pub lease_ttl: i64,
    /// Where to write the status (see [`crate::status`]).
    pub status: Option<PathBuf>,
}

/// Why a session ended.
enum Exit {
    Shutdown,
    Lost(String),
}

/// One host's agent: the fleet it sees and the table it keeps equal to it.
///
/// # Examples
///
/// ```no_run
/// use lwtun_agent::agent::{Agent, AgentConfig};
/// use lwtun_agent::dataplane::MemoryTable;
/// use lwtun_agent::fleet::Fleet;
/// use lwtun_agent::layout::Layout;
/// use lwtun_agent::record::HostRecord;
///
/// let record = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":["10.200.1.0/24"]}"#).unwrap();
/// let fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "h1", record.endpoint);
/// let config = AgentConfig {
///     etcd: vec!["http://127.0.0.1:2379".into()],
///     host: "h1".into(),
///     record,
///     lease_ttl: 10,
///     status: None,
/// };
/// let mut agent = Agent::new(config, fleet, MemoryTable::default());
/// let (_tx, rx) = tokio::sync::mpsc::channel(1);
/// tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
///     .block_on(agent.run(rx))?;
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
pub struct Agent<S: PeerSink> {
    config: AgentConfig,
    key: String,
    fleet: Fleet,
    sink: S,
    lease: Option<i64>,
    /// The revision of the last event applied (0: no full sync yet).
    revision: i64,
    /// The last sync failed: retried at every keep-alive tick until it succeeds.
    retry: bool,
    /// What the table holds, as this agent wrote it (`None`: read it from the sink at the next
    /// sync). Lets a change be applied as the diff of the prefixes it touched only.
    table: Option<Arc<PeerMap>>,
    /// Reconciles since the last full compare of the table with the fleet.
    compares_skipped: u32,
    status: Status,
    /// Keeps a failure that repeats (etcd down, a full table) to one line per
    /// [`report::QUIET`].
    reporter: Reporter,
    metrics: Metrics,
    /// Called once, when the first session has synced the table and watches (see
    /// [`Agent::on_ready`]).
    ready: Option<Box<dyn FnOnce() + Send>>,
    /// TLS and credentials (see [`crate::etcd`]).
    access: EtcdAccess,
    /// A session has started once: failures from then on are retried, whatever they are.
    started: bool,
    /// TLS connections etcd closed right after the handshake, before the first session.
    closed: u32,
    /// How often the table is compared with the fleet and the decap checked.
    reconcile_every: Duration,
    /// When the last reconcile ran (also between sessions, with the fleet last seen).
    reconciled_at: std::time::Instant,
}

impl<S: PeerSink> Agent<S> {
    /// An agent for `config.host`, seeing `fleet`, writing `sink`.
    pub fn new(config: AgentConfig, fleet: Fleet, sink: S) -> Self {
        let key = format!("{}{}", fleet.layout().hosts_prefix(), config.host);
        let status = Status {
            host: config.host.clone(),
            ..Status::default()
        };
        Agent {
            config,
            key,
            fleet,
            sink,
            lease: None,
            revision: 0,
            retry: false,
            table: None,
            compares_skipped: 0,
            status,
            reporter: Reporter::default(),
            metrics: Metrics::default(),
            ready: None,
            access: EtcdAccess::default(),
            started: false,
            closed: 0,
            reconcile_every: DEFAULT_RECONCILE_INTERVAL,
            reconciled_at: std::time::Instant::now(),
        }
    }

    /// Records into `metrics` (see [`crate::metrics`]) instead of a private set.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::agent::{Agent, AgentConfig};
    /// use lwtun_agent::dataplane::MemoryTable;
    /// use lwtun_agent::fleet::Fleet;
    /// use lwtun_agent::layout::Layout;
    /// use lwtun_agent::metrics::Metrics;
    /// use lwtun_agent::record::HostRecord;
    ///
    /// let record = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":[]}"#).unwrap();
    /// let fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "h1", record.endpoint);
    /// let config = AgentConfig { etcd: vec![], host: "h1".into(), record, lease_ttl: 10, status: None };
    /// let metrics = Metrics::default();
    /// let agent = Agent::new(config, fleet, MemoryTable::default()).with_metrics(metrics.clone());
    /// assert!(metrics.ready(None).is_err(), "not synced yet");
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        // Silent for longer than the longest wait between two beats (a keep-alive period, or a
        // backoff plus a connect and a few calls) counts as stuck.
        let ttl = Duration::from_secs(self.config.lease_ttl.max(1) as u64);
        metrics.set_stale_after(ttl + 6 * CALL_TIMEOUT);
        self.metrics = metrics;
        self
    }

    /// Calls `ready` once, when the table first equals the fleet and the watch runs (the
    /// initial sync is done): the moment to tell systemd `READY=1`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use lwtun_agent::agent::{Agent, AgentConfig};
    /// # use lwtun_agent::dataplane::MemoryTable;
    /// # use lwtun_agent::fleet::Fleet;
    /// # use lwtun_agent::layout::Layout;
    /// # use lwtun_agent::record::HostRecord;
    /// # let record = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":[]}"#).unwrap();
    /// # let fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "h1", record.endpoint);
    /// # let config = AgentConfig { etcd: vec!["http://127.0.0.1:2379".into()], host: "h1".into(),
    /// #     record, lease_ttl: 10, status: None };
    /// let agent = Agent::new(config, fleet, MemoryTable::default())
    ///     .on_ready(|| { let _ = lwtun_agent::notify::notify(lwtun_agent::notify::READY); });
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn on_ready(mut self, ready: impl FnOnce() + Send + 'static) -> Self {
        self.ready = Some(Box::new(ready));
        self
    }

    /// Reaches etcd with `access` (TLS, user and password) instead of plain http without
    /// credentials.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun_agent::agent::{Agent, AgentConfig};
    /// use lwtun_agent::dataplane::MemoryTable;
    /// use lwtun_agent::etcd::AccessConfig;
    /// use lwtun_agent::fleet::Fleet;
    /// use lwtun_agent::layout::Layout;
    /// use lwtun_agent::record::HostRecord;
    ///
    /// let etcd = vec!["https://10.0.0.9:2379".to_string()];
    /// let access = AccessConfig {
    ///     ca: Some("/etc/lwtun/etcd-ca.pem".into()),
    ///     cert: Some("/etc/lwtun/agent.pem".into()),
    ///     key: Some("/etc/lwtun/agent-key.pem".into()),
    ///     ..AccessConfig::default()
    /// }
    /// .load(&etcd)?;
    /// let record = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":[]}"#).unwrap();
    /// let fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "h1", record.endpoint);
    /// let config = AgentConfig { etcd, host: "h1".into(), record, lease_ttl: 10, status: None };
    /// let agent = Agent::new(config, fleet, MemoryTable::default()).with_access(access);
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn with_access(mut self, access: EtcdAccess) -> Self {
        self.access = access;
        self
    }

    /// Sets how often the agent compares its table with the fleet and checks its decap, putting
    /// back what someone else changed (default [`DEFAULT_RECONCILE_INTERVAL`]; at least 1 ms).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use lwtun_agent::agent::{Agent, AgentConfig};
    /// use lwtun_agent::dataplane::MemoryTable;
    /// use lwtun_agent::fleet::Fleet;
    /// use lwtun_agent::layout::Layout;
    /// use lwtun_agent::record::HostRecord;
    ///
    /// let record = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"ipip","prefixes":[]}"#).unwrap();
    /// let fleet = Fleet::new(Layout::new("/lwtun/fleet", "f")?, "h1", record.endpoint);
    /// let config = AgentConfig {
    ///     etcd: vec!["http://127.0.0.1:2379".into()],
    ///     host: "h1".into(),
    ///     record,
    ///     lease_ttl: 10,
    ///     status: None,
    /// };
    /// let agent = Agent::new(config, fleet, MemoryTable::default())
    ///     .with_reconcile_interval(Duration::from_secs(2));
    /// assert_eq!(agent.reconcile_interval(), Duration::from_secs(2));
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn with_reconcile_interval(mut self, every: Duration) -> Self {
        self.reconcile_every = every.max(Duration::from_millis(1));
        self
    }

    /// How often the agent reconciles (see [`Agent::with_reconcile_interval`]).
    pub fn reconcile_interval(&self) -> Duration {
        self.reconcile_every
    }

    /// What the agent repaired since it started (also in the status file, `"repairs"`).
    pub fn repair_stats(&self) -> &RepairStats {
        &self.status.repairs
    }

    /// The table.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The fleet as last seen.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The current status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Runs until [`Control::Shutdown`] arrives (or the sender is dropped), reconnecting to
    /// etcd as often as needed.
    ///
    /// # Errors
    ///
    /// Only errors that retrying cannot fix: writing the status file, and
    /// [`AgentError::Access`] when etcd refuses the agent's TLS or credentials before the first
    /// session started (see [`EtcdAccess::refusal`]); later the same failures are retried.
    pub async fn run(&mut self, mut control: mpsc::Receiver<Control>) -> Result<(), AgentError> {
        let mut backoff = Duration::from_millis(100);
        let mut quiet = false;
        loop {
            self.metrics.beat();
            let started = tokio::time::Instant::now();
            let exit = match self.connect().await {
                Ok(mut client) => self.session(&mut client, &mut control).await,
                Err(e) => Err(e),
            };
            let why = match exit {
                Ok(Exit::Shutdown) => return Ok(()),
                Ok(Exit::Lost(why)) => why,
                Err(AgentError::Io { op, source }) => return Err(AgentError::Io { op, source }),
                // TLS or credentials refused: fatal at start, retried once a session ran
                Err(e) => match self.access.refusal(&e, &self.config.etcd) {
                    Some(line) if !self.started => return Err(AgentError::Access(line)),
                    Some(line) => line,
                    None => {
                        // closed without a word every time at start: a TLS mismatch (the
                        // TLS 1.3 alert refusing a client certificate can be lost with the
                        // connection); said once it is sure, not once per try
                        match self.access.closed_early(&e, &self.config.etcd) {
                            Some(line) if !self.started => {
                                self.closed += 1;
                                if self.closed >= CLOSED_AT_START {
                                    return Err(AgentError::Access(line));
                                }
                                quiet = true;
                            }
                            _ => self.closed = 0,
                        }
                        report::describe(&e, &self.config.etcd)
                    }
                },
            };
            let line = if self.status.connected {
                format!("lost the etcd session: {why}")
            } else {
                why.clone()
            };
            if !std::mem::take(&mut quiet) {
                self.say(&line);
            }
            self.metrics.connected(false, Some(&why));
            self.status.connected = false;
            self.status.reconnects += 1;
            self.status.last_error = Some(why);
            self.write_status()?;
            // etcd away: the data plane is still repaired, towards the fleet last seen.
            let done = self.sink.route_repairs();
            self.repaired(done)?;
            if self.revision > 0 && self.reconciled_at.elapsed() >= self.reconcile_every {
                // its sync must not make the status forget that etcd is away
                let why = self.status.last_error.clone();
                self.reconcile()?;
                if self.status.last_error.is_none() {
                    self.status.last_error = why;
                    self.write_status()?;
                }
            }
            if started.elapsed() > Duration::from_secs(5) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                c = control.recv() => match c {
                    Some(Control::Publish(r)) => self.config.record = r,
                    Some(Control::Shutdown) | None => return Ok(()),
                },
            }
            // At most a quarter of the TTL, so the lease outlives an etcd restart.
            let most = Duration::from_millis((self.config.lease_ttl.max(1) as u64 * 250).min(2000));
            backoff = (backoff * 2).min(most);
        }
    }

    async fn connect(&self) -> Result<Client, AgentError> {
        let options = self.access.connect_options();
        timed(Client::connect(&self.config.etcd, Some(options))).await
    }

    /// A live lease for this host's record: the previous one while etcd still has it.
    async fn lease(&mut self, client: &mut Client) -> Result<i64, AgentError> {
        if let Some(id) = self.lease {
            let ttl = timed(client.lease_time_to_live(id, None)).await?.ttl();
            if ttl > 0 {
                return Ok(id);
            }
        }
        let id = timed(client.lease_grant(self.config.lease_ttl, None))
            .await?
            .id();
        self.lease = Some(id);
        Ok(id)
    }

    async fn publish(&mut self, client: &mut Client) -> Result<(), AgentError> {
        let lease = self.lease(client).await?;
        let value = self.config.record.encode();
        // the moment the change is written (before the call: watchers may see it first)
        let at = now_us();
        let put = client.put(
            self.key.clone(),
            value,
            Some(PutOptions::new().with_lease(lease)),
        );
        timed(put).await?;
        self.status.published_at_us = at;
        Ok(())
    }

    /// Get + diff: the fleet and the table from scratch, in one batch.
    async fn full_sync(&mut self, client: &Client) -> Result<(), AgentError> {
        let prefix = self.fleet.layout().hosts_prefix().to_string();
        let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
        let got = timed(kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        self.fleet.clear();
        for kv in got.kvs() {
            self.fleet.put(kv.key(), kv.value(), kv.create_revision());
        }
        self.revision = got.header().map(|h| h.revision()).unwrap_or(self.revision);
        self.metrics.reconcile(Run::Full);
        self.sync()
    }

    async fn watch(&self, client: &Client) -> Result<WatchStream, AgentError> {
        let prefix = self.fleet.layout().hosts_prefix().to_string();
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1);
        let mut watch = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
        timed(watch.watch(prefix, Some(options))).await
    }

    async fn session(
        &mut self,
        client: &mut Client,
        control: &mut mpsc::Receiver<Control>,
    ) -> Result<Exit, AgentError> {
        self.publish(client).await?;
        let lease = self.lease.unwrap_or_default();
        // on its own thread: a long table write here does not starve it
        let mut keeper = LeaseKeeper::start(
            self.config.etcd.clone(),
            self.access.connect_options(),
            lease,
            self.config.lease_ttl,
        );
        if self.revision == 0 {
            self.full_sync(client).await?;
        }
        let mut watch = self.watch(client).await?;
        self.started = true;
        self.status.connected = true;
        self.metrics.connected(true, None);
        info!(
            "watching {} from revision {}",
            self.fleet.layout().hosts_prefix(),
            self.revision + 1
        );
        self.write_status()?;
        if let Some(ready) = self.ready.take() {
            ready();
        }
        let period =
            Duration::from_millis((self.config.lease_ttl.max(1) as u64 * 1000 / 3).max(200));
        let mut tick = tokio::time::interval(period);
        // A progress request sent at a tick: etcd answers (an empty response) once the watch
        // has sent every event up to the store's revision, so the wait is the watch's lag.
        let mut progress_asked: Option<std::time::Instant> = None;
        let mut repairs = tokio::time::interval(ROUTE_REPAIR_POLL);
        let mut reconcile = tokio::time::interval_at(
            tokio::time::Instant::now() + self.reconcile_every,
            self.reconcile_every,
        );
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = repairs.tick() => {
                    let done = self.sink.route_repairs();
                    self.repaired(done)?;
                }
                _ = reconcile.tick() => self.reconcile()?,
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ok(Exit::Lost("watch stream ended".into())),
                        Err(e) => return Ok(Exit::Lost(format!("watch: {}", self.etcd_error(e)))),
                    };
                    let received = std::time::Instant::now();
                    if response.compact_revision() > 0 || response.canceled() {
                        // "required revision has been compacted" (or the server cancelled the
                        // watch): the events in between are gone, so start from a Get.
                        warn!(
                            "watch from revision {} cancelled ({}; compacted to {}): full resync",
                            self.revision + 1, response.cancel_reason(), response.compact_revision()
                        );
                        self.status.resyncs += 1;
                        self.full_sync(client).await?;
                        watch = self.watch(client).await?;
                        continue;
                    }
                    if response.events().is_empty() {
                        if let Some(at) = progress_asked.take() {
                            self.metrics.watch_lag(received - at);
                        }
                    }
                    let mut own_gone = false;
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => {
                                self.fleet.put(kv.key(), kv.value(), kv.create_revision());
                            }
                            EventType::Delete => {
                                own_gone |= self.fleet.delete(kv.key()) == Change::Own;
                            }
                        }
                        self.revision = self.revision.max(kv.mod_revision());
                    }
                    if !response.events().is_empty() {
                        self.metrics.reconcile(Run::Watch);
                        self.sync()?;
                        if !self.retry {
                            self.metrics.converged(received.elapsed());
                        }
                    }
                    if own_gone {
                        // deleted by someone, or our lease expired while we were away
                        warn!("own record deleted: publishing again");
                        self.publish(client).await?;
                        if self.lease != Some(lease) {
                            return Ok(Exit::Lost("lease replaced".into()));
                        }
                    }
                }
                _ = tick.tick() => {
                    self.metrics.beat();
                    if progress_asked.is_none() && watch.request_progress().await.is_ok() {
                        progress_asked = Some(std::time::Instant::now());
                    }
                    if self.retry {
                        // the last sync failed (a full table, a kernel error): try again
                        self.metrics.reconcile(Run::Retry);
                        self.sync()?;
                    }
                }
                end = keeper.ended() => return Ok(Exit::Lost(match end {
                    LeaseEnd::Expired => {
                        self.lease = None;
                        format!("lease {lease:x} expired")
                    }
                    LeaseEnd::Failed(e) => format!("lease keep-alive: {}", self.etcd_error(e)),
                    LeaseEnd::StreamEnded => "keep-alive stream ended".into(),
                    LeaseEnd::Stopped(why) => format!("lease keep-alive: {why}"),
                })),
                c = control.recv() => match c {
                    Some(Control::Publish(record)) => {
                        self.config.record = record;
                        self.publish(client).await?;
                        self.write_status()?;
                    }
                    Some(Control::Shutdown) | None => {
                        // Withdraw at once rather than at lease expiry.
                        let _ = timed(client.lease_revoke(lease)).await;
                        self.lease = None;
                        return Ok(Exit::Shutdown);
                    }
                },
            }
        }
    }

    /// The edits that bring the table to the fleet, and the table they make: the diff of the
    /// prefixes the fleet changed since the last sync when the table is known, else of all.
    fn edits(&mut self) -> (Diff, Arc<PeerMap>) {
        let changed = self.fleet.take_changed();
        match (changed, self.table.take()) {
            (Some(changed), Some(mut shared)) if !self.retry => {
                // the metrics hold a weak reference only: no copy
                let table = Arc::make_mut(&mut shared);
                let mut d = Diff::default();
                for p in changed {
                    match (table.get(&p), self.fleet.desired_of(&p)) {
                        (Some(_), None) => d.remove.push(p),
                        (None, Some(want)) => d.insert.push((p, want)),
                        (Some(have), Some(want)) if *have != want => d.replace.push((p, want)),
                        _ => {}
                    }
                }
                for p in &d.remove {
                    table.remove(p);
                }
                for (p, e) in d.replace.iter().chain(&d.insert) {
                    table.insert(*p, *e);
                }
                (d, shared)
            }
            _ => {
                let desired = self.fleet.desired();
                let current = self.sink.current();
                (
                    diff(current.iter().map(|(p, e)| (*p, e)), &desired),
                    Arc::new(desired),
                )
            }
        }
    }

    /// Applies the difference between the fleet and the table, and writes the status.
    fn sync(&mut self) -> Result<(), AgentError> {
        let (d, table) = self.edits();
        let endpoints = self.fleet.remote_endpoints();
        let mut error = None;
        let mut known = true;
        if !d.is_empty() {
            match self.sink.apply(&d) {
                Ok(()) => info!(
                    "revision {}: +{} ~{} -{} peers, {} in all",
                    self.revision,
                    d.insert.len(),
                    d.replace.len(),
                    d.remove.len(),
                    table.len()
                ),
                Err(e) => {
                    // part of it may be applied: read the table again next time
                    known = false;
                    error = Some(format!("apply {} peer edits: {e}", d.len()));
                }
            }
        }
        self.table = known.then(|| table.clone());
        if endpoints != self.sink.remote_endpoints() {
            if let Err(e) = self.sink.set_remote_endpoints(&endpoints) {
                error.get_or_insert(format!("decap peers: {e}"));
            }
        }
        if let Some(e) = &error {
            let line = format!("{e}; retrying");
            self.say(&line);
        }
        if !d.is_empty() || error.is_some() || self.status.revision != self.revision {
            self.status.updated_at_us = now_us();
        }
        self.status.revision = self.revision;
        self.retry = error.is_some();
        self.metrics
            .synced_shared(&self.fleet, &table, self.revision, error.as_deref());
        self.status.last_error = error;
        self.status.rejected = self.fleet.rejected().clone();
        self.write_status()
    }

    /// The full reconcile: the decap checked, then the table compared with the fleet and put
    /// back where it differs (nothing changed in the fleet since the last sync, so any
    /// difference was made from outside, or is an edit that failed and is retried).
    fn reconcile(&mut self) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        self.metrics.reconcile(Run::Repair);
        let mut done = self.sink.check();
        // The sink's table changes only by this agent's edits (`check` has just put back the
        // kernel's copy), so while the agent knows what it wrote the fleet-vs-table compare —
        // O(table), a rebuild of the whole desired table — is a safety net against this
        // agent's own mistakes: run every FULL_COMPARE_EVERY reconciles, and always when the
        // table is unknown or the last sync failed.
        self.compares_skipped += 1;
        let full =
            self.table.is_none() || self.retry || self.compares_skipped >= FULL_COMPARE_EVERY;
        let drift = if full {
            self.compares_skipped = 0;
            let desired = self.fleet.desired();
            let current = self.sink.current();
            let drift = diff(current.iter().map(|(p, e)| (*p, e)), &desired).len();
            if drift > 0 {
                // what it wrote is not what the table holds: start again from the table
                self.table = None;
            }
            drift
        } else {
            0
        };
        let endpoints_drift = self.fleet.remote_endpoints() != self.sink.remote_endpoints();
        if drift > 0 || endpoints_drift || !done.is_empty() || self.retry {
            let failed_before = self.retry;
            self.sync()?;
            if drift > 0 && !failed_before && !self.retry {
                done.push(Repair::PeersRestored { edits: drift });
            }
        }
        self.status.repairs.reconciled(started.elapsed());
        self.reconciled_at = std::time::Instant::now();
        if done.is_empty() {
            return Ok(());
        }
        self.repaired(done)
    }

    /// Logs and counts what was repaired, and writes the status when anything was.
    fn repaired(&mut self, done: Vec<Repair>) -> Result<(), AgentError> {
        if done.is_empty() {
            return Ok(());
        }
        let at = now_us();
        for r in &done {
            info!("repaired: {r}");
            self.metrics.repaired(r.kind());
            self.status.repairs.count(r, at);
        }
        self.write_status()
    }

    /// Logs a failure (a warning, one line) unless it repeats the last one within
    /// [`report::QUIET`].
    fn say(&mut self, line: &str) {
        if let Some(text) = self.reporter.say(line, std::time::Instant::now()) {
            warn!("{text}");
        }
    }

    /// An etcd client error in one line, naming the endpoints.
    fn etcd_error(&self, e: etcd_client::Error) -> String {
        report::describe(&AgentError::Etcd(e), &self.config.etcd)
    }

    fn write_status(&mut self) -> Result<(), AgentError> {
        let Some(path) = &self.config.status else {
            return Ok(());
        };
        self.status.peers = self
            .sink
            .current()
            .iter()
            .map(|(p, e)| StatusPeer {
                prefix: p.to_string(),
                remote: e.remote.to_string(),
                encap: match e.encap {
                    lwtun::peer::Encap::Udp { port } => format!("udp:{port}"),
                    lwtun::peer::Encap::Gre { key: Some(k), .. } => format!("gre:{k}"),
                    lwtun::peer::Encap::Gre { key: None, .. } => "gre".into(),
                    other => other.name().into(),
                },
            })
            .collect();
        self.status.decap_peers = self
            .sink
            .remote_endpoints()
            .iter()
            .map(|a| a.to_string())
            .collect();
        self.status.write(path)
    }
}

/// `call` with [`CALL_TIMEOUT`].
async fn timed<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(AgentError::Timeout(CALL_TIMEOUT)),
    }
}
