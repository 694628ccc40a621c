//! `lwtun-agent`: one host's fleet agent (see the crate docs and README "Fleet agent").

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};
use ipnetwork::IpNetwork;
use lwtun::peer::Encap;
use lwtun_agent::agent::{Agent, AgentConfig, Control};
use lwtun_agent::config::{Config, Options};
use lwtun_agent::dataplane::{DataPlane, DataPlaneConfig};
use lwtun_agent::etcd::AccessConfig;
use lwtun_agent::fleet::Fleet;
use lwtun_agent::http::Endpoint;
use lwtun_agent::layout::Layout;
use lwtun_agent::logs::Logs;
use lwtun_agent::metrics::Metrics;
use lwtun_agent::notify::{notify, watchdog, READY, STOPPING, WATCHDOG};
use lwtun_agent::record::HostRecord;
use lwtun_agent::AgentError;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn, Instrument};

/// Keeps this host's lwtun peer table equal to the fleet published in etcd, and publishes
/// this host (endpoint, prefixes) under a lease.
///
/// Every flag is also a key of the --config file (`--lease-ttl` is `lease_ttl`, `--prefix`
/// is `prefixes`); a flag overrides the file's key, which overrides the default.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: WithConfig,
}

#[derive(Debug, clap::Args)]
struct WithConfig {
    /// A TOML file of settings (keys: the flags' names in snake case); SIGHUP reads it again
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    options: Options,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the settings (file and flags) and print the effective ones as TOML; exit 0
    /// when valid, 2 when not
    CheckConfig(WithConfig),
}

fn read_prefix_file(path: &Path) -> Result<Vec<IpNetwork>, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::Io {
        op: format!("read prefix file {}", path.display()),
        source: e,
    })?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(line.parse().map_err(|e| {
            AgentError::Config(format!("{}:{}: {line:?}: {e}", path.display(), n + 1))
        })?);
    }
    Ok(out)
}

