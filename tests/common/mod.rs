//! Shared test harness: the privilege gate, topologies of namespaces joined by veth pairs, and
//! real traffic (ping, TCP streams with a content check, UDP counts, tcpdump captures).
//!
//! Everything here cleans up after itself, also when the test panics: namespaces are owned
//! [`NetNs`] values (removing one removes its veths, addresses and routes), and child
//! processes (tcpdump) are killed when their guard drops. Helpers panic with the command's
//! output on failure, which is what a test wants.
//!
//! ```ignore
//! mod common;
//! #[test]
//! fn my_test() {
//!     require!();                                // root, or skip (fail under CI=true)
//!     let net = common::two_hosts();             // ns 0 --veth-- ns 1, v4 + v6, up
//!     let p = common::ping(net.ns(0), net.v4(1).into(), 3);
//!     assert_eq!(p.received, 3, "{}", p.output);
//! }
//! ```
#![allow(dead_code)]

pub mod packets;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;

/// Whether privileged tests must fail instead of skipping (CI=true or LWTUN_REQUIRE_PRIV=1).
pub fn privileges_required() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
        || std::env::var("LWTUN_REQUIRE_PRIV")
            .map(|v| v == "1")
            .unwrap_or(false)
}

/// The running test's name: libtest runs every test on a thread named after it.
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string()
}

/// What a privileged test needs, declared in one line at its start: root (without it the test
/// is skipped, or fails under CI=true or LWTUN_REQUIRE_PRIV=1, see [`privileged`]) and each kernel
/// feature given (without one it is skipped saying which, also under CI=true, see
/// [`kernel_has`]). Returns from the test when something is missing; the skip line names the
/// test by itself.
///
/// ```ignore
/// #[test]
/// fn end_bpf_counts() {
///     require!(Feature::Seg6Local);
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require {
    ($($feature:expr),* $(,)?) => {
        let test = $crate::common::test_name();
        if !$crate::common::privileged(&test) {
            return;
        }
        $(
            if !$crate::common::kernel_has(&test, $feature) {
                return;
            }
        )*
    };
}

