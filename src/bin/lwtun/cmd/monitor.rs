//! `lwtun monitor`: what changes in the namespace, one line (or one JSON object) per event, as
//! `ip monitor` prints it, from [`lwtun::monitor::Monitor`]. Each line is flushed as it is
//! written, so a pipe or a test reads events as they happen.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lwtun::monitor::{Event, EventKinds, Monitor, ResyncReason, Stamped};
use lwtun::netlink::Netlink;
use lwtun::peer::ChangeOrigin;
use lwtun::{Error, ErrorKind, Result};
use serde_json::{json, Value};

use crate::view::{PeerView, RouteView};
use crate::{exit, Ctx};

/// `lwtun monitor`'s arguments.
#[derive(clap::Args)]
pub(crate) struct MonitorArgs {
    /// The kinds of events: route, link, address, neigh, nexthop, peer or all (default: all;
    /// peer and all include peers only with --pin).
    #[arg(value_name = "KIND")]
    kinds: Vec<String>,
    /// The pin folder of a tunnel whose peers to watch (repeatable).
    #[arg(long, value_name = "DIR")]
    pin: Vec<PathBuf>,
    /// Exit after N events (for scripts and tests).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Prints events until `--count` is reached (or forever).
pub(crate) fn monitor(ctx: &Ctx, args: MonitorArgs) -> Result<()> {
    let mut kinds = EventKinds::from_names(&args.kinds)?;
    if args.pin.is_empty() {
        if args.kinds.iter().any(|k| k == "peer" || k == "peers") {
            return Err(Error::invalid_input(
                "monitor peers",
                "peer events need the tunnel's pin folder: lwtun monitor peer --pin DIR",
            ));
        }
        kinds.remove(EventKinds::PEER);
    }
    let mut monitor = Monitor::open_in(&ctx.netns, kinds)?;
    if kinds.contains(EventKinds::PEER) {
        for pin in &args.pin {
            monitor.watch_peers(pin).map_err(|e| match e.kind() {
                ErrorKind::NotFound => e.with_hint(format!(
                    "load one with `lwtun tunnel load --pin {}`",
                    pin.display()
                )),
                _ => e,
            })?;
        }
    }
    let many_pins = args.pin.len() > 1;
    let mut names = Names {
        nl: ctx.netlink()?,
        known: HashMap::new(),
    };
    let mut printed = 0;
    while args.count.is_none_or(|n| printed < n) {
        let event = monitor.next()?;
        names.learn(&event);
        let line = if ctx.json {
            let text = serde_json::to_string(&event_json(&event, &mut names))
                .expect("a JSON value always serialises");
            format!("{text}\n")
        } else {
            let mut line = name_devices(&event.to_string(), &mut names);
            if let (true, Some(folder)) = (many_pins, peer_folder(&event)) {
                line.push_str(&format!(" pin {}", folder.display()));
            }
            format!("{line}\n")
        };
        exit::print(&line)?;
        printed += 1;
    }
    Ok(())
}

/// The pin folder of a peer event.
fn peer_folder(e: &Event) -> Option<&Path> {
    match e {
        Event::PeerAdded { folder, .. }
        | Event::PeerChanged { folder, .. }
        | Event::PeerRemoved { folder, .. } => Some(folder),
        _ => None,
    }
}

fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A peer event's fields: the pin, the peer as `peer show -j` has it, the old one of a change,
/// and who wrote it.
fn peer_json(e: &Event) -> Value {
    let (folder, prefix, peer, old, origin) = match e {
        Event::PeerAdded {
            folder,
            prefix,
            peer,
            origin,
        }
        | Event::PeerRemoved {
            folder,
            prefix,
            peer,
            origin,
        } => (folder, prefix, peer, None, origin),
        Event::PeerChanged {
            folder,
            prefix,
            old,
            new,
            origin,
        } => (folder, prefix, new, Some(old), origin),
        _ => return json!({}),
    };
    let mut v = serde_json::to_value(PeerView::new(*prefix, peer)).expect("a peer serialises");
    v["pin"] = json!(folder.display().to_string());
    if let Some(old) = old {
        v["old"] = serde_json::to_value(PeerView::new(*prefix, old)).expect("a peer serialises");
    }
    let o: Option<&ChangeOrigin> = origin.as_ref();
    v["pid"] = json!(o.map(|o| o.writer.pid));
    v["comm"] = json!(o.and_then(|o| o.writer.command.clone()));
    v["journal_seq"] = json!(o.map(|o| o.seq));
    v["written"] = json!(o.map(|o| seconds(o.time)));
    v
}

/// Interface names by index: from link events, else asked once.
struct Names {
    nl: Netlink,
    known: HashMap<u32, String>,
}

impl Names {
    fn learn(&mut self, event: &Event) {
        if let Event::LinkAdded(l) | Event::LinkChanged(l) = event {
            self.known.insert(l.index, l.name.clone());
        }
    }

