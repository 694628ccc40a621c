//! The `lwtun` command never removes what a live process owns: a library process holding a
//! pinned tunnel (its folder's lock), one holding an unpinned tunnel (only its descriptors tell),
//! a process holding a pinned decap, and the fleet agent. `leftovers --remove`, `tunnel unload`
//! and `decap detach` refuse them, naming the pid, while traffic keeps flowing through them;
//! `--force` removes them. `tunnel unload` finds a tunnel's routes in every namespace it can see
//! (named, or entered by a process), and refuses when a program over the table runs somewhere
//! it cannot see.
//!
//! ```text
//!  A (10.30.0.1 on lo)  to1 ══ veth ══ to0  B (10.20.0.2 on lo)
//!     10.77.0.1                              10.77.0.2, decap at tc ingress of to0
//!  route 10.20.0.0/16 dev to1 src 10.30.0.1 encap bpf xmit (the owner's, or the command's)
//! ```
//!
//! The owners are child processes: this test binary run again with `LWTUN_OWNER_CHILD` set
//! (the ignored test `owner_child` is their entry), so they are real, separate processes whose
//! pid the command must name.

#[path = "common/cli.rs"]
mod cli;
mod common;

use cli::{fails, hosts, json, lwtun, ping_b, setup};

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lwtun::decap::Decap;
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::tunnel::Tunnel;
use serde_json::Value;

fn has_route(ns: &NetNs, dst: &str) -> bool {
    common::ip(ns, &["route", "show"]).contains(dst)
}

