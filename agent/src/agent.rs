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

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchStream,
};
use tokio::sync::mpsc;

use crate::dataplane::PeerSink;
use crate::fleet::{diff, Change, Diff, Fleet, PeerMap};
use crate::record::HostRecord;
use crate::report::{self, Reporter};
use crate::status::{now_us, Status, StatusPeer};
use crate::AgentError;

/// How long one unary etcd call may take before the session counts as lost.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The largest etcd answer taken (a Get of the whole fleet): gRPC's default of 4 MiB would hold
/// only a few large records (etcd takes values up to 1.5 MiB each).
const MAX_MESSAGE: usize = 1 << 30;

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
    table: Option<PeerMap>,
    status: Status,
    /// Keeps a failure that repeats (etcd down, a full table) to one line per
    /// [`report::QUIET`].
    reporter: Reporter,
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
            status,
            reporter: Reporter::default(),
        }
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
    /// Only errors that retrying cannot fix: writing the status file.
    pub async fn run(&mut self, mut control: mpsc::Receiver<Control>) -> Result<(), AgentError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = tokio::time::Instant::now();
            let exit = match self.connect().await {
                Ok(mut client) => self.session(&mut client, &mut control).await,
                Err(e) => Err(e),
            };
            let why = match exit {
                Ok(Exit::Shutdown) => return Ok(()),
                Ok(Exit::Lost(why)) => why,
                Err(AgentError::Io { op, source }) => return Err(AgentError::Io { op, source }),
                Err(e) => report::describe(&e, &self.config.etcd),
            };
            let line = if self.status.connected {
                format!("lost the etcd session: {why}")
            } else {
                why.clone()
            };
            self.say(&line);
            self.status.connected = false;
            self.status.reconnects += 1;
            self.status.last_error = Some(why);
            self.write_status()?;
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
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
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
        let (mut keeper, mut alive) = timed(client.lease_keep_alive(lease)).await?;
        if self.revision == 0 {
            self.full_sync(client).await?;
        }
        let mut watch = self.watch(client).await?;
        self.status.connected = true;
        eprintln!(
            "lwtun-agent {}: watching {} from revision {}",
            self.config.host,
            self.fleet.layout().hosts_prefix(),
            self.revision + 1
        );
        self.write_status()?;
        let period =
            Duration::from_millis((self.config.lease_ttl.max(1) as u64 * 1000 / 3).max(200));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ok(Exit::Lost("watch stream ended".into())),
                        Err(e) => return Ok(Exit::Lost(format!("watch: {}", self.etcd_error(e)))),
                    };
                    if response.compact_revision() > 0 || response.canceled() {
                        // "required revision has been compacted" (or the server cancelled the
                        // watch): the events in between are gone, so start from a Get.
                        eprintln!(
                            "lwtun-agent {}: watch from revision {} cancelled ({}; compacted to {}): full resync",
                            self.config.host, self.revision + 1, response.cancel_reason(), response.compact_revision()
                        );
                        self.status.resyncs += 1;
                        self.full_sync(client).await?;
                        watch = self.watch(client).await?;
                        continue;
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
                        self.sync()?;
                    }
                    if own_gone {
                        // deleted by someone, or our lease expired while we were away
                        eprintln!("lwtun-agent {}: own record deleted: publishing again", self.config.host);
                        self.publish(client).await?;
                        if self.lease != Some(lease) {
                            return Ok(Exit::Lost("lease replaced".into()));
                        }
                    }
                }
                _ = tick.tick() => {
                    if let Err(e) = keeper.keep_alive().await {
                        return Ok(Exit::Lost(format!("lease keep-alive: {}", self.etcd_error(e))));
                    }
                    if self.retry {
                        // the last sync failed (a full table, a kernel error): try again
                        self.sync()?;
                    }
                }
                answer = alive.message() => match answer {
                    Ok(Some(r)) if r.ttl() <= 0 => {
                        self.lease = None;
                        return Ok(Exit::Lost(format!("lease {lease:x} expired")));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(Exit::Lost("keep-alive stream ended".into())),
                    Err(e) => return Ok(Exit::Lost(format!("keep-alive: {}", self.etcd_error(e)))),
                },
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
    fn edits(&mut self) -> (Diff, PeerMap) {
        let changed = self.fleet.take_changed();
        match (changed, self.table.take()) {
            (Some(changed), Some(mut table)) if !self.retry => {
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
                (d, table)
            }
            _ => {
                let desired = self.fleet.desired();
                let current = self.sink.current();
                (
                    diff(current.iter().map(|(p, e)| (*p, e)), &desired),
                    desired,
                )
            }
        }
    }

    /// Applies the difference between the fleet and the table, and writes the status.
    fn sync(&mut self) -> Result<(), AgentError> {
        let (d, table) = self.edits();
        let endpoints = self.fleet.remote_endpoints();
        let mut error = None;
        let mut known = Some(table);
        if !d.is_empty() {
            match self.sink.apply(&d) {
                Ok(()) => eprintln!(
                    "lwtun-agent {}: revision {}: +{} ~{} -{} peers, {} in all",
                    self.config.host,
                    self.revision,
                    d.insert.len(),
                    d.replace.len(),
                    d.remove.len(),
                    known.as_ref().map_or(0, |t| t.len())
                ),
                Err(e) => {
                    // part of it may be applied: read the table again next time
                    known = None;
                    error = Some(format!("apply {} peer edits: {e}", d.len()));
                }
            }
        }
        self.table = known;
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
        self.status.last_error = error;
        self.status.rejected = self.fleet.rejected().clone();
        self.write_status()
    }

    /// Prints a failure on stderr, one line, unless it repeats the last one within
    /// [`report::QUIET`].
    fn say(&mut self, line: &str) {
        if let Some(text) = self.reporter.say(line, std::time::Instant::now()) {
            eprintln!("lwtun-agent {}: {text}", self.config.host);
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