    fn of(&mut self, index: u32) -> Option<String> {
        if let Some(name) = self.known.get(&index) {
            return Some(name.clone());
        }
        let name = self.nl.link_by_index(index).ok()?.name;
        self.known.insert(index, name.clone());
        Some(name)
    }
}

/// `dev#N` in an event's line as `ip monitor` says it, `dev NAME`, where the name is known.
fn name_devices(line: &str, names: &mut Names) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find("dev#") {
        out.push_str(&rest[..at]);
        let digits = rest[at + 4..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 4);
        let number = &rest[at + 4..at + 4 + digits];
        match number.parse().ok().and_then(|i| names.of(i)) {
            Some(name) => {
                out.push_str("dev ");
                out.push_str(&name);
            }
            None => out.push_str(&rest[at..at + 4 + digits]),
        }
        rest = &rest[at + 4 + digits..];
    }
    out.push_str(rest);
    out
}

fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// One event as the JSON object `-j` prints: `seq`, `time` (seconds since the epoch), `kind`,
/// `action` and the object's fields.
fn event_json(e: &Stamped<Event>, names: &mut Names) -> Value {
    let time = seconds(e.time);
    let kind = e.kind().and_then(EventKinds::name).unwrap_or("resync");
    let mut v = json!({ "seq": e.seq, "time": time, "kind": kind, "action": e.action() });
    let fields = match &e.event {
        Event::RouteAdded(r) | Event::RouteChanged(r) | Event::RouteRemoved(r) => {
            let dev = r.oif.and_then(|i| names.of(i));
            let mut route = serde_json::to_value(RouteView::new(r, dev))
                .expect("a route view always serialises");
            route["mtu"] = json!(r.mtu.map(|m| m.bytes));
            route["nhid"] = json!(r.nhid);
            route
        }
        Event::LinkAdded(l) | Event::LinkChanged(l) | Event::LinkRemoved(l) => json!({
            "index": l.index,
            "name": l.name,
            "type": l.kind,
            "up": l.up,
            "lower_up": l.flags & libc::IFF_LOWER_UP as u32 != 0,
            "mtu": l.mtu,
            "mac": l.mac.map(|m| mac(&m)),
            "master": l.master,
            "xdp_prog_id": l.xdp_prog_id,
        }),
        Event::AddressAdded(a) | Event::AddressChanged(a) | Event::AddressRemoved(a) => json!({
            "index": a.index,
            "dev": names.of(a.index),
            "address": a.network.to_string(),
            "peer": a.peer.map(|p| p.to_string()),
            "label": a.label,
        }),
        Event::NeighbourAdded(n) | Event::NeighbourChanged(n) | Event::NeighbourRemoved(n) => {
            json!({
                "index": n.index,
                "dev": names.of(n.index),
                "ip": n.ip.to_string(),
                "lladdr": n.lladdr.as_deref().map(mac),
                "state": n.state_name(),
            })
        }
        Event::NexthopAdded(n) | Event::NexthopChanged(n) | Event::NexthopRemoved(n) => json!({
            "id": n.id,
            "oif": n.oif,
            "dev": n.oif.and_then(|i| names.of(i)),
            "gateway": n.gateway.map(|g| g.to_string()),
            "line": n.to_string(),
        }),
        Event::PeerAdded { .. } | Event::PeerChanged { .. } | Event::PeerRemoved { .. } => {
            peer_json(e)
        }
        Event::Resync { reason, missed } => {
            let journal = matches!(reason, ResyncReason::Journal(_));
            json!({ "reason": reason.to_string(), "missed": missed, "journal": journal })
        }
        other => json!({ "line": other.to_string() }),
    };
    if let (Value::Object(all), Value::Object(more)) = (&mut v, fields) {
        all.extend(more);
    }
    v
}
