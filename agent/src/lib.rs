//! The lwtun fleet agent: keeps one host's tunnel peer table equal to the rest of the fleet,
//! as published in etcd.
//!
//! Every host publishes its tunnel endpoint and the prefixes behind it under
//! `/lwtun/fleet/<fleet>/hosts/<host>` ([`layout`], [`record`]), under a lease it keeps alive.
//! Every agent watches the fleet's prefix and keeps its host's [`lwtun::tunnel::Tunnel`] peer
//! table equal to "every other host's prefixes → that host's endpoint" ([`fleet`]): one batch
//! at the start (the diff against what the table holds), then the diff of each watch response,
//! and a full Get + diff again when the watch cannot resume (compaction). A host whose agent
//! dies disappears from every table when its lease expires ([`agent`]).
//!
//! The data plane ([`dataplane`]) may live in another network namespace than the agent's
//! process (and its etcd connection): lwtun's devices, netlink sockets and tc attachments
//! name their namespace.
//!
//! ```no_run
//! use lwtun_agent::fleet::{diff, Fleet};
//! use lwtun_agent::layout::Layout;
//!
//! let mut fleet = Fleet::new(Layout::new("/lwtun/fleet", "prod")?, "h1", "10.99.0.1".parse().unwrap());
//! fleet.put(b"/lwtun/fleet/prod/hosts/h2",
//!     br#"{"endpoint":"10.99.0.2","encap":"udp","udp_port":6081,"prefixes":["10.200.2.0/24"]}"#, 7);
//! let edits = diff([], &fleet.desired());
//! assert_eq!(edits.insert.len(), 1);
//! # Ok::<(), lwtun_agent::AgentError>(())
//! ```
#![deny(missing_docs)]

pub mod agent;
pub mod config;
pub mod dataplane;
pub mod etcd;
pub mod fleet;
pub mod http;
pub mod layout;
pub mod lease;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod record;
pub mod repair;
pub mod report;
pub mod status;
pub mod tables;

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bad command line or configuration value; the message says which.
    #[error("configuration: {0}")]
    Config(String),
    /// The lwtun data plane refused (its error names the operation and what to do).
    #[error(transparent)]
    DataPlane(#[from] lwtun::Error),
    /// An etcd request failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// etcd refused this agent's TLS or credentials at start (a wrong CA, client certificate,
    /// user or password): retrying cannot help; the message says what to check.
    #[error("{0}")]
    Access(String),
    /// An etcd request took too long (etcd down or unreachable).
    #[error("etcd did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// A file could not be read or written.
    #[error("{op}: {source}")]
    Io {
        /// What was being done, with the file.
        op: String,
        /// The error.
        source: std::io::Error,
    },
}