/// Returns true when the test may run. Without root it prints why the test is skipped and
/// returns false; when privileges are required it panics instead.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let why = format!(
        "{test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces); euid is {euid}"
    );
    if privileges_required() {
        panic!("{why}, and CI=true/LWTUN_REQUIRE_PRIV=1 forbids skipping");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` in passing tests, which
    // would hide the skip.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {why}\n").as_bytes(),
    );
    false
}

/// Returns true when the running kernel has `feature`. When it lacks it (an
/// [`lwtun::ErrorKind::Unsupported`] answer from the probe) the test prints why it is skipped and
/// returns false, also with CI=true: a kernel feature is not a privilege, and the kernel matrix
/// shows the test passing on a kernel that has it. Any other probe failure panics.
pub fn kernel_has(test: &str, feature: lwtun::probe::Feature) -> bool {
    match feature.check() {
        Ok(()) => true,
        Err(e) if e.kind() == lwtun::ErrorKind::Unsupported => {
            skipped_for_kernel(test, feature.name());
            false
        }
        Err(e) => panic!("{test}: probing {feature}: {e}"),
    }
}

/// Prints `SKIPPED TEST (kernel lacks WHAT)`, the line the kernel matrix reads as a skip for
/// a kernel feature, straight to stderr (libtest would hide `eprintln!` in a passing test).
pub fn skipped_for_kernel(test: &str, what: &str) {
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {test} (kernel lacks {what})\n").as_bytes(),
    );
}

/// The running kernel's (major, minor) version, from `/proc/sys/kernel/osrelease`
/// ("6.1.0-27-amd64" is (6, 1)). Only for what the kernel does outside lwtun, where a test
/// checks the kernel's own accounting and no probe can tell.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Adds the inner (overlay) addresses `v4`/32 and `v6`/128 to the loopback of `ns`.
pub fn add_loopback_addresses(ns: &NetNs, v4: &str, v6: &str) {
    ip(ns, &["addr", "add", &format!("{v4}/32"), "dev", "lo"]);
    ip(
        ns,
        &["-6", "addr", "add", &format!("{v6}/128"), "dev", "lo"],
    );
}

/// `d` stretched by `LWTUN_TEST_TIME_SCALE` (a whole number, default 1): how long a wait on
/// the kernel may take. The kernel matrix sets it for its emulated VMs, where everything runs
/// many times slower; the tests assert what arrives, never how fast.
pub fn patient(d: Duration) -> Duration {
    let scale = std::env::var("LWTUN_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    d * scale
}

// ---------------------------------------------------------------------------------------------
// Namespaces and the `ip` command
// ---------------------------------------------------------------------------------------------

/// A new owned namespace `lwt-PREFIX-PID-N` with its loopback up, ICMP datagram sockets allowed
/// ([`ping`]) and IPv6 duplicate address detection off for devices made in it later. Removed
/// when dropped.
///
/// Why no DAD: a router forwarding IPv6 needs its link-local address to solicit neighbours,
/// and that address stays tentative for about 2 s after the link comes up (measured here:
/// forwarded pings fail for 2 s, counted as Ip6InNoRoutes... then work). Test links are
/// private veths, so DAD protects nothing.
pub fn netns(prefix: &str) -> NetNs {
    // Once per test binary: remove what killed earlier runs left (names carry their pid).
    static SWEEP: std::sync::Once = std::sync::Once::new();
    SWEEP.call_once(|| {
        if let Ok(removed) = NetNs::remove_stale("lwt-") {
            for name in removed {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("removed stale namespace {name}\n").as_bytes(),
                );
            }
        }
    });
    let ns = NetNs::create_unique(&format!("lwt-{prefix}"))
        .unwrap_or_else(|e| panic!("create namespace lwt-{prefix}: {e}"));
    for key in [
        "net.ipv6.conf.all.accept_dad",
        "net.ipv6.conf.default.accept_dad",
    ] {
        ns.set_sysctl(key, "0")
            .unwrap_or_else(|e| panic!("{key} in {}: {e}", ns.name()));
    }
    // ICMP datagram sockets for every group (root included), for [`ping`].
    ns.set_sysctl("net.ipv4.ping_group_range", "0 2147483647")
        .unwrap_or_else(|e| panic!("ping_group_range in {}: {e}", ns.name()));
    ip(&ns, &["link", "set", "lo", "up"]);
    ns
}

/// Runs `ip ARGS` inside `ns` (through nsenter, so /sys/fs/bpf stays visible) and returns
/// its stdout; panics with stderr if it fails.
pub fn ip(ns: &NetNs, args: &[&str]) -> String {
    try_ip(ns, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The interface index of device `dev` inside `ns`, as `ip link` shows it.
pub fn ifindex(ns: &NetNs, dev: &str) -> u32 {
    // Not /sys/class/net: sysfs shows the namespace that mounted it, not the caller's.
    let out = ip(ns, &["-o", "link", "show", "dev", dev]);
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {out:?}"))
}

/// Device `dev` inside `ns`, bound to that namespace.
pub fn device(ns: &NetNs, dev: &str) -> lwtun::device::Device {
    ns.device(dev)
        .unwrap_or_else(|e| panic!("device {dev} in {}: {e}", ns.name()))
}

/// The Ethernet address of device `dev` inside `ns`, as `ip link` shows it.
pub fn mac(ns: &NetNs, dev: &str) -> [u8; 6] {
    let out = ip(ns, &["-o", "link", "show", "dev", dev]);
    let s = out
        .split("link/ether ")
        .nth(1)
        .unwrap_or_else(|| panic!("{dev} is not an Ethernet device: {out:?}"));
    let mut m = [0u8; 6];
    for (i, part) in s[..17].split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).unwrap();
    }
    m
}

/// Runs `ip ARGS` inside `ns`; `Err` carries the command and its stderr.
pub fn try_ip(ns: &NetNs, args: &[&str]) -> Result<String, String> {
    run_in(ns, "ip", args)
}

/// Runs `program ARGS` inside `ns` and returns its stdout; `Err` carries the command and its
/// stderr.
pub fn run_in(ns: &NetNs, program: &str, args: &[&str]) -> Result<String, String> {
    let out = ns
        .command(program)
        .args(args)
        .output()
        .map_err(|e| format!("run {program} in {}: {e}", ns.name()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` in {} failed ({}): {}{}",
            args.join(" "),
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Topologies
// ---------------------------------------------------------------------------------------------

/// One veth pair between neighbouring namespaces `left` and `left + 1` of a [`Line`]:
/// segment k uses 10.77.k.0/24 and fd77:k::/64, `.1` on the left and `.2` on the right.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Index of the left namespace.
    pub left: usize,
    /// Index of the right namespace (`left + 1`).
    pub right: usize,
    /// The device in the left namespace, `to{right}`.
    pub left_dev: String,
    /// The device in the right namespace, `to{left}`.
    pub right_dev: String,
    /// IPv4 address of the left end.
    pub left_v4: Ipv4Addr,
    /// IPv4 address of the right end.
    pub right_v4: Ipv4Addr,
    /// IPv6 address of the left end.
    pub left_v6: Ipv6Addr,
    /// IPv6 address of the right end.
    pub right_v6: Ipv6Addr,
    /// The segment's IPv4 prefix, `10.77.k.0/24`.
    pub v4_net: String,
    /// The segment's IPv6 prefix, `fd77:k::/64`.
    pub v6_net: String,
}

