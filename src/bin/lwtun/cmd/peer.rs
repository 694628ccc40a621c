//! `lwtun peer`: add, delete, show and count the peers of a pinned tunnel.

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use ipnetwork::IpNetwork;
use lwtun::{Error, Result};

use crate::cmd::tunnel::{adopt, read_pinned};
use crate::view::{table, PeerStatsView, PeerView, StatsView};
use crate::{spec, Ctx};

#[derive(Subcommand)]
pub(crate) enum PeerCommand {
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

pub(crate) fn peer(ctx: &Ctx, command: PeerCommand) -> Result<()> {
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
