//! `lwtun monitor`: what changes in the namespace, one line (or one JSON object) per event, as
//! `ip monitor` prints it, from [`lwtun::monitor::Monitor`]. Each line is flushed as it is
//! written, so a pipe or a test reads events as they happen.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use lwtun::monitor::{Event, EventKinds, Monitor, Stamped};
use lwtun::netlink::Netlink;
use lwtun::Result;
use serde_json::{json, Value};

use crate::view::RouteView;
use crate::{exit, Ctx};

/// `lwtun monitor`'s arguments.
#[derive(clap::Args)]
pub(crate) struct MonitorArgs {
    /// The kinds of events: route, link, address, neigh, nexthop or all (default: all).
    #[arg(value_name = "KIND")]
    kinds: Vec<String>,
    /// Exit after N events (for scripts and tests).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

/// Prints events until `--count` is reached (or forever).
pub(crate) fn monitor(ctx: &Ctx, args: MonitorArgs) -> Result<()> {
    let kinds = EventKinds::from_names(&args.kinds)?;
    let mut monitor = Monitor::open_in(&ctx.netns, kinds)?;
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
            format!("{}\n", name_devices(&event.to_string(), &mut names))
        };
        exit::print(&line)?;
        printed += 1;
    }
    Ok(())
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
    let time = e
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
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
        Event::Resync { reason, missed } => {
            json!({ "reason": reason.to_string(), "missed": missed })
        }
        other => json!({ "line": other.to_string() }),
    };
    if let (Value::Object(all), Value::Object(more)) = (&mut v, fields) {
        all.extend(more);
    }
    v
}