/// Namespaces in a row, each joined to the next by a veth pair:
///
/// ```text
///  ns 0 [to1] ── [to0] ns 1 [to2] ── [to1] ns 2 ...
///     10.77.0.1   10.77.0.2  10.77.1.1   10.77.1.2
/// ```
///
/// Every device is up, with IPv4 and IPv6 (`nodad`) addresses. A routed line ([`line`]) also
/// has forwarding on in the inner namespaces and static routes to every segment, so any two
/// addresses reach each other; an unrouted one ([`line_unrouted`]) only knows its own segments.
/// Dropping the `Line` removes the namespaces and with them everything in them.
pub struct Line {
    /// The namespaces, left to right.
    pub ns: Vec<NetNs>,
    /// The veth pairs, left to right (`segments[k]` joins `ns[k]` and `ns[k + 1]`).
    pub segments: Vec<Segment>,
}

impl Line {
    /// The namespace at position `i`.
    pub fn ns(&self, i: usize) -> &NetNs {
        &self.ns[i]
    }

    /// The main IPv4 address of namespace `i`: its address on the segment to its left, or for
    /// namespace 0 on the segment to its right.
    pub fn v4(&self, i: usize) -> Ipv4Addr {
        if i == 0 {
            self.segments[0].left_v4
        } else {
            self.segments[i - 1].right_v4
        }
    }

    /// The main IPv6 address of namespace `i` (chosen as for [`Line::v4`]).
    pub fn v6(&self, i: usize) -> Ipv6Addr {
        if i == 0 {
            self.segments[0].left_v6
        } else {
            self.segments[i - 1].right_v6
        }
    }

    /// The device of namespace `i` that faces namespace `j` (a neighbour).
    pub fn dev(&self, i: usize, j: usize) -> String {
        assert!(
            i.abs_diff(j) == 1,
            "namespaces {i} and {j} are not neighbours"
        );
        format!("to{j}")
    }

    /// The address of namespace `i` on the segment it shares with its neighbour `j`.
    pub fn v4_towards(&self, i: usize, j: usize) -> Ipv4Addr {
        let s = &self.segments[i.min(j)];
        if i < j {
            s.left_v4
        } else {
            s.right_v4
        }
    }

    /// The IPv6 address of namespace `i` on the segment it shares with its neighbour `j`.
    pub fn v6_towards(&self, i: usize, j: usize) -> Ipv6Addr {
        let s = &self.segments[i.min(j)];
        if i < j {
            s.left_v6
        } else {
            s.right_v6
        }
    }

    /// The interface index of device `dev` inside namespace `i`.
    pub fn ifindex(&self, i: usize, dev: &str) -> u32 {
        ifindex(&self.ns[i], dev)
    }

    /// Device `dev` inside namespace `i`.
    pub fn device(&self, i: usize, dev: &str) -> lwtun::device::Device {
        device(&self.ns[i], dev)
    }
}

/// Two namespaces joined by one veth pair (`to1` in ns 0, `to0` in ns 1), addressed
/// 10.77.0.1/24 + fd77:0::1/64 and 10.77.0.2/24 + fd77:0::2/64, everything up.
pub fn two_hosts() -> Line {
    line(2)
}

/// `n` namespaces in a row with full reachability (see [`Line`]).
pub fn line(n: usize) -> Line {
    build_line(n, true)
}

/// `n` namespaces in a row; each knows only its own segments (no forwarding, no routes).
pub fn line_unrouted(n: usize) -> Line {
    build_line(n, false)
}

