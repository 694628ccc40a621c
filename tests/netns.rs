//! `lwtun::netns` against the real kernel: namespaces that `ip netns` sees, code run inside them,
//! sysctls per namespace, and cleanup on drop, delete and panic.

mod common;

use std::process::Command;
use std::time::Duration;

use lwtun::netns::NetNs;
use lwtun::{Error, ErrorKind};

fn ip_netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn listed(name: &str) -> bool {
    ip_netns_list()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// The inode of the thread's network namespace, as `/proc/thread-self/ns/net` names it.
fn current_netns() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .expect("read ns link")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn create_is_listed_by_ip_and_removed_on_drop() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").expect("create");
    let name = ns.name().to_string();
    assert!(ns.is_owned());
    assert_eq!(ns.path(), std::path::Path::new("/run/netns").join(&name));
    assert!(
        listed(&name),
        "ip netns list lacks {name}: {}",
        ip_netns_list()
    );
    assert!(NetNs::list().unwrap().contains(&name));
    drop(ns);
    assert!(!listed(&name), "{name} still listed after drop");
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
}

#[test]
fn create_twice_is_exists_and_open_does_not_own() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").expect("create");
    let e = NetNs::create(ns.name()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    // The failed create must not have removed the existing one.
    assert!(listed(ns.name()));

    let opened = NetNs::open(ns.name()).expect("open");
    assert!(!opened.is_owned());
    drop(opened);
    assert!(listed(ns.name()), "dropping an opened namespace removed it");

    let e = NetNs::open("lwt-ns-does-not-exist").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn unique_names_differ_and_carry_the_pid() {
    require!();
    let a = NetNs::create_unique("lwt-u").unwrap();
    let b = NetNs::create_unique("lwt-u").unwrap();
    assert_ne!(a.name(), b.name());
    let pid = std::process::id().to_string();
    for ns in [&a, &b] {
        let parts: Vec<&str> = ns.name().rsplitn(3, '-').collect();
        assert_eq!(parts[1], pid, "{}", ns.name());
    }
}

#[test]
fn run_enters_the_namespace_and_leaves_the_caller_alone() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").unwrap();
    let before = current_netns();
    let inside = ns.run(|| Ok(current_netns())).unwrap();
    assert_ne!(inside, before);
    assert_eq!(current_netns(), before, "the caller's namespace changed");
    // The same namespace every time, and the one nsenter enters.
    assert_eq!(ns.run(|| Ok(current_netns())).unwrap(), inside);
    let out = ns
        .command("readlink")
        .arg("/proc/self/ns/net")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), inside);
    // Threads spawned inside start inside.
    let nested = ns
        .run(|| Ok(std::thread::spawn(current_netns).join().unwrap()))
        .unwrap();
    assert_eq!(nested, inside);
    // Borrowing from the caller works.
    let mut seen = Vec::new();
    ns.run(|| {
        seen.push(1);
        Ok(())
    })
    .unwrap();
    assert_eq!(seen, [1]);
    // /sys/fs/bpf stays visible (no mount namespace change), when it is mounted on the host.
    if std::path::Path::new("/sys/fs/bpf").read_dir().is_ok() {
        assert!(ns
            .run(|| Ok(std::path::Path::new("/sys/fs/bpf").read_dir().is_ok()))
            .unwrap());
        let out = ns
            .command("stat")
            .args(["-f", "-c", "%T", "/sys/fs/bpf"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "bpf_fs");
    }
}

#[test]
fn run_turns_panics_and_errors_into_errors() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").unwrap();
    let e = ns
        .run(|| -> lwtun::Result<()> { panic!("boom in the namespace") })
        .unwrap_err();
    assert!(e.to_string().contains("boom in the namespace"), "{e}");
    let e = ns
        .run(|| -> lwtun::Result<()> { Err(Error::invalid_input("mine", "closure error")) })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert_eq!(e.operation(), "mine");
    // The namespace is still usable afterwards.
    assert!(ns.run(|| Ok(true)).unwrap());
}

