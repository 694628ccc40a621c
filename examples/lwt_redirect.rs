//! A route whose packets an lwt_xmit program redirects to a plain veth, with an Ethernet
//! header pushed: `LwtRedirect`.
//!
//! It builds two namespaces joined by a veth (`a0` ── `b0`); on A a route to 10.88.0.0/24
//! through a spare device runs the redirect program, whose rule sends the packets out of `a0`
//! with `a0`'s MAC as source and `b0`'s as destination. It pings B's 10.88.0.7 through it,
//! then sets `a0` down and pings again: the program still redirects, and `a0` counts the drops.
//! It prints the rule's counters next to `a0`'s each time, and removes everything.
//!
//! Run as root: `cargo run --example lwt_redirect`.

use lwtun::lwt_redirect::{L2Header, LwtRedirect, RedirectTarget};
use lwtun::netns::NetNs;
use lwtun::{Error, ErrorKind, Result};

fn main() {
    if let Err(e) = run() {
        eprintln!("lwt_redirect: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

fn ip(ns: &NetNs, args: &str) -> Result<String> {
    ns.output("ip", args.split_whitespace())
}

fn ping(ns: &NetNs, addr: &str) -> Result<String> {
    let out = ns
        .command("ping")
        .args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", addr])
        .output()
        .map_err(|e| Error::io("run ping", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or("(no summary)")
        .to_string())
}

fn run() -> Result<()> {
    let a = NetNs::create_unique("redir-a")?;
    let b = NetNs::create_unique("redir-b")?;
    ip(
        &a,
        &format!("link add a0 type veth peer name b0 netns {}", b.name()),
    )?;
    ip(&a, "addr add 10.77.0.1/24 dev a0")?;
    ip(&a, "link set a0 up")?;
    // The route's own device: any device that is up; the rules decide where packets go.
    ip(&a, "link add d0 type veth peer name d1")?;
    ip(&a, "link set d1 up")?;
    ip(&a, "link set d0 up")?;
    ip(&b, "addr add 10.77.0.2/24 dev b0")?;
    ip(&b, "addr add 10.88.0.7/32 dev lo")?;
    ip(&b, "link set b0 up")?;
    ip(&b, "link set lo up")?;
    // Let the veth's carrier settle (linkwatch batches it for up to a second).
    std::thread::sleep(std::time::Duration::from_secs(1));

    let a0 = a.device("a0")?;
    let d0 = a.device("d0")?;
    let b0_mac = b.device("b0")?.link()?.mac;
    let (Some(src), Some(dst)) = (a0.link()?.mac, b0_mac) else {
        return Err(Error::other(
            ErrorKind::Kernel,
            "read MACs",
            "a veth without a MAC",
        ));
    };

    let mut redirect = LwtRedirect::load()?;
    let prefix = "10.88.0.0/24".parse().unwrap();
    redirect.set_rule(
        prefix,
        RedirectTarget::egress(&a0).l2_header(L2Header::new(src, dst)),
    )?;
    let route = redirect.install_route(prefix, &d0)?;
    println!("route: {route}");
    let show = |what: &str| -> Result<()> {
        let s = redirect.rule_stats(prefix)?;
        let dev = s.device.unwrap_or_default();
        println!(
            "{what}: rule redirected {} ({} bytes), failed {}; a0 sent {}, dropped {}",
            s.packets, s.bytes, s.failed, dev.tx_packets, dev.tx_dropped
        );
        Ok(())
    };

    println!("ping 10.88.0.7: {}", ping(&a, "10.88.0.7")?);
    show("a0 up")?;
    ip(&a, "link set a0 down")?;
    println!("ping 10.88.0.7 with a0 down: {}", ping(&a, "10.88.0.7")?);
    show("a0 down")?;
    Ok(())
}
