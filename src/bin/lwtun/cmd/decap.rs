//! `lwtun decap`: attach, detach and show a pinned decap.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use lwtun::decap::{Decap, DecapPeer};
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::cmd::owners::{netns_flag, pinned_map_ids, refuse, steady_holders};
use crate::view::{opt, table};
use crate::{spec, Ctx};

#[derive(Subcommand)]
pub(crate) enum DecapCommand {
    /// Attach the decap to DEV's tc ingress, with its tables pinned in DIR (adopted when there);
    /// --local, --peer and --udp-port add to the tables. It stays attached after the command.
    Attach {
        dev: String,
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// A local tunnel endpoint address (outer destination to decapsulate).
        #[arg(long, value_name = "ADDR")]
        local: Vec<IpAddr>,
        /// A peer's outer source prefix, optionally requiring a GRE key: PREFIX[,key=N].
        #[arg(long, value_name = "PREFIX[,key=N]")]
        peer: Vec<String>,
        /// A UDP destination port to decapsulate (FOU).
        #[arg(long, value_name = "PORT")]
        udp_port: Vec<u16>,
    },
    /// Detach the decap of DIR from DEV; detaching the last one removes the pins and folder.
    /// Refused while a live process owns the decap (its folder's lock or its maps).
    Detach {
        dev: String,
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        /// Detach even while a live process owns the decap (its pins stay with it).
        #[arg(long)]
        force: bool,
    },
    /// The decap's local endpoints, peers, counters and the devices it is attached to.
    Show {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
    },
}

/// The pin recording the decap of a folder attached to `device` (a tcx link pin, or before
/// 6.6 a record of the clsact filter).
pub(crate) fn decap_link_pin(pin: &Path, device: &lwtun::device::Device) -> PathBuf {
    pin.join(format!(
        "link-{}-{}",
        device.netns_id().inode(),
        device.index()
    ))
}

