//! The agent's HTTP endpoint (`--metrics-address`): `GET /metrics` (OpenMetrics text),
//! `GET /healthz` (200 while the agent's loop is alive) and `GET /readyz` (200 when the
//! initial sync is done and the table equals the fleet; 503 with a one-line reason otherwise).
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use lwtun_agent::dataplane::MemoryTable;
//! use lwtun_agent::http::Endpoint;
//! use lwtun_agent::metrics::Metrics;
//!
//! let plane = Arc::new(Mutex::new(MemoryTable::default()));
//! let metrics = Metrics::new(plane.clone());
//! tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//!     let endpoint = Endpoint::bind("127.0.0.1:9464".parse().unwrap()).await?;
//!     endpoint.serve(metrics, plane).await
//! })?;
//! # Ok::<(), lwtun_agent::AgentError>(())
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::metrics::{Metrics, Observed};
use crate::AgentError;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct Shared {
    metrics: Metrics,
    plane: Arc<dyn Observed>,
}

/// A bound listener, serving once [`Endpoint::serve`] runs.
///
/// # Examples
///
/// ```
/// use std::io::{Read, Write};
/// use std::sync::{Arc, Mutex};
/// use lwtun_agent::dataplane::MemoryTable;
/// use lwtun_agent::http::Endpoint;
/// use lwtun_agent::metrics::Metrics;
///
/// let plane = Arc::new(Mutex::new(MemoryTable::default()));
/// let metrics = Metrics::new(plane.clone());
/// let (tx, rx) = std::sync::mpsc::channel();
/// let m = metrics.clone();
/// std::thread::spawn(move || {
///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
///     rt.block_on(async {
///         let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap()).await?;
///         tx.send(endpoint.local_addr()?).unwrap();
///         endpoint.serve(m, plane).await
///     })
/// });
/// let address = rx.recv().unwrap();
/// let get = |path: &str| {
///     let mut s = std::net::TcpStream::connect(address).unwrap();
///     write!(s, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
///     let mut answer = String::new();
///     s.read_to_string(&mut answer).unwrap();
///     answer
/// };
/// assert!(get("/healthz").starts_with("HTTP/1.0 503"), "the agent's loop has not started");
/// metrics.beat();
/// assert!(get("/healthz").starts_with("HTTP/1.0 200"));
/// let readyz = get("/readyz");
/// assert!(readyz.starts_with("HTTP/1.0 503") && readyz.ends_with("initial sync not done\n"), "{readyz}");
/// assert!(get("/metrics").contains("lwtun_agent_peers{family=\"ipv6\"} 0"));
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
pub struct Endpoint {
    listener: TcpListener,
}

impl Endpoint {
    /// Listens on `address` (port 0: any free port, see [`Endpoint::local_addr`]); bind it
    /// before loading anything, so a bad address fails at once.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] naming the address (in use, not local, no permission).
    pub async fn bind(address: SocketAddr) -> Result<Self, AgentError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| AgentError::Io {
                op: format!("listen on --metrics-address {address}"),
                source: e,
            })?;
        Ok(Endpoint { listener })
    }

    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] from the socket.
    pub fn local_addr(&self) -> Result<SocketAddr, AgentError> {
        self.listener.local_addr().map_err(|e| AgentError::Io {
            op: "read the metrics listener's address".into(),
            source: e,
        })
    }

    /// Serves requests until the listener fails: `metrics` and `plane`'s counters on
    /// /metrics, `metrics`' health and readiness (checked against `plane`).
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] when accepting fails for good.
    pub async fn serve(self, metrics: Metrics, plane: Arc<dyn Observed>) -> Result<(), AgentError> {
        let router = Router::new()
            .route("/metrics", get(scrape))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .with_state(Shared { metrics, plane });
        axum::serve(self.listener, router)
            .await
            .map_err(|e| AgentError::Io {
                op: "serve the metrics endpoint".into(),
                source: e,
            })
    }
}

async fn scrape(State(s): State<Shared>) -> impl IntoResponse {
    // Reading the counters is a few map lookups per peer: off the runtime's thread.
    let text = tokio::task::spawn_blocking(move || s.metrics.encode())
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, OPENMETRICS)], text)
}

fn verdict(r: Result<(), String>) -> (StatusCode, String) {
    match r {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    verdict(s.metrics.healthy())
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, String) {
    verdict(s.metrics.ready(Some(s.plane.as_ref())))
}