fn build_line(n: usize, routed: bool) -> Line {
    assert!((2..=200).contains(&n), "a line has 2..=200 namespaces");
    let ns: Vec<NetNs> = (0..n).map(|i| netns(&format!("n{i}"))).collect();
    let mut segments = Vec::new();
    for k in 0..n - 1 {
        let seg = Segment {
            left: k,
            right: k + 1,
            left_dev: format!("to{}", k + 1),
            right_dev: format!("to{k}"),
            left_v4: Ipv4Addr::new(10, 77, k as u8, 1),
            right_v4: Ipv4Addr::new(10, 77, k as u8, 2),
            left_v6: Ipv6Addr::new(0xfd77, k as u16, 0, 0, 0, 0, 0, 1),
            right_v6: Ipv6Addr::new(0xfd77, k as u16, 0, 0, 0, 0, 0, 2),
            v4_net: format!("10.77.{k}.0/24"),
            v6_net: format!("fd77:{k:x}::/64"),
        };
        let (a, b) = (&ns[k], &ns[k + 1]);
        ip(
            a,
            &[
                "link",
                "add",
                &seg.left_dev,
                "type",
                "veth",
                "peer",
                "name",
                &seg.right_dev,
                "netns",
                b.name(),
            ],
        );
        for (n, dev, v4, v6) in [
            (a, &seg.left_dev, seg.left_v4, seg.left_v6),
            (b, &seg.right_dev, seg.right_v4, seg.right_v6),
        ] {
            ip(n, &["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ip(
                n,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{v6}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            ip(n, &["link", "set", dev, "up"]);
        }
        segments.push(seg);
    }
    for (i, node) in ns.iter().enumerate() {
        let devs: Vec<String> = segments
            .iter()
            .filter_map(|s| {
                (s.left == i)
                    .then(|| s.left_dev.clone())
                    .or_else(|| (s.right == i).then(|| s.right_dev.clone()))
            })
            .collect();
        wait_oper_up(node, &devs);
    }
    if routed {
        for (i, node) in ns.iter().enumerate() {
            if i > 0 && i < n - 1 {
                node.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
                node.set_sysctl("net.ipv6.conf.all.forwarding", "1")
                    .unwrap();
            }
            for (k, seg) in segments.iter().enumerate() {
                if k + 1 == i || k == i {
                    continue; // connected
                }
                // Segment k lies to the left (k < i) or the right of namespace i.
                let (via4, via6, dev) = if k < i {
                    let s = &segments[i - 1];
                    (s.left_v4, s.left_v6, &s.right_dev)
                } else {
                    let s = &segments[i];
                    (s.right_v4, s.right_v6, &s.left_dev)
                };
                ip(
                    node,
                    &[
                        "route",
                        "add",
                        &seg.v4_net,
                        "via",
                        &via4.to_string(),
                        "dev",
                        dev,
                    ],
                );
                ip(
                    node,
                    &[
                        "-6",
                        "route",
                        "add",
                        &seg.v6_net,
                        "via",
                        &via6.to_string(),
                        "dev",
                        dev,
                    ],
                );
            }
        }
    }
    Line { ns, segments }
}

/// Waits (up to 5 s) until every device in `devs` reports operstate UP in `ns`.
///
/// A veth's carrier comes up through the kernel's linkwatch, which batches events for up to a
/// second; until then its qdisc drops every packet (measured: the first ping after set-up took
/// 1 s). Waiting here keeps tests from measuring set-up.
pub fn wait_oper_up(ns: &NetNs, devs: &[String]) {
    let until = Instant::now() + patient(Duration::from_secs(5));
    loop {
        let out = ip(ns, &["-o", "link", "show"]);
        let is_up = |dev: &str| {
            out.lines().any(|l| {
                let name = l.split(':').nth(1).map(|n| n.trim().split('@').next());
                name == Some(Some(dev)) && l.contains("state UP")
            })
        };
        let down: Vec<&String> = devs.iter().filter(|d| !is_up(d)).collect();
        if down.is_empty() {
            return;
        }
        if Instant::now() > until {
            panic!("{down:?} in {} not up after 5 s:\n{out}", ns.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// The outcome of [`ping`].
#[derive(Debug, Clone)]
pub struct Ping {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// ping's whole output, for assertion messages.
    pub output: String,
}

/// Sends exactly `count` echo requests, 0.2 s apart, from `ns` to `addr` (IPv4 or IPv6), and
/// counts the requests answered, each waited for up to 1 s ([`patient`]) however late the
/// others are.
///
/// Through an ICMP datagram socket of the namespace's own (lwtun's namespaces allow them, see
/// [`netns`]), not iputils ping: once one reply has come, ping waits only max(2 × the slowest
/// round trip, the interval) for the last ones after its last request, so on a loaded machine a
/// reply 0.2 s late was counted as lost (seen: `3 packets transmitted, 2 received` through an
/// LWT redirect into VXLAN while VMs ran beside the tests). A namespace that refuses the socket
/// gets iputils ping.
pub fn ping(ns: &NetNs, addr: IpAddr, count: u32) -> Ping {
    match ns.run(|| Ok(echo(addr, count))) {
        Ok(Some(p)) => p,
        _ => ping_with(ns, addr, count, &[]),
    }
}

/// The datagram-socket pinger of [`ping`], in the calling thread's namespace; `None` when the
/// namespace refuses ICMP datagram sockets (`net.ipv4.ping_group_range`).
fn echo(addr: IpAddr, count: u32) -> Option<Ping> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let (domain, proto, request, reply) = match addr {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128, 129),
    };
    // SAFETY: plain socket(2); the fd is owned below.
    let raw = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return None;
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let target = std::net::SocketAddr::new(addr, 0);
    let (storage, len) = sockaddr_of(&target);
    // SAFETY: storage holds a sockaddr of `len` bytes.
    let rc = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        return None;
    }
    let wait = patient(Duration::from_secs(1));
    let interval = Duration::from_millis(200);
    let start = Instant::now();
    let mut answered = std::collections::BTreeSet::new();
    let mut sent = 0u32;
    let mut errors = 0u32;
    loop {
        let now = start.elapsed();
        if sent < count && now >= interval * sent {
            sent += 1;
            // type, code, checksum and id (the kernel fills both), sequence, 56 bytes of data.
            let mut m = vec![request, 0, 0, 0, 0, 0];
            m.extend_from_slice(&(sent as u16).to_be_bytes());
            m.extend((0..56u8).map(|i| i.wrapping_add(sent as u8)));
            // SAFETY: m is a valid buffer of m.len() bytes.
            let n = unsafe { libc::send(sock.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
            if n < 0 {
                errors += 1; // an ICMP error (unreachable, ...) reported on the socket
            }
            continue;
        }
        let deadline = if sent < count {
            interval * sent
        } else {
            interval * (count - 1) + wait
        };
        if sent == count && (answered.len() as u32 == count || now >= deadline) {
            break;
        }
        let timeout = deadline.saturating_sub(now).as_millis().max(1) as i32;
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 2048];
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            // An ICMP error (unreachable, ...) for a request, reported once on the connected
            // socket and cleared by this read (no IP_RECVERR: nothing is queued).
            errors += 1;
            continue;
        }
        let n = n as usize;
        if n >= 8 && buf[0] == reply {
            let seq = u16::from_be_bytes([buf[6], buf[7]]) as u32;
            if (1..=sent).contains(&seq) {
                answered.insert(seq);
            }
        }
    }
    let received = answered.len() as u32;
    let output = format!(
        "echo to {addr} through an ICMP datagram socket: {count} packets transmitted, \
         {received} received{}, each reply waited for up to {wait:?}; answered: {answered:?}",
        if errors > 0 {
            format!(", +{errors} errors")
        } else {
            String::new()
        }
    );
    Some(Ping {
        transmitted: count,
        received,
        output,
    })
}

/// A socket address as `sockaddr_storage` and its length.
fn sockaddr_of(addr: &std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// [`ping`] with extra arguments (for example `["-s", "1400"]` or `["-M", "do"]`).
pub fn ping_with(ns: &NetNs, addr: IpAddr, count: u32, extra: &[&str]) -> Ping {
    let count_s = count.to_string();
    let addr_s = addr.to_string();
    // No -w: with a deadline, iputils ping keeps sending until it has `count` replies.
    let wait_s = patient(Duration::from_secs(1)).as_secs().to_string();
    let mut args = vec!["-n", "-q", "-c", &count_s, "-i", "0.2", "-W", &wait_s];
    args.extend_from_slice(extra);
    args.push(&addr_s);
    let out = ns.command("ping").args(&args).output().expect("run ping");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // "3 packets transmitted, 3 received, 0% packet loss, time 401ms"
    let number_before = |word: &str| -> u32 {
        output
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| {
                l.split(',')
                    .find(|part| part.trim_end().ends_with(word))
                    .and_then(|part| part.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    Ping {
        transmitted: number_before("packets transmitted"),
        received: number_before("received"),
        output,
    }
}

/// A steady flow for tests that change the data plane under traffic: `count` pings from `ns`
/// to `target`, 5 ms apart, each waited for at most 1 s; returns ping's output once done.
pub fn ping_flow(ns: &NetNs, target: &str, count: u32) -> std::process::Output {
    ns.command("ping")
        .args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.005",
            "-W",
            "1",
        ])
        .arg(target)
        .output()
        .unwrap()
}

/// The byte at `offset` of a [`tcp_stream`]: a position-dependent pattern, so that lost,
/// repeated or reordered data shows up.
pub fn pattern_byte(offset: usize) -> u8 {
    let x = (offset as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 56) as u8 ^ (offset as u8)
}

/// The outcome of [`tcp_stream`].
#[derive(Debug, Clone)]
pub struct TcpTransfer {
    /// Bytes the client wrote.
    pub sent: usize,
    /// Bytes the server read.
    pub received: usize,
    /// Bytes read before the first one that differs from the pattern (== `received` when all
    /// arrived intact).
    pub intact: usize,
    /// From connect to the server's end of stream.
    pub elapsed: Duration,
    /// What went wrong, if anything (connect, write or read error, timeout).
    pub error: Option<String>,
}

impl TcpTransfer {
    /// Whether every byte arrived, intact, and nothing failed.
    pub fn complete(&self) -> bool {
        self.error.is_none() && self.intact == self.sent && self.received == self.sent
    }
}

/// Streams `bytes` bytes of a known pattern over TCP from `client` to a listener on
/// `server_addr` inside `server`, and reports how many arrived intact. The listener is bound
/// to `server_addr` (an address of `server`) on a free port. Bounded: 5 s to connect, 10 s
/// without progress ends the transfer, and the whole exchange gets 10 s plus 1 s per 10 MB.
pub fn tcp_stream(
    server: &NetNs,
    client: &NetNs,
    server_addr: IpAddr,
    bytes: usize,
) -> TcpTransfer {
    let listener = server
        .run(|| {
            TcpListener::bind(SocketAddr::new(server_addr, 0))
                .map_err(|e| lwtun::Error::io("bind", e))
        })
        .unwrap_or_else(|e| panic!("listen on {server_addr} in {}: {e}", server.name()));
    let port = listener.local_addr().unwrap().port();
    let target = SocketAddr::new(server_addr, port);
    let budget = patient(Duration::from_secs(10 + (bytes / 10_000_000) as u64));
    let stall = patient(Duration::from_secs(10));

    // The server: accept one connection, read to end of stream, check the pattern.
    let (tx, rx) = mpsc::channel();
    let client_gave_up = Arc::new(AtomicBool::new(false));
    let gave_up = Arc::clone(&client_gave_up);
    let server_thread = std::thread::spawn(move || {
        let start = Instant::now();
        listener.set_nonblocking(true).unwrap();
        let mut stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() > budget || gave_up.load(Ordering::Relaxed) {
                        let _ = tx.send((0, 0, Some("no connection arrived".to_string())));
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    let _ = tx.send((0, 0, Some(format!("accept: {e}"))));
                    return;
                }
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(stall)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut received, mut intact, mut error) = (0usize, None::<usize>, None);
        loop {
            if start.elapsed() > budget {
                error = Some(format!("timed out after {budget:?}"));
                break;
            }
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if intact.is_none() {
                        if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(received + i)) {
                            intact = Some(received + i);
                        }
                    }
                    received += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(format!("read after {received} bytes: {e}"));
                    break;
                }
            }
        }
        let _ = tx.send((received, intact.unwrap_or(received), error));
    });

    // The client, inside its namespace.
    let start = Instant::now();
    let sent = client.run(|| {
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| lwtun::Error::io(format!("connect to {target}"), e))?;
        s.set_write_timeout(Some(stall)).unwrap();
        let mut chunk = vec![0u8; 1 << 16];
        let mut sent = 0;
        while sent < bytes {
            let n = chunk.len().min(bytes - sent);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = pattern_byte(sent + i);
            }
            s.write_all(&chunk[..n])
                .map_err(|e| lwtun::Error::io(format!("write after {sent} bytes"), e))?;
            sent += n;
        }
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| lwtun::Error::io("shutdown", e))?;
        Ok(sent)
    });
    let (client_sent, client_error) = match sent {
        Ok(n) => (n, None),
        Err(e) => (0, Some(format!("client: {e}"))),
    };
    if client_error.is_some() {
        client_gave_up.store(true, Ordering::Relaxed);
    }
    let (received, intact, server_error) = rx.recv_timeout(budget + stall).unwrap_or((
        0,
        0,
        Some("the server thread did not finish".into()),
    ));
    let elapsed = start.elapsed();
    let _ = server_thread.join();
    TcpTransfer {
        sent: client_sent,
        received,
        intact,
        elapsed,
        error: client_error.or(server_error),
    }
}