#[test]
fn two_namespaces_have_separate_loopbacks() {
    require!();
    let a = NetNs::create_unique("lwt-ns").unwrap();
    let b = NetNs::create_unique("lwt-ns").unwrap();
    let up = |ns: &NetNs| {
        let st = ns
            .command("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success());
    };
    up(&a);
    // A listener on a's loopback: reachable from a, not from b (whose loopback is down and
    // separate), nor from the host.
    let listener = a
        .run(|| std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind", e)))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = std::time::Duration::from_secs(2);
    let from_a = a
        .run(|| Ok(std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()))
        .unwrap();
    assert!(from_a, "connect inside a failed");
    up(&b);
    let from_b = b
        .run(|| Ok(std::net::TcpStream::connect_timeout(&addr, timeout).is_ok()))
        .unwrap();
    assert!(!from_b, "b reached a listener on a's loopback");
    // `ip link` inside each shows only its own devices: a fresh namespace has just lo.
    for ns in [&a, &b] {
        let out = ns
            .command("ip")
            .args(["-o", "link", "show"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains(": lo:"), "{text}");
    }
}

#[test]
fn drop_on_panic_removes_the_namespace() {
    require!();
    let (tx, rx) = std::sync::mpsc::channel();
    let joined = std::thread::spawn(move || {
        let ns = NetNs::create_unique("lwt-panic").unwrap();
        tx.send(ns.name().to_string()).unwrap();
        assert!(listed(ns.name()));
        panic!("test panics while owning {}", ns.name());
    })
    .join();
    assert!(joined.is_err(), "the thread should have panicked");
    let name = rx.recv().unwrap();
    assert!(!listed(&name), "{name} survived the panic");
}

#[test]
fn delete_reports_and_persist_keeps() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").unwrap();
    let name = ns.name().to_string();
    ns.delete().expect("delete");
    assert!(!listed(&name));
    // Deleting again (through open) is NotFound.
    assert_eq!(NetNs::open(&name).unwrap_err().kind(), ErrorKind::NotFound);

    let ns = NetNs::create_unique("lwt-ns").unwrap();
    let name = ns.name().to_string();
    ns.persist();
    assert!(listed(&name), "persisted namespace was removed");
    // It is a real namespace still: iproute2 can enter it, and lwtun can adopt and delete it.
    let st = Command::new("ip")
        .args(["netns", "exec", &name, "true"])
        .status()
        .unwrap();
    assert!(st.success());
    NetNs::open(&name).unwrap().delete().unwrap();
    assert!(!listed(&name));
}

#[test]
fn namespace_made_by_iproute2_can_be_opened_and_used() {
    require!();
    let name = format!("lwt-ip-{}", std::process::id());
    let st = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap();
    assert!(st.success());
    // Remove it whatever happens below.
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.0])
                .status();
        }
    }
    let _cleanup = Cleanup(name.clone());
    let ns = NetNs::open(&name).unwrap();
    let id = ns.run(|| Ok(current_netns())).unwrap();
    assert_ne!(id, current_netns());
    // A plain file under /run/netns with nothing mounted is not a namespace.
    let fake = format!("lwt-fake-{}", std::process::id());
    let fake_path = std::path::Path::new("/run/netns").join(&fake);
    std::fs::write(&fake_path, b"").unwrap();
    let e = NetNs::open(&fake).unwrap_err();
    std::fs::remove_file(&fake_path).unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // Another kind of namespace mounted there (a UTS namespace) is not a network namespace.
    let uts = format!("lwt-uts-{}", std::process::id());
    let uts_path = std::path::Path::new("/run/netns").join(&uts);
    std::fs::write(&uts_path, b"").unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _unmount = Unmount(uts_path.clone());
    let st = Command::new("mount")
        .args(["--bind", "/proc/self/ns/uts"])
        .arg(&uts_path)
        .status()
        .unwrap();
    assert!(st.success());
    let e = NetNs::open(&uts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("not a network namespace"), "{e}");
}

#[test]
fn sysctls_are_per_namespace_and_never_the_hosts() {
    require!();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let a = NetNs::create_unique("lwt-ns").unwrap();
    let b = NetNs::create_unique("lwt-ns").unwrap();
    let flip = if a.sysctl("net.ipv4.ip_forward").unwrap() == "1" {
        "0"
    } else {
        "1"
    };
    a.set_sysctl("net.ipv4.ip_forward", flip).unwrap();
    assert_eq!(a.sysctl("net.ipv4.ip_forward").unwrap(), flip);
    assert_ne!(
        b.sysctl("net.ipv4.ip_forward").unwrap(),
        flip,
        "b saw a's value"
    );
    // What sysctl(8) inside the namespace reads agrees.
    let out = a
        .command("cat")
        .arg("/proc/sys/net/ipv4/ip_forward")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), flip);
    a.set_sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    assert_eq!(a.sysctl("net/ipv6/conf/all/forwarding").unwrap(), "1");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before,
        "the host's sysctl changed"
    );
    // Refused before anything is written.
    assert_eq!(
        a.set_sysctl("kernel.panic", "0").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        a.set_sysctl("net.ipv4.no_such_key", "1")
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

#[test]
fn fd_keeps_a_deleted_namespace_alive() {
    require!();
    let ns = NetNs::create_unique("lwt-ns").unwrap();
    let id = ns.run(|| Ok(current_netns())).unwrap();
    let fd = ns.fd().unwrap();
    ns.delete().unwrap();
    // setns through the held fd still works: the namespace outlives its name.
    let again = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: fd is an open namespace file; setns changes only this thread.
        let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        current_netns()
    })
    .join()
    .unwrap();
    assert_eq!(again, id);
}

