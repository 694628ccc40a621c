//! `lwtun`: look at and change lwtun data planes from a shell, in the habits of `ip` and
//! `bpftool`. Every data-plane operation goes through the library; what the command makes
//! (pinned peer tables, routes, underlay fix-ups, XDP programs) outlives it, and a library user
//! adopts it with `Tunnel::builder().pin(DIR).load()`.

#[cfg(feature = "capture")]
mod capture;
mod spec;
mod view;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ipnetwork::IpNetwork;
use libbpf_rs::MapCore;
use serde::Serialize;

use lwtun::decap::{Decap, DecapPeer};
use lwtun::netlink::route::Route;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::MissPolicy;
use lwtun::route::{lwt_routes, RTPROT_LWTUN};
use lwtun::tc::{TcAttach, TcDirection, TcMode};
use lwtun::tunnel::{PinnedTunnel, Tunnel, DEFAULT_CAPACITY};
use lwtun::xdp::{Stage, StatsMap, XdpAction, XdpAttachment, XdpMode, XdpOptions, XdpPass};
use lwtun::{Error, ErrorKind, Result};

use view::{opt, table, HookView, MapView, PeerStatsView, PeerView, RouteView, StatsView};

/// The JSON field names, printed at the end of `lwtun --help` (also in the README).
const JSON_FIELDS: &str = "\
JSON output (-j, stable field names):
  peer show:    [{prefix, remote, local, encap (ipip|gre|udp), gre_key, gre_checksum,
                  udp_port, ttl, tos (number or \"inherit\")}]
  peer stats:   {peers: [{prefix, packets, bytes, errors}],
                 misses: {dropped_v4, dropped_v6, passed_v4, passed_v6, not_ip}}
  route show:   [{dst, table, protocol, lwtun, dev, oif, gateway, src, metric,
                  hooks: [{hook (in|out|xmit|seg6local), name, program_id}]}]
  route add:    one route object as in route show
  tunnel show:  {pin, capacity, peers_v4, peers_v6, miss_policy_v4, miss_policy_v6,
                 misses, maps: [{name, id}], program_ids, routes, fixups, adopted}
                (tunnel load prints the same)
  decap show:   {pin, locals, peers: [{prefix, gre_key}], decapsulated, dropped,
                 counters: {VERDICT: {packets, bytes}}, links} (decap attach: the same)
  xdp stats:    one object per sample: {dev, program_id, interval_secs,
                 actions: [{action, packets, bytes, pps, bps}]}
  leftovers:    {tunnel_pins: [{pin, owner_pid}], routes, tc_filters: [{dev, direction, name}],
                 xdp: [{dev, program_id}], nexthops: [{id, dev}], removed_routes,
                 removed_tc_filters, removed_xdp, removed_nexthops}
Errors print the library's message and exit 1; usage errors exit 2.
A pinned tunnel is owned by one process at a time (an flock on its folder): while a library
process has it loaded, commands that change it are refused naming the owner's pid; the show
and stats commands read the pins and work meanwhile.";

#[derive(Parser)]
#[command(name = "lwtun", version, about = "Look at and change lwtun data planes", after_help = JSON_FIELDS)]
struct Cli {
    /// Print JSON (see the field names below).
    #[arg(short = 'j', long, global = true)]
    json: bool,
    /// Pretty-print JSON (implies -j, as in bpftool).
    #[arg(short = 'p', long, global = true)]
    pretty: bool,
    /// Act in the named network namespace (/run/netns/NAME), as `ip -n`.
    #[arg(short = 'n', long = "netns", value_name = "NAME", global = true)]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load, show and unload a pinned tunnel data plane.
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// Add, delete and show the peers of a pinned tunnel.
    Peer {
        #[command(subcommand)]
        command: PeerCommand,
    },
    /// Steer prefixes into a pinned tunnel; show LWT BPF routes (lwtun's and others').
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Attach lwtun's XDP programs and read their per-action counters.
    Xdp {
        #[command(subcommand)]
        command: XdpCommand,
    },
    /// Decapsulate tunnel packets at tc ingress of a device (tables pinned in a folder).
    Decap {
        #[command(subcommand)]
        command: DecapCommand,
    },
    /// Capture packets at an XDP, tc or route hook to a pcap file, with a tcpdump filter.
    #[cfg(feature = "capture")]
    Capture(capture::CaptureArgs),
    /// What lwtun left: tunnel pin folders, routes, tc filters, XDP programs (and remove them).
    Leftovers {
        /// Remove the routes tagged proto 76, the `lwtun:` tc filters and lwtun's XDP programs
        /// in this namespace (not tunnel pins: use `lwtun tunnel unload`).
        #[arg(long)]
        remove: bool,
    },
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Miss {
    Drop,
    Pass,
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Load a tunnel pinned in DIR (adopts the pins already there) and leave it pinned.
    Load {
        /// The pin folder on bpffs (for example /sys/fs/bpf/lwtun/t0).
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Peers per table (IPv4 and IPv6 each; default 4096); fixed when the folder is
        /// first made.
        #[arg(long)]
        capacity: Option<u32>,
        /// What the encap does with packets that match no peer (both families).
        #[arg(long, value_enum)]
        miss: Option<Miss>,
    },
    /// The maps, program ids, peer counts and routes of a pinned tunnel.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
    /// Remove the tunnel's routes (in this namespace), fix-ups, pins and folder.
    Unload {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Add a peer: PREFIX remote ADDR local ADDR encap { ipip | gre [key N] [csum] | udp port N }
    /// [ttl N|inherit] [tos N|inherit]; or every line of a file with -b.
    Add {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Peers from FILE (`-`: standard input), one per line in the words above (`#`
        /// comments): every line is checked first; a bad one is reported as FILE:LINE and
        /// nothing is applied.
        #[arg(
            short = 'b',
            long = "batch",
            value_name = "FILE",
            conflicts_with = "words"
        )]
        batch: Option<PathBuf>,
        /// The peer's words.
        #[arg(
            value_name = "PEER",
            trailing_var_arg = true,
            required_unless_present = "batch"
        )]
        words: Vec<String>,
    },
    /// Delete the peers of the given prefixes.
    Del {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        #[arg(value_name = "PREFIX", required = true)]
        prefixes: Vec<String>,
    },
    /// List the peers.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
    /// Per-peer packet, byte and error counters, and the table's miss counters.
    Stats {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Only this peer.
        prefix: Option<String>,
    },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// Route PREFIX into the tunnel pinned in DIR; the route stays after the command ends.
    Add {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
        /// The underlay device (the IP-in-IP GSO fix-up is attached to it for IPv4 prefixes).
        #[arg(long)]
        dev: String,
        /// Gateway.
        #[arg(long)]
        via: Option<IpAddr>,
        /// This host's inner address: the route's preferred source.
        #[arg(long)]
        src: Option<IpAddr>,
        #[arg(long)]
        table: Option<u32>,
        #[arg(long)]
        metric: Option<u32>,
        /// Send encapsulated IPv4-in-IPv4 packets by this route's next hop (no second lookup).
        #[arg(long)]
        direct: bool,
        /// Allow a route without a source (the tunnel only forwards).
        #[arg(long)]
        forward_only: bool,
    },
    /// Delete lwtun's route to PREFIX.
    Del {
        prefix: String,
        #[arg(long)]
        table: Option<u32>,
    },
    /// Every LWT BPF route with its hooks, program names and ids, whoever made it.
    Show,
}

#[derive(Clone, Copy, ValueEnum)]
enum XdpProgramName {
    Pass,
    Drop,
    Tx,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Attach one of lwtun's counting XDP programs to DEV (stays attached after the command).
    Attach {
        dev: String,
        #[arg(long, value_enum, default_value = "pass")]
        program: XdpProgramName,
        #[arg(long, value_enum, default_value = "auto")]
        mode: Mode,
    },
    /// Detach the XDP program of DEV (netlink attachments, any mode).
    Detach { dev: String },
    /// Per-action counters of the lwtun XDP program on DEV, with rates.
    Stats {
        dev: String,
        /// Sample again every SECS seconds (like `watch`) until interrupted or --count samples.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// With --watch: stop after this many samples.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Seconds over which the rates of a single sample are measured.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

#[derive(Subcommand)]
enum DecapCommand {
    /// Attach the decap to DEV's tc ingress, with its tables pinned in DIR (adopted when there);
    /// --local, --peer and --udp-port add to the tables. It stays attached after the command.
    Attach {
        dev: String,
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// A local tunnel endpoint address (outer destination to decapsulate).
        #[arg(long, value_name = "ADDR")]
        local: Vec<IpAddr>,
        /// A peer's outer source prefix, optionally requiring a GRE key: PREFIX[,key=N].
        #[arg(long, value_name = "PREFIX[,key=N]")]
        peer: Vec<String>,
        /// A UDP destination port to decapsulate (FOU).
        #[arg(long, value_name = "PORT")]
        udp_port: Vec<u16>,
    },
    /// Detach the decap of DIR from DEV; detaching the last one removes the pins and folder.
    Detach {
        dev: String,
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
    /// The decap's local endpoints, peers, counters and the devices it is attached to.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
}

/// What every command gets: output options and the namespace to act in.
pub(crate) struct Ctx {
    json: bool,
    pretty: bool,
    netns: NetNs,
}

impl Ctx {
    pub(crate) fn netlink(&self) -> Result<Netlink> {
        Netlink::open_in(&self.netns)
    }

    fn print_json<T: Serialize>(&self, value: &T) -> Result<()> {
        let text = if self.pretty {
            serde_json::to_string_pretty(value)
        } else {
            serde_json::to_string(value)
        }
        .map_err(|e| Error::other(ErrorKind::Kernel, "print JSON", e.to_string()))?;
        println!("{text}");
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lwtun: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "lwtun", &mut std::io::stdout());
        return Ok(());
    }
    let netns = match &cli.netns {
        Some(name) => NetNs::open(name)?,
        None => NetNs::current()?,
    };
    let ctx = Ctx {
        json: cli.json || cli.pretty,
        pretty: cli.pretty,
        netns,
    };
    match cli.command {
        Command::Tunnel { command } => tunnel(&ctx, command),
        Command::Peer { command } => peer(&ctx, command),
        Command::Route { command } => route(&ctx, command),
        Command::Xdp { command } => xdp(&ctx, command),
        Command::Decap { command } => decap(&ctx, command),
        #[cfg(feature = "capture")]
        Command::Capture(args) => capture::run(&ctx, args),
        Command::Leftovers { remove } => leftovers(&ctx, remove),
        Command::Completions { .. } => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Tunnels
// ---------------------------------------------------------------------------------------------

/// Adopts the tunnel pinned in `pin`, refusing a folder without a tunnel's pins (a plain load
/// would make a new tunnel there). The pins are kept when the value drops.
fn adopt(pin: &Path, direct: bool) -> Result<Tunnel> {
    let mut tunnel = open_pinned(pin, direct)?;
    tunnel.keep_pinned();
    Ok(tunnel)
}

/// As [`adopt`], but the pins go when the value drops.
fn open_pinned(pin: &Path, direct: bool) -> Result<Tunnel> {
    let tunnel = &lwtun::tunnel::PIN_LAYOUT;
    if !lwtun::pins::inspect(pin)?.is_some_and(|f| f.layout == tunnel) {
        return Err(Error::other(
            ErrorKind::NotFound,
            "open pinned tunnel",
            format!(
                "{} holds no lwtun tunnel pins ({}); load one with `lwtun tunnel load --pin {}`",
                pin.display(),
                tunnel.maps().join(", "),
                pin.display()
            ),
        ));
    }
    Tunnel::builder()
        .pin(pin)
        .direct(direct)
        .forward_only(true)
        .load()
}

/// The id of a pinned tunnel's IPv4 peer trie: a route belongs to the tunnel when its program
/// uses that map.
fn peers_map_id(tunnel: &impl Tables) -> Result<u32> {
    tunnel
        .map_ids()
        .into_iter()
        .find(|(n, _)| n == "peers_v4")
        .map(|(_, id)| id)
        .ok_or_else(|| Error::not_found("read tunnel maps", "map peers_v4"))
}

/// The ids of the maps program `id` uses.
fn program_map_ids(id: u32) -> Result<Vec<u32>> {
    let op = "read program info";
    // SAFETY: plain syscall wrapper; a negative result is -errno.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return Err(Error::io(op, std::io::Error::from_raw_os_error(-fd))
            .with_object(format!("program {id}")));
    }
    // SAFETY: fd is a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let info_of = |info: &mut libbpf_sys::bpf_prog_info| {
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: info is a valid bpf_prog_info of `len` bytes; its map_ids pointer, when set,
        // points at nr_map_ids u32s.
        let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), info, &mut len) };
        if rc != 0 {
            Err(Error::io(op, std::io::Error::from_raw_os_error(-rc)))
        } else {
            Ok(())
        }
    };
    let mut info = libbpf_sys::bpf_prog_info::default();
    info_of(&mut info)?;
    let n = info.nr_map_ids;
    let mut ids = vec![0u32; n as usize];
    let mut info = libbpf_sys::bpf_prog_info {
        nr_map_ids: n,
        map_ids: ids.as_mut_ptr() as u64,
        ..Default::default()
    };
    info_of(&mut info)?;
    ids.truncate(info.nr_map_ids.min(n) as usize);
    Ok(ids)
}

