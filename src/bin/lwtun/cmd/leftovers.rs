//! `lwtun leftovers`: what lwtun processes left behind, and its removal.

use lwtun::route::{lwt_routes, RTPROT_LWTUN};
use lwtun::tc::TcDirection;
use lwtun::xdp::{XdpAttachment, XdpMode};
use lwtun::Result;
use serde::Serialize;

use crate::cmd::route::print_routes;
use crate::cmd::tunnel::route_view;
use crate::view::RouteView;
use crate::Ctx;

#[derive(Serialize)]
pub(crate) struct PinView {
    pin: String,
    /// The pid holding the folder's flock, when a process owns it.
    owner_pid: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct FilterView {
    dev: String,
    direction: &'static str,
    name: String,
}

#[derive(Serialize)]
pub(crate) struct XdpView {
    dev: String,
    program_id: u32,
}

#[derive(Serialize)]
pub(crate) struct LeftoversView {
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
pub(crate) struct NexthopView {
    id: u32,
    dev: Option<String>,
}

/// Whether program `id` is one of lwtun's XDP family programs (it uses an `xdp_stats` map).
pub(crate) fn is_lwtun_xdp(id: u32) -> bool {
    matches!(lwtun::xdp::StatsMap::of_program(id), Ok(Some(_)))
}

pub(crate) fn leftovers(ctx: &Ctx, remove: bool) -> Result<()> {
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
