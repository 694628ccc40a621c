//! `lwtun`: look at and change lwtun data planes from a shell, in the habits of `ip` and
//! `bpftool`. Every data-plane operation goes through the library; what the command makes
//! (pinned peer tables, routes, underlay fix-ups, XDP programs) outlives it, and a library user
//! adopts it with `Tunnel::builder().pin(DIR).load()`.

#[cfg(feature = "capture")]
mod capture;
mod cmd;
mod spec;
mod view;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::{Error, ErrorKind, Result};

use cmd::decap::{decap, DecapCommand};
use cmd::leftovers::leftovers;
use cmd::peer::{peer, PeerCommand};
use cmd::route::{route, RouteCommand};
use cmd::tunnel::{tunnel, TunnelCommand};
use cmd::xdp::{xdp, XdpCommand};

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
  leftovers:    {tunnel_pins: [{pin, owner_pid}],
                 pin_folders: [{pin, family, complete, owner_pid, owner_command}],
                 routes, tc_filters: [{dev, direction, name, mode (tcx|clsact), program_id,
                 link_id}], xdp: [{dev, program_id}], nexthops: [{id, dev}],
                 owned: [{kind (route|tc|xdp|nexthop), object, owners: [{pid, command}]}],
                 removed_routes, removed_tc_filters, removed_xdp, removed_nexthops}
                (routes, tc_filters, xdp, nexthops: what no live process owns)
  tunnel unload: {pin, removed_routes, routes: [{netns, dst, dev}], forced_past: [pid]}
Errors print the library's message and exit 1; usage errors exit 2.
A pinned tunnel is owned by one process at a time (an flock on its folder): while a library
process has it loaded, commands that change it are refused naming the owner's pid; the show
and stats commands read the pins and work meanwhile. `leftovers --remove`, `tunnel unload`
and `decap detach` never remove what a live process owns (its pin folder's lock, or a
program, map or link it holds) unless --force.";

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
    /// What lwtun left that no live process owns: pin folders of every family, routes,
    /// nexthops, tc programs, XDP programs (and remove them); what a live process owns is
    /// listed apart, with its pid.
    Leftovers {
        /// Remove the leftovers in this namespace: routes and nexthops tagged proto 76, lwtun's
        /// tc programs (`lwtun:` filters, tcx links) and XDP programs that no live process owns
        /// (not pin folders: use `lwtun tunnel unload` or `lwtun decap detach`).
        #[arg(long)]
        remove: bool,
        /// With --remove: also remove what a live process owns (breaks that process's data
        /// plane).
        #[arg(long, requires = "remove")]
        force: bool,
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
        Command::Leftovers { remove, force } => leftovers(&ctx, remove, force),
        Command::Completions { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::decap::decap_peer;

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