/// The LWT routes in this namespace whose programs use the tunnel's peer table.
fn tunnel_routes(nl: &mut Netlink, peers_id: u32) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for r in lwt_routes(nl)? {
        let ours = RouteView::new(&r, None).hooks.iter().any(|h| {
            h.program_id
                .and_then(|id| program_map_ids(id).ok())
                .is_some_and(|maps| maps.contains(&peers_id))
        });
        if ours {
            out.push(r);
        }
    }
    Ok(out)
}

/// The pins of the underlay fix-ups `route add` attached (tcx links, one per device).
fn fixup_pins(pin: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(pin)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("fixup-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn route_view(nl: &mut Netlink, r: &Route) -> RouteView {
    let dev = r
        .oif
        .and_then(|i| nl.device_by_index(i).ok())
        .map(|d| d.name().to_string());
    RouteView::new(r, dev)
}

#[derive(Serialize)]
struct TunnelShow {
    #[serde(flatten)]
    tunnel: view::TunnelView,
    /// The programs running in this tunnel's routes (the loaded copies of each `route add`).
    program_ids: Vec<u32>,
    routes: Vec<RouteView>,
    fixups: Vec<String>,
    adopted: bool,
}

/// What the show commands read: a loaded tunnel (`tunnel load`) or the pins alone.
trait Tables {
    fn peers(&self) -> &lwtun::peer::PeerTable;
    fn map_ids(&self) -> Vec<(String, u32)>;
    fn adopted(&self) -> bool;
}

impl Tables for Tunnel {
    fn peers(&self) -> &lwtun::peer::PeerTable {
        Tunnel::peers(self)
    }
    fn map_ids(&self) -> Vec<(String, u32)> {
        Tunnel::map_ids(self)
    }
    fn adopted(&self) -> bool {
        Tunnel::adopted(self)
    }
}

impl Tables for PinnedTunnel {
    fn peers(&self) -> &lwtun::peer::PeerTable {
        PinnedTunnel::peers(self)
    }
    fn map_ids(&self) -> Vec<(String, u32)> {
        PinnedTunnel::map_ids(self)
    }
    fn adopted(&self) -> bool {
        true
    }
}

fn tunnel_show(ctx: &Ctx, tunnel: &impl Tables, pin: &Path) -> Result<()> {
    let peers = tunnel.peers();
    let mut nl = ctx.netlink()?;
    let routes = tunnel_routes(&mut nl, peers_map_id(tunnel)?)?;
    let routes: Vec<RouteView> = routes.iter().map(|r| route_view(&mut nl, r)).collect();
    let mut program_ids: Vec<u32> = routes
        .iter()
        .flat_map(|r| r.hooks.iter().filter_map(|h| h.program_id))
        .collect();
    program_ids.sort_unstable();
    program_ids.dedup();
    let show = TunnelShow {
        tunnel: view::TunnelView {
            pin: pin.display().to_string(),
            capacity: peers.capacity(),
            peers_v4: peers.iter().filter(|(p, _)| p.is_ipv4()).count(),
            peers_v6: peers.iter().filter(|(p, _)| p.is_ipv6()).count(),
            miss_policy_v4: view::policy_name(peers.miss_policy(false)?),
            miss_policy_v6: view::policy_name(peers.miss_policy(true)?),
            misses: peers.miss_counters()?.into(),
            maps: tunnel
                .map_ids()
                .into_iter()
                .filter(|(n, _)| lwtun::tunnel::PIN_LAYOUT.maps().contains(&n.as_str()))
                .map(|(name, id)| MapView { name, id })
                .collect(),
        },
        program_ids,
        routes,
        fixups: fixup_pins(pin)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
        adopted: tunnel.adopted(),
    };
    if ctx.json {
        return ctx.print_json(&show);
    }
    let t = &show.tunnel;
    println!(
        "tunnel {}{}",
        t.pin,
        if show.adopted { "" } else { " (new)" }
    );
    println!(
        "  peers: {} IPv4, {} IPv6 (capacity {} each)",
        t.peers_v4, t.peers_v6, t.capacity
    );
    println!(
        "  miss policy: IPv4 {}, IPv6 {}; misses dropped {}/{} passed {}/{} not IP {}",
        t.miss_policy_v4,
        t.miss_policy_v6,
        t.misses.dropped_v4,
        t.misses.dropped_v6,
        t.misses.passed_v4,
        t.misses.passed_v6,
        t.misses.not_ip
    );
    let maps: Vec<String> = t
        .maps
        .iter()
        .map(|m| format!("{} {}", m.name, m.id))
        .collect();
    println!("  maps: {}", maps.join(", "));
    let ids: Vec<String> = show.program_ids.iter().map(u32::to_string).collect();
    println!(
        "  programs: {}",
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.join(", ")
        }
    );
    for r in &show.routes {
        println!("  route {} dev {}", r.dst, opt(&r.dev));
    }
    for f in &show.fixups {
        println!("  fix-up {f}");
    }
    Ok(())
}

