//! `lwtun tunnel unload`: removes a pinned tunnel and every route that runs over its table,
//! wherever the route is, so that no route stays live over a table nobody can edit any more.
//!
//! 1. The owner: a live process holding the folder's lock, the table's maps or a program that
//!    uses them refuses the unload (naming it) unless `--force`.
//! 2. The routes: every LWT route whose programs use the tunnel's peer tables, in this
//!    namespace, the named ones (`/run/netns`), those bind-mounted elsewhere and those of
//!    running processes.
//! 3. The check: every loaded program that uses the tables must be one of those routes'
//!    programs or one pinned in the folder; one that is not (a route in a namespace only a
//!    thread or a socket holds, a nexthop, a pin elsewhere) refuses the unload unless
//!    `--force`: unpinning would leave it running over a table nobody can edit. (The folder's
//!    pinned programs are shared by the routes `route add` makes, so such a route running one
//!    of them cannot be told apart: the kernel shows no program's users.)
//! 4. The removal: the routes, the fix-up pins, then the pins and the folder.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use lwtun::holders::{programs_using_maps, Owner};
use lwtun::netlink::route::Route;
use lwtun::netlink::Netlink;
use lwtun::program::id_of_route_name;
use lwtun::tunnel::PinnedTunnel;
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::cmd::owners::{refuse, steady_holders};
use crate::cmd::places::{namespaces, Place};
use crate::cmd::tunnel::{fixup_pins, open_pinned, route_view};
use crate::Ctx;

/// The program ids a route runs.
fn route_programs(r: &Route) -> Vec<u32> {
    crate::view::RouteView::new(r, None)
        .hooks
        .iter()
        .filter_map(|h| h.program_id.or_else(|| id_of_route_name(&h.name)))
        .collect()
}

/// One route of the tunnel, where it was found.
struct Found {
    place: usize,
    route: Route,
    programs: Vec<u32>,
}

#[derive(Serialize)]
struct RemovedRoute {
    netns: String,
    dst: String,
    dev: Option<String>,
}

