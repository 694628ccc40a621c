//! The seed scenario (the kernel's samples/bpf tc_l2_redirect) with lwtun's typed API.
//!
//! ```text
//!  client ns                router ns                                     server ns
//!  a0 10.77.0.1 ──veth── r0 10.77.0.2 [tc ingress: redirect_tc]
//!                                     │ rule 10.200.0.0/16 → vx0, VNI 42, remote 192.168.77.2
//!                              vx0 (vxlan external)  r1 192.168.77.1 ──veth── b0 192.168.77.2
//!                                                                             vxb (VNI 42)
//!                                                                             10.200.0.7 (the VIP)
//! ```
//!
//! A tc ingress program on the router's client-facing veth redirects packets for the virtual IP
//! into a collect_md VXLAN device, with the tunnel key (remote, VNI, TTL) its rule names; the
//! server's VXLAN device decapsulates and answers. The seed set the device's ifindex with
//! `bpftool map update pinned ...` and watched trace_printk; here the rule is a typed value, the
//! maps are pinned (and printed with bpftool), and the counters are read back.
//!
//! Run as root: `cargo run --example tc_redirect`. Everything it creates (three namespaces, a
//! bpffs folder) is removed when it ends.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::tc::{attached, TcAttach, TcDirection};
use lwtun::tunnel_redirect::{RedirectRule, TunnelKey, TunnelRedirect};
use lwtun::{Error, ErrorKind, Result};

const VX0_MAC: &str = "02:00:00:00:a0:01";
const VXB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
const VIP: &str = "10.200.0.7";

fn main() {
    if let Err(e) = run() {
        eprintln!("tc_redirect: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it creates namespaces and loads BPF programs)");
        }
        std::process::exit(1);
    }
}

fn cmd(ns: &NetNs, program: &str, args: &[&str]) -> Result<String> {
    ns.output(program, args)
}