/// This host's record from the settings and the prefix file, checked as others will check it.
fn own_record(config: &Config, encap: Encap) -> Result<HostRecord, AgentError> {
    let o = config.options();
    let mut prefixes = o.prefixes.clone();
    if let Some(file) = &o.prefix_file {
        for p in read_prefix_file(file)? {
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
    }
    let (endpoint, other_endpoint) = endpoints(config);
    let record = HostRecord {
        endpoint,
        other_endpoint,
        encap,
        prefixes,
    };
    HostRecord::decode(record.encode().as_bytes())
        .map_err(|e| AgentError::Config(format!("this host's record: {e}")))
}

/// The endpoints of validated settings: the first, and the one of the other family if given.
fn endpoints(config: &Config) -> (std::net::IpAddr, Option<std::net::IpAddr>) {
    let list = &config.options().endpoint;
    (
        list.first()
            .copied()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
        list.get(1).copied(),
    )
}

/// SIGHUP: the settings again; the reloadable keys applied, changes to the others refused by
/// name. Returns the settings now in force and the record to publish, if it may have changed.
fn reload(config: &Config, logs: &Logs) -> (Config, Option<HostRecord>) {
    let (new, refused) = match config.reload() {
        Ok(r) => r,
        Err(e) => {
            error!(
                "SIGHUP: {}; keeping the running settings",
                settings_error(&e)
            );
            return (config.clone(), None);
        }
    };
    for key in &refused {
        warn!(
            "SIGHUP: key \"{key}\" cannot change while the agent runs (restart it to apply): keeping {}",
            config.value_of(key)
        );
    }
    if new.options().log_level != config.options().log_level {
        // said before the change, which may silence it
        warn!(
            "SIGHUP: log level {}",
            new.options()
                .log_level
                .as_deref()
                .unwrap_or("from RUST_LOG, else info")
        );
        if let Err(e) = logs.set_level(new.options().log_level.as_deref()) {
            error!("SIGHUP: {e}; keeping the log level");
        }
    }
    match own_record(&new, new.encap()) {
        Ok(r) => (new, Some(r)),
        Err(e) => {
            error!("SIGHUP: {e}; keeping the published record");
            (config.clone(), None)
        }
    }
}

async fn run(config: Config, logs: Logs) -> Result<(), AgentError> {
    if let Some(period) = watchdog() {
        // On this single-threaded runtime the pings stop when the agent's loop blocks, which
        // is what systemd's watchdog should catch.
        let pings = async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                if let Err(e) = notify(WATCHDOG) {
                    warn!("tell systemd WATCHDOG=1: {e}");
                }
            }
        };
        tokio::spawn(pings.in_current_span());
    }
    let o = config.options().clone();
    let encap = config.encap();
    let host = o.host.clone().unwrap_or_default();
    let device = o.device.clone().unwrap_or_default();
    let lease_ttl = o
        .lease_ttl
        .unwrap_or(lwtun_agent::config::DEFAULT_LEASE_TTL);
    let record = own_record(&config, encap)?;
    // Bound before the data plane loads, so a busy address fails at once.
    let metrics_endpoint = match o.metrics_address {
        Some(address) => Some(Endpoint::bind(address).await?),
        None => None,
    };
    let access = AccessConfig {
        ca: o.etcd_ca.clone(),
        cert: o.etcd_cert.clone(),
        key: o.etcd_key.clone(),
        server_name: o.etcd_server_name.clone(),
        user: o.etcd_user.clone(),
        password_file: o.etcd_password_file.clone(),
    }
    .load(&o.etcd)?;
    let reconcile_interval = lwtun_agent::repair::parse_interval(
        o.reconcile_interval
            .as_deref()
            .unwrap_or(lwtun_agent::config::DEFAULT_RECONCILE_INTERVAL),
    )
    .map_err(AgentError::Config)?;
    let started = std::time::Instant::now();
    let (endpoint, other_endpoint) = endpoints(&config);
    let mut dataplane = DataPlane::open(&DataPlaneConfig {
        netns: o.netns.clone(),
        device: device.clone(),
        endpoint,
        encap,
        sources: o.sources.clone(),
        steer: o.steer.clone(),
        capacity: o.capacity.unwrap_or(lwtun_agent::config::DEFAULT_CAPACITY),
        pin: o.pin.clone(),
    })?;
    if let Some(other) = other_endpoint {
        dataplane.add_endpoint(other)?;
    }
    info!(
        "data plane loaded in {} ms ({} steered prefixes on {device})",
        started.elapsed().as_millis(),
        o.steer.len(),
    );
    let mut fleet = Fleet::new(
        Layout::new(
            o.root
                .as_deref()
                .unwrap_or(lwtun_agent::layout::DEFAULT_ROOT),
            o.fleet.as_deref().unwrap_or_default(),
        )?,
        &host,
        endpoint,
    );
    if let Some(other) = other_endpoint {
        fleet = fleet.with_endpoint(other);
    }
    let agent_config = AgentConfig {
        etcd: o.etcd.clone(),
        host: host.clone(),
        record,
        lease_ttl,
        status: o.status.clone(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let io = |e: std::io::Error| AgentError::Io {
        op: "install signal handlers".into(),
        source: e,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    let mut hup = signal(SignalKind::hangup()).map_err(io)?;
    let signals = async move {
        let mut config = config;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let (now, record) = reload(&config, &logs);
                    config = now;
                    if let Some(r) = record {
                        if tx.send(Control::Publish(r)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        if let Err(e) = notify(STOPPING) {
            warn!("tell systemd STOPPING=1: {e}");
        }
        info!("stopping: withdrawing this host");
        let _ = tx.send(Control::Shutdown).await;
    };
    tokio::spawn(signals.in_current_span());
    let dataplane = Arc::new(Mutex::new(dataplane));
    let metrics = Metrics::new(dataplane.clone());
    if let Some(endpoint) = metrics_endpoint {
        info!("metrics on http://{}/metrics", endpoint.local_addr()?);
        let (m, plane) = (metrics.clone(), dataplane.clone());
        tokio::spawn(
            async move {
                if let Err(e) = endpoint.serve(m, plane).await {
                    error!("metrics endpoint: {e}");
                }
            }
            .in_current_span(),
        );
    }
    let mut agent = Agent::new(agent_config, fleet, dataplane)
        .with_metrics(metrics)
        .with_access(access)
        .with_reconcile_interval(reconcile_interval)
        .on_ready(|| {
            info!("initial sync done");
            if let Err(e) = notify(READY) {
                warn!("tell systemd READY=1: {e}");
            }
        });
    agent.run(rx).await
}

/// `check-config`: the effective settings on stdout (exit 0), or the error on stderr (exit 2).
/// Checks what the start checks before touching the data plane: the settings, the prefix
/// file, this host's record.
fn check_config(with: &WithConfig) -> ExitCode {
    // the record too: it reads prefix_file and checks the prefixes as other hosts will
    let checked = Config::load(with.config.as_deref(), &with.options)
        .and_then(|c| own_record(&c, c.encap()).map(|_| c));
    match checked {
        Ok(config) => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lwtun-agent: {}", settings_error(&e));
            ExitCode::from(2)
        }
    }
}

/// A settings error as its one line: `config FILE: key "k": why` without the variant's
/// "configuration:" in front (the line names the file already).
fn settings_error(e: &AgentError) -> String {
    match e {
        AgentError::Config(line) => line.clone(),
        other => other.to_string(),
    }
}

/// The exit code when etcd refuses the agent's TLS or credentials (sysexits.h EX_CONFIG).
const EX_CONFIG: u8 = 78;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CheckConfig(with)) = &cli.command {
        return check_config(with);
    }
    let config = match Config::load(cli.run.config.as_deref(), &cli.run.options) {
        Ok(c) => c,
        Err(e) => {
            // before the log exists: the one line a bad start says
            eprintln!("lwtun-agent: {}", settings_error(&e));
            return ExitCode::from(2);
        }
    };
    let logs = match Logs::init(config.options().log_level.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("lwtun-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let span = tracing::info_span!(
        "agent",
        host = %config.options().host.as_deref().unwrap_or_default()
    );
    let result = runtime.block_on(run(config, logs).instrument(span.clone()));
    let _host = span.enter();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ AgentError::Access(_)) => {
            // sysexits' EX_CONFIG: a unit can stop restarting on it (RestartPreventExitStatus)
            eprintln!("lwtun-agent: {e}");
            ExitCode::from(EX_CONFIG)
        }
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