pub(crate) fn decap_links(pin: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(pin)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

pub(crate) fn decap_peer(text: &str) -> Result<DecapPeer> {
    let (prefix, key) = match text.split_once(',') {
        Some((p, k)) => {
            let key = k
                .strip_prefix("key=")
                .and_then(|k| k.parse::<u32>().ok())
                .ok_or_else(|| {
                    Error::invalid_input(
                        "parse decap peer",
                        format!("{text:?}: write PREFIX or PREFIX,key=N"),
                    )
                })?;
            (p, Some(key))
        }
        None => (text, None),
    };
    let peer = DecapPeer::new(spec::prefix(prefix)?);
    Ok(match key {
        Some(k) => peer.gre_key(k),
        None => peer,
    })
}

#[derive(Serialize)]
pub(crate) struct CounterView {
    packets: u64,
    bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct DecapPeerView {
    prefix: String,
    gre_key: Option<u32>,
}

#[derive(Serialize)]
pub(crate) struct DecapView {
    pin: String,
    locals: Vec<String>,
    peers: Vec<DecapPeerView>,
    decapsulated: u64,
    dropped: u64,
    counters: std::collections::BTreeMap<&'static str, CounterView>,
    links: Vec<String>,
}

pub(crate) fn decap_view(d: &Decap, pin: &Path) -> Result<DecapView> {
    let c = d.counters()?;
    let mut counters = std::collections::BTreeMap::new();
    for (name, v) in [
        ("ipip", c.ipip),
        ("gre", c.gre),
        ("udp", c.udp),
        ("unknown_peer", c.unknown_peer),
        ("malformed", c.malformed),
        ("not_for_us", c.not_for_us),
        ("fragment", c.fragment),
        ("bad_checksum", c.bad_checksum),
        ("key_mismatch", c.key_mismatch),
        ("unsupported", c.unsupported),
        ("error", c.error),
        ("ecn", c.ecn),
    ] {
        counters.insert(
            name,
            CounterView {
                packets: v.packets,
                bytes: v.bytes,
            },
        );
    }
    Ok(DecapView {
        pin: pin.display().to_string(),
        locals: d.locals()?.iter().map(IpAddr::to_string).collect(),
        peers: d
            .peers()?
            .iter()
            .map(|p| DecapPeerView {
                prefix: p.prefix.to_string(),
                gre_key: p.gre_key,
            })
            .collect(),
        decapsulated: c.decapsulated(),
        dropped: c.dropped(),
        counters,
        links: decap_links(pin)
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    })
}

/// The live owners of the decap pinned in `pin`: the folder's lock holder and the processes
/// holding its maps.
fn decap_owners(pin: &Path) -> Result<Vec<lwtun::holders::Owner>> {
    let Some(folder) = lwtun::pins::inspect(pin)? else {
        return Ok(Vec::new());
    };
    let holders = steady_holders()?;
    let mut owners: Vec<lwtun::holders::Owner> = folder.owner.clone().into_iter().collect();
    for id in pinned_map_ids(&folder) {
        for o in holders.of_map(id) {
            if !owners.iter().any(|x| x.pid == o.pid) {
                owners.push(o.clone());
            }
        }
    }
    Ok(owners)
}

/// Adopts the decap pinned in `pin`, refusing a folder without its pins.
pub(crate) fn adopt_decap(pin: &Path) -> Result<Decap> {
    if !pin.join("locals").exists() {
        return Err(Error::other(
            ErrorKind::NotFound,
            "open pinned decap",
            format!(
                "{} holds no lwtun decap pins (locals); make one with `lwtun decap attach DEV \
                 --pin {}`",
                pin.display(),
                pin.display()
            ),
        ));
    }
    Decap::load_pinned(pin)
}

pub(crate) fn decap(ctx: &Ctx, command: DecapCommand) -> Result<()> {
    match command {
        DecapCommand::Attach {
            dev,
            pin,
            local,
            peer,
            udp_port,
        } => {
            let device = ctx.netns.device(&dev)?;
            let peers = peer
                .iter()
                .map(|p| decap_peer(p))
                .collect::<Result<Vec<_>>>()?;
            let link = decap_link_pin(&pin, &device);
            if std::fs::symlink_metadata(&link).is_ok() {
                return Err(Error::other(
                    ErrorKind::Exists,
                    "attach decap",
                    format!(
                        "the decap of {} is attached to {dev} already",
                        pin.display()
                    ),
                ));
            }
            let mut d = Decap::load_pinned(&pin)?;
            d.keep_pinned();
            for a in local {
                d.add_local(a)?;
            }
            for p in peers {
                d.add_peer(p)?;
            }
            for port in udp_port {
                d.add_udp_port(port)?;
            }
            let att = TcAttach::new(&device, TcDirection::Ingress)
                .attach(d.program())
                .map_err(|e| e.with_object(format!("decap on {dev}")))?;
            // tcx: the link's pin; clsact (before 6.6): a record of the filter.
            att.persist(Some(&link))?;
            let view = decap_view(&d, &pin)?;
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("decap of {} attached to {dev}", pin.display());
            Ok(())
        }
        DecapCommand::Detach { dev, pin, force } => {
            let device = ctx.netns.device(&dev)?;
            let link = decap_link_pin(&pin, &device);
            if std::fs::symlink_metadata(&link).is_err() {
                return Err(Error::other(
                    ErrorKind::NotFound,
                    "detach decap",
                    format!("the decap of {} is not attached to {dev}", pin.display()),
                ));
            }
            let owners = decap_owners(&pin)?;
            if !owners.is_empty() && !force {
                let n = netns_flag(ctx);
                return Err(refuse(
                    "detach decap",
                    &format!("the decap pinned in {}", pin.display()),
                    &owners,
                    &format!(
                        "lwtun{n} decap detach {dev} --pin {} --force",
                        pin.display()
                    ),
                )
                .with_object(pin.display().to_string()));
            }
            lwtun::tc::detach_persisted(&device, &link)
                .map_err(|e| e.with_object(format!("decap on {dev}")))?;
            // A live owner (--force) keeps its pins: they are its state.
            let last = decap_links(&pin).is_empty() && owners.is_empty();
            if last {
                // Not kept: dropping it removes the maps, the program pin and the folder
                // (once empty: these link pins were its last other entries).
                drop(adopt_decap(&pin)?);
            }
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "dev": dev, "removed_pins": last }));
            }
            println!(
                "decap detached from {dev}{}",
                if last { "; pins removed" } else { "" }
            );
            Ok(())
        }
        DecapCommand::Show { pin } => {
            let mut d = adopt_decap(&pin)?;
            d.keep_pinned();
            let view = decap_view(&d, &pin)?;
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("decap {}", view.pin);
            println!("  locals: {}", view.locals.join(", "));
            for p in &view.peers {
                println!("  peer {} key {}", p.prefix, opt(&p.gre_key));
            }
            println!(
                "  decapsulated {} dropped {}",
                view.decapsulated, view.dropped
            );
            let rows: Vec<Vec<String>> = view
                .counters
                .iter()
                .map(|(n, c)| vec![n.to_string(), c.packets.to_string(), c.bytes.to_string()])
                .collect();
            table(&["VERDICT", "PACKETS", "BYTES"], &rows);
            for l in &view.links {
                println!("  attached: {l}");
            }
            Ok(())
        }
    }
}