pub(crate) fn unload(ctx: &Ctx, pin: &Path, force: bool) -> Result<()> {
    let op = "unload tunnel";
    let force_command = format!("lwtun tunnel unload --pin {} --force", pin.display());
    let what = format!("the tunnel pinned in {}", pin.display());
    // Read without the lock: the owner, if any, is named below.
    let pinned = PinnedTunnel::open(pin)?;
    let maps: Vec<u32> = pinned
        .map_ids()
        .into_iter()
        .filter(|(n, _)| lwtun::tunnel::PIN_LAYOUT.maps().contains(&n.as_str()))
        .map(|(_, id)| id)
        .collect();
    let holders = steady_holders()?;
    let mut owners: Vec<Owner> = lwtun::pins::owner(pin)?.into_iter().collect();
    let mut add_owners = |list: &[Owner]| {
        for o in list {
            if !owners.iter().any(|x| x.pid == o.pid) {
                owners.push(o.clone());
            }
        }
    };
    for m in &maps {
        add_owners(holders.of_map(*m));
    }
    let users = programs_using_maps(&maps)?;
    for p in &users {
        add_owners(holders.of_program(p.id));
    }
    if !owners.is_empty() && !force {
        return Err(
            refuse(op, &what, &owners, &force_command).with_object(pin.display().to_string())
        );
    }

    let places = namespaces(ctx)?;
    let (found, unaccounted) = find_routes(&places, &pinned, &maps)?;
    if !unaccounted.is_empty() && !force {
        let ids: Vec<String> = unaccounted.iter().map(u32::to_string).collect();
        return Err(Error::other(
            ErrorKind::Exists,
            op,
            format!(
                "program(s) {} use the peer table of {} but run in no route lwtun finds in this \
                 namespace, the named or mounted ones or those of running processes (a route \
                 in a namespace only a thread or socket holds, a nexthop, a pin elsewhere); \
                 unpinning would leave them \
                 running over a table nobody can edit. Find them with `bpftool prog show id \
                 ID` and remove them, or run `{force_command}`",
                ids.join(", "),
                pin.display()
            ),
        )
        .with_object(pin.display().to_string()));
    }

    let mut removed = Vec::new();
    let mut sockets: Vec<Option<Netlink>> = places.iter().map(|_| None).collect();
    for f in &found {
        let place = &places[f.place];
        let nl = match &mut sockets[f.place] {
            Some(nl) => nl,
            slot => slot.insert(Netlink::open_in(&place.netns)?),
        };
        let view = route_view(nl, &f.route);
        nl.delete_route(&f.route)
            .map_err(|e| e.with_object(format!("route {} in {}", view.dst, place.label)))?;
        removed.push(RemovedRoute {
            netns: place.label.clone(),
            dst: view.dst,
            dev: view.dev,
        });
    }
    for f in fixup_pins(pin) {
        std::fs::remove_file(&f)
            .map_err(|e| Error::io("remove fix-up pin", e).with_object(f.display().to_string()))?;
    }
    drop(pinned);
    match open_pinned(pin, false) {
        // Dropping a tunnel that is not kept removes its pins and the folder.
        Ok(tunnel) => drop(tunnel),
        // --force past a live owner: its lock stays with it, the pins go.
        Err(e) if e.kind() == ErrorKind::Exists && force => remove_pins(pin)?,
        Err(e) => return Err(e),
    }
    if pin.exists() {
        return Err(Error::other(
            ErrorKind::Exists,
            "remove pin folder",
            format!(
                "the tunnel's pins are gone but {} still holds other files; remove them by hand \
                 (`rm -r {}`)",
                pin.display(),
                pin.display()
            ),
        ));
    }
    if ctx.json {
        return ctx.print_json(&serde_json::json!({
            "pin": pin.display().to_string(),
            "removed_routes": removed.len(),
            "routes": removed,
            "forced_past": owners.iter().map(|o| o.pid).collect::<Vec<_>>(),
        }));
    }
    println!(
        "unloaded {}: {} route(s) removed, pins removed",
        pin.display(),
        removed.len()
    );
    for r in &removed {
        println!(
            "  route {} dev {} in {}",
            r.dst,
            r.dev.as_deref().unwrap_or("-"),
            r.netns
        );
    }
    Ok(())
}

/// The tunnel's routes in `places`, and the programs using `maps` that none of them runs.
/// A program of a route deleted just before is freed after an RCU grace period, so the
/// unaccounted ones are looked at again for up to a second before they count.
fn find_routes(
    places: &[Place],
    pinned: &PinnedTunnel,
    maps: &[u32],
) -> Result<(Vec<Found>, Vec<u32>)> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut found = Vec::new();
        for (i, place) in places.iter().enumerate() {
            // A namespace that went away meanwhile has no routes.
            let Ok(mut nl) = Netlink::open_in(&place.netns) else {
                continue;
            };
            let Ok(routes) = crate::cmd::tunnel::tunnel_routes(&mut nl, pinned.peers()) else {
                continue;
            };
            for r in routes {
                found.push(Found {
                    place: i,
                    programs: route_programs(&r),
                    route: r,
                });
            }
        }
        // The programs pinned in the folder go with it.
        let ran: BTreeSet<u32> = found
            .iter()
            .flat_map(|f| f.programs.clone())
            .chain(pinned.program_ids().into_iter().map(|(_, id)| id))
            .collect();
        let unaccounted: Vec<u32> = programs_using_maps(maps)?
            .into_iter()
            .map(|p| p.id)
            .filter(|id| !ran.contains(id))
            .collect();
        if unaccounted.is_empty() || Instant::now() >= deadline {
            return Ok((found, unaccounted));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the tunnel's pins and its folder (when then empty) without its lock.
fn remove_pins(pin: &Path) -> Result<()> {
    let layout = &lwtun::tunnel::PIN_LAYOUT;
    for name in layout
        .maps()
        .iter()
        .chain(layout.programs())
        .chain(layout.optional())
    {
        let path = pin.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(
                    Error::io("remove tunnel pin", e).with_object(path.display().to_string())
                )
            }
        }
    }
    let _ = std::fs::remove_dir(pin);
    Ok(())
}