// ---- the shared harness (tests/common) on real topologies ----

#[test]
fn harness_two_hosts_ping_v4_and_v6() {
    require!();
    let net = common::two_hosts();
    let p = common::ping(net.ns(0), net.v4(1).into(), 3);
    assert_eq!((p.transmitted, p.received), (3, 3), "{}", p.output);
    // Through the harness's own socket, which waits for every reply (see common::ping).
    assert!(p.output.contains("ICMP datagram socket"), "{}", p.output);
    let p = common::ping(net.ns(1), net.v6(0).into(), 2);
    assert!(p.output.contains("ICMP datagram socket"), "{}", p.output);
    assert_eq!(p.received, 2, "{}", p.output);
    // A request nobody answers is counted as lost, not waited for forever (the peer drops
    // IPv4 echo requests for a moment).
    common::ip(net.ns(1), &["route", "add", "blackhole", "10.77.0.1/32"]);
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!((p.transmitted, p.received), (2, 0), "{}", p.output);
    common::ip(net.ns(1), &["route", "del", "blackhole", "10.77.0.1/32"]);
    let p = common::ping(net.ns(0), net.v4(1).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    // The devices are where the harness says, with the addresses it says.
    let show = common::ip(net.ns(0), &["-o", "addr", "show", "dev", "to1"]);
    assert!(show.contains("10.77.0.1/24"), "{show}");
    assert!(show.contains("fd77::1/64"), "{show}");
    assert!(net.ifindex(1, "to0") > 1);
    // An address nobody has: no replies, and ping says so.
    let p = common::ping(net.ns(0), "10.77.0.99".parse().unwrap(), 1);
    assert_eq!(p.received, 0, "{}", p.output);
}

#[test]
fn harness_line_routes_end_to_end_and_unrouted_does_not() {
    require!();
    let net = common::line(3);
    let p = common::ping(net.ns(0), net.v4(2).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    let p = common::ping(net.ns(2), net.v6(0).into(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    assert_eq!(net.ns(1).sysctl("net.ipv4.ip_forward").unwrap(), "1");
    let names: Vec<String> = net.ns.iter().map(|n| n.name().to_string()).collect();

    let bare = common::line_unrouted(3);
    let p = common::ping(bare.ns(0), bare.v4(2).into(), 1);
    assert_eq!(p.received, 0, "{}", p.output);
    let p = common::ping(bare.ns(0), bare.v4(1).into(), 1);
    assert_eq!(p.received, 1, "{}", p.output);

    drop(net);
    let listed = NetNs::list().unwrap();
    for n in names {
        assert!(!listed.contains(&n), "{n} left behind");
    }
}

#[test]
fn harness_tcp_stream_counts_intact_bytes() {
    require!();
    let net = common::two_hosts();
    let bytes = 8 << 20;
    let t = common::tcp_stream(net.ns(1), net.ns(0), net.v4(1).into(), bytes);
    assert!(t.complete(), "{t:?}");
    assert_eq!(t.intact, bytes);
    let t = common::tcp_stream(net.ns(0), net.ns(1), net.v6(0).into(), 100_000);
    assert!(t.complete(), "{t:?}");
    // A path that drops everything: the client cannot connect, and the report says so.
    common::ip(net.ns(0), &["route", "add", "blackhole", "10.99.0.0/16"]);
    common::ip(net.ns(1), &["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    let t = common::tcp_stream(net.ns(1), net.ns(0), "10.99.0.1".parse().unwrap(), 1000);
    assert!(!t.complete(), "{t:?}");
    assert_eq!(t.received, 0);
    assert!(t.error.is_some());
}

#[test]
fn harness_udp_count_and_tcpdump_see_real_packets() {
    require!();
    let net = common::two_hosts();
    let n = common::udp_count(net.ns(1), net.ns(0), net.v4(1).into(), 200, 512);
    assert_eq!(n, 200);

    let (lines, ping) =
        common::tcpdump(net.ns(1), "to0", "icmp", 4, Duration::from_secs(3), || {
            common::ping(net.ns(0), net.v4(1).into(), 2)
        });
    assert_eq!(ping.received, 2, "{}", ping.output);
    let requests = lines
        .iter()
        .filter(|l| l.contains("ICMP echo request"))
        .count();
    let replies = lines
        .iter()
        .filter(|l| l.contains("ICMP echo reply"))
        .count();
    assert_eq!((requests, replies), (2, 2), "{lines:#?}");
    assert!(lines[0].contains("10.77.0.1 > 10.77.0.2"), "{lines:#?}");

    // A filter that matches nothing returns nothing, within the bound.
    let cap = common::Capture::start(net.ns(1), "to0", "udp port 9", 1);
    let _ = common::ping(net.ns(0), net.v4(1).into(), 1);
    let started = std::time::Instant::now();
    let lines = cap.finish(Duration::from_millis(500));
    assert!(lines.is_empty(), "{lines:#?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the capture outlived its bound"
    );
}

/// NetNs::fd is what lwtun's own netlink takes to create a veth whose peer lands in another
/// namespace; Netlink sockets opened in `run` stay in their namespace.
#[test]
fn lwtun_netlink_builds_a_link_between_namespaces() {
    require!();
    use lwtun::netlink::{addr::AddressOptions, Netlink};
    let a = common::netns("nla");
    let b = common::netns("nlb");
    let mut nl_a = a.run(Netlink::open).unwrap();
    let mut nl_b = b.run(Netlink::open).unwrap();
    // Used from this thread, the sockets still act in their own namespaces.
    nl_a.add_veth("xa", "xb", Some(&b)).unwrap();
    assert_eq!(
        nl_a.link_by_name("xb").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let xa = nl_a.link_by_name("xa").unwrap();
    let xb = nl_b.link_by_name("xb").unwrap();
    for (nl, link, net) in [
        (&mut nl_a, &xa, "10.88.0.1/24"),
        (&mut nl_b, &xb, "10.88.0.2/24"),
    ] {
        nl.add_address_with(link.index, net.parse().unwrap(), &AddressOptions::nodad())
            .unwrap();
        nl.set_link_up(link.index, true).unwrap();
    }
    common::wait_oper_up(&a, &["xa".to_string()]);
    common::wait_oper_up(&b, &["xb".to_string()]);
    let p = common::ping(&a, "10.88.0.2".parse().unwrap(), 2);
    assert_eq!(p.received, 2, "{}", p.output);
    // The host never saw either end.
    let host = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let host = String::from_utf8_lossy(&host.stdout);
    assert!(!host.contains(" xa@") && !host.contains(" xb@"), "{host}");
}

/// A test that panics mid-way leaves neither namespaces nor tcpdump processes behind.
#[test]
fn harness_cleans_up_on_panic() {
    require!();
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::thread::spawn(move || {
        let net = common::line(3);
        let cap = common::Capture::start(net.ns(1), "to0", "icmp", 100);
        let names: Vec<String> = net.ns.iter().map(|n| n.name().to_string()).collect();
        let pid = tcpdump_pid(net.ns(1).name());
        tx.send((names, pid)).unwrap();
        let _keep = (&net, &cap);
        panic!("a test fails while its topology and capture are live");
    })
    .join();
    assert!(result.is_err());
    let (names, pid) = rx.recv().unwrap();
    let listed = NetNs::list().unwrap();
    for n in &names {
        assert!(!listed.contains(n), "{n} survived the panic");
    }
    let pid = pid.expect("tcpdump was running");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "tcpdump {pid} survived the panic"
    );
}

/// The pid of our tcpdump child running in namespace `ns` (its cmdline has no namespace, so
/// match the child of this process by its network namespace link).
fn tcpdump_pid(ns: &str) -> Option<u32> {
    let target = std::fs::metadata(format!("/run/netns/{ns}")).ok()?;
    use std::os::unix::fs::MetadataExt;
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let Ok(ns_meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if comm.trim() == "tcpdump" && ns_meta.ino() == target.ino() {
            return Some(pid);
        }
    }
    None
}

/// Parallel tests create namespaces at the same time: names never collide, every one is a
/// distinct namespace, and all are gone afterwards.
#[test]
fn concurrent_creation_gives_distinct_namespaces() {
    require!();
    let per_thread = 5;
    let threads: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let made: Vec<NetNs> = (0..per_thread)
                    .map(|_| NetNs::create_unique("lwt-par").unwrap())
                    .collect();
                let ids: Vec<(String, String)> = made
                    .iter()
                    .map(|ns| {
                        (
                            ns.name().to_string(),
                            ns.run(|| Ok(current_netns())).unwrap(),
                        )
                    })
                    .collect();
                // Returned alive: namespace inode numbers are reused once freed.
                (made, ids)
            })
        })
        .collect();
    let mut alive = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut ids = std::collections::HashSet::new();
    for t in threads {
        let (made, pairs) = t.join().unwrap();
        alive.extend(made);
        for (name, id) in pairs {
            assert!(names.insert(name.clone()), "name {name} given twice");
            assert!(ids.insert(id.clone()), "namespace {id} shared");
        }
    }
    drop(alive);
    assert_eq!(names.len(), 6 * per_thread);
    let listed = NetNs::list().unwrap();
    assert!(names.iter().all(|n| !listed.contains(n)), "leftovers");
}

/// Namespaces of dead processes (no destructor ran) are found by the pid in their name.
#[test]
fn remove_stale_removes_only_dead_owners() {
    require!();
    // A pid that runs no process: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = format!("lwt-stale-x-{dead}-0");
    let live = format!("lwt-stale-x-{}-99", std::process::id());
    let other = format!("lwt-stale-x-{dead}"); // not PID-N: not ours to judge
    let mut made = Vec::new();
    for name in [&stale, &live, &other] {
        if let Ok(old) = NetNs::open(name) {
            old.delete().unwrap();
        }
        made.push(NetNs::create(name).unwrap());
    }
    let [s, l, o] = <[NetNs; 3]>::try_from(made).unwrap();
    s.persist(); // as if its process had been killed
    let removed = NetNs::remove_stale("lwt-stale-x-").unwrap();
    assert_eq!(removed, vec![stale.clone()]);
    assert!(!listed(&stale));
    assert!(listed(l.name()) && listed(o.name()));
    assert_eq!(
        NetNs::remove_stale("").unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

#[test]
fn devices_remember_their_namespace() {
    require!();
    let ns = NetNs::create_unique("lwt-dev").unwrap();
    common::ip(
        &ns,
        &["link", "add", "dv0", "type", "veth", "peer", "name", "dv1"],
    );
    let host_before = current_netns();

    // One call from any thread: the device, bound to `ns`.
    let dv0 = ns.device("dv0").unwrap();
    assert_eq!(current_netns(), host_before, "the caller never moved");
    assert_eq!(dv0.name(), "dv0");
    assert_eq!(dv0.index(), common::ifindex(&ns, "dv0"));
    assert!(dv0.is_in(&ns).unwrap());
    let host = NetNs::current().unwrap();
    assert!(!dv0.is_in(&host).unwrap());
    assert_ne!(dv0.netns_id(), host.id().unwrap());
    assert_eq!(format!("net:[{}]", host.id().unwrap().inode()), host_before);
    assert!(dv0.to_string().contains(ns.name()), "{dv0}");
    // The same device through a netlink socket of the namespace, and by index.
    let mut nl = lwtun::netlink::Netlink::open_in(&ns).unwrap();
    assert_eq!(nl.device("dv0").unwrap(), dv0);
    assert_eq!(ns.device_by_index(dv0.index()).unwrap(), dv0);
    assert_eq!(nl.netns_id().unwrap(), dv0.netns_id());
    // Its state is read in its namespace, whatever thread asks.
    assert_eq!(dv0.link().unwrap().kind.as_deref(), Some("veth"));
    assert_eq!(current_netns(), host_before);

    // Errors say which device and which namespace.
    let e = ns.device("nope0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains(ns.name()), "{e}");
    for bad in ["", "a/b", "has space", "sixteen-chars-xx"] {
        let e = ns.device(bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad:?}: {e}");
    }
    assert_eq!(
        ns.device_by_index(0).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    // enter() runs on the calling thread inside the namespace and always comes back, also
    // from a panic.
    let inside = ns.enter(|| Ok(current_netns())).unwrap();
    assert_ne!(inside, host_before);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = ns.enter(|| -> lwtun::Result<()> { panic!("inside") });
    }));
    assert!(caught.is_err());
    assert_eq!(current_netns(), host_before, "back home after a panic");

    // A descriptor-held namespace outlives its name, as do devices bound to it.
    let by_fd = NetNs::of_fd(ns.fd().unwrap()).unwrap();
    assert_eq!(by_fd.id().unwrap(), dv0.netns_id());
    let name = ns.name().to_string();
    ns.delete().unwrap();
    assert!(!listed(&name));
    assert_eq!(
        dv0.link().unwrap().name,
        "dv0",
        "the device's namespace is held"
    );
    drop(dv0);
    drop(by_fd);
}
