//! `lwtun leftovers`: what lwtun left behind that no live process owns, and its removal.
//!
//! Everything lwtun installs in a namespace is listed: LWT routes (proto 76), nexthops
//! (proto 76), tc programs of every lwtun family (tcx links and `lwtun:` clsact filters, decap
//! included), XDP programs of lwtun's families; and every lwtun pin folder on bpffs. Each is
//! either a leftover (no live process holds it) or owned: a live process holds its program, one
//! of the program's maps, its link, or the pin folder of its maps (see `cmd::owners`). Owned
//! things are reported apart and `--remove` keeps them; `--force` removes them too.
//!
//! A route that is not itself a leftover (not lwtun's, or owned) can still carry one: a program
//! of lwtun's chain family at its `lwt_out` hook that no live process holds, which a
//! `capture --hook route` killed with SIGKILL leaves there. Nothing can edit or read such a
//! chain any more (chains have no pins); `--remove` puts the route back without it, everything
//! else kept ([`RouteTap::adopt`]), or refuses when the route cannot be put back exactly.

use lwtun::device::Device;
use lwtun::holders::Owner;
use lwtun::netlink::route::{Encap, Route};
use lwtun::program::id_of_route_name;
use lwtun::route::{lwt_routes, RTPROT_LWTUN};
use lwtun::tc::{TcDirection, TcMode, TcProgramInfo};
use lwtun::xdp::{XdpAttachment, XdpMode};
use lwtun::Result;
use serde::Serialize;

use crate::cmd::owners::{describe, owner_views, OwnerView, Ownership};
use crate::cmd::route::print_routes;
use crate::cmd::tunnel::route_view;
use crate::route_tap::RouteTap;
use crate::view::RouteView;
use crate::Ctx;

/// The tc programs lwtun's objects define (kernel names: the first 15 bytes), how a tcx
/// attachment, which carries no filter name, is known as lwtun's.
const LWTUN_TC_PROGRAMS: &[&str] = &[
    "capture_tc",
    "chain_tc",
    "count_tc",
    "decap_tc",
    "dispatch_tc",
    "encap_preview",
    "ipip_gso_fixup",
    "pass_tc",
    "redirect_tc",
    "service_pick",
    "stage_tc",
    "table_tc",
];

/// The `lwt_out` programs of lwtun's chain family (kernel names: the first 15 bytes): what
/// `capture --hook route` and a chain hang at a route's `lwt_out` hook, and a leftover there
/// when no live process holds them.
const LWTUN_LWT_OUT_TAPS: &[&str] = &[
    "capture_lwt_out",
    "chain_lwt_out",
    "dispatch_lwt_ou",
    "stage_lwt_out",
    "table_lwt_out",
];

/// The other `lwt_out` programs lwtun ships: a route's own (a counter), never taken off it
/// (the tests check that every `lwt_out` program is in one list or the other).
#[cfg(test)]
const LWTUN_LWT_OUT_OWN: &[&str] = &["count_out"];