/// Sends `packets` UDP datagrams of `size` bytes (each numbered in its first 4 bytes) from
/// `client` to `server_addr` in `server`, and returns how many distinct, intact ones arrived
/// by 2 s after the last was sent (it returns early once all have).
pub fn udp_count(
    server: &NetNs,
    client: &NetNs,
    server_addr: IpAddr,
    packets: u32,
    size: usize,
) -> u32 {
    assert!(size >= 4, "datagrams carry a 4-byte sequence number");
    let sock = server
        .run(|| {
            UdpSocket::bind(SocketAddr::new(server_addr, 0))
                .map_err(|e| lwtun::Error::io("bind", e))
        })
        .unwrap_or_else(|e| panic!("bind {server_addr} in {}: {e}", server.name()));
    let target = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(patient(Duration::from_secs(2))))
        .unwrap();
    // A starved receiver thread must not turn into drops: the default buffer (~212 KB) holds
    // only ~170 small datagrams (measured: 174 of 200 under parallel tests).
    force_rcvbuf(&sock, 16 << 20);
    let seen = Arc::new(Mutex::new(vec![false; packets as usize]));
    let seen2 = Arc::clone(&seen);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let receiver = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut sender_done_at: Option<Instant> = None;
        loop {
            if sender_done_at.is_none() && done_rx.try_recv().is_ok() {
                sender_done_at = Some(Instant::now());
            }
            if let Some(t) = sender_done_at {
                if t.elapsed() > patient(Duration::from_secs(2)) {
                    break;
                }
            }
            match sock.recv(&mut buf) {
                Ok(n) if n == size => {
                    let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
                    let body_ok = (4..n).all(|i| buf[i] == pattern_byte(i));
                    if body_ok && seq < packets {
                        let mut seen = seen2.lock().unwrap();
                        seen[seq as usize] = true;
                        if seen.iter().all(|&s| s) {
                            break; // everything arrived: no need to linger
                        }
                    }
                }
                Ok(_) => {}
                Err(_) if sender_done_at.is_some() => break,
                Err(_) => {}
            }
        }
    });
    client
        .run(|| {
            let s = UdpSocket::bind(SocketAddr::new(
                if server_addr.is_ipv4() {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                } else {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                },
                0,
            ))
            .map_err(|e| lwtun::Error::io("bind", e))?;
            let mut dgram = vec![0u8; size];
            for (i, b) in dgram.iter_mut().enumerate().skip(4) {
                *b = pattern_byte(i);
            }
            for seq in 0..packets {
                dgram[..4].copy_from_slice(&seq.to_be_bytes());
                // Errors (no route, refused) are what the count shows.
                let _ = s.send_to(&dgram, target);
                if seq % 64 == 63 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Ok(())
        })
        .unwrap();
    let _ = done_tx.send(());
    receiver.join().unwrap();
    let n = seen.lock().unwrap().iter().filter(|&&s| s).count();
    n as u32
}

