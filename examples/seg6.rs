//! An SRv6 path through an lwtun End.BPF cross-connect: `Seg6EndX`.
//!
//! Three namespaces in a row, A ── R ── B. A pushes an SRH onto packets for B's fd91::2 (a
//! kernel seg6 encap route made with lwtun's typed netlink, segments [fc00:1::1, fc00:2::6]);
//! R's SID fc00:1::1 is an End.BPF route running `Seg6EndX`, whose rule sends packets whose next
//! segment is in fc00:2::/64 to B's link address and tags them 7; B decapsulates at fc00:2::6
//! with the kernel's End.DT6. It pings fd91::2 from A, prints R's route as iproute2 shows it and
//! the function's counters, and removes everything.
//!
//! Run as root: `cargo run --example seg6`.

use ipnetwork::IpNetwork;
use lwtun::netlink::route::{Encap, Route, Seg6Encap, Seg6Mode};
use lwtun::netns::NetNs;
use lwtun::seg6::{CrossConnect, Seg6EndX};
use lwtun::{Error, ErrorKind, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("seg6: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

fn ip(ns: &NetNs, args: &str) -> Result<String> {
    ns.output("ip", args.split_whitespace())
}

fn run() -> Result<()> {
    let a = NetNs::create_unique("seg6-a")?;
    let r = NetNs::create_unique("seg6-r")?;
    let b = NetNs::create_unique("seg6-b")?;
    ip(
        &a,
        &format!("link add a-r type veth peer name r-a netns {}", r.name()),
    )?;
    ip(
        &r,
        &format!("link add r-b type veth peer name b-r netns {}", b.name()),
    )?;
    for (ns, devs) in [(&a, &["a-r"][..]), (&r, &["r-a", "r-b"]), (&b, &["b-r"])] {
        ns.set_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.set_sysctl("net.ipv6.conf.all.seg6_enabled", "1")?;
        ip(ns, "link set lo up")?;
        for d in devs {
            ns.set_sysctl(&format!("net.ipv6.conf.{d}.seg6_enabled"), "1")?;
            ip(ns, &format!("link set {d} up"))?;
        }
    }
    r.set_sysctl("net.ipv6.conf.all.forwarding", "1")?;
    ip(&a, "-6 addr add fd90:1::1/64 dev a-r nodad")?;
    ip(&r, "-6 addr add fd90:1::2/64 dev r-a nodad")?;
    ip(&r, "-6 addr add fd90:2::1/64 dev r-b nodad")?;
    ip(&b, "-6 addr add fd90:2::2/64 dev b-r nodad")?;
    ip(&b, "-6 addr add fd91::2/128 dev lo")?;
    ip(&a, "-6 route add fc00:1::/64 via fd90:1::2 dev a-r")?;
    ip(&b, "-6 route add fd90:1::/64 via fd90:2::1 dev b-r")?;
    // B: the last segment decapsulates into B's local table (fd91::2 is B's own address).
    ip(
        &b,
        "-6 route add fc00:2::6/128 encap seg6local action End.DT6 table 255 dev b-r",
    )?;
    // Let the veths' carrier settle (linkwatch batches it for up to a second).
    std::thread::sleep(std::time::Duration::from_secs(1));

    // A: the kernel's seg6 encap, typed.
    let a_r = a.device("a-r")?;
    let mut encap = Route::new(IpNetwork::V6("fd91::/64".parse().unwrap()));
    encap.oif = Some(a_r.index());
    encap.encap = Some(Encap::Seg6(Seg6Encap {
        mode: Seg6Mode::Encap,
        segments: vec!["fc00:1::1".parse().unwrap(), "fc00:2::6".parse().unwrap()],
    }));
    a_r.netlink()?.add_route(&encap)?;
    println!("A: {}", ip(&a, "-6 route show fd91::/64")?.trim());

    // R: End.BPF at fc00:1::1, cross-connected to B with a tag.
    let mut end_x = Seg6EndX::load()?;
    end_x.set_next_hop(
        "fc00:2::/64".parse().unwrap(),
        CrossConnect::to("fd90:2::2".parse().unwrap()).tag(7),
    )?;
    let _sid = end_x.install_route("fc00:1::1/128".parse().unwrap(), &r.device("r-b")?)?;
    println!("R: {}", ip(&r, "-6 route show fc00:1::1")?.trim());

    let out = a
        .command("ping")
        .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "fd91::2"])
        .output()
        .map_err(|e| Error::io("run ping", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    println!(
        "ping fd91::2: {}",
        text.lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("(no summary)")
    );
    let ev = end_x.events()?;
    println!(
        "End.X: {} cross-connected ({} bytes), {} dropped",
        ev.done.packets,
        ev.done.bytes,
        ev.dropped()
    );
    Ok(())
}
