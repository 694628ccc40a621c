//! `lwtun`: look at and change lwtun data planes from a shell, in the habits of `ip` and
//! `bpftool`. Every data-plane operation goes through the library; what the command makes
//! (pinned peer tables, routes, underlay fix-ups, XDP programs) outlives it, and a library user
//! adopts it with `Tunnel::builder().pin(DIR).load()`.

#[cfg(feature = "capture")]
mod capture;
mod cmd;
mod exit;
mod man;
mod route_tap;
mod spec;
mod view;

use std::path::PathBuf;
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
  route add:    one route object as in route show (route replace too; with -b a list)
  peer add|replace|del, route del: {added|replaced|deleted: N}
  -batch FILE:  {peers_added, peers_replaced, peers_deleted, routes_added, routes_deleted}
  tunnel resize: {pin, capacity_before, capacity, routes_moved}
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
  monitor:      one object per line: {seq, time, kind (route|link|address|neigh|nexthop|
                 peer|resync), action (add|change|del|resync), ...}: a route's fields as in
                 route show plus mtu, nhid; link {index, name, type, up, lower_up, mtu, mac,
                 master, xdp_prog_id}; address {index, dev, address, peer, label}; neigh
                 {index, dev, ip, lladdr, state}; nexthop {id, oif, dev, gateway, line};
                 peer {pin, a peer's fields as in peer show, old: {...} (change), pid, comm,
                 journal_seq, written (null for a change a resync found)};
                 resync {reason, missed, journal (true: a peer journal's)}
  service show: {pin, services: [{prefix, backends: [{remote, local, encap, weight, state
                 (up|drained), packets, bytes, errors}]}], counters: {missed, not_ip,
                 no_backend, flow_hits, flow_picks, probes}} (service set|drain|restore|del|
                 route: the same, after the change)
  service unload: {pin, routes_removed}
  man --out:    {pages: [PATH]}
A pinned tunnel is owned by one process at a time (an flock on its folder): while a library
process has it loaded, commands that change it are refused naming the owner's pid; the show
and stats commands read the pins and work meanwhile. `leftovers --remove`, `tunnel unload`
and `decap detach` never remove what a live process owns (its pin folder's lock, or a
program, map or link it holds) unless --force.";

/// `lwtun --help`'s epilogue: the JSON field names and the exit status table.
fn after_help() -> String {
    format!("{JSON_FIELDS}\n\n{}", exit::EXIT_CODES)
}

#[derive(Parser)]
#[command(name = "lwtun", version, about = "Look at and change lwtun data planes", after_help = after_help())]
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
    /// Run the edit commands of FILE (`-`: standard input; also `-batch FILE`, as `ip -batch`):
    /// one command a line without `lwtun` (`peer add|del|replace ...`, `route add|del|replace
    /// ...`; `#` comments). Every line is parsed and checked against the tables before any is
    /// applied (a bad one is reported as FILE:LINE and nothing is applied); then they are
    /// applied in order, and a failure stops there, saying how many lines were applied.
    #[arg(short = 'b', long = "batch", value_name = "FILE")]
    batch: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
pub(crate) enum Command {
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
    /// A prefix (a VIP) served by weighted backends: Maglev tables swapped whole, flows kept
    /// (tables pinned in a folder).
    Service {
        #[command(subcommand)]
        command: cmd::service::ServiceCommand,
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
    /// nexthops, tc programs, XDP programs, captures and chains left at a route's lwt_out hook
    /// (and remove them); what a live process owns is listed apart, with its pid.
    Leftovers {
        /// Remove the leftovers in this namespace: routes and nexthops tagged proto 76, lwtun's
        /// tc programs (`lwtun:` filters, tcx links) and XDP programs that no live process owns
        /// (not pin folders: use `lwtun tunnel unload` or `lwtun decap detach`); a route with a
        /// leftover capture or chain at lwt_out is put back without it, all else kept.
        #[arg(long)]
        remove: bool,
        /// With --remove: also remove what a live process owns (breaks that process's data
        /// plane).
        #[arg(long, requires = "remove")]
        force: bool,
    },
    /// Print what changes in the namespace as it happens, like `ip monitor`: routes (with
    /// their LWT BPF programs), links, addresses, neighbours, nexthops, and with --pin the
    /// peers of pinned tunnels (with the writer's pid); one line (or one JSON object) per
    /// event. When events are lost (a reader too slow), a `resync` line says so and the
    /// changes a fresh dump shows follow it.
    Monitor(cmd::monitor::MonitorArgs),
    /// Print a shell completion script.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (lwtun.1 and lwtun-SUB.1 for every subcommand); without --out,
    /// print lwtun.1 (`lwtun man | man -l -`).
    Man {
        /// The folder to write the pages into (made if missing), such as
        /// /usr/local/share/man/man1.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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
    /// The name given with `-n`, repeated in the commands that messages suggest.
    netns_name: Option<String>,
}

impl Ctx {
    /// `lwtun [-n NAME] ARGS`: a command line to suggest in a message, in the namespace this
    /// one acts in.
    pub(crate) fn command(&self, args: &str) -> String {
        format!("lwtun{} {args}", self.netns_flag())
    }

    /// ` -n NAME` when the command acts in a named namespace: what a suggested `lwtun` or `ip`
    /// command repeats.
    pub(crate) fn netns_flag(&self) -> String {
        self.netns_name
            .as_ref()
            .map_or(String::new(), |n| format!(" -n {n}"))
    }

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
        exit::print(&format!("{text}\n"))
    }
}

/// The arguments, with `ip`'s single-dash `-batch` spelled as clap reads it (`--batch`).
fn args() -> impl Iterator<Item = std::ffi::OsString> {
    std::env::args_os().map(|a| if a == "-batch" { "--batch".into() } else { a })
}

/// Parses one line of a batch file: a command without the program name.
pub(crate) fn parse_line(words: impl IntoIterator<Item = String>) -> Result<Command> {
    let cli =
        Cli::try_parse_from(std::iter::once("lwtun".to_string()).chain(words)).map_err(|e| {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            Error::invalid_input("parse batch line", first.to_string())
        })?;
    if cli.batch.is_some() || cli.json || cli.pretty || cli.netns.is_some() {
        return Err(Error::invalid_input(
            "parse batch line",
            "options of the whole run (-b, -j, -p, -n) go on the command line, not in the file",
        ));
    }
    cli.command
        .ok_or_else(|| Error::invalid_input("parse batch line", "no command"))
}

/// The edits of a batch file's lines (`lwtun -batch FILE`).
fn batch_edits(ctx: &Ctx, file: &std::path::Path) -> Result<Vec<cmd::edit::Located>> {
    let text = spec::read(file)?;
    let mut out = Vec::new();
    for (at, line) in spec::lines(file, &text, |_| {}) {
        let command = parse_line(line.split_whitespace().map(str::to_string))
            .map_err(|e| e.with_object(&at))?;
        let edits =
            match command {
                Command::Peer {
                    command:
                        command @ (PeerCommand::Add(_)
                        | PeerCommand::Replace(_)
                        | PeerCommand::Del { .. }),
                } => cmd::peer::peer_edits(ctx, command),
                Command::Route {
                    command:
                        command @ (RouteCommand::Add(_)
                        | RouteCommand::Replace(_)
                        | RouteCommand::Del { .. }),
                } => cmd::route::route_edits(command),
                _ => Err(Error::invalid_input(
                    "parse batch line",
                    "not an edit command: a batch file holds `peer add|del|replace` and `route \
                 add|del|replace` lines",
                )),
            }
            .map_err(|e| e.with_object(&at))?;
        for mut e in edits {
            e.at.get_or_insert_with(|| at.clone());
            out.push(e);
        }
    }
    Ok(out)
}

fn run_batch(ctx: &Ctx, file: &std::path::Path) -> Result<()> {
    let edits = batch_edits(ctx, file)?;
    let mut editor = cmd::edit::Editor::new(ctx);
    editor.check(&edits)?;
    let done = editor.apply(&edits)?;
    if ctx.json {
        return ctx.print_json(&done);
    }
    println!(
        "applied {} line(s): {} peer(s) added, {} replaced, {} deleted; {} route(s) added, {} \
         deleted",
        edits.len(),
        done.peers_added,
        done.peers_replaced,
        done.peers_deleted,
        done.routes_added,
        done.routes_deleted
    );
    Ok(())
}

/// Parses the command line, runs it, and ends with the exit code of what happened (see
/// [`exit::EXIT_CODES`]).
fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = args().collect();
    let json = exit::wants_json(&args);
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return exit::usage(e, json),
    };
    exit::quiet_broken_pipes();
    exit::keep_libbpf_quiet();
    let netns = cli.netns.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => exit::fail(&e, json, netns.as_deref()),
        Err(payload) if exit::is_broken_pipe(payload.as_ref()) => ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "lwtun", &mut script);
            return exit::print(&String::from_utf8_lossy(&script));
        }
        Some(Command::Man { out: Some(dir) }) => {
            let pages = man::write_pages(Cli::command(), dir, JSON_FIELDS)?;
            if cli.json || cli.pretty {
                return exit::print(&format!("{}\n", serde_json::json!({ "pages": pages })));
            }
            eprintln!(
                "lwtun: wrote {} man pages to {}",
                pages.len(),
                dir.display()
            );
            return Ok(());
        }
        Some(Command::Man { out: None }) => {
            let page = man::top(Cli::command(), JSON_FIELDS)?;
            return exit::print(&String::from_utf8_lossy(&page));
        }
        _ => {}
    }
    let netns = match &cli.netns {
        Some(name) => NetNs::open(name)?,
        None => NetNs::current()?,
    };
    let ctx = Ctx {
        json: cli.json || cli.pretty,
        pretty: cli.pretty,
        netns,
        netns_name: cli.netns.clone(),
    };
    if cli.batch.is_some() && cli.command.is_some() {
        return Err(Error::invalid_input(
            "lwtun",
            "-batch FILE runs the commands of FILE: give no command with it",
        ));
    }
    let Some(command) = cli.command else {
        return match &cli.batch {
            Some(file) => run_batch(&ctx, file),
            None => {
                let _ = Cli::command().print_help();
                Err(Error::invalid_input(
                    "lwtun",
                    "no command (see the usage above)",
                ))
            }
        };
    };
    match command {
        Command::Tunnel { command } => tunnel(&ctx, command),
        Command::Peer { command } => peer(&ctx, command),
        Command::Route { command } => route(&ctx, command),
        Command::Xdp { command } => xdp(&ctx, command),
        Command::Decap { command } => decap(&ctx, command),
        Command::Service { command } => cmd::service::service(&ctx, command),
        #[cfg(feature = "capture")]
        Command::Capture(args) => capture::run(&ctx, args),
        Command::Leftovers { remove, force } => leftovers(&ctx, remove, force),
        Command::Monitor(args) => cmd::monitor::monitor(&ctx, args),
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
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
        let Some(Command::Peer {
            command: PeerCommand::Add(cmd::peer::PeerWords { words, batch, .. }),
        }) = cli.command
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
    fn batch_lines_are_commands_without_run_options() {
        let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert!(matches!(
            parse_line(words("route del 10.0.0.0/8 --table 7")),
            Ok(Command::Route {
                command: RouteCommand::Del { .. }
            })
        ));
        for line in [
            "-j peer del --pin /x 10.0.0.0/8",
            "-n lab route del 10.0.0.0/8",
            "-b f",
        ] {
            let e = parse_line(words(line)).err().expect(line);
            assert!(e.to_string().contains("command line"), "{line}: {e}");
        }
        let e = parse_line(words("peer frob")).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("frob"), "{e}");
        // -batch and a command together are refused before anything runs.
        let cli = Cli::try_parse_from(["lwtun", "--batch", "f", "route", "show"]).unwrap();
        assert!(run(cli).is_err());
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