#[derive(Serialize)]
pub(crate) struct PinView {
    pin: String,
    /// The pid holding the folder's flock, when a process owns it.
    owner_pid: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct FolderView {
    pin: String,
    /// `tunnel`, `decap`, `lwt_redirect`, `tunnel_redirect` or `seg6`.
    family: &'static str,
    complete: bool,
    owner_pid: Option<u32>,
    owner_command: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct FilterView {
    dev: String,
    direction: &'static str,
    /// The clsact filter's name (`lwtun:...`), or the program's name for a tcx link.
    name: String,
    /// `tcx` or `clsact`.
    mode: &'static str,
    program_id: u32,
    link_id: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct XdpView {
    dev: String,
    program_id: u32,
}

/// A chain-family program left at a route's `lwt_out` hook.
#[derive(Serialize)]
pub(crate) struct RouteHookView {
    dst: String,
    dev: Option<String>,
    table: u32,
    /// `lwt_out`.
    hook: &'static str,
    /// The program's name on the route (`lwtun:chain_lwt_out:ID`).
    program: String,
    program_id: u32,
}

impl RouteHookView {
    fn object(&self) -> String {
        format!(
            "{} {} on route {} dev {}",
            self.hook,
            self.program,
            self.dst,
            self.dev.as_deref().unwrap_or("-")
        )
    }
}

#[derive(Serialize)]
pub(crate) struct NexthopView {
    id: u32,
    dev: Option<String>,
}

/// Something lwtun installed that a live process owns: kept by `--remove`.
#[derive(Serialize)]
pub(crate) struct OwnedView {
    /// `route`, `route_hook`, `tc`, `xdp` or `nexthop`.
    kind: &'static str,
    /// What it is, as the text output names it ("route 10.20.0.0/16 dev to1").
    object: String,
    owners: Vec<OwnerView>,
}

#[derive(Serialize)]
pub(crate) struct LeftoversView {
    /// Tunnel pin folders (kept for scripts that read them; `pin_folders` lists every family).
    tunnel_pins: Vec<PinView>,
    /// Every lwtun pin folder, of any family, with its owner.
    pin_folders: Vec<FolderView>,
    routes: Vec<RouteView>,
    /// Chain-family programs (a killed capture's) at the `lwt_out` hook of routes that are not
    /// leftovers themselves; `--remove` puts those routes back without them.
    route_hooks: Vec<RouteHookView>,
    /// tc programs of lwtun's families: `lwtun:` clsact filters and tcx links.
    tc_filters: Vec<FilterView>,
    /// XDP programs of lwtun's families (they have an `xdp_stats` map) attached to devices.
    xdp: Vec<XdpView>,
    /// Nexthop objects tagged proto 76 (routes share their LWT encap through them).
    nexthops: Vec<NexthopView>,
    /// What a live process owns (not leftovers): kept unless --force.
    owned: Vec<OwnedView>,
    removed_routes: usize,
    removed_route_hooks: usize,
    removed_tc_filters: usize,
    removed_xdp: usize,
    removed_nexthops: usize,
}

/// Whether program `id` is one of lwtun's XDP family programs (it uses an `xdp_stats` map).
pub(crate) fn is_lwtun_xdp(id: u32) -> bool {
    matches!(lwtun::xdp::StatsMap::of_program(id), Ok(Some(_)))
}

/// The program ids of an LWT encap (the ids lwtun writes into the names it gives).
fn encap_programs(encap: Option<&Encap>) -> Vec<u32> {
    match encap {
        Some(Encap::Bpf(b)) => [&b.input, &b.output, &b.xmit]
            .into_iter()
            .flatten()
            .filter_map(|p| id_of_route_name(&p.name))
            .collect(),
        Some(Encap::Seg6LocalBpf(p)) => id_of_route_name(&p.name).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The chain-family program at a route's `lwt_out` hook: its route name and id.
fn lwt_out_tap(route: &Route) -> Option<(&str, u32)> {
    let Some(Encap::Bpf(b)) = &route.encap else {
        return None;
    };
    let name = b.output.as_ref()?.name.as_str();
    let (program, id) = name
        .strip_prefix(lwtun::program::ROUTE_NAME_PREFIX)?
        .rsplit_once(':')?;
    LWTUN_LWT_OUT_TAPS
        .contains(&program)
        .then_some((name, id.parse().ok()?))
}

/// A found object: what it is, its live owners, and how to remove it.
struct Found<T> {
    item: T,
    owners: Vec<Owner>,
}

struct TcFound {
    view: FilterView,
    device: Device,
    info: TcProgramInfo,
}

fn is_lwtun_tc(p: &TcProgramInfo) -> bool {
    match (&p.mode, &p.filter) {
        (TcMode::Clsact, Some(f)) => f.name.starts_with(lwtun::tc::FILTER_NAME_PREFIX),
        (TcMode::Tcx, _) => p
            .program_name
            .as_deref()
            .is_some_and(|n| LWTUN_TC_PROGRAMS.contains(&n)),
        _ => false,
    }
}

pub(crate) fn leftovers(ctx: &Ctx, remove: bool, force: bool) -> Result<()> {
    let mut nl = ctx.netlink()?;
    let own = Ownership::scan()?;
    let pin_folders: Vec<FolderView> = own
        .folders
        .iter()
        .map(|f| FolderView {
            pin: f.path.display().to_string(),
            family: f.layout.family(),
            complete: f.complete,
            owner_pid: f.owner.as_ref().map(|o| o.pid),
            owner_command: f.owner.as_ref().and_then(|o| o.command.clone()),
        })
        .collect();
    let tunnel_pins = own
        .folders
        .iter()
        .filter(|f| f.layout == &lwtun::tunnel::PIN_LAYOUT)
        .map(|f| PinView {
            owner_pid: f.owner.as_ref().map(|o| o.pid),
            pin: f.path.display().to_string(),
        })
        .collect();

    let mut routes: Vec<Found<(Route, RouteView)>> = Vec::new();
    let mut hooks: Vec<Found<(Route, RouteHookView)>> = Vec::new();
    for r in lwt_routes(&mut nl)? {
        let view = route_view(&mut nl, &r);
        let lwtuns = view.protocol == RTPROT_LWTUN;
        let owners = match lwtuns {
            true => own.of_programs(encap_programs(r.encap.as_ref())),
            false => Vec::new(),
        };
        // A route that is a leftover itself goes whole, its hooks with it.
        let whole = lwtuns && owners.is_empty();
        if let Some((program, id)) = lwt_out_tap(&r).filter(|_| !whole) {
            hooks.push(Found {
                owners: own.of_program(id),
                item: (
                    r.clone(),
                    RouteHookView {
                        dst: view.dst.clone(),
                        dev: view.dev.clone(),
                        table: view.table,
                        hook: "lwt_out",
                        program: program.to_string(),
                        program_id: id,
                    },
                ),
            });
        }
        if lwtuns {
            routes.push(Found {
                item: (r, view),
                owners,
            });
        }
    }

    let links = nl.links()?;
    let mut tc: Vec<Found<TcFound>> = Vec::new();
    for link in &links {
        let device = ctx.netns.device_by_index(link.index)?;
        for (direction, name) in [
            (TcDirection::Ingress, "ingress"),
            (TcDirection::Egress, "egress"),
        ] {
            for p in lwtun::tc::attached(&device, direction)? {
                if !is_lwtun_tc(&p) {
                    continue;
                }
                let mut owners = own.of_program(p.program_id);
                if let Some(l) = p.link_id {
                    for o in own.of_link(l) {
                        if !owners.iter().any(|x| x.pid == o.pid) {
                            owners.push(o.clone());
                        }
                    }
                }
                let view = FilterView {
                    dev: link.name.clone(),
                    direction: name,
                    name: match &p.filter {
                        Some(f) => f.name.clone(),
                        None => p.program_name.clone().unwrap_or_default(),
                    },
                    mode: match p.mode {
                        TcMode::Tcx => "tcx",
                        _ => "clsact",
                    },
                    program_id: p.program_id,
                    link_id: p.link_id,
                };
                tc.push(Found {
                    item: TcFound {
                        view,
                        device: device.clone(),
                        info: p,
                    },
                    owners,
                });
            }
        }
    }

    let xdp: Vec<Found<XdpView>> = links
        .iter()
        .filter_map(|l| {
            let id = l.xdp_prog_id?;
            is_lwtun_xdp(id).then(|| Found {
                item: XdpView {
                    dev: l.name.clone(),
                    program_id: id,
                },
                owners: own.of_program(id),
            })
        })
        .collect();

    let nexthops: Vec<Found<NexthopView>> = match nl.nexthops() {
        Ok(all) => all
            .into_iter()
            .filter(|n| n.protocol == RTPROT_LWTUN)
            .map(|n| Found {
                owners: own.of_programs(encap_programs(n.encap.as_ref())),
                item: NexthopView {
                    id: n.id,
                    dev: n.oif.and_then(|oif| {
                        links
                            .iter()
                            .find(|l| l.index == oif)
                            .map(|l| l.name.clone())
                    }),
                },
            })
            .collect(),
        // A kernel without nexthop objects (before Linux 5.3) has none to leave behind.
        Err(e) if e.kind() == lwtun::ErrorKind::Unsupported => Vec::new(),
        Err(e) => return Err(e),
    };

    // What goes: the leftovers, and with --force the owned things too.
    let goes = |owners: &[Owner]| remove && (owners.is_empty() || force);
    // Every route to put back is checked first: a refusal leaves everything as it was.
    let taps = hooks
        .iter()
        .filter(|h| goes(&h.owners))
        .map(|h| RouteTap::adopt(&ctx.netns, &h.item.0))
        .collect::<Result<Vec<_>>>()?;
    let (mut removed_routes, mut removed_tc_filters, mut removed_xdp) = (0, 0, 0);
    let mut removed_nexthops = 0;
    for n in nexthops.iter().filter(|n| goes(&n.owners)) {
        // The kernel removes the routes using the nexthop with it.
        nl.delete_nexthop(n.item.id)
            .map_err(|e| e.with_object(format!("nexthop {}", n.item.id)))?;
        removed_nexthops += 1;
    }
    for r in routes.iter().filter(|r| goes(&r.owners)) {
        match nl.delete_route(&r.item.0) {
            Ok(()) => removed_routes += 1,
            // Gone with a nexthop removed above.
            Err(e) if e.kind() == lwtun::ErrorKind::NotFound => {}
            Err(e) => return Err(e.with_object(format!("route {}", r.item.1.dst))),
        }
    }
    let removed_route_hooks = taps.len();
    for tap in taps {
        tap.restore()?;
    }
    for t in tc.iter().filter(|t| goes(&t.owners)) {
        remove_tc(ctx, &own, &t.item)?;
        removed_tc_filters += 1;
    }
    for x in xdp.iter().filter(|x| goes(&x.owners)) {
        XdpAttachment::detach_interface(&ctx.netns.device(&x.item.dev)?, XdpMode::Auto)?;
        removed_xdp += 1;
    }

    let mut owned = Vec::new();
    let mut owned_of = |kind: &'static str, object: String, owners: &[Owner]| {
        if !owners.is_empty() {
            owned.push(OwnedView {
                kind,
                object,
                owners: owner_views(owners),
            });
        }
    };
    for r in &routes {
        let v = &r.item.1;
        let dev = v.dev.as_deref().unwrap_or("-");
        owned_of("route", format!("route {} dev {dev}", v.dst), &r.owners);
    }
    for h in &hooks {
        owned_of("route_hook", h.item.1.object(), &h.owners);
    }
    for t in &tc {
        let v = &t.item.view;
        let object = format!("tc {} {} {} {}", v.dev, v.direction, v.mode, v.name);
        owned_of("tc", object, &t.owners);
    }
    for x in &xdp {
        let object = format!("xdp {} program {}", x.item.dev, x.item.program_id);
        owned_of("xdp", object, &x.owners);
    }
    for n in &nexthops {
        owned_of("nexthop", format!("nexthop id {}", n.item.id), &n.owners);
    }
    let left = |owners: &[Owner]| owners.is_empty();
    let view = LeftoversView {
        tunnel_pins,
        pin_folders,
        routes: routes
            .into_iter()
            .filter(|r| left(&r.owners))
            .map(|r| r.item.1)
            .collect(),
        route_hooks: hooks
            .into_iter()
            .filter(|h| left(&h.owners))
            .map(|h| h.item.1)
            .collect(),
        tc_filters: tc
            .into_iter()
            .filter(|t| left(&t.owners))
            .map(|t| t.item.view)
            .collect(),
        xdp: xdp
            .into_iter()
            .filter(|x| left(&x.owners))
            .map(|x| x.item)
            .collect(),
        nexthops: nexthops
            .into_iter()
            .filter(|n| left(&n.owners))
            .map(|n| n.item)
            .collect(),
        owned,
        removed_routes,
        removed_route_hooks,
        removed_tc_filters,
        removed_xdp,
        removed_nexthops,
    };
    if ctx.json {
        return ctx.print_json(&view);
    }
    print_text(ctx, &view, remove, force);
    Ok(())
}

/// Removes one tc program: deletes a clsact filter; detaches a tcx link and removes the decap
/// link pins that recorded it (`DIR/link-NETNS-IFINDEX`).
fn remove_tc(ctx: &Ctx, own: &Ownership, t: &TcFound) -> Result<()> {
    let object = || format!("{} on {} {}", t.view.name, t.view.dev, t.view.direction);
    if let Some(f) = &t.info.filter {
        let mut nl = ctx.netlink()?;
        return nl
            .del_bpf_filter(f.ifindex, f.parent, f.priority, f.handle)
            .map_err(|e| e.with_object(object()));
    }
    let Some(link) = t.info.link_id else {
        return Err(lwtun::Error::other(
            lwtun::ErrorKind::NotFound,
            "remove tc program",
            format!(
                "{} runs without a link (attached by another tool); detach it with bpftool",
                object()
            ),
        ));
    };
    lwtun::tc::detach_link(link).map_err(|e| e.with_object(object()))?;
    let record = format!("link-{}-{}", t.device.netns_id().inode(), t.device.index());
    for f in own
        .folders
        .iter()
        .filter(|f| f.layout == &lwtun::decap::PIN_LAYOUT)
    {
        let pin = f.path.join(&record);
        if std::fs::symlink_metadata(&pin).is_ok() {
            let _ = std::fs::remove_file(&pin);
        }
    }
    Ok(())
}

fn print_text(ctx: &Ctx, view: &LeftoversView, remove: bool, force: bool) {
    println!(
        "pin folders of lwtun's families (remove with `{}`, `{}`):",
        ctx.command("tunnel unload --pin DIR"),
        ctx.command("decap detach DEV --pin DIR")
    );
    for p in &view.pin_folders {
        let complete = if p.complete { "" } else { ", incomplete" };
        match p.owner_pid {
            Some(pid) => println!(
                "  {} ({}{complete}, owned by process {pid}{})",
                p.pin,
                p.family,
                p.owner_command
                    .as_ref()
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            None => println!("  {} ({}{complete})", p.pin, p.family),
        }
    }
    println!("routes tagged proto {RTPROT_LWTUN}:");
    print_routes(&view.routes);
    println!("captures and chains left at a route's lwt_out hook (no live process holds them):");
    for h in &view.route_hooks {
        println!("  {}", h.object());
    }
    println!("tc programs of lwtun's families (lwtun: filters, tcx links):");
    for f in &view.tc_filters {
        println!("  {} {} {} {}", f.dev, f.direction, f.mode, f.name);
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
    if !view.owned.is_empty() {
        println!(
            "owned by live processes (not leftovers; {}):",
            if force {
                "--force removes them".to_string()
            } else {
                format!(
                    "kept; `{}` removes them anyway",
                    ctx.command("leftovers --remove --force")
                )
            }
        );
        for o in &view.owned {
            let owners: Vec<Owner> = o
                .owners
                .iter()
                .map(|v| Owner {
                    pid: v.pid,
                    command: v.command.clone(),
                })
                .collect();
            println!("  {} (in use by {})", o.object, describe(&owners));
        }
    }
    if remove {
        println!(
            "removed {} route(s), {} tc program(s), {} XDP program(s), {} nexthop(s); put {} \
             route(s) back without a leftover lwt_out program",
            view.removed_routes,
            view.removed_tc_filters,
            view.removed_xdp,
            view.removed_nexthops,
            view.removed_route_hooks
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The kernel names (first 15 bytes) of the programs in bpf/*.bpf.c whose `SEC("...")`
    /// `section` accepts, read from the sources: a program added there is seen here.
    fn programs_in_sources(section: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf");
        let mut out = BTreeSet::new();
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.to_string_lossy().ends_with(".bpf.c") {
                continue;
            }
            files += 1;
            let text = std::fs::read_to_string(&path).unwrap();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                let Some(sec) = line
                    .trim()
                    .strip_prefix("SEC(\"")
                    .and_then(|r| r.strip_suffix("\")"))
                else {
                    continue;
                };
                if !section(sec) {
                    continue;
                }
                let def = lines.by_ref().find(|l| !l.trim().is_empty()).unwrap();
                let before_paren = def.split('(').next().unwrap();
                let name = before_paren
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .rfind(|w| !w.is_empty())
                    .unwrap_or_else(|| panic!("{}: no program after SEC: {def}", path.display()));
                out.insert(name.chars().take(15).collect());
            }
        }
        assert!(files > 10, "bpf/*.bpf.c read from {}", dir.display());
        out
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        let set: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(set.len(), names.len(), "no name twice: {names:?}");
        set
    }

    #[test]
    fn the_tc_program_list_is_every_tc_program_lwtun_ships() {
        let shipped = programs_in_sources(|s| s == "tc" || s.starts_with("tcx/"));
        assert!(shipped.contains("decap_tc"), "{shipped:?}");
        assert_eq!(
            set(LWTUN_TC_PROGRAMS),
            shipped,
            "LWTUN_TC_PROGRAMS must name every SEC(\"tc\")/SEC(\"tcx/...\") program in bpf/ \
             (kernel names, 15 bytes)"
        );
    }

    #[test]
    fn every_lwt_out_program_lwtun_ships_is_a_tap_or_a_routes_own() {
        let shipped = programs_in_sources(|s| s == "lwt_out");
        let taps = set(LWTUN_LWT_OUT_TAPS);
        let own = set(LWTUN_LWT_OUT_OWN);
        assert!(taps.is_disjoint(&own));
        assert_eq!(
            taps.union(&own).cloned().collect::<BTreeSet<_>>(),
            shipped,
            "each SEC(\"lwt_out\") program in bpf/ is in LWTUN_LWT_OUT_TAPS (a chain or \
             capture, a leftover when nobody holds it) or in LWTUN_LWT_OUT_OWN (a route's own)"
        );
        // The chain an `lwtun capture --hook route` hangs is recognised.
        assert!(taps.contains("chain_lwt_out"));
    }

    #[test]
    fn a_tap_is_known_by_its_route_name() {
        let mut r = Route::new("10.20.0.0/16".parse().unwrap());
        assert_eq!(lwt_out_tap(&r), None);
        let prog = |name: &str| Some(lwtun::netlink::route::ProgRef::new(-1, name.to_string()));
        let mut bpf = lwtun::netlink::route::BpfEncap {
            xmit: prog("lwtun:encap_xmit:7"),
            ..Default::default()
        };
        r.encap = Some(Encap::Bpf(bpf.clone()));
        assert_eq!(lwt_out_tap(&r), None, "a route's own programs are not taps");
        bpf.output = prog("lwtun:chain_lwt_out:9");
        r.encap = Some(Encap::Bpf(bpf.clone()));
        assert_eq!(lwt_out_tap(&r), Some(("lwtun:chain_lwt_out:9", 9)));
        bpf.output = prog("lwtun:count_out:9");
        r.encap = Some(Encap::Bpf(bpf.clone()));
        assert_eq!(lwt_out_tap(&r), None, "a counter is the route's own");
        bpf.output = prog("chain.o:[lwt_out]");
        r.encap = Some(Encap::Bpf(bpf));
        assert_eq!(lwt_out_tap(&r), None, "not a name lwtun gave");
    }
}
