//! The lease's keep-alive, on a thread of its own with its own etcd connection.
//!
//! The agent's loop applies table edits with blocking system calls: an initial sync of a
//! hundred thousand peers, or a host starved of CPU, can hold it for longer than the lease's
//! TTL. Were the keep-alive sent from that loop (or over a connection whose I/O that loop's
//! runtime drives), a busy agent would lose its lease and the fleet would drop a live host's
//! prefixes. So the keep-alive runs on its own thread and runtime, over its own client
//! (same endpoints, TLS and credentials), and only tells the loop when the lease is gone.
//!
//! ```text
//!  agent loop ──(lease id)──► keep-alive thread: connect ─► every TTL/3: keep-alive
//!       ▲                                                       │
//!       └──────────── LeaseEnd (expired / failed) ◄─────────────┘
//! ```

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::{mpsc, oneshot};

use crate::agent::CALL_TIMEOUT;

/// How the keep-alive ended: the agent's session ends with it.
#[derive(Debug)]
pub enum LeaseEnd {
    /// etcd answered with a TTL of 0: the lease is gone (it expired, or was revoked).
    Expired,
    /// The keep-alive's connection or stream failed.
    Failed(etcd_client::Error),
    /// The keep-alive's stream ended without an error.
    StreamEnded,
    /// The keep-alive's thread could not start or a call timed out.
    Stopped(String),
}

/// Keeps one lease alive from its own thread until dropped; [`LeaseKeeper::ended`] resolves when
/// the lease is lost: etcd answered that it is gone, or no keep-alive was answered for a whole
/// TTL (connections that fail meanwhile are made again).
///
/// # Examples
///
/// ```no_run
/// # async fn f(client: &mut etcd_client::Client) -> Result<(), etcd_client::Error> {
/// use lwtun_agent::lease::LeaseKeeper;
///
/// let lease = client.lease_grant(10, None).await?.id();
/// let mut keeper = LeaseKeeper::start(
///     vec!["http://127.0.0.1:2379".into()],
///     etcd_client::ConnectOptions::new(),
///     lease,
///     10,
/// );
/// // ... the agent's work; the lease stays alive however long it blocks ...
/// let end = keeper.ended().await; // only when the lease is lost
/// println!("lease lost: {end:?}");
/// # Ok(()) }
/// ```
pub struct LeaseKeeper {
    ended: mpsc::UnboundedReceiver<LeaseEnd>,
    /// Dropped with the keeper: the thread revokes nothing, it just stops.
    _stop: oneshot::Sender<()>,
}

impl LeaseKeeper {
    /// Starts keeping `lease` (granted with `ttl` seconds) alive, every `ttl / 3` (at least
    /// every 200 ms), over a new connection to `etcd` made with `options`.
    pub fn start(etcd: Vec<String>, options: ConnectOptions, lease: i64, ttl: i64) -> LeaseKeeper {
        let (tell, ended) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let period = Duration::from_millis((ttl.max(1) as u64 * 1000 / 3).max(200));
        let spawned = std::thread::Builder::new()
            .name("lease-keepalive".into())
            .spawn({
                let tell = tell.clone();
                move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = tell.send(LeaseEnd::Stopped(format!("runtime: {e}")));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        tokio::select! {
                            _ = stopped => {}
                            end = keep(etcd, options, lease, period) => {
                                let _ = tell.send(end);
                            }
                        }
                    });
                }
            });
        if let Err(e) = spawned {
            let _ = tell.send(LeaseEnd::Stopped(format!("thread: {e}")));
        }
        LeaseKeeper { ended, _stop: stop }
    }

    /// Resolves when the lease is lost (never while it is kept alive).
    pub async fn ended(&mut self) -> LeaseEnd {
        self.ended
            .recv()
            .await
            .unwrap_or_else(|| LeaseEnd::Stopped("keep-alive thread ended".into()))
    }
}

/// `call`, bounded by the agent's [`CALL_TIMEOUT`]; its error or the timeout as how the
/// keep-alive ends.
async fn within<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, LeaseEnd> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r.map_err(LeaseEnd::Failed),
        Err(_) => Err(LeaseEnd::Stopped(format!(
            "no answer from etcd in {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Keeps the lease alive until it is gone. A failed connection or stream is retried (every
/// 200 ms) for as long as the lease can still be alive — `ttl` since the last answer — so a
/// moment of starved CPU or a slow connect at a busy start does not end the session; the
/// lease is reported lost when etcd says so (TTL 0) or when no keep-alive was answered for a
/// whole TTL (then it has expired in etcd too).
async fn keep(
    etcd: Vec<String>,
    options: ConnectOptions,
    lease: i64,
    period: Duration,
) -> LeaseEnd {
    // period is TTL/3 (see LeaseKeeper::start)
    let ttl = period * 3;
    let mut answered = tokio::time::Instant::now();
    let mut last_error: Option<LeaseEnd> = None;
    loop {
        if answered.elapsed() >= ttl {
            return last_error.unwrap_or(LeaseEnd::Stopped(format!(
                "no keep-alive answered for {ttl:?}"
            )));
        }
        match session(&etcd, &options, lease, period, &mut answered).await {
            LeaseEnd::Expired => return LeaseEnd::Expired,
            other => last_error = Some(other),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One connection's keep-alives, until it fails (or etcd says the lease is gone).
async fn session(
    etcd: &[String],
    options: &ConnectOptions,
    lease: i64,
    period: Duration,
    answered: &mut tokio::time::Instant,
) -> LeaseEnd {
    let connect = Client::connect(etcd, Some(options.clone()));
    let mut client = match within(connect).await {
        Ok(c) => c,
        Err(end) => return end,
    };
    let (mut keeper, mut alive) = match within(client.lease_keep_alive(lease)).await {
        Ok(pair) => pair,
        Err(end) => return end,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(end) = within(keeper.keep_alive()).await {
                    return end;
                }
            }
            answer = alive.message() => match answer {
                Ok(Some(r)) if r.ttl() <= 0 => return LeaseEnd::Expired,
                Ok(Some(_)) => *answered = tokio::time::Instant::now(),
                Ok(None) => return LeaseEnd::StreamEnded,
                Err(e) => return LeaseEnd::Failed(e),
            },
        }
    }
}
