//! `lwtun peer`: add, delete, show and count the peers of a pinned tunnel.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use ipnetwork::IpNetwork;
use lwtun::Result;

use crate::cmd::edit::{Edit, Editor, Located};
use crate::cmd::tunnel::read_pinned;
use crate::view::{table, PeerStatsView, PeerView, StatsView};
use crate::{spec, Ctx};

#[derive(Subcommand)]
pub(crate) enum PeerCommand {
    /// Add a peer: PREFIX remote ADDR local ADDR encap { ipip | gre [key N] [csum] | udp port N }
    /// [ttl N|inherit] [tos N|inherit]; or every line of a file with -b. Refused when the prefix
    /// has a peer (use `peer replace`).
    Add(PeerWords),
    /// Add a peer or change the one its prefix has (counters kept; packets see the old or the
    /// new peer, never none), in the words of `peer add`; or every line of a file with -b.
    Replace(PeerWords),
    /// Delete the peers of the given prefixes; or of every prefix in a file with -b.
    Del {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Prefixes from FILE (`-`: standard input), one per line (`#` comments): every line
        /// is checked first; a bad one is reported as FILE:LINE and nothing is applied.
        #[arg(
            short = 'b',
            long = "batch",
            value_name = "FILE",
            conflicts_with = "prefixes"
        )]
        batch: Option<PathBuf>,
        #[arg(value_name = "PREFIX", required_unless_present = "batch")]
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

/// The arguments of `peer add` and `peer replace`.
#[derive(clap::Args)]
pub(crate) struct PeerWords {
    #[arg(long, value_name = "DIR")]
    pub(crate) pin: PathBuf,
    /// Peers from FILE (`-`: standard input), one per line in the words above (`#`
    /// comments): every line is checked first; a bad one is reported as FILE:LINE and
    /// nothing is applied.
    #[arg(
        short = 'b',
        long = "batch",
        value_name = "FILE",
        conflicts_with = "words"
    )]
    pub(crate) batch: Option<PathBuf>,
    /// The peer's words.
    #[arg(
        value_name = "PEER",
        trailing_var_arg = true,
        required_unless_present = "batch"
    )]
    pub(crate) words: Vec<String>,
}

/// The edits a `peer add|replace|del` command makes (its file's lines, with -b).
pub(crate) fn peer_edits(ctx: &Ctx, command: PeerCommand) -> Result<Vec<Located>> {
    let (replace, w) = match command {
        PeerCommand::Add(w) => (false, w),
        PeerCommand::Replace(w) => (true, w),
        PeerCommand::Del {
            pin,
            batch,
            prefixes,
        } => {
            return match batch {
                Some(file) => {
                    let text = spec::read(&file)?;
                    spec::lines(&file, &text, |_| {})
                        .map(|(at, line)| {
                            let prefix = spec::prefix(line).map_err(|e| e.with_object(&at))?;
                            Ok(Located {
                                at: Some(at),
                                edit: Edit::PeerDel(pin.clone(), prefix),
                            })
                        })
                        .collect()
                }
                None => prefixes
                    .iter()
                    .map(|p| Ok(Located::here(Edit::PeerDel(pin.clone(), spec::prefix(p)?))))
                    .collect(),
            };
        }
        PeerCommand::Show { .. } | PeerCommand::Stats { .. } => return Ok(Vec::new()),
    };
    let make = |pin: PathBuf, prefix, peer| {
        if replace {
            Edit::PeerReplace(pin, prefix, peer)
        } else {
            Edit::PeerAdd(pin, prefix, peer)
        }
    };
    let Some(file) = w.batch else {
        let (prefix, peer) = spec::peer(w.words.iter().map(String::as_str))?;
        return Ok(vec![Located::here(make(w.pin, prefix, peer))]);
    };
    let text = spec::read(&file)?;
    let bar = progress(ctx, text.len() as u64);
    let parsed = spec::batch(&file, &text, |n| bar.inc(n));
    bar.finish_and_clear();
    Ok(parsed?
        .into_iter()
        .map(|(at, prefix, peer)| Located {
            at: Some(at),
            edit: make(w.pin.clone(), prefix, peer),
        })
        .collect())
}

pub(crate) fn peer(ctx: &Ctx, command: PeerCommand) -> Result<()> {
    match command {
        PeerCommand::Add(_) | PeerCommand::Replace(_) | PeerCommand::Del { .. } => {
            let verb = match &command {
                PeerCommand::Add(_) => "added",
                PeerCommand::Replace(_) => "replaced",
                _ => "deleted",
            };
            let edits = peer_edits(ctx, command)?;
            let mut editor = Editor::new(ctx);
            editor.check(&edits)?;
            let done = editor.apply(&edits)?;
            let n = done.peers_added + done.peers_replaced + done.peers_deleted;
            if !ctx.json {
                println!("{verb} {n} peer(s)");
            } else {
                ctx.print_json(&serde_json::json!({ verb: n }))?;
            }
            Ok(())
        }
        PeerCommand::Show { pin } => {
            let tunnel = read_pinned(&pin)?;
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
            let tunnel = read_pinned(&pin)?;
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
pub(crate) fn prefix_order(p: IpNetwork) -> (bool, IpAddr, u8) {
    (p.is_ipv6(), p.network(), p.prefix())
}

/// A progress bar over `bytes` on stderr: only for large files, on a terminal, without -j.
pub(crate) fn progress(ctx: &Ctx, bytes: u64) -> indicatif::ProgressBar {
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