/// The pids of `owned` entries (leftovers' JSON) whose object mentions `what`.
fn owned_by(left: &Value, kind: &str, what: &str) -> Vec<u64> {
    left["owned"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == kind && o["object"].as_str().unwrap().contains(what))
        .flat_map(|o| o["owners"].as_array().unwrap().clone())
        .map(|o| o["pid"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The owner processes.

/// A child process that owns part of a data plane until its stdin closes (or it is killed).
struct Owner {
    child: Child,
}

impl Owner {
    /// Runs this test binary's [`owner_child`] with `role` and waits for it to say ready.
    fn spawn(role: &[&str]) -> Owner {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "owner_child", "--nocapture"])
            .env("LWTUN_OWNER_CHILD", role.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the owner child");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                panic!("the owner {role:?} ended before it was ready: {seen}");
            }
            if line.trim() == "owner ready" {
                break;
            }
            seen.push_str(&line);
        }
        // Keep draining its stdout so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        Owner { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills it with SIGKILL: no destructor runs, what it installed stays behind.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin: it drops what it owns the way its library values do, and exits.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The owner processes' entry, run by [`Owner::spawn`] (ignored in a plain run: on its own it
/// has nothing to own). Roles:
/// - `tunnel NS PIN|-`: a tunnel (pinned in PIN, or not pinned) with peer 10.20.0.0/16 to B
///   and its route steered in namespace NS;
/// - `decap PIN`: the decap pinned in PIN, adopted and kept.
#[test]
#[ignore = "the entry of the owner child processes; run by the other tests"]
fn owner_child() {
    let Ok(role) = std::env::var("LWTUN_OWNER_CHILD") else {
        panic!("run by the other tests of this file, with LWTUN_OWNER_CHILD set");
    };
    let words: Vec<&str> = role.split(' ').collect();
    // Held until stdin closes.
    let _held: Box<dyn std::any::Any> = match words[..] {
        ["tunnel", ns, pin] => {
            let ns = NetNs::open(ns).unwrap();
            let mut builder = Tunnel::builder();
            if pin != "-" {
                builder = builder.pin(pin);
            }
            let mut tunnel = builder.load().unwrap();
            tunnel
                .peers_mut()
                .insert(
                    "10.20.0.0/16".parse().unwrap(),
                    EncapPeer::new(
                        "10.77.0.2".parse().unwrap(),
                        "10.77.0.1".parse().unwrap(),
                        Encap::Ipip,
                    ),
                )
                .unwrap();
            let mut nl = Netlink::open_in(&ns).unwrap();
            let route = tunnel
                .route("10.20.0.0/16".parse().unwrap())
                .device(&ns.device("to1").unwrap())
                .source("10.30.0.1".parse().unwrap());
            tunnel.steer(&mut nl, route).unwrap();
            Box::new((tunnel, nl))
        }
        ["decap", pin] => {
            let mut decap = Decap::load_pinned(pin).unwrap();
            decap.keep_pinned();
            Box::new(decap)
        }
        _ => panic!("unknown owner role {role:?}"),
    };
    println!("owner ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

// ---------------------------------------------------------------------------------------------

#[test]
fn a_library_process_owning_a_pinned_tunnel_is_never_broken() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("own-lib");
    let p = pin.arg();
    let owner = Owner::spawn(&["tunnel", &a, p]);
    let pid = u64::from(owner.pid());
    assert_eq!(
        ping_b(&net, 3).received,
        3,
        "the owner's tunnel carries traffic"
    );

    // leftovers sees the route and the folder as the owner's, and --remove keeps them.
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_routes"], 0, "{left}");
    assert_eq!(left["routes"], serde_json::json!([]), "{left}");
    assert_eq!(owned_by(&left, "route", "10.20.0.0/16"), [pid], "{left}");
    let folder = left["pin_folders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["pin"] == p)
        .unwrap_or_else(|| panic!("{p} in {left}"))
        .clone();
    assert_eq!(folder["family"], "tunnel");
    assert_eq!(folder["owner_pid"].as_u64(), Some(pid));
    let human = lwtun(&["-n", &a, "leftovers"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!("in use by process {pid}")),
        "the text names the owner: {human}"
    );
    assert!(has_route(net.ns(0), "10.20.0.0/16"));
    assert_eq!(ping_b(&net, 3).received, 3, "still carried after leftovers");

    // tunnel unload refuses, naming the owner, with or without -n.
    for args in [
        vec!["tunnel", "unload", "--pin", p],
        vec!["-n", &a, "tunnel", "unload", "--pin", p],
    ] {
        let err = fails(&args);
        assert!(err.contains(&format!("process {pid}")), "{args:?}: {err}");
        assert!(err.contains("--force"), "{args:?}: {err}");
    }
    assert!(pin.0.join("peers_v4").exists(), "the pins stay");
    assert!(has_route(net.ns(0), "10.20.0.0/16"));
    assert_eq!(ping_b(&net, 3).received, 3, "still carried after unload");

    // --force does what it says.
    let left = json(&["-n", &a, "leftovers", "--remove", "--force"]);
    assert_eq!(left["removed_routes"], 1, "{left}");
    assert!(!has_route(net.ns(0), "10.20.0.0/16"));
    assert_eq!(ping_b(&net, 2).received, 0, "no route, no answers");
    let unload = json(&["tunnel", "unload", "--pin", p, "--force"]);
    assert_eq!(unload["forced_past"], serde_json::json!([pid]), "{unload}");
    assert!(!pin.0.exists(), "the folder went");
    owner.stop();
}

#[test]
fn a_library_process_holding_an_unpinned_tunnel_is_found_by_its_descriptors() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let owner = Owner::spawn(&["tunnel", &a, "-"]);
    let pid = u64::from(owner.pid());
    assert_eq!(ping_b(&net, 3).received, 3);

    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_routes"], 0, "{left}");
    assert_eq!(owned_by(&left, "route", "10.20.0.0/16"), [pid], "{left}");
    assert_eq!(ping_b(&net, 3).received, 3, "still carried after leftovers");

    // Killed, the owner leaves its route behind: now it is a leftover, and it goes.
    owner.kill();
    assert!(
        has_route(net.ns(0), "10.20.0.0/16"),
        "SIGKILL runs no destructor"
    );
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_routes"], 1, "{left}");
    assert_eq!(left["owned"], serde_json::json!([]), "{left}");
    assert!(!has_route(net.ns(0), "10.20.0.0/16"));
}

/// `lwtun -n A tunnel load`, a peer to B and `route add 10.20.0.0/16` (the command's own data
/// plane, owned by no process).
fn command_tunnel(a: &str, p: &str, dev: &str) {
    json(&["-n", a, "tunnel", "load", "--pin", p]);
    json(&[
        "-n",
        a,
        "peer",
        "add",
        "--pin",
        p,
        "10.20.0.0/16",
        "remote",
        "10.77.0.2",
        "local",
        "10.77.0.1",
        "encap",
        "ipip",
    ]);
    json(&[
        "-n",
        a,
        "route",
        "add",
        "--pin",
        p,
        "10.20.0.0/16",
        "--dev",
        dev,
        "--src",
        "10.30.0.1",
    ]);
}

#[test]
fn unload_without_a_namespace_finds_the_routes_where_they_are() {
    require!();
    let (net, _decap) = setup();
    let a = net.ns(0).name().to_string();
    let pin = common::PinDir::new("own-where");
    let p = pin.arg();
    command_tunnel(&a, p, "to1");
    assert_eq!(ping_b(&net, 3).received, 3);

    // Run from this namespace, not A: the route in A is found and removed, and said so.
    let unload = json(&["tunnel", "unload", "--pin", p]);
    assert_eq!(unload["removed_routes"], 1, "{unload}");
    assert_eq!(unload["routes"][0]["netns"], a.as_str(), "{unload}");
    assert_eq!(unload["routes"][0]["dst"], "10.20.0.0/16", "{unload}");
    assert!(!pin.0.exists());
    assert!(!has_route(net.ns(0), "10.20.0.0/16"), "no route left live");
    assert_eq!(ping_b(&net, 2).received, 0);
}

/// A namespace bind-mounted outside /run/netns: it has no name, and no process is in it.
struct MountedNetns(PathBuf);

impl MountedNetns {
    /// Mounts `ns` at a file in the temp folder (its /run/netns name goes with `ns`).
    fn hide(ns: NetNs) -> MountedNetns {
        let path = std::env::temp_dir().join(format!("lwtun-hidden-ns-{}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        bind_mount(ns.path(), &path);
        drop(ns);
        MountedNetns(path)
    }
}

impl Drop for MountedNetns {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

fn unmount(path: &Path) {
    let _ = Command::new("umount").arg(path).output();
    let _ = std::fs::remove_file(path);
}

fn bind_mount(from: &Path, to: &Path) {
    let out = Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace only a thread of this process is in: no name, no mount, and no process's
/// `/proc/PID/ns/net` (a process's is its main thread's), so nothing the command can find.
struct ThreadNetns {
    tid: i32,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ThreadNetns {
    /// A thread enters `ns`, whose /run/netns name then goes with `ns`.
    fn hide(ns: NetNs) -> ThreadNetns {
        use std::os::fd::AsRawFd;
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let path = ns.path().to_path_buf();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on an fd we own, for this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            drop(file);
            // SAFETY: gettid has no preconditions.
            tid_tx.send((rc, unsafe { libc::gettid() })).unwrap();
            let _ = stop_rx.recv();
        });
        let (rc, tid) = tid_rx.recv().unwrap();
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        drop(ns);
        ThreadNetns {
            tid,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Names it again: a /run/netns entry bind-mounted on the thread's namespace, removed when
    /// dropped.
    fn reveal(&self, name: &str) -> Revealed {
        let path = Path::new(lwtun::netns::NETNS_RUN_DIR).join(name);
        std::fs::write(&path, b"").unwrap();
        // Removed again also when the mount fails.
        let revealed = Revealed(path);
        bind_mount(
            Path::new(&format!(
                "/proc/{}/task/{}/ns/net",
                std::process::id(),
                self.tid
            )),
            &revealed.0,
        );
        revealed
    }
}

impl Drop for ThreadNetns {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Revealed(PathBuf);

impl Drop for Revealed {
    fn drop(&mut self) {
        unmount(&self.0);
    }
}

/// A namespace with a tunnel route (10.20.0.0/16 by ul0) made with the command.
fn namespace_with_a_route(tag: &str, pin: &common::PinDir) -> (NetNs, u64) {
    let ns = common::netns(tag);
    common::ip(
        &ns,
        &["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"],
    );
    common::ip(&ns, &["link", "set", "ul1", "up"]);
    common::ip(&ns, &["link", "set", "ul0", "up"]);
    common::ip(&ns, &["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    let name = ns.name().to_string();
    command_tunnel(&name, pin.arg(), "ul0");
    let route = json(&["-n", &name, "route", "show"]);
    let program = route[0]["hooks"][0]["program_id"].as_u64().unwrap();
    (ns, program)
}

#[test]
fn unload_finds_a_namespace_mounted_outside_run_netns() {
    require!();
    let pin = common::PinDir::new("own-mnt");
    let (ns, _) = namespace_with_a_route("own-mnt", &pin);
    let hidden = MountedNetns::hide(ns);
    let unload = json(&["tunnel", "unload", "--pin", pin.arg()]);
    assert_eq!(unload["removed_routes"], 1, "{unload}");
    assert_eq!(
        unload["routes"][0]["netns"],
        format!("netns mounted at {}", hidden.0.display()).as_str(),
        "{unload}"
    );
    assert!(!pin.0.exists());
    let ns = NetNs::of_fd(std::fs::File::open(&hidden.0).unwrap().into()).unwrap();
    assert!(!has_route(&ns, "10.20.0.0/16"), "no route left live");
}

#[test]
fn unload_refuses_while_a_route_it_cannot_see_uses_the_table() {
    require!();
    let pin = common::PinDir::new("own-hid");
    let p = pin.arg();
    let (ns, program) = namespace_with_a_route("own-hid", &pin);
    let name = ns.name().to_string();
    // A second load pins programs of its own: the route's is no longer one of the folder's
    // (those go with the folder, wherever routes run them).
    json(&["-n", &name, "tunnel", "load", "--pin", p]);
    let hidden = ThreadNetns::hide(ns);

    // The route runs over the table, but in no namespace the command can find.
    let err = fails(&["tunnel", "unload", "--pin", p]);
    assert!(
        err.contains(&program.to_string()),
        "names the program: {err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(pin.0.join("peers_v4").exists(), "nothing was unpinned");

    // Named again, the namespace is found and its route removed with the pins.
    let again = format!("lwt-own-seen-{}", std::process::id());
    let revealed = hidden.reveal(&again);
    let unload = json(&["tunnel", "unload", "--pin", p]);
    assert_eq!(unload["removed_routes"], 1, "{unload}");
    assert_eq!(unload["routes"][0]["netns"], again.as_str(), "{unload}");
    assert!(!pin.0.exists());
    let ns = NetNs::open(&again).unwrap();
    assert!(!has_route(&ns, "10.20.0.0/16"), "no route left live");
    drop(ns);
    drop(revealed);
}

#[test]
fn decap_detach_and_leftovers_keep_a_live_decap_owner() {
    require!();
    let net = hosts();
    let (a, b) = (net.ns(0).name().to_string(), net.ns(1).name().to_string());
    let tunnel_pin = common::PinDir::new("own-dt");
    command_tunnel(&a, tunnel_pin.arg(), "to1");
    let pin = common::PinDir::new("own-dc");
    let d = pin.arg();
    json(&[
        "-n",
        &b,
        "decap",
        "attach",
        "to0",
        "--pin",
        d,
        "--local",
        "10.77.0.2",
        "--peer",
        "10.77.0.1/32",
    ]);
    assert_eq!(ping_b(&net, 3).received, 3, "the command's decap works");

    // leftovers sees the decap's tcx link and its folder (no owner yet).
    let left = json(&["-n", &b, "leftovers"]);
    let tc = left["tc_filters"].as_array().unwrap();
    assert!(
        tc.iter()
            .any(|t| t["name"] == "decap_tc" && t["dev"] == "to0" && t["direction"] == "ingress"),
        "{left}"
    );
    assert!(
        left["pin_folders"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["pin"] == d && f["family"] == "decap" && f["owner_pid"].is_null()),
        "{left}"
    );

    // A library process adopts the decap: now it is that process's.
    let owner = Owner::spawn(&["decap", d]);
    let pid = u64::from(owner.pid());
    let err = fails(&["-n", &b, "decap", "detach", "to0", "--pin", d]);
    assert!(err.contains(&format!("process {pid}")), "{err}");
    assert!(
        err.contains(&format!("-n {b} decap detach to0 --pin {d} --force")),
        "{err}"
    );
    let left = json(&["-n", &b, "leftovers", "--remove"]);
    assert_eq!(left["removed_tc_filters"], 0, "{left}");
    assert_eq!(owned_by(&left, "tc", "decap_tc"), [pid], "{left}");
    assert_eq!(ping_b(&net, 3).received, 3, "the decap still runs");

    // --force detaches, and leaves the owner its pins.
    let detach = json(&["-n", &b, "decap", "detach", "to0", "--pin", d, "--force"]);
    assert_eq!(detach["removed_pins"], false, "{detach}");
    assert_eq!(ping_b(&net, 2).received, 0, "no decap, no answers");
    assert!(pin.0.join("locals").exists());
    owner.stop();

    // Attached again and left by the command: a leftover, removed with its link pin.
    json(&["-n", &b, "decap", "attach", "to0", "--pin", d]);
    assert_eq!(ping_b(&net, 3).received, 3);
    let left = json(&["-n", &b, "leftovers", "--remove"]);
    assert_eq!(left["removed_tc_filters"], 1, "{left}");
    let on_to0 =
        lwtun::tc::attached(&net.device(1, "to0"), lwtun::tc::TcDirection::Ingress).unwrap();
    assert!(on_to0.is_empty(), "{on_to0:?}");
    let show = json(&["decap", "show", "--pin", d]);
    assert_eq!(
        show["links"],
        serde_json::json!([]),
        "its link pin went: {show}"
    );
    assert_eq!(ping_b(&net, 2).received, 0);
    json(&["tunnel", "unload", "--pin", tunnel_pin.arg()]);
}

/// Every route of namespace `ns`, IPv4 and IPv6, as `ip route show` prints them.
#[cfg(feature = "capture")]
fn all_routes(ns: &NetNs) -> String {
    common::ip(ns, &["route", "show"]) + &common::ip(ns, &["-6", "route", "show"])
}

/// `lwtun -n NS capture --hook route --route PREFIX`, once it says it captures.
#[cfg(feature = "capture")]
fn route_capture(ns: &str, prefix: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lwtun"))
        .args(["-n", ns, "capture", "--hook", "route", "--route", prefix])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lwtun capture");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert!(
        first.contains("capturing on"),
        "capture on {prefix}: {first}"
    );
    // Keep reading what it says, so that it never writes to a closed pipe.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    });
    child
}

/// The `lwt_out` program (`lwtun:chain_lwt_out:ID`) of route `dst` in `routes`.
#[cfg(feature = "capture")]
fn lwt_out_of(routes: &str, dst: &str) -> Option<String> {
    let line = routes.lines().find(|l| l.starts_with(&format!("{dst} ")))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "out")?;
    Some(words[at + 1].to_string())
}

/// A `capture --hook route` killed with SIGKILL leaves its chain at the route's `lwt_out` hook:
/// `leftovers` lists it (a live capture is listed as owned and kept), and `--remove` puts the
/// routes back exactly as they were before the capture (an owned tunnel route, its encap and
/// headroom kept, and a plain route), the tunnel still carrying traffic in IP-in-IP.
#[cfg(feature = "capture")]
#[test]
fn a_killed_route_capture_is_a_leftover_and_its_route_is_put_back() {
    require!();
    let (net, decap) = setup();
    let a = net.ns(0).name().to_string();
    // The tunnel route belongs to a live library process; the plain route to nobody.
    let owner = Owner::spawn(&["tunnel", &a, "-"]);
    let owner_pid = u64::from(owner.pid());
    common::ip(
        net.ns(0),
        &["route", "add", "10.99.0.0/24", "dev", "to1", "metric", "7"],
    );
    let before = all_routes(net.ns(0));
    assert!(
        before.contains("10.20.0.0/16") && before.contains("encap bpf xmit lwtun:encap_xmit"),
        "{before}"
    );
    assert_eq!(ping_b(&net, 3).received, 3);

    // A live capture is its process's: listed as owned, kept by --remove.
    let mut tunnel_capture = route_capture(&a, "10.20.0.2/32");
    let capture_pid = u64::from(tunnel_capture.id());
    let during = all_routes(net.ns(0));
    let tap = lwt_out_of(&during, "10.20.0.0/16").unwrap_or_else(|| panic!("{during}"));
    assert!(tap.starts_with("lwtun:chain_lwt_out:"), "{during}");
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_route_hooks"], 0, "{left}");
    assert_eq!(left["route_hooks"], serde_json::json!([]), "{left}");
    assert_eq!(
        owned_by(&left, "route_hook", "10.20.0.0/16"),
        [capture_pid],
        "{left}"
    );
    assert_eq!(all_routes(net.ns(0)), during, "the live capture stays");

    // Killed, the captures leave their chains on the routes; traffic is unharmed.
    let mut plain_capture = route_capture(&a, "10.99.0.0/24");
    let during = all_routes(net.ns(0));
    let plain_tap = lwt_out_of(&during, "10.99.0.0/24").unwrap_or_else(|| panic!("{during}"));
    for child in [&mut tunnel_capture, &mut plain_capture] {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(
        all_routes(net.ns(0)),
        during,
        "SIGKILL runs no destructor: the hooks stay"
    );
    assert_ne!(during, before);
    assert_eq!(ping_b(&net, 3).received, 3);

    // leftovers lists both hooks, not the owned tunnel route; text and JSON alike.
    let left = json(&["-n", &a, "leftovers"]);
    let hooks = left["route_hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{left}");
    for (dst, program) in [("10.20.0.0/16", &tap), ("10.99.0.0/24", &plain_tap)] {
        let hook = hooks
            .iter()
            .find(|h| h["dst"] == dst)
            .unwrap_or_else(|| panic!("{dst} in {left}"));
        assert_eq!(hook["dev"], "to1");
        assert_eq!(hook["hook"], "lwt_out");
        assert_eq!(hook["program"], program.as_str());
        assert_eq!(hook["table"], 254);
    }
    assert_eq!(left["routes"], serde_json::json!([]), "{left}");
    assert_eq!(
        owned_by(&left, "route", "10.20.0.0/16"),
        [owner_pid],
        "{left}"
    );
    let text = lwtun(&["-n", &a, "leftovers"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("lwt_out {tap} on route 10.20.0.0/16 dev to1"))
            && text.contains(&format!(
                "lwt_out {plain_tap} on route 10.99.0.0/24 dev to1"
            )),
        "{text}"
    );

    // --remove puts both routes back as they were before the captures; the owner's route stays.
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_route_hooks"], 2, "{left}");
    assert_eq!(left["removed_routes"], 0, "{left}");
    assert_eq!(all_routes(net.ns(0)), before, "the routes are back");
    let tap_id: u32 = tap.rsplit(':').next().unwrap().parse().unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        lwtun::program::program_info_by_id(tap_id).is_err()
    });
    assert!(
        gone,
        "the chain {tap} is freed with the last route that ran it"
    );
    let ipip = decap.counters().unwrap().ipip.packets;
    assert_eq!(ping_b(&net, 5).received, 5, "still carried");
    assert_eq!(
        decap.counters().unwrap().ipip.packets - ipip,
        5,
        "every request reached B in IP-in-IP"
    );
    let left = json(&["-n", &a, "leftovers"]);
    assert_eq!(left["route_hooks"], serde_json::json!([]), "{left}");
    owner.stop();
}

/// A route whose leftover `lwt_out` program cannot be taken off exactly (in table 100, where
/// lwtun cannot read its headroom back) makes `leftovers --remove` refuse, saying so, before it
/// changes anything: the other leftover hooks (IPv4 and IPv6 plain routes) stay too. Without
/// that route, they go.
#[cfg(feature = "capture")]
#[test]
fn a_route_that_cannot_be_put_back_exactly_is_refused_before_anything_goes() {
    use lwtun::netlink::route::{BpfEncap, Encap as RouteEncap, Route};
    require!();
    let net = hosts();
    let a = net.ns(0).name().to_string();
    common::ip(net.ns(0), &["route", "add", "10.99.0.0/24", "dev", "to1"]);
    common::ip(
        net.ns(0),
        &["-6", "route", "add", "fd99::/64", "dev", "to1"],
    );
    let before = all_routes(net.ns(0));
    for prefix in ["10.99.0.0/24", "fd99::/64"] {
        let mut capture = route_capture(&a, prefix);
        capture.kill().unwrap();
        capture.wait().unwrap();
    }
    {
        // A chain hung at lwt_out of a table-100 route by a process that then ends.
        let chain = lwtun::chain::ProgChain::new(lwtun::chain::ChainHook::LwtOut).unwrap();
        let entry = chain.lwt_entry().unwrap();
        let mut route = Route::new("10.98.0.0/24".parse().unwrap());
        route.table = 100;
        route.oif = Some(net.device(0, "to1").index());
        route.encap = Some(RouteEncap::Bpf(BpfEncap {
            output: Some(entry.prog_ref()),
            ..Default::default()
        }));
        Netlink::open_in(net.ns(0))
            .unwrap()
            .add_route(&route)
            .unwrap();
    }
    let leftover =
        |ns: &NetNs| all_routes(ns) + &common::ip(ns, &["route", "show", "table", "100"]);
    let during = leftover(net.ns(0));
    let table_100 = common::ip(net.ns(0), &["route", "show", "table", "100"]);
    assert!(
        lwt_out_of(&table_100, "10.98.0.0/24")
            .is_some_and(|p| p.starts_with("lwtun:chain_lwt_out:")),
        "{table_100}"
    );
    let left = json(&["-n", &a, "leftovers"]);
    assert_eq!(left["route_hooks"].as_array().unwrap().len(), 3, "{left}");

    let err = fails(&["-n", &a, "leftovers", "--remove"]);
    assert!(
        err.contains("10.98.0.0/24") && err.contains("table 100") && err.contains("route replace"),
        "says which route, why, and what to do: {err}"
    );
    assert_eq!(leftover(net.ns(0)), during, "nothing changed");

    common::ip(net.ns(0), &["route", "del", "10.98.0.0/24", "table", "100"]);
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_route_hooks"], 2, "{left}");
    assert_eq!(all_routes(net.ns(0)), before);

    // A live capture's hook goes only with --force; the capture then ends as usual.
    let capture = route_capture(&a, "10.99.0.0/24");
    let pid = capture.id();
    let during = all_routes(net.ns(0));
    assert_ne!(during, before);
    let left = json(&["-n", &a, "leftovers", "--remove"]);
    assert_eq!(left["removed_route_hooks"], 0, "{left}");
    assert_eq!(
        owned_by(&left, "route_hook", "10.99.0.0/24"),
        [u64::from(pid)],
        "{left}"
    );
    assert_eq!(all_routes(net.ns(0)), during);
    let left = json(&["-n", &a, "leftovers", "--remove", "--force"]);
    assert_eq!(left["removed_route_hooks"], 1, "{left}");
    assert_eq!(all_routes(net.ns(0)), before);
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    let out = capture.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(all_routes(net.ns(0)), before);
}

// ---------------------------------------------------------------------------------------------
// The fleet agent.

/// The agent binary beside this test's (`cargo build -p lwtun-agent` makes it).
fn agent_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("lwtun-agent");
    bin.exists().then_some(bin)
}

/// A process killed (and reaped) when dropped, its stderr kept in a file for the failure
/// message.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &str, command: &mut Command) -> Daemon {
        let log = std::env::temp_dir().join(format!("lwtun-own-{name}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A private folder under /tmp (etcd's data, the agents' status files), removed when dropped,
/// also when the test panics.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("lwtun-own-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the agent's status file says `done`, or panics with its log.
fn wait_status(path: &Path, agent: &Daemon, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        if let Some(s) = status.as_ref().filter(|s| done(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "agent status not reached: {status:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Prints why the test is skipped, or panics when skipping is forbidden (CI=true,
/// LWTUN_REQUIRE_PRIV=1: scripts/test.sh installs etcd and builds the agent first).
fn skip(what: &str) {
    let why = format!("{}: {what}", common::test_name());
    if common::privileges_required() {
        panic!("{why}, and CI=true/LWTUN_REQUIRE_PRIV=1 forbids skipping");
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {why}\n").as_bytes(),
    );
}

#[test]
fn leftovers_keeps_a_live_agents_data_plane() {
    require!();
    let etcd_bin = Path::new("/usr/bin/etcd");
    if !etcd_bin.exists() {
        skip("/usr/bin/etcd is missing (apt-get install etcd-server, see scripts/setup.sh)");
        return;
    }
    let Some(agent_bin) = agent_binary() else {
        skip("the lwtun-agent binary is not built (cargo build -p lwtun-agent --bin lwtun-agent)");
        return;
    };
    let net = common::two_hosts();
    common::ip(net.ns(0), &["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    common::ip(net.ns(1), &["addr", "add", "10.20.0.2/32", "dev", "lo"]);
    let dir = TempDir::new("etcd");
    let dir = &dir.0;
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Daemon::start(
        "etcd",
        Command::new(etcd_bin)
            .args(["--name", "own", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("own={peer_url}")]),
    );
    let fleet = format!("own{}", std::process::id());
    // A without --pin (only its descriptors tell it owns its data plane), B with --pin (its
    // folder's lock tells too).
    let pin_b = common::PinDir::new("own-agent");
    let agent = |i: usize, steer: &str, source: &str, prefix: &str, dev: &str| {
        let status = dir.join(format!("agent{i}.status"));
        let mut command = Command::new(&agent_bin);
        command
            .args(["--etcd", &client_url, "--fleet", &fleet])
            .args(["--host", &format!("h{i}")])
            .args(["--endpoint", &net.v4(i).to_string(), "--encap", "ipip"])
            .args(["--prefix", prefix, "--steer", steer, "--source", source])
            .args(["--device", dev, "--netns", net.ns(i).name()])
            .args(["--lease-ttl", "5", "--status"])
            .arg(&status);
        if i == 1 {
            command.args(["--pin", pin_b.arg()]);
        }
        (Daemon::start(&format!("agent{i}"), &mut command), status)
    };
    let (agent_a, status_a) = agent(0, "10.20.0.0/16", "10.30.0.1", "10.30.0.1/32", "to1");
    let (agent_b, status_b) = agent(1, "10.30.0.0/16", "10.20.0.2", "10.20.0.2/32", "to0");
    let synced = |s: &Value| s["connected"] == true && s["peers"].as_array().unwrap().len() == 1;
    wait_status(&status_a, &agent_a, synced);
    wait_status(&status_b, &agent_b, synced);
    assert_eq!(ping_b(&net, 3).received, 3, "{}", agent_a.log());

    for (i, agent) in [(0, &agent_a), (1, &agent_b)] {
        let ns = net.ns(i).name();
        let pid = u64::from(agent.child.id());
        let left = json(&["-n", ns, "leftovers", "--remove"]);
        assert_eq!(left["removed_routes"], 0, "{left}");
        assert_eq!(left["removed_tc_filters"], 0, "{left}");
        let owners: Vec<u64> = left["owned"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| o["owners"].as_array().unwrap().clone())
            .map(|o| o["pid"].as_u64().unwrap())
            .collect();
        assert!(
            !owners.is_empty() && owners.iter().all(|p| *p == pid),
            "the agent's route and decap are its own: {left}"
        );
        assert!(
            left["owned"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["owners"][0]["command"] == "lwtun-agent"),
            "{left}"
        );
    }
    assert_eq!(
        ping_b(&net, 3).received,
        3,
        "traffic still flows after leftovers --remove"
    );
    // B's pinned tunnel: unload refuses, naming the agent.
    let err = fails(&["tunnel", "unload", "--pin", pin_b.arg()]);
    assert!(
        err.contains(&format!("process {} (lwtun-agent)", agent_b.child.id())),
        "{err}"
    );
    assert_eq!(
        ping_b(&net, 3).received,
        3,
        "traffic still flows after unload"
    );
    let status = wait_status(&status_a, &agent_a, |s| s["connected"] == true);
    assert_eq!(status["peers"].as_array().unwrap().len(), 1);
    drop(agent_a);
    drop(agent_b);
}
