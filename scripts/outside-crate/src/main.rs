//! Uses lwtun as a dependent crate would: in a network namespace of its own, loads the lwt_count
//! programs, installs an LWT BPF route through them, sends a datagram along it, checks that the
//! program counted it and that lwtun lists the route, and removes everything.

use std::net::UdpSocket;

use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::LwtCounter;
use lwtun::route::{lwt_routes, program_of, Hook, LwtRoute};
use lwtun::{Error, ErrorKind, Result};

fn main() {
    match run() {
        Ok(()) => println!("lwtun-outside: ok"),
        Err(e) => {
            eprintln!("lwtun-outside: {e}");
            std::process::exit(1);
        }
    }
}

fn check(ok: bool, what: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::other(ErrorKind::Kernel, "lwtun-outside", what))
    }
}

fn run() -> Result<()> {
    let ns = NetNs::create_unique("outside")?;
    println!("namespace {}", ns.name());
    ns.run(|| {
        let mut nl = Netlink::open()?;
        nl.add_veth("out0", "out1", None)?;
        let out0 = nl.link_by_name("out0")?.index;
        let out1 = nl.link_by_name("out1")?.index;
        // A device bound to this namespace, as every lwtun call that names a device takes it.
        let dev0 = nl.device("out0")?;
        nl.add_address(out0, "10.77.0.1/24".parse().unwrap())?;
        nl.add_address(out1, "10.77.0.2/24".parse().unwrap())?;
        for index in [out0, out1] {
            nl.set_link_up(index, true)?;
        }

        let counter = LwtCounter::load()?;
        let route = LwtRoute::new("10.78.0.0/24".parse().unwrap())
            .device(&dev0)
            .via("10.77.0.2".parse().unwrap())
            .program(Hook::Xmit, counter.program(Hook::Xmit))
            .headroom(24)
            .install(&mut nl)?;
        println!("installed {route}");

        let listed = lwt_routes(&mut nl)?;
        let ours = listed
            .iter()
            .find(|r| r.dst.to_string() == "10.78.0.0/24")
            .ok_or_else(|| {
                Error::other(ErrorKind::NotFound, "list LWT routes", "ours is missing")
            })?;
        let prog = program_of(ours, Hook::Xmit).ok_or_else(|| {
            Error::other(ErrorKind::NotFound, "route program", "no xmit program")
        })??;
        check(
            prog.id() == counter.program(Hook::Xmit).id(),
            "the listed route leads back to another program",
        )?;
        println!(
            "listed {} routes; ours runs {}",
            listed.len(),
            prog.route_name()
        );

        let before = counter.counter(Hook::Xmit)?;
        let sock = UdpSocket::bind("10.77.0.1:0").map_err(|e| Error::io("bind", e))?;
        sock.send_to(b"through the route", "10.78.0.9:9")
            .map_err(|e| Error::io("send", e))?;
        let after = counter.counter(Hook::Xmit)?;
        println!(
            "lwt_xmit counted {} packet(s)",
            after.packets - before.packets
        );
        check(
            after.packets > before.packets,
            "lwt_xmit did not see the datagram",
        )?;

        drop(route);
        check(
            !lwt_routes(&mut nl)?
                .iter()
                .any(|r| r.dst.to_string() == "10.78.0.0/24"),
            "the route outlived its handle",
        )?;
        println!("route removed");
        Ok(())
    })?;
    let name = ns.name().to_string();
    drop(ns);
    check(
        !NetNs::list()?.contains(&name),
        "the namespace outlived its handle",
    )?;
    println!("namespace removed");
    Ok(())
}