fn ip(ns: &NetNs, args: &str) -> Result<String> {
    cmd(ns, "ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Removes the pin folder on the way out, also after an error.
struct PinFolder(std::path::PathBuf);

impl Drop for PinFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run() -> Result<()> {
    let client = NetNs::create_unique("tcr-client")?;
    let router = NetNs::create_unique("tcr-router")?;
    let server = NetNs::create_unique("tcr-server")?;
    println!(
        "namespaces: {} ── {} ── {}",
        client.name(),
        router.name(),
        server.name()
    );

    for ns in [&client, &router, &server] {
        ip(ns, "link set lo up")?;
    }
    ip(
        &client,
        &format!(
            "link add a0 mtu 1450 type veth peer name r0 mtu 1450 netns {}",
            router.name()
        ),
    )?;
    ip(&client, "addr add 10.77.0.1/24 dev a0")?;
    ip(&client, "link set a0 up")?;
    ip(&client, "route add 10.200.0.0/16 via 10.77.0.2")?;

    ip(&router, "addr add 10.77.0.2/24 dev r0")?;
    ip(&router, "link set r0 up")?;
    ip(
        &router,
        &format!("link add r1 type veth peer name b0 netns {}", server.name()),
    )?;
    ip(&router, "addr add 192.168.77.1/24 dev r1")?;
    ip(&router, "link set r1 up")?;
    ip(
        &router,
        &format!("link add vx0 address {VX0_MAC} type vxlan external dstport 4789"),
    )?;
    ip(&router, "link set vx0 up")?;
    router.set_sysctl("net.ipv4.ip_forward", "1")?;

    ip(&server, "addr add 192.168.77.2/24 dev b0")?;
    ip(&server, "link set b0 up")?;
    ip(&server, "link add vxb address 02:00:00:00:b0:01 type vxlan id 42 remote 192.168.77.1 local 192.168.77.2 dstport 4789")?;
    ip(&server, &format!("addr add {VIP}/24 dev vxb"))?;
    ip(&server, "link set vxb up")?;
    ip(
        &server,
        &format!("neigh add 10.200.0.254 lladdr {VX0_MAC} dev vxb nud permanent"),
    )?;
    ip(&server, "route add 10.77.0.0/24 via 10.200.0.254")?;

    let before = ping(&client, VIP)?;
    println!("before the redirect: ping {VIP} → {before}");

    // The typed part: load, pin, set a rule, attach.
    let pins = PinFolder(format!("/sys/fs/bpf/lwtun-example-{}", std::process::id()).into());
    let mut redirect = TunnelRedirect::builder().pin(&pins.0).load()?;
    let mut nl = Netlink::open_in(&router)?;
    let vx0 = router.device("vx0")?;
    let r0 = router.device("r0")?;
    let prefix = "10.200.0.0/16".parse().expect("a prefix");
    let rule = RedirectRule::new(
        prefix,
        &vx0,
        TunnelKey::new("192.168.77.2".parse().expect("an address"), 42).ttl(64),
    )
    .inner_dst_mac(VXB_MAC);
    redirect.set_rule(&mut nl, rule)?;
    println!("rule: {prefix} → {vx0}, VNI 42, remote 192.168.77.2");
    // A veth is not a collect_md tunnel device: refused when configured, not at packet time.
    let refused = redirect.set_rule(
        &mut nl,
        RedirectRule::new("10.201.0.0/16".parse().expect("a prefix"), &r0, rule.key),
    );
    if let Err(e) = refused {
        println!("refused as expected: {e}");
    }

    let attachment = TcAttach::new(&r0, TcDirection::Ingress).attach(redirect.tc_program())?;
    println!("attached: {attachment}");
    for p in attached(&r0, TcDirection::Ingress)? {
        println!(
            "  on r0 ingress: {:?} program {} ({})",
            p.mode,
            p.program_id,
            p.program_name.unwrap_or_default()
        );
    }

    // Watch the underlay while traffic flows.
    let mut tcpdump = server
        .command("tcpdump")
        .args([
            "-nn",
            "-l",
            "-c",
            "2",
            "-i",
            "b0",
            "udp",
            "port",
            "4789",
            "and",
            "src",
            "host",
            "192.168.77.1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| Error::io("start tcpdump", e))?;
    std::thread::sleep(Duration::from_millis(500));
    let after = ping(&client, VIP)?;
    println!("through the redirect: ping {VIP} → {after}");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = tcpdump.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = tcpdump.kill();
    if let Some(mut out) = tcpdump.stdout.take() {
        let _ = out.read_to_string(&mut seen);
    }
    let _ = tcpdump.wait();
    println!("underlay (tcpdump on b0):");
    for l in seen.lines() {
        println!("  {l}");
    }

    let (bytes, secs) = tcp(&server, &client, VIP.parse().expect("an address"), 8 << 20)?;
    println!(
        "TCP client → {VIP}: {bytes} bytes in {secs:.2} s ({:.0} Mbit/s)",
        bytes as f64 * 8.0 / secs / 1e6
    );

    let stats = redirect.rule_stats(prefix)?;
    let events = redirect.events()?;
    println!(
        "rule counters: {} packets, {} bytes redirected, {} errors; passed on: {} without a rule, {} not IP",
        stats.packets, stats.bytes, stats.errors, events.missed.packets, events.not_ip.packets
    );
    let dump = std::process::Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(pins.0.join("rules_v4"))
        .output();
    if let Ok(out) = dump {
        println!("bpftool map dump pinned {}/rules_v4:", pins.0.display());
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    attachment.detach()?;
    drop(redirect);
    println!("detached; namespaces and pins are removed on exit");
    Ok(())
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
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or("no answer")
        .to_string())
}

/// Streams `bytes` from `client` to `addr` in `server`; returns bytes received and seconds.
fn tcp(server: &NetNs, client: &NetNs, addr: IpAddr, bytes: usize) -> Result<(usize, f64)> {
    let listener = server.run(|| TcpListener::bind((addr, 0)).map_err(|e| Error::io("bind", e)))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("bind", e))?
        .port();
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(n),
                k => n += k,
            }
        }
    });
    let start = Instant::now();
    client.run(|| {
        let mut s = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(3))
            .map_err(|e| Error::io("connect", e))?;
        let chunk = vec![0x5au8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k]).map_err(|e| Error::io("send", e))?;
            left -= k;
        }
        Ok(())
    })?;
    let received = reader
        .join()
        .map_err(|_| Error::other(ErrorKind::Io, "receive", "reader panicked"))?
        .map_err(|e| Error::io("receive", e))?;
    Ok((received, start.elapsed().as_secs_f64()))
}
