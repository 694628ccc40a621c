//! `lwtun-agent`: one host's fleet agent (see the crate docs and README "Fleet agent").

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use ipnetwork::IpNetwork;
use lwtun::peer::Encap;
use lwtun_agent::agent::{Agent, AgentConfig, Control};
use lwtun_agent::dataplane::{DataPlane, DataPlaneConfig};
use lwtun_agent::fleet::Fleet;
use lwtun_agent::layout::{self, Layout};
use lwtun_agent::record::HostRecord;
use lwtun_agent::AgentError;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum EncapArg {
    /// UDP (FOU) to --udp-port
    Udp,
    /// GRE (with --gre-key if given)
    Gre,
    /// IP-in-IP
    Ipip,
}

/// Keeps this host's lwtun peer table equal to the fleet published in etcd, and publishes
/// this host (endpoint, prefixes) under a lease.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// etcd client URL (repeat for a cluster)
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    etcd: Vec<String>,
    /// Key root of all fleets
    #[arg(long, default_value = layout::DEFAULT_ROOT)]
    root: String,
    /// Fleet name: keys live under ROOT/FLEET/hosts/
    #[arg(long)]
    fleet: String,
    /// This host's name (its key is ROOT/FLEET/hosts/HOST)
    #[arg(long)]
    host: String,
    /// This host's tunnel endpoint (outer address on the underlay); give an IPv4 and an IPv6
    /// one (repeat) when the underlay has both: at most one per family, the first is the one
    /// agents before 0.2 use
    #[arg(long, required = true)]
    endpoint: Vec<IpAddr>,
    /// How the other hosts encapsulate towards this one
    #[arg(long, value_enum, default_value = "udp")]
    encap: EncapArg,
    /// UDP port for --encap udp
    #[arg(long, default_value_t = 6081)]
    udp_port: u16,
    /// GRE key for --encap gre
    #[arg(long)]
    gre_key: Option<u32>,
    /// A prefix behind this host, published (repeatable)
    #[arg(long = "prefix")]
    prefixes: Vec<IpNetwork>,
    /// A file of prefixes to publish too, one per line (# comments); read again on SIGHUP
    #[arg(long)]
    prefix_file: Option<PathBuf>,
    /// A prefix routed into the tunnel, e.g. the fleet's service range (repeatable)
    #[arg(long = "steer", required = true)]
    steer: Vec<IpNetwork>,
    /// This host's inner address, the source of routes into the tunnel (one per family)
    #[arg(long = "source", required = true)]
    sources: Vec<IpAddr>,
    /// Underlay device of the data plane
    #[arg(long)]
    device: String,
    /// Named network namespace of the data plane (the agent itself stays where it runs)
    #[arg(long)]
    netns: Option<String>,
    /// Lease TTL of this host's record in seconds: a dead host disappears this long after
    #[arg(long, default_value_t = 10)]
    lease_ttl: i64,
    /// Peers per table (IPv4 and IPv6 each)
    #[arg(long, default_value_t = 65_536)]
    capacity: u32,
    /// Pin the peer tables in this bpffs folder
    #[arg(long)]
    pin: Option<PathBuf>,
    /// Write the status (JSON: table, revision, timings) to this file after every change
    #[arg(long)]
    status: Option<PathBuf>,
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

/// This host's record from the arguments and the prefix file, checked as others will check it.
fn own_record(args: &Args, encap: Encap) -> Result<HostRecord, AgentError> {
    let mut prefixes = args.prefixes.clone();
    if let Some(file) = &args.prefix_file {
        for p in read_prefix_file(file)? {
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
    }
    let (endpoint, other_endpoint) = endpoints(&args.endpoint)?;
    let record = HostRecord {
        endpoint,
        other_endpoint,
        encap,
        prefixes,
    };
    HostRecord::decode(record.encode().as_bytes())
        .map_err(|e| AgentError::Config(format!("this host's record: {e}")))
}

/// The first `--endpoint` and the one of the other family, if given.
fn endpoints(list: &[IpAddr]) -> Result<(IpAddr, Option<IpAddr>), AgentError> {
    match list {
        [first] => Ok((*first, None)),
        [first, other] if first.is_ipv4() != other.is_ipv4() => Ok((*first, Some(*other))),
        _ => Err(AgentError::Config(format!(
            "--endpoint {}: give one, or one IPv4 and one IPv6",
            list.iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(" --endpoint ")
        ))),
    }
}

async fn run(args: Args) -> Result<(), AgentError> {
    layout::check_name("host", &args.host)?;
    if args.lease_ttl < 1 {
        return Err(AgentError::Config(format!(
            "--lease-ttl {}: at least 1 second",
            args.lease_ttl
        )));
    }
    let encap = match args.encap {
        EncapArg::Udp => Encap::Udp {
            port: args.udp_port,
        },
        EncapArg::Gre => Encap::Gre {
            key: args.gre_key,
            checksum: false,
        },
        EncapArg::Ipip => Encap::Ipip,
    };
    let record = own_record(&args, encap)?;
    let (endpoint, other_endpoint) = (record.endpoint, record.other_endpoint);
    let started = std::time::Instant::now();
    let dataplane = DataPlane::open(&DataPlaneConfig {
        netns: args.netns.clone(),
        device: args.device.clone(),
        endpoint,
        encap,
        sources: args.sources.clone(),
        steer: args.steer.clone(),
        capacity: args.capacity,
        pin: args.pin.clone(),
    })?;
    let mut dataplane = dataplane;
    if let Some(other) = other_endpoint {
        dataplane.add_endpoint(other)?;
    }
    eprintln!(
        "lwtun-agent {}: data plane loaded in {} ms ({} steered prefixes on {})",
        args.host,
        started.elapsed().as_millis(),
        args.steer.len(),
        args.device
    );
    let mut fleet = Fleet::new(Layout::new(&args.root, &args.fleet)?, &args.host, endpoint);
    if let Some(other) = other_endpoint {
        fleet = fleet.with_endpoint(other);
    }
    let config = AgentConfig {
        etcd: args.etcd.clone(),
        host: args.host.clone(),
        record,
        lease_ttl: args.lease_ttl,
        status: args.status.clone(),
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
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => match own_record(&args, encap) {
                    Ok(r) => {
                        if tx.send(Control::Publish(r)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("lwtun-agent {}: SIGHUP: {e}; keeping the published record", args.host),
                },
            }
        }
        let _ = tx.send(Control::Shutdown).await;
    };
    tokio::spawn(signals);
    let mut agent = Agent::new(config, fleet, dataplane);
    agent.run(rx).await
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lwtun-agent: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lwtun-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