fn tunnel(ctx: &Ctx, command: TunnelCommand) -> Result<()> {
    match command {
        TunnelCommand::Load {
            pin,
            capacity,
            miss,
        } => {
            let mut builder = Tunnel::builder()
                .pin(&pin)
                .capacity(capacity.unwrap_or(DEFAULT_CAPACITY));
            if let Some(m) = miss {
                builder = builder.miss_policy(match m {
                    Miss::Drop => MissPolicy::Drop,
                    Miss::Pass => MissPolicy::Pass,
                });
            }
            let mut tunnel = builder.load()?;
            tunnel.keep_pinned();
            let pinned = tunnel.peers().capacity();
            if tunnel.adopted() && capacity.is_some_and(|c| c != pinned) {
                eprintln!(
                    "lwtun: {} was pinned with capacity {pinned}, which stays (unload it to \
                     change the capacity)",
                    pin.display()
                );
            }
            tunnel_show(ctx, &tunnel, &pin)
        }
        TunnelCommand::Show { pin } => tunnel_show(ctx, &PinnedTunnel::open(&pin)?, &pin),
        TunnelCommand::Unload { pin } => {
            let tunnel = open_pinned(&pin, false)?;
            let mut nl = ctx.netlink()?;
            let routes = tunnel_routes(&mut nl, peers_map_id(&tunnel)?)?;
            for r in &routes {
                nl.delete_route(r)
                    .map_err(|e| e.with_object(r.dst.to_string()))?;
            }
            for f in fixup_pins(&pin) {
                std::fs::remove_file(&f).map_err(|e| {
                    Error::io("remove fix-up pin", e).with_object(f.display().to_string())
                })?;
            }
            // Dropping a tunnel that is not kept removes its pins and the folder.
            drop(tunnel);
            if pin.exists() {
                return Err(Error::other(
                    ErrorKind::Exists,
                    "remove pin folder",
                    format!(
                        "the tunnel's pins are gone but {} still holds other files; remove them \
                         by hand",
                        pin.display()
                    ),
                ));
            }
            if !ctx.json {
                println!(
                    "unloaded {}: {} route(s) removed, pins removed",
                    pin.display(),
                    routes.len()
                );
            } else {
                ctx.print_json(&serde_json::json!({
                    "pin": pin.display().to_string(),
                    "removed_routes": routes.len(),
                }))?;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------------

fn peer(ctx: &Ctx, command: PeerCommand) -> Result<()> {
    match command {
        PeerCommand::Add { pin, batch, words } => {
            let mut tunnel = adopt(&pin, false)?;
            let peers = match batch {
                Some(file) => {
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())
                    } else {
                        std::fs::read_to_string(&file)
                    }
                    .map_err(|e| {
                        Error::io("read batch file", e).with_object(file.display().to_string())
                    })?;
                    let bar = progress(ctx, text.len() as u64);
                    let parsed = spec::batch(&file, &text, tunnel.peers(), |n| bar.inc(n));
                    bar.finish_and_clear();
                    parsed?
                }
                None => vec![spec::peer(words.iter().map(String::as_str))?],
            };
            let n = peers.len();
            tunnel.peers_mut().insert_batch(&peers)?;
            if !ctx.json {
                println!("added {n} peer(s)");
            } else {
                ctx.print_json(&serde_json::json!({ "added": n }))?;
            }
            Ok(())
        }
        PeerCommand::Del { pin, prefixes } => {
            let mut tunnel = adopt(&pin, false)?;
            let prefixes = prefixes
                .iter()
                .map(|p| spec::prefix(p))
                .collect::<Result<Vec<IpNetwork>>>()?;
            tunnel.peers_mut().remove_batch(&prefixes)?;
            if !ctx.json {
                println!("deleted {} peer(s)", prefixes.len());
            } else {
                ctx.print_json(&serde_json::json!({ "deleted": prefixes.len() }))?;
            }
            Ok(())
        }
        PeerCommand::Show { pin } => {
            let tunnel = PinnedTunnel::open(&pin)?;
            let mut peers: Vec<_> = tunnel.peers().iter().collect();
            peers.sort_by_key(|(p, _)| prefix_order(*p));
            let views: Vec<PeerView> = peers.iter().map(|(p, e)| PeerView::new(*p, e)).collect();
            if ctx.json {
                return ctx.print_json(&views);
            }
            let rows: Vec<Vec<String>> = views
                .iter()
                .map(|v| {
                    let mut encap = v.encap.to_string();
                    if let Some(k) = v.gre_key {
                        encap.push_str(&format!(" key {k}"));
                    }
                    if v.gre_checksum {
                        encap.push_str(" csum");
                    }
                    if let Some(p) = v.udp_port {
                        encap.push_str(&format!(" port {p}"));
                    }
                    vec![
                        v.prefix.clone(),
                        v.remote.clone(),
                        v.local.clone(),
                        encap,
                        v.ttl.to_string(),
                        v.tos.to_string(),
                    ]
                })
                .collect();
            table(&["PREFIX", "REMOTE", "LOCAL", "ENCAP", "TTL", "TOS"], &rows);
            Ok(())
        }
        PeerCommand::Stats { pin, prefix } => {
            let tunnel = PinnedTunnel::open(&pin)?;
            let peers = tunnel.peers();
            let mut prefixes: Vec<IpNetwork> = match prefix {
                Some(p) => vec![spec::prefix(&p)?],
                None => peers.iter().map(|(p, _)| p).collect(),
            };
            prefixes.sort_by_key(|p| prefix_order(*p));
            let stats = StatsView {
                peers: prefixes
                    .iter()
                    .map(|p| Ok(PeerStatsView::new(*p, peers.stats(*p)?)))
                    .collect::<Result<_>>()?,
                misses: peers.miss_counters()?.into(),
            };
            if ctx.json {
                return ctx.print_json(&stats);
            }
            let rows: Vec<Vec<String>> = stats
                .peers
                .iter()
                .map(|s| {
                    vec![
                        s.prefix.clone(),
                        s.packets.to_string(),
                        s.bytes.to_string(),
                        s.errors.to_string(),
                    ]
                })
                .collect();
            table(&["PREFIX", "PACKETS", "BYTES", "ERRORS"], &rows);
            let m = &stats.misses;
            println!(
                "misses: dropped {} IPv4 {} IPv6, passed {} IPv4 {} IPv6, not IP {}",
                m.dropped_v4, m.dropped_v6, m.passed_v4, m.passed_v6, m.not_ip
            );
            Ok(())
        }
    }
}

/// Prefixes in address order, IPv4 first, shorter prefixes before longer ones.
fn prefix_order(p: IpNetwork) -> (bool, IpAddr, u8) {
    (p.is_ipv6(), p.network(), p.prefix())
}

/// A progress bar over `bytes` on stderr: only for large files, on a terminal, without -j.
fn progress(ctx: &Ctx, bytes: u64) -> indicatif::ProgressBar {
    const LARGE: u64 = 256 * 1024;
    if ctx.json || bytes < LARGE || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "checking peers {bar:40} {bytes}/{total_bytes} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

fn route(ctx: &Ctx, command: RouteCommand) -> Result<()> {
    match command {
        RouteCommand::Add {
            pin,
            prefix,
            dev,
            via,
            src,
            table,
            metric,
            direct,
            forward_only,
        } => {
            let prefix = spec::prefix(&prefix)?;
            let tunnel = adopt(&pin, direct)?;
            if src.is_none() && !forward_only {
                let family = if prefix.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(Error::invalid_input(
                    "steer route into tunnel",
                    format!(
                        "the route has no source, so packets this host sends to {prefix} would \
                         carry its underlay address and the answers would not come back through \
                         the tunnel; give this host's inner {family} address with --src, or \
                         --forward-only if the tunnel only forwards"
                    ),
                ));
            }
            let device = ctx.netns.device(&dev)?;
            let mut nl = ctx.netlink()?;
            let mut spec = tunnel.route(prefix).device(&device);
            if let Some(gw) = via {
                spec = spec.via(gw);
            }
            if let Some(s) = src {
                spec = spec.source(s);
            }
            if let Some(t) = table {
                spec = spec.table(t);
            }
            if let Some(m) = metric {
                spec = spec.metric(m);
            }
            // No IP-in-IP GSO fix-up on the underlay: the xmit program fixes its packets
            // itself (see lwtun::tunnel); fix-ups pinned by older versions are still shown and
            // removed with the tunnel.
            let installed = spec.install(&mut nl)?;
            let route = installed.persist();
            let view = route_view(&mut nl, &route);
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("{route}");
            Ok(())
        }
        RouteCommand::Del { prefix, table } => {
            let prefix = spec::prefix(&prefix)?;
            let mut nl = ctx.netlink()?;
            let found: Vec<Route> = lwt_routes(&mut nl)?
                .into_iter()
                .filter(|r| {
                    r.dst == prefix
                        && table.is_none_or(|t| t == r.table)
                        && RouteView::new(r, None).lwtun
                })
                .collect();
            if found.is_empty() {
                return Err(Error::other(
                    ErrorKind::NotFound,
                    "delete route",
                    format!("no lwtun route to {prefix} (see `lwtun route show`)"),
                ));
            }
            for r in &found {
                nl.delete_route(r)?;
            }
            if !ctx.json {
                println!("deleted {} route(s) to {prefix}", found.len());
            } else {
                ctx.print_json(&serde_json::json!({ "deleted": found.len() }))?;
            }
            Ok(())
        }
        RouteCommand::Show => {
            let mut nl = ctx.netlink()?;
            let routes = lwt_routes(&mut nl)?;
            let views: Vec<RouteView> = routes.iter().map(|r| route_view(&mut nl, r)).collect();
            if ctx.json {
                return ctx.print_json(&views);
            }
            print_routes(&views);
            Ok(())
        }
    }
}

fn hooks_text(hooks: &[HookView]) -> String {
    hooks
        .iter()
        .map(|h| format!("{} {} (id {})", h.hook, h.name, opt(&h.program_id)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_routes(views: &[RouteView]) {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.dst.clone(),
                opt(&v.dev),
                opt(&v.gateway),
                opt(&v.src),
                v.table.to_string(),
                format!("{}{}", v.protocol, if v.lwtun { " (lwtun)" } else { "" }),
                hooks_text(&v.hooks),
            ]
        })
        .collect();
    table(
        &["DST", "DEV", "VIA", "SRC", "TABLE", "PROTO", "HOOKS"],
        &rows,
    );
}

// ---------------------------------------------------------------------------------------------
// XDP
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct ActionView {
    action: &'static str,
    packets: u64,
    bytes: u64,
    pps: f64,
    bps: f64,
}

#[derive(Serialize)]
struct XdpSample {
    dev: String,
    program_id: u32,
    interval_secs: f64,
    actions: Vec<ActionView>,
}

fn action_name(a: XdpAction) -> &'static str {
    match a {
        XdpAction::Aborted => "aborted",
        XdpAction::Drop => "drop",
        XdpAction::Pass => "pass",
        XdpAction::Tx => "tx",
        XdpAction::Redirect => "redirect",
        XdpAction::Unknown(_) => "unknown",
    }
}

/// The `xdp_stats` map of the program attached to `device`.
fn xdp_stats_map(device: &lwtun::device::Device) -> Result<(u32, StatsMap)> {
    let op = "read XDP stats";
    let id = XdpAttachment::query(device)?
        .program(XdpMode::Auto)
        .ok_or_else(|| Error::not_found(op, format!("an XDP program on {}", device.name())))?;
    for map_id in program_map_ids(id)? {
        let Ok(map) = libbpf_rs::MapHandle::from_map_id(map_id) else {
            continue;
        };
        if map.name() == "xdp_stats" {
            return Ok((id, StatsMap::from_handle(map)?));
        }
    }
    Err(Error::other(
        ErrorKind::NotFound,
        op,
        format!(
            "program {id} on {} has no xdp_stats map: it is not one of lwtun's XDP programs",
            device.name()
        ),
    ))
}

fn xdp(ctx: &Ctx, command: XdpCommand) -> Result<()> {
    match command {
        XdpCommand::Attach { dev, program, mode } => {
            let device = ctx.netns.device(&dev)?;
            let family = XdpPass::load()?;
            let prog = match program {
                XdpProgramName::Pass => family.program(),
                XdpProgramName::Drop => family.drop_program(),
                XdpProgramName::Tx => family.tx_program(),
            };
            let options = XdpOptions {
                mode: match mode {
                    Mode::Auto => XdpMode::Auto,
                    Mode::Native => XdpMode::Native,
                    Mode::Generic => XdpMode::Generic,
                },
                via: lwtun::xdp::AttachVia::Netlink,
            };
            let att = XdpAttachment::attach(prog, &device, options)?;
            let id = att.program_id();
            att.persist()?;
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "dev": dev, "program_id": id }));
            }
            println!("attached {} (id {id}) to {dev}", prog.name());
            Ok(())
        }
        XdpCommand::Detach { dev } => {
            let device = ctx.netns.device(&dev)?;
            XdpAttachment::detach_interface(&device, XdpMode::Auto)?;
            if !ctx.json {
                println!("detached XDP from {dev}");
            } else {
                ctx.print_json(&serde_json::json!({ "dev": dev }))?;
            }
            Ok(())
        }
        XdpCommand::Stats {
            dev,
            watch,
            count,
            interval,
        } => {
            let device = ctx.netns.device(&dev)?;
            let (id, stats) = xdp_stats_map(&device)?;
            let period = watch.unwrap_or(interval);
            if !(period > 0.0 && period.is_finite()) {
                return Err(Error::invalid_input(
                    "read XDP stats",
                    "the interval must be a positive number of seconds",
                ));
            }
            let samples = if watch.is_some() {
                count.unwrap_or(u64::MAX)
            } else {
                1
            };
            let mut before = stats.snapshot(Stage::Ingress)?;
            for i in 0..samples {
                std::thread::sleep(Duration::from_secs_f64(period));
                let now = stats.snapshot(Stage::Ingress)?;
                let rates = now.rates_since(&before);
                let sample = XdpSample {
                    dev: dev.clone(),
                    program_id: id,
                    interval_secs: now.taken_at.duration_since(before.taken_at).as_secs_f64(),
                    actions: XdpAction::ALL
                        .iter()
                        .map(|a| ActionView {
                            action: action_name(*a),
                            packets: now.get(*a).packets,
                            bytes: now.get(*a).bytes,
                            pps: rates.get(*a).packets_per_sec,
                            bps: rates.get(*a).bits_per_sec,
                        })
                        .collect(),
                };
                if ctx.json {
                    ctx.print_json(&sample)?;
                } else {
                    if watch.is_some() && std::io::stdout().is_terminal() {
                        print!("\x1b[H\x1b[2J");
                    }
                    if watch.is_some() || i > 0 {
                        println!("every {period}s: XDP program {id} on {dev}");
                    }
                    let rows: Vec<Vec<String>> = sample
                        .actions
                        .iter()
                        .map(|a| {
                            vec![
                                a.action.to_string(),
                                a.packets.to_string(),
                                a.bytes.to_string(),
                                format!("{:.0}", a.pps),
                                format!("{:.0}", a.bps),
                            ]
                        })
                        .collect();
                    table(&["ACTION", "PACKETS", "BYTES", "PPS", "BIT/S"], &rows);
                }
                before = now;
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decap
// ---------------------------------------------------------------------------------------------

/// The pin of the tcx link attaching the decap of a folder to `device`.
fn decap_link_pin(pin: &Path, device: &lwtun::device::Device) -> PathBuf {
    pin.join(format!(
        "link-{}-{}",
        device.netns_id().inode(),
        device.index()
    ))
}

fn decap_links(pin: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(pin)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn decap_peer(text: &str) -> Result<DecapPeer> {
    let (prefix, key) = match text.split_once(',') {
        Some((p, k)) => {
            let key = k
                .strip_prefix("key=")
                .and_then(|k| k.parse::<u32>().ok())
                .ok_or_else(|| {
                    Error::invalid_input(
                        "parse decap peer",
                        format!("{text:?}: write PREFIX or PREFIX,key=N"),
                    )
                })?;
            (p, Some(key))
        }
        None => (text, None),
    };
    let peer = DecapPeer::new(spec::prefix(prefix)?);
    Ok(match key {
        Some(k) => peer.gre_key(k),
        None => peer,
    })
}

#[derive(Serialize)]
struct CounterView {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct DecapPeerView {
    prefix: String,
    gre_key: Option<u32>,
}

#[derive(Serialize)]
struct DecapView {
    pin: String,
    locals: Vec<String>,
    peers: Vec<DecapPeerView>,
    decapsulated: u64,
    dropped: u64,
    counters: std::collections::BTreeMap<&'static str, CounterView>,
    links: Vec<String>,
}

fn decap_view(d: &Decap, pin: &Path) -> Result<DecapView> {
    let c = d.counters()?;
    let mut counters = std::collections::BTreeMap::new();
    for (name, v) in [
        ("ipip", c.ipip),
        ("gre", c.gre),
        ("udp", c.udp),
        ("unknown_peer", c.unknown_peer),
        ("malformed", c.malformed),
        ("not_for_us", c.not_for_us),
        ("fragment", c.fragment),
        ("bad_checksum", c.bad_checksum),
        ("key_mismatch", c.key_mismatch),
        ("unsupported", c.unsupported),
        ("error", c.error),
        ("ecn", c.ecn),
    ] {
        counters.insert(
            name,
            CounterView {
                packets: v.packets,
                bytes: v.bytes,
            },
        );
    }
    Ok(DecapView {
        pin: pin.display().to_string(),
        locals: d.locals()?.iter().map(IpAddr::to_string).collect(),
        peers: d
            .peers()?
            .iter()
            .map(|p| DecapPeerView {
                prefix: p.prefix.to_string(),
                gre_key: p.gre_key,
            })
            .collect(),
        decapsulated: c.decapsulated(),
        dropped: c.dropped(),
        counters,
        links: decap_links(pin)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    })
}

/// Adopts the decap pinned in `pin`, refusing a folder without its pins.
fn adopt_decap(pin: &Path) -> Result<Decap> {
    if !pin.join("locals").exists() {
        return Err(Error::other(
            ErrorKind::NotFound,
            "open pinned decap",
            format!(
                "{} holds no lwtun decap pins (locals); make one with `lwtun decap attach DEV \
                 --pin {}`",
                pin.display(),
                pin.display()
            ),
        ));
    }
    Decap::load_pinned(pin)
}

fn decap(ctx: &Ctx, command: DecapCommand) -> Result<()> {
    match command {
        DecapCommand::Attach {
            dev,
            pin,
            local,
            peer,
            udp_port,
        } => {
            let device = ctx.netns.device(&dev)?;
            let peers = peer
                .iter()
                .map(|p| decap_peer(p))
                .collect::<Result<Vec<_>>>()?;
            let link = decap_link_pin(&pin, &device);
            if link.exists() {
                return Err(Error::other(
                    ErrorKind::Exists,
                    "attach decap",
                    format!(
                        "the decap of {} is attached to {dev} already",
                        pin.display()
                    ),
                ));
            }
            let mut d = Decap::load_pinned(&pin)?;
            d.keep_pinned();
            for a in local {
                d.add_local(a)?;
            }
            for p in peers {
                d.add_peer(p)?;
            }
            for port in udp_port {
                d.add_udp_port(port)?;
            }
            let att = TcAttach::new(&device, TcDirection::Ingress)
                .attach(d.program())
                .map_err(|e| e.with_object(format!("decap on {dev}")))?;
            match att.mode() {
                TcMode::Tcx => att.persist(Some(&link))?,
                _ => att.persist(None)?,
            }
            let view = decap_view(&d, &pin)?;
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("decap of {} attached to {dev}", pin.display());
            Ok(())
        }
        DecapCommand::Detach { dev, pin } => {
            let device = ctx.netns.device(&dev)?;
            let link = decap_link_pin(&pin, &device);
            if !link.exists() {
                return Err(Error::other(
                    ErrorKind::NotFound,
                    "detach decap",
                    format!("the decap of {} is not attached to {dev}", pin.display()),
                ));
            }
            std::fs::remove_file(&link).map_err(|e| {
                Error::io("detach decap", e).with_object(link.display().to_string())
            })?;
            let last = decap_links(&pin).is_empty();
            if last {
                // Not kept: dropping it removes the maps, the program pin and the folder
                // (once empty: these link pins were its last other entries).
                drop(adopt_decap(&pin)?);
            }
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "dev": dev, "removed_pins": last }));
            }
            println!(
                "decap detached from {dev}{}",
                if last { "; pins removed" } else { "" }
            );
            Ok(())
        }
        DecapCommand::Show { pin } => {
            let mut d = adopt_decap(&pin)?;
            d.keep_pinned();
            let view = decap_view(&d, &pin)?;
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("decap {}", view.pin);
            println!("  locals: {}", view.locals.join(", "));
            for p in &view.peers {
                println!("  peer {} key {}", p.prefix, opt(&p.gre_key));
            }
            println!(
                "  decapsulated {} dropped {}",
                view.decapsulated, view.dropped
            );
            let rows: Vec<Vec<String>> = view
                .counters
                .iter()
                .map(|(n, c)| vec![n.to_string(), c.packets.to_string(), c.bytes.to_string()])
                .collect();
            table(&["VERDICT", "PACKETS", "BYTES"], &rows);
            for l in &view.links {
                println!("  attached: {l}");
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Leftovers
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct PinView {
    pin: String,
    /// The pid holding the folder's flock, when a process owns it.
    owner_pid: Option<u32>,
}

#[derive(Serialize)]
struct FilterView {
    dev: String,
    direction: &'static str,
    name: String,
}

#[derive(Serialize)]
struct XdpView {
    dev: String,
    program_id: u32,
}

#[derive(Serialize)]
struct LeftoversView {
    tunnel_pins: Vec<PinView>,
    routes: Vec<RouteView>,
    tc_filters: Vec<FilterView>,
    /// XDP programs of lwtun's families (they have an `xdp_stats` map) attached to devices.
    xdp: Vec<XdpView>,
    /// Nexthop objects tagged proto 76 (routes share their LWT encap through them).
    nexthops: Vec<NexthopView>,
    removed_routes: usize,
    removed_tc_filters: usize,
    removed_xdp: usize,
    removed_nexthops: usize,
}

#[derive(Serialize)]
struct NexthopView {
    id: u32,
    dev: Option<String>,
}

/// Whether program `id` is one of lwtun's XDP family programs (it uses an `xdp_stats` map).
fn is_lwtun_xdp(id: u32) -> bool {
    program_map_ids(id).is_ok_and(|maps| {
        maps.iter()
            .any(|m| libbpf_rs::MapHandle::from_map_id(*m).is_ok_and(|h| h.name() == "xdp_stats"))
    })
}

fn leftovers(ctx: &Ctx, remove: bool) -> Result<()> {
    let mut nl = ctx.netlink()?;
    let tunnel_pins = lwtun::pins::discover("/sys/fs/bpf")?
        .into_iter()
        .filter(|f| f.layout == &lwtun::tunnel::PIN_LAYOUT)
        .map(|f| PinView {
            owner_pid: f.owner.map(|o| o.pid),
            pin: f.path.display().to_string(),
        })
        .collect();
    let routes: Vec<RouteView> = lwt_routes(&mut nl)?
        .iter()
        .map(|r| route_view(&mut nl, r))
        .filter(|v| v.protocol == RTPROT_LWTUN)
        .collect();
    let mut tc_filters = Vec::new();
    let links = nl.links()?;
    for link in &links {
        let device = ctx.netns.device_by_index(link.index)?;
        for (direction, name) in [
            (TcDirection::Ingress, "ingress"),
            (TcDirection::Egress, "egress"),
        ] {
            for p in lwtun::tc::attached(&device, direction)? {
                if let Some(f) = p
                    .filter
                    .filter(|f| f.name.starts_with(lwtun::tc::FILTER_NAME_PREFIX))
                {
                    tc_filters.push(FilterView {
                        dev: link.name.clone(),
                        direction: name,
                        name: f.name,
                    });
                }
            }
        }
    }
    let xdp: Vec<XdpView> = links
        .iter()
        .filter_map(|l| {
            let id = l.xdp_prog_id?;
            is_lwtun_xdp(id).then(|| XdpView {
                dev: l.name.clone(),
                program_id: id,
            })
        })
        .collect();
    let nexthops: Vec<NexthopView> = match nl.nexthops() {
        Ok(all) => all
            .into_iter()
            .filter(|n| n.protocol == RTPROT_LWTUN)
            .map(|n| NexthopView {
                id: n.id,
                dev: n.oif.and_then(|oif| {
                    links
                        .iter()
                        .find(|l| l.index == oif)
                        .map(|l| l.name.clone())
                }),
            })
            .collect(),
        // A kernel without nexthop objects (before Linux 5.3) has none to leave behind.
        Err(e) if e.kind() == lwtun::ErrorKind::Unsupported => Vec::new(),
        Err(e) => return Err(e),
    };
    let (mut removed_routes, mut removed_tc_filters, mut removed_xdp) = (0, 0, 0);
    let mut removed_nexthops = 0;
    if remove {
        removed_routes = lwtun::route::remove_leftovers(&mut nl)?;
        removed_nexthops = lwtun::nexthop::remove_leftovers(&mut nl)?;
        for link in &links {
            removed_tc_filters +=
                lwtun::tc::remove_leftovers(&ctx.netns.device_by_index(link.index)?)?;
        }
        for x in &xdp {
            XdpAttachment::detach_interface(&ctx.netns.device(&x.dev)?, XdpMode::Auto)?;
            removed_xdp += 1;
        }
    }
    let view = LeftoversView {
        tunnel_pins,
        routes,
        tc_filters,
        xdp,
        nexthops,
        removed_routes,
        removed_tc_filters,
        removed_xdp,
        removed_nexthops,
    };
    if ctx.json {
        return ctx.print_json(&view);
    }
    println!("tunnel pin folders (remove with `lwtun tunnel unload --pin DIR`):");
    for p in &view.tunnel_pins {
        match p.owner_pid {
            Some(pid) => println!("  {} (owned by process {pid})", p.pin),
            None => println!("  {}", p.pin),
        }
    }
    println!("routes tagged proto {RTPROT_LWTUN}:");
    print_routes(&view.routes);
    println!("tc filters named lwtun:*:");
    for f in &view.tc_filters {
        println!("  {} {} {}", f.dev, f.direction, f.name);
    }
    println!("XDP programs of lwtun's families:");
    for x in &view.xdp {
        println!("  {} program {}", x.dev, x.program_id);
    }
    println!("nexthops tagged proto {RTPROT_LWTUN}:");
    for n in &view.nexthops {
        match &n.dev {
            Some(dev) => println!("  id {} dev {dev}", n.id),
            None => println!("  id {}", n.id),
        }
    }
    if remove {
        println!(
            "removed {} route(s), {} tc filter(s), {} XDP program(s), {} nexthop(s)",
            view.removed_routes, view.removed_tc_filters, view.removed_xdp, view.removed_nexthops
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn peer_words_follow_the_options() {
        let cli = Cli::try_parse_from([
            "lwtun",
            "-j",
            "-n",
            "lab",
            "peer",
            "add",
            "--pin",
            "/sys/fs/bpf/t",
            "10.0.0.0/8",
            "remote",
            "1.1.1.1",
            "local",
            "2.2.2.2",
            "encap",
            "gre",
            "key",
            "5",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.netns.as_deref(), Some("lab"));
        let Command::Peer {
            command: PeerCommand::Add { words, batch, .. },
        } = cli.command
        else {
            panic!("not peer add");
        };
        assert!(batch.is_none());
        assert_eq!(words.len(), 9);
        assert!(spec::peer(words.iter().map(String::as_str)).is_ok());
        // -b and words together are a usage error.
        let e = Cli::try_parse_from([
            "lwtun",
            "peer",
            "add",
            "--pin",
            "/x",
            "-b",
            "f",
            "10.0.0.0/8",
        ])
        .err()
        .unwrap();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn decap_peers_take_an_optional_key() {
        let p = decap_peer("192.0.2.0/24,key=7").unwrap();
        assert_eq!(p.prefix.to_string(), "192.0.2.0/24");
        assert_eq!(p.gre_key, Some(7));
        assert_eq!(decap_peer("fd00::1").unwrap().gre_key, None);
        assert!(decap_peer("192.0.2.1,key").is_err());
    }
}
