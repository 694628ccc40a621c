//! The agent's log: `tracing` events on stderr, one line each, with an RFC 3339 UTC timestamp
//! and the level (`2026-12-07T15:04:56.123456Z  WARN agent{host=h1}: etcd at … refused …`).
//!
//! The filter is the `log_level` setting when given (a level or `RUST_LOG`-style directives),
//! else `RUST_LOG`, else `info`; [`Logs::set_level`] changes it while running (SIGHUP).
//!
//! ```no_run
//! let logs = lwtun_agent::logs::Logs::init(Some("info"))?;
//! tracing::info!("started");
//! logs.set_level(Some("debug"))?;
//! # Ok::<(), lwtun_agent::AgentError>(())
//! ```

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::DEFAULT_LOG_LEVEL;
use crate::AgentError;

/// The installed log subscriber: its filter can be changed while running.
///
/// # Examples
///
/// ```no_run
/// let logs = lwtun_agent::logs::Logs::init(None)?; // RUST_LOG, else info
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug)]
pub struct Logs {
    filter: reload::Handle<EnvFilter, Registry>,
}

/// The filter of `level`, else of `RUST_LOG`, else [`DEFAULT_LOG_LEVEL`].
fn filter(level: Option<&str>) -> Result<EnvFilter, AgentError> {
    let bad = |what: &str, e: tracing_subscriber::filter::ParseError| {
        AgentError::Config(format!("{what}: {e}"))
    };
    match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| bad(&format!("log level {l:?}"), e)),
        None => match std::env::var("RUST_LOG") {
            Ok(env) if !env.trim().is_empty() => {
                EnvFilter::try_new(&env).map_err(|e| bad(&format!("RUST_LOG={env:?}"), e))
            }
            _ => Ok(EnvFilter::new(DEFAULT_LOG_LEVEL)),
        },
    }
}

impl Logs {
    /// Installs the process's log subscriber (once per process).
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for a filter that does not parse, or when a subscriber is
    /// already installed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let logs = lwtun_agent::logs::Logs::init(Some("warn,lwtun_agent=debug"))?;
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn init(level: Option<&str>) -> Result<Logs, AgentError> {
        let (layer, handle) = reload::Layer::new(filter(level)?);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false);
        tracing_subscriber::registry()
            .with(layer)
            .with(fmt)
            .try_init()
            .map_err(|e| AgentError::Config(format!("install the log subscriber: {e}")))?;
        Ok(Logs { filter: handle })
    }

    /// Replaces the filter (`None`: `RUST_LOG`, else `info`).
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for a filter that does not parse; the old one stays.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let logs = lwtun_agent::logs::Logs::init(None)?;
    /// logs.set_level(Some("debug"))?;
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn set_level(&self, level: Option<&str>) -> Result<(), AgentError> {
        let new = filter(level)?;
        self.filter
            .reload(new)
            .map_err(|e| AgentError::Config(format!("change the log level: {e}")))
    }
}
