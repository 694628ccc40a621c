//! The agent's status file: what its table holds and when it last changed, as JSON, replaced
//! atomically (write + rename) after every change. Field names are stable.
//!
//! ```json
//! {"host":"h1","revision":42,"updated_at_us":1764769000123456,"published_at_us":...,
//!  "connected":true,"resyncs":0,"reconnects":1,"peers":[{"prefix":"10.200.2.0/24",
//!  "remote":"10.99.0.2","encap":"udp:6081"}],"decap_peers":["10.99.0.2"],
//!  "rejected":{"h9":"endpoint \"::\": unspecified address"},"last_error":null,
//!  "repairs":{"routes_restored":1,"routes_not_restored":0,"peers_restored":0,
//!  "decap_reattached":0,"decap_peers_restored":0,"reconcile_runs":12,"last_reconcile_us":310,
//!  "last_repair_at_us":1764769001234567,"last_repair":"route 10.192.0.0/10 dev ul0 ... restored
//!  0.3 ms after its deletion"}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::repair::RepairStats;
use crate::AgentError;

/// One peer of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPeer {
    /// The inner prefix.
    pub prefix: String,
    /// The far endpoint.
    pub remote: String,
    /// `udp:PORT`, `gre`, `gre:KEY` or `ipip`.
    pub encap: String,
}

/// The status file's content.
///
/// # Examples
///
/// ```
/// let s = lwtun_agent::status::Status::default();
/// let json = serde_json::to_string(&s).unwrap();
/// let back: lwtun_agent::status::Status = serde_json::from_str(&json).unwrap();
/// assert_eq!(back, s);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This host's name.
    pub host: String,
    /// The etcd revision the table reflects (the last event applied).
    pub revision: i64,
    /// When the agent last applied a change: the table, or the revision it reflects (µs since
    /// the Unix epoch).
    pub updated_at_us: u64,
    /// When this host's own record was last written to etcd: the start of the put that
    /// succeeded (µs since the Unix epoch).
    pub published_at_us: u64,
    /// Whether the agent is connected to etcd and watching.
    pub connected: bool,
    /// Full resyncs after the start (a watch that could not resume: compaction).
    pub resyncs: u64,
    /// Sessions with etcd lost and started again.
    pub reconnects: u64,
    /// The peer table.
    pub peers: Vec<StatusPeer>,
    /// The outer sources accepted by the decap.
    pub decap_peers: Vec<String>,
    /// Hosts whose record was refused, with the reason.
    pub rejected: BTreeMap<String, String>,
    /// The last error (etcd or data plane), if any since the last good sync.
    pub last_error: Option<String>,
    /// What the agent put back after someone else changed it, and its reconciles (absent in
    /// files written before the agent repaired: read as zeros).
    #[serde(default)]
    pub repairs: RepairStats,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Status {
    /// Writes the status to `path` atomically (a temporary file beside it, renamed).
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] naming the file.
    pub fn write(&self, path: &Path) -> Result<(), AgentError> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec(self).map_err(|e| AgentError::Io {
            op: format!("encode status for {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| AgentError::Io {
                op: format!("write status file {}", path.display()),
                source: e,
            })
    }

    /// Reads a status file.
    ///
    /// # Errors
    ///
    /// [`AgentError::Io`] when it cannot be read or parsed.
    pub fn read(path: &Path) -> Result<Status, AgentError> {
        let io = |e: std::io::Error| AgentError::Io {
            op: format!("read status file {}", path.display()),
            source: e,
        };
        let bytes = std::fs::read(path).map_err(io)?;
        serde_json::from_slice(&bytes).map_err(|e| io(std::io::Error::other(e)))
    }
}