/// Sets a socket's receive buffer, past `net.core.rmem_max` (SO_RCVBUFFORCE, CAP_NET_ADMIN).
fn force_rcvbuf(sock: &impl std::os::fd::AsRawFd, bytes: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket fd and a c_int option value of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// tcpdump
// ---------------------------------------------------------------------------------------------

/// A running `tcpdump -nn -l` inside a namespace; killed when dropped.
///
/// ```ignore
/// let cap = Capture::start(net.ns(1), "to0", "udp port 4789", 10);
/// // ... traffic ...
/// let lines = cap.finish(Duration::from_secs(2));
/// assert!(lines.iter().any(|l| l.contains("VXLAN")));
/// ```
pub struct Capture {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

impl Capture {
    /// Starts tcpdump on `iface` in `ns` with the filter expression `filter` (may be empty),
    /// stopping by itself after `max_packets` packets. Returns once tcpdump is listening
    /// (it said so on stderr), or panics after 5 s.
    pub fn start(ns: &NetNs, iface: &str, filter: &str, max_packets: u32) -> Capture {
        Capture::start_with(ns, iface, filter, max_packets, &[])
    }

    /// [`Capture::start`] with extra tcpdump options (for example `["-v"]` or `["-e"]`).
    pub fn start_with(
        ns: &NetNs,
        iface: &str,
        filter: &str,
        max_packets: u32,
        extra: &[&str],
    ) -> Capture {
        let count = max_packets.to_string();
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-nn", "-l", "-i", iface, "-c", &count])
            .args(extra)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tcpdump");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let lines2 = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) if l.trim().is_empty() => {}
                    Ok(l) => lines2.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        // Wait for "listening on IFACE" on stderr, then keep draining stderr in the background.
        let err_text = Arc::new(Mutex::new(String::new()));
        let err2 = Arc::clone(&err_text);
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(l) = line else { break };
                if l.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut e = err2.lock().unwrap();
                e.push_str(&l);
                e.push('\n');
            }
        });
        let mut cap = Capture {
            child: Some(child),
            lines,
            reader: Some(reader),
            stderr: err_text,
        };
        if ready_rx
            .recv_timeout(patient(Duration::from_secs(5)))
            .is_err()
        {
            let err = cap.stderr.lock().unwrap().clone();
            cap.stop();
            panic!("tcpdump on {iface} in {} did not start: {err}", ns.name());
        }
        cap
    }

    /// The lines printed so far.
    pub fn lines_so_far(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for tcpdump to reach its packet count, then stops it (SIGINT,
    /// so it flushes) and returns every packet line it printed.
    pub fn finish(mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + patient(timeout);
        if let Some(child) = self.child.as_mut() {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.stop();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }

    /// What tcpdump printed on stderr (its start line and packet statistics).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: signalling our own child by its pid (nsenter exec'd tcpdump in place).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Captures on `iface` in `ns` while `traffic` runs: starts tcpdump, runs the closure, then
/// waits up to `timeout` for `max_packets` packets. Returns the packet lines and the
/// closure's result.
pub fn tcpdump<R>(
    ns: &NetNs,
    iface: &str,
    filter: &str,
    max_packets: u32,
    timeout: Duration,
    traffic: impl FnOnce() -> R,
) -> (Vec<String>, R) {
    let cap = Capture::start(ns, iface, filter, max_packets);
    let r = traffic();
    (cap.finish(timeout), r)
}

/// Turns transmit checksum offload off on `dev`: a local stack sending over a veth leaves TCP
/// and UDP checksums to "hardware" (CHECKSUM_PARTIAL), and a frame that XDP redirects to another
/// device carries that unfinished checksum to the receiver, which drops it. Real NICs finish the
/// checksum on transmit; test hosts on veths must do it in software.
/// (`ethtool -K DEV tx off`, done with the SIOCETHTOOL ioctl: ethtool may not be installed.)
pub fn tx_checksum_off(ns: &NetNs, dev: &str) {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    let dev = dev.to_string();
    ns.run(move || {
        let mut value = EthtoolValue {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        };
        let mut req = IfReq {
            name: [0; 16],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: plain socket and ioctl calls on live buffers; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
            assert!(fd >= 0);
            let rc = libc::ioctl(fd, libc::SIOCETHTOOL, &mut req as *mut IfReq);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            assert_eq!(rc, 0, "ETHTOOL_STXCSUM on {dev}: {err}");
        }
        Ok(())
    })
    .unwrap();
}

/// Bytes from a hex dump as tests/data keeps them: `#` comment lines, any layout.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.bytes())
        .filter(u8::is_ascii_hexdigit)
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// [`hex`] of chunks written one after the other (a captured message split over lines).
pub fn unhex(chunks: &[&str]) -> Vec<u8> {
    hex(&chunks.concat())
}

/// Compares two netlink messages byte by byte, naming the first difference.
pub fn assert_bytes(ours: &[u8], theirs: &[u8]) {
    if let Some(i) = (0..ours.len().min(theirs.len())).find(|&i| ours[i] != theirs[i]) {
        panic!(
            "first difference at byte {i}: lwtun {:02x?} vs iproute2 {:02x?}",
            &ours[i..(i + 8).min(ours.len())],
            &theirs[i..(i + 8).min(theirs.len())]
        );
    }
    assert_eq!(ours.len(), theirs.len(), "lengths differ");
}

// ---------------------------------------------------------------------------------------------
// iproute2's bpffs folders
// ---------------------------------------------------------------------------------------------

/// How many [`Iproute2Bpffs`] guards of this test binary live, and whether iproute2's folders
/// were there before the first.
static IPROUTE2_BPFFS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// Hold one around `ip ... obj FILE` calls: iproute2 creates `/sys/fs/bpf/tc/globals` and the
/// `ip` and `xdp` links the first time it loads an object. When the last guard of the test
/// binary goes (tests run in parallel) and the folders were not there when the first came,
/// they are removed (only if empty: anything pinned there meanwhile stays).
pub struct Iproute2Bpffs(());

impl Iproute2Bpffs {
    /// Takes a guard.
    pub fn new() -> Self {
        let mut state = IPROUTE2_BPFFS.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == 0 {
            state.1 = std::path::Path::new("/sys/fs/bpf/tc").exists();
        }
        state.0 += 1;
        Iproute2Bpffs(())
    }
}

impl Drop for Iproute2Bpffs {
    fn drop(&mut self) {
        let mut state = IPROUTE2_BPFFS.lock().unwrap_or_else(|e| e.into_inner());
        state.0 -= 1;
        if state.0 > 0 || state.1 {
            return;
        }
        for link in ["/sys/fs/bpf/ip", "/sys/fs/bpf/xdp"] {
            let _ = std::fs::remove_file(link);
        }
        let _ = std::fs::remove_dir("/sys/fs/bpf/tc/globals");
        let _ = std::fs::remove_dir("/sys/fs/bpf/tc");
    }
}

/// A unique folder on bpffs for a test's pins (`/sys/fs/bpf/lwtun-test-TAG-PID-N`, not made
/// yet), removed with everything in it at the end, also when the test panics.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    /// A fresh name, unique within this process and across processes.
    pub fn new(tag: &str) -> PinDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/lwtun-test-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        PinDir(p)
    }

    /// The folder as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 path")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The peers a pinned tunnel's tables hold in the kernel, by prefix.
pub fn kernel_peers(
    folder: &std::path::Path,
) -> std::collections::BTreeMap<ipnetwork::IpNetwork, lwtun::peer::EncapPeer> {
    let pinned = lwtun::tunnel::PinnedTunnel::open(folder).unwrap();
    pinned.peers().iter().map(|(p, peer)| (p, *peer)).collect()
}

/// Host `i` of a flood of /32 peers under `10.NET.0.0/16`: a GRE peer with `key` towards one
/// of 200 remotes in 192.0.2.0/24, from 192.0.2.1 (the journal and monitor overflow tests).
pub fn flood_host(net: u8, i: u32, key: u32) -> (ipnetwork::IpNetwork, lwtun::peer::EncapPeer) {
    (
        ipnetwork::IpNetwork::new([10, net, (i >> 8) as u8, i as u8].into(), 32).unwrap(),
        lwtun::peer::EncapPeer::new(
            [192, 0, 2, (i % 200 + 2) as u8].into(),
            [192, 0, 2, 1].into(),
            lwtun::peer::Encap::Gre {
                key: Some(key),
                checksum: false,
            },
        ),
    )
}

/// A UDP receiver in a namespace: a thread that records the first `prefix` bytes of every
/// datagram (of at least that length) reaching its socket, until it drops (the thread is
/// stopped and joined then, also on panic).
pub struct UdpSink {
    got: Arc<Mutex<std::collections::BTreeSet<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UdpSink {
    /// Binds `addr` inside `ns` (the IPv6 wildcard also receives IPv4) and starts recording.
    pub fn start(ns: &NetNs, addr: SocketAddr, prefix: usize) -> UdpSink {
        let socket = ns
            .enter(|| UdpSocket::bind(addr).map_err(|e| lwtun::Error::io("bind", e)))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let got = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    if n >= prefix {
                        g.lock().unwrap().insert(buf[..prefix].to_vec());
                    }
                }
            }
        });
        UdpSink {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether a datagram starting with `prefix` arrived.
    pub fn has(&self, prefix: &[u8]) -> bool {
        self.got.lock().unwrap().contains(prefix)
    }

    /// The recorded prefixes so far, in order.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.got.lock().unwrap().iter().cloned().collect()
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
