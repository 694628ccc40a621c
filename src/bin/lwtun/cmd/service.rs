//! `lwtun service`: a prefix (a VIP) served by weighted backends, its tables pinned in a
//! folder: set its backends, route it, drain and restore a backend, show, delete, unload.
//!
//! Each command is the folder's owner while it runs (the pin protocol's lock): it adopts the
//! tables, makes its change and leaves the pins. A folder a live process owns (an agent, a
//! library user) is refused: that process's data plane is not changed under it.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use ipnetwork::IpNetwork;
use lwtun::peer::EncapPeer;
use lwtun::program::Hook;
use lwtun::service::{Backend, PinnedServices, Services};
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::view::table;
use crate::{spec, Ctx};

const USAGE: &str =
    "PREFIX backend ADDR local ADDR encap { ipip | gre [key N] [csum] | udp port N } \
                     [weight N] [ttl N|inherit] [tos N|inherit] [backend ...]";

#[derive(Subcommand)]
pub(crate) enum ServiceCommand {
    /// Serve PREFIX with these backends: PREFIX backend ADDR local ADDR encap { ipip | gre [key
    /// N] [csum] | udp port N } [weight N] [ttl N|inherit] [tos N|inherit] [backend ...]. A new
    /// service, or a new list for one: its Maglev table is rebuilt and swapped whole, and
    /// established flows stay with their backends while those stay. The tables are pinned in
    /// DIR (made when missing, adopted when there).
    Set {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        #[arg(value_name = "WORDS", trailing_var_arg = true, required = true)]
        words: Vec<String>,
    },
    /// Route PREFIX (a service's, or a wider one) into the services through DEV; the route
    /// stays after the command.
    Route {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
        #[arg(long)]
        dev: String,
        /// The next hop of the encapsulated packets' first lookup (usually none: each is
        /// routed again by its backend's address).
        #[arg(long, value_name = "ADDR")]
        via: Option<IpAddr>,
        /// The preferred source address of the route.
        #[arg(long, value_name = "ADDR")]
        src: Option<IpAddr>,
    },
    /// Take the backend ADDR of PREFIX out of service: its rows go to the others and its
    /// flows pick again; no other flow moves.
    Drain {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
        backend: IpAddr,
    },
    /// Put a drained backend back into service.
    Restore {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
        backend: IpAddr,
    },
    /// Stop serving PREFIX (its packets are then dropped and counted as missed).
    Del {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
    },
    /// The services, their backends (encap, weight, state) and per-backend counters, and the
    /// table-wide counters; read from the pins, also while a live process owns them.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
    /// Remove the routes into the services in this namespace and the pins (the folder).
    /// Refused while a live process owns the folder.
    Unload {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
}

/// `PREFIX backend ... [backend ...]`: the prefix and its backends.
fn parse_set(words: &[String]) -> Result<(IpNetwork, Vec<Backend>)> {
    let op = "parse service";
    let mut it = words.iter().map(String::as_str);
    let prefix = spec::prefix(
        it.next()
            .ok_or_else(|| Error::invalid_input(op, format!("no prefix; usage: {USAGE}")))?,
    )?;
    let rest: Vec<&str> = it.collect();
    if rest.first() != Some(&"backend") {
        return Err(Error::invalid_input(
            op,
            format!("`backend ADDR ...` after the prefix; usage: {USAGE}"),
        ));
    }
    let mut backends = Vec::new();
    for chunk in rest.split(|w| *w == "backend").skip(1) {
        let mut weight = 1u32;
        let mut peer_words = vec![prefix.to_string()];
        let mut words = chunk.iter();
        let remote = words.next().ok_or_else(|| {
            Error::invalid_input(op, format!("`backend` without an address; usage: {USAGE}"))
        })?;
        peer_words.extend(["remote".to_string(), remote.to_string()]);
        while let Some(w) = words.next() {
            if *w == "weight" {
                let v = words.next().ok_or_else(|| {
                    Error::invalid_input(op, "`weight` without a number".to_string())
                })?;
                weight = v.parse().map_err(|_| {
                    Error::invalid_input(op, format!("weight {v:?}: a number 0..=4294967295"))
                })?;
            } else {
                peer_words.push(w.to_string());
            }
        }
        let (_, peer): (IpNetwork, EncapPeer) =
            spec::peer(peer_words.iter().map(String::as_str))
                .map_err(|e| e.with_object(format!("backend {remote}")))?;
        backends.push(Backend::new(peer).weight(weight));
    }
    Ok((prefix, backends))
}

#[derive(Serialize)]
struct BackendView {
    remote: String,
    local: String,
    encap: String,
    weight: u32,
    state: &'static str,
    packets: u64,
    bytes: u64,
    errors: u64,
}

#[derive(Serialize)]
struct ServiceView {
    prefix: String,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct ServicesView {
    pin: String,
    services: Vec<ServiceView>,
    counters: CountersView,
}

#[derive(Serialize)]
struct CountersView {
    missed: u64,
    not_ip: u64,
    no_backend: u64,
    flow_hits: u64,
    flow_picks: u64,
    probes: u64,
}

fn view(pin: &std::path::Path) -> Result<ServicesView> {
    let pinned = PinnedServices::open(pin)?;
    let services = pinned
        .services()
        .iter()
        .map(|(prefix, backends)| ServiceView {
            prefix: prefix.to_string(),
            backends: backends
                .iter()
                .map(|(b, up, st)| BackendView {
                    remote: b.peer.remote.to_string(),
                    local: b.peer.local.to_string(),
                    encap: b.peer.encap.to_string(),
                    weight: b.weight,
                    state: if *up { "up" } else { "drained" },
                    packets: st.packets,
                    bytes: st.bytes,
                    errors: st.errors,
                })
                .collect(),
        })
        .collect();
    let c = pinned.counters();
    Ok(ServicesView {
        pin: pin.display().to_string(),
        services,
        counters: CountersView {
            missed: c.missed,
            not_ip: c.not_ip,
            no_backend: c.no_backend,
            flow_hits: c.flow_hits,
            flow_picks: c.flow_picks,
            probes: c.probes,
        },
    })
}

/// Adopts (or makes) the folder as its owner for this command; the pins stay afterwards.
fn own(pin: &std::path::Path) -> Result<Services> {
    let mut s = Services::builder().pin(pin).load().map_err(|e| {
        if e.kind() == ErrorKind::Exists {
            e.with_hint(
                "a live process owns these services: change them through it (stop it first to \
                 use this command)",
            )
        } else {
            e
        }
    })?;
    s.keep_pinned();
    Ok(s)
}

pub(crate) fn service(ctx: &Ctx, command: ServiceCommand) -> Result<()> {
    match command {
        ServiceCommand::Set { pin, words } => {
            let (prefix, backends) = parse_set(&words)?;
            let mut s = own(&pin)?;
            s.set(prefix, &backends)?;
            print_or_json(ctx, &pin, &format!("{prefix}: {} backends", backends.len()))
        }
        ServiceCommand::Route {
            pin,
            prefix,
            dev,
            via,
            src,
        } => {
            let prefix = spec::prefix(&prefix)?;
            let s = own(&pin)?;
            let mut nl = ctx.netlink()?;
            let device = nl.device(&dev)?;
            let mut route = s.route(prefix).device(&device);
            if let Some(via) = via {
                route = route.via(via);
            }
            if let Some(src) = src {
                route = route.source(src);
            }
            route.install(&mut nl)?.persist();
            print_or_json(
                ctx,
                &pin,
                &format!("route {prefix} dev {dev} into the services"),
            )
        }
        ServiceCommand::Drain {
            pin,
            prefix,
            backend,
        } => {
            let prefix = spec::prefix(&prefix)?;
            let mut s = own(&pin)?;
            s.drain(prefix, backend)?;
            print_or_json(ctx, &pin, &format!("{backend} of {prefix} drained"))
        }
        ServiceCommand::Restore {
            pin,
            prefix,
            backend,
        } => {
            let prefix = spec::prefix(&prefix)?;
            let mut s = own(&pin)?;
            s.restore(prefix, backend)?;
            print_or_json(ctx, &pin, &format!("{backend} of {prefix} back in service"))
        }
        ServiceCommand::Del { pin, prefix } => {
            let prefix = spec::prefix(&prefix)?;
            let mut s = own(&pin)?;
            s.remove(prefix)?;
            print_or_json(ctx, &pin, &format!("{prefix} no longer served"))
        }
        ServiceCommand::Show { pin } => {
            // Read without the owner lock: it works while an agent or a library owns them.
            let v = view(&pin)?;
            if ctx.json {
                return ctx.print_json(&v);
            }
            let mut rows = Vec::new();
            for svc in &v.services {
                for b in &svc.backends {
                    rows.push(vec![
                        svc.prefix.clone(),
                        b.remote.clone(),
                        b.encap.clone(),
                        b.weight.to_string(),
                        b.state.to_string(),
                        b.packets.to_string(),
                        b.bytes.to_string(),
                        b.errors.to_string(),
                    ]);
                }
            }
            table(
                &[
                    "SERVICE", "BACKEND", "ENCAP", "WEIGHT", "STATE", "PACKETS", "BYTES", "ERRORS",
                ],
                &rows,
            );
            let c = &v.counters;
            println!(
                "flows: {} picked, {} remembered; dropped: {} missed, {} without backend, {} not IP",
                c.flow_picks, c.flow_hits, c.missed, c.no_backend, c.not_ip
            );
            Ok(())
        }
        ServiceCommand::Unload { pin } => {
            let op = "unload services";
            let s = Services::builder().pin(&pin).load()?;
            if !s.adopted() {
                // Nothing was there: what this load made goes with it.
                return Err(Error::not_found(
                    op,
                    format!("services pinned in {}", pin.display()),
                ));
            }
            // The routes whose program reads these tables (any command's or owner's load).
            let backends_id = pinned_map_id(&pin.join("backends"))?;
            let mut nl = ctx.netlink()?;
            let mut removed = 0;
            for r in lwtun::route::lwt_routes(&mut nl)? {
                let Some(Ok(p)) = lwtun::route::program_of(&r, Hook::Xmit) else {
                    continue;
                };
                let info = lwtun::program::program_info_by_id(p.id())?;
                if info.map_ids.contains(&backends_id) {
                    nl.delete_route(&r)?;
                    removed += 1;
                }
            }
            drop(s); // not kept: the pins and the folder go
            if ctx.json {
                return ctx.print_json(&serde_json::json!({
                    "pin": pin.display().to_string(),
                    "routes_removed": removed,
                }));
            }
            println!(
                "services of {} unloaded ({removed} routes removed)",
                pin.display()
            );
            Ok(())
        }
    }
}

fn pinned_map_id(path: &std::path::Path) -> Result<u32> {
    let m = lwtun::libbpf_rs::MapHandle::from_pinned_path(path)
        .map_err(|e| Error::bpf("open pinned map", e).with_object(path.display().to_string()))?;
    let info = lwtun::libbpf_rs::MapInfo::new(std::os::fd::AsFd::as_fd(&m))
        .map_err(|e| Error::bpf("read map info", e))?;
    Ok(info.info.id)
}

/// The command's line, or with -j the folder's services as `show` prints them.
fn print_or_json(ctx: &Ctx, pin: &std::path::Path, line: &str) -> Result<()> {
    if ctx.json {
        return ctx.print_json(&view(pin)?);
    }
    println!("{line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_backends_with_weights_and_encaps() {
        let (p, b) = parse_set(&words(
            "10.96.0.10/32 backend 192.0.2.11 local 192.0.2.1 encap ipip weight 3 \
             backend 192.0.2.12 local 192.0.2.1 encap gre key 7 csum",
        ))
        .unwrap();
        assert_eq!(p.to_string(), "10.96.0.10/32");
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].weight, 3);
        assert_eq!(b[1].weight, 1);
        assert_eq!(b[1].peer.remote.to_string(), "192.0.2.12");
    }

    #[test]
    fn refuses_bad_words_with_the_usage() {
        for bad in [
            "10.96.0.10/32",
            "10.96.0.10/32 192.0.2.11",
            "10.96.0.10/32 backend",
            "10.96.0.10/32 backend 192.0.2.11 local 192.0.2.1 encap ipip weight x",
            "10.96.0.10/32 backend 192.0.2.11 encap ipip",
            "nonsense backend 192.0.2.11 local 192.0.2.1 encap ipip",
        ] {
            let e = parse_set(&words(bad)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}: {e}");
        }
    }
}
