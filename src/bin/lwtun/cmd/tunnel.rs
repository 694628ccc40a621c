//! `lwtun tunnel`: load, show and unload a pinned tunnel data plane.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use lwtun::netlink::route::Route;
use lwtun::netlink::Netlink;
use lwtun::peer::{MissPolicy, PeerTable};
use lwtun::program::program_info_by_id;
use lwtun::route::lwt_routes;
use lwtun::tunnel::{PinnedTunnel, Tunnel, TunnelTables, DEFAULT_CAPACITY};
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::view::{opt, MapView, RouteView};
use crate::{view, Ctx, Miss};

#[derive(Subcommand)]
pub(crate) enum TunnelCommand {
    /// Load a tunnel pinned in DIR (adopts the pins already there) and leave it pinned.
    Load {
        /// The pin folder on bpffs (for example /sys/fs/bpf/lwtun/t0).
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Peers per table (IPv4 and IPv6 each; default 4096) for a new folder; a folder that
        /// holds a tunnel of another capacity is refused (grow it with `tunnel resize`).
        #[arg(long)]
        capacity: Option<u32>,
        /// What the encap does with packets that match no peer (both families).
        #[arg(long, value_enum)]
        miss: Option<Miss>,
    },
    /// Grow a pinned tunnel's tables to CAPACITY peers each, without losing a packet: new
    /// tables and programs get a copy of the peers and counters, the tunnel's routes switch to
    /// them (route replace) in every namespace lwtun finds them (this one, the named and
    /// mounted ones, those of running processes), and they are pinned in place of the old ones.
    Resize {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Peers per table (IPv4 and IPv6 each), at least the current capacity.
        #[arg(long)]
        capacity: u32,
    },
    /// The maps, program ids, peer counts and routes of a pinned tunnel.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
    /// Remove the tunnel's routes (in every namespace lwtun finds them: this one, the named
    /// and mounted ones, those of running processes), fix-ups, pins and folder. Refused while a live
    /// process owns the tunnel, or while programs lwtun cannot find a route for use its table.
    Unload {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Unload even while a live process owns the tunnel (breaks its data plane) or programs
        /// without a route found use its table.
        #[arg(long)]
        force: bool,
    },
}

/// Adopts the tunnel pinned in `pin`, refusing a folder without a tunnel's pins (a plain load
/// would make a new tunnel there). The pins are kept when the value drops.
pub(crate) fn adopt(pin: &Path, direct: bool) -> Result<Tunnel> {
    let mut tunnel = open_pinned(pin, direct)?;
    tunnel.keep_pinned();
    Ok(tunnel)
}

/// Reads the tunnel pinned in `pin` (for show and stats), telling a folder without one how to
/// make it.
pub(crate) fn read_pinned(pin: &Path) -> Result<PinnedTunnel> {
    PinnedTunnel::open(pin).map_err(|e| match e.kind() {
        ErrorKind::NotFound => e.with_hint(format!(
            "load one with `lwtun tunnel load --pin {}`",
            pin.display()
        )),
        _ => e,
    })
}

/// As [`adopt`], but the pins go when the value drops.
pub(crate) fn open_pinned(pin: &Path, direct: bool) -> Result<Tunnel> {
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

/// The LWT routes in this namespace whose programs use the tunnel's peer table.
pub(crate) fn tunnel_routes(nl: &mut Netlink, peers: &PeerTable) -> Result<Vec<Route>> {
    let mut out = Vec::new();
    for r in lwt_routes(nl)? {
        let ours = RouteView::new(&r, None).hooks.iter().any(|h| {
            h.program_id
                .and_then(|id| program_info_by_id(id).ok())
                .is_some_and(|program| peers.serves(&program))
        });
        if ours {
            out.push(r);
        }
    }
    Ok(out)
}

/// The pins of the underlay fix-ups `route add` attached (tcx links, one per device).
pub(crate) fn fixup_pins(pin: &Path) -> Vec<PathBuf> {
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

pub(crate) fn route_view(nl: &mut Netlink, r: &Route) -> RouteView {
    let dev = r
        .oif
        .and_then(|i| nl.device_by_index(i).ok())
        .map(|d| d.name().to_string());
    RouteView::new(r, dev)
}

#[derive(Serialize)]
pub(crate) struct TunnelShow {
    #[serde(flatten)]
    tunnel: view::TunnelView,
    /// The programs running in this tunnel's routes (the loaded copies of each `route add`).
    program_ids: Vec<u32>,
    routes: Vec<RouteView>,
    fixups: Vec<String>,
    adopted: bool,
}

/// What the show commands read: a loaded tunnel (`tunnel load`) or the pins alone.
pub(crate) trait Tables {
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

pub(crate) fn tunnel_show(ctx: &Ctx, tunnel: &impl Tables, pin: &Path) -> Result<()> {
    let peers = tunnel.peers();
    let mut nl = ctx.netlink()?;
    let routes = tunnel_routes(&mut nl, tunnel.peers())?;
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

pub(crate) fn tunnel(ctx: &Ctx, command: TunnelCommand) -> Result<()> {
    match command {
        TunnelCommand::Load {
            pin,
            capacity,
            miss,
        } => {
            if let Some(wanted) = capacity {
                let pinned = lwtun::pins::inspect(&pin)?
                    .filter(|f| f.layout == &lwtun::tunnel::PIN_LAYOUT && f.complete)
                    .map(|_| PinnedTunnel::open(&pin))
                    .transpose()?
                    .map(|t| t.peers().capacity());
                if let Some(pinned) = pinned.filter(|p| *p != wanted) {
                    let fix = if wanted > pinned {
                        format!(
                            "grow it without dropping a route with `lwtun{} tunnel resize --pin {} \
                             --capacity {wanted}`",
                            ctx.netns_flag(),
                            pin.display()
                        )
                    } else {
                        "tables do not shrink; load it without --capacity to keep it".to_string()
                    };
                    return Err(Error::invalid_input(
                        "load tunnel",
                        format!(
                            "{} holds a tunnel of capacity {pinned}, not {wanted}: {fix}",
                            pin.display()
                        ),
                    ));
                }
            }
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
            tunnel_show(ctx, &tunnel, &pin)
        }
        TunnelCommand::Resize { pin, capacity } => {
            let mut tables =
                TunnelTables::open(&pin).map_err(|e| crate::cmd::edit::open_error(e, &pin))?;
            let before = tables.peers().capacity();
            // The tunnel's routes move in every namespace they are found in, all or none.
            let mut sockets = crate::cmd::places::namespaces(ctx)?
                .iter()
                .map(|place| lwtun::netlink::Netlink::open_in(&place.netns))
                .collect::<Result<Vec<_>>>()?;
            let moved = tables.resize_in(&mut sockets, capacity)?;
            if ctx.json {
                return ctx.print_json(&serde_json::json!({
                    "pin": pin.display().to_string(),
                    "capacity_before": before,
                    "capacity": capacity,
                    "routes_moved": moved,
                }));
            }
            println!(
                "resized {} from {before} to {capacity} peers per table; {moved} route(s) moved",
                pin.display()
            );
            Ok(())
        }
        TunnelCommand::Show { pin } => tunnel_show(ctx, &read_pinned(&pin)?, &pin),
        TunnelCommand::Unload { pin, force } => crate::cmd::unload::unload(ctx, &pin, force),
    }
}
