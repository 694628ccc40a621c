//! One edit from the shell: the wall time of a single `lwtun peer add|replace|del` and `lwtun
//! route add|replace|del` process against `ip route add` / `ip route del`, in one run, in a
//! namespace of its own, each command a whole process as a user runs it (start-up included).
//!
//! Every round runs each command once, in turn (so a slow moment of the shared machine hits
//! all of them); the medians over the rounds and their ratio to `ip route add` are printed.
//! The edits open the pinned tables and the pinned encap program (`TunnelTables`): nothing is
//! loaded or verified. Before that (lwtun 0.2.0, and main before issue 23) each edit loaded
//! the encap programs and took 0.32-0.35 s; `LWTUN_BENCH_BASELINE=PATH` times another lwtun
//! binary's `peer add`, `peer del`, `route add` and `route del` in the same rounds (commands it
//! lacks are reported as such).
//!
//! An edit reads the table's copy (every peer: the kernel walks the trie, about 1 µs a peer
//! with `BPF_MAP_LOOKUP_BATCH`), so its time grows with the table: `LWTUN_BENCH_PEERS=N` fills
//! the table with N peers (from a `peer add -b` file) before the rounds.
//!
//! Run as root: `cargo bench --bench cli_edit` (`LWTUN_BENCH_EDITS=N` rounds, default 50).

use std::process::Command;
use std::time::{Duration, Instant};

use lwtun::netns::NetNs;

/// A command to time: its label and its arguments (the program first).
struct Timed {
    label: String,
    argv: Vec<String>,
    times: Vec<Duration>,
    failed: Option<String>,
}

impl Timed {
    fn new(label: &str, argv: Vec<String>) -> Timed {
        Timed {
            label: label.to_string(),
            argv,
            times: Vec::new(),
            failed: None,
        }
    }

    /// Runs it once with `{i}` in its arguments replaced by `i`, and records the wall time.
    fn run(&mut self, i: usize) {
        if self.failed.is_some() {
            return;
        }
        let argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| a.replace("{i}", &i.to_string()))
            .collect();
        let t = Instant::now();
        let out = Command::new(&argv[0]).args(&argv[1..]).output();
        let took = t.elapsed();
        match out {
            Ok(o) if o.status.success() => self.times.push(took),
            Ok(o) => {
                self.failed = Some(String::from_utf8_lossy(&o.stderr).trim().to_string());
            }
            Err(e) => self.failed = Some(e.to_string()),
        }
    }

    fn median(&self) -> Option<Duration> {
        let mut t = self.times.clone();
        t.sort();
        t.get(t.len() / 2).copied()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("cli_edit bench: SKIPPED, needs root (namespaces, BPF, routes)");
        return;
    }
    let rounds: usize = std::env::var("LWTUN_BENCH_EDITS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
    let ns = NetNs::create_unique("bench-ed").expect("namespace");
    let name = ns.name().to_string();
    let ip = |args: &[&str]| {
        let out = ns.command("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    };
    ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ip(&["link", "set", "d0", "up"]);
    ip(&["link", "set", "d1", "up"]);
    ip(&["link", "set", "lo", "up"]);
    ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"]);
    ip(&["addr", "add", "10.30.0.1/32", "dev", "lo"]);
    let pin = format!("/sys/fs/bpf/lwtun-bench-edit-{}", std::process::id());
    let lwtun = env!("CARGO_BIN_EXE_lwtun").to_string();
    let load = Command::new(&lwtun)
        .args(["-n", &name, "tunnel", "load", "--pin", &pin])
        .output()
        .expect("run lwtun");
    assert!(load.status.success(), "tunnel load: {load:?}");

    let preload: usize = std::env::var("LWTUN_BENCH_PEERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if preload > 0 {
        let file = std::env::temp_dir().join(format!("lwtun-bench-edit-{}", std::process::id()));
        let text: String = (0..preload)
            .map(|i| {
                format!(
                    "11.{}.{}.{}/32 remote 10.77.0.2 local 10.77.0.1 encap ipip\n",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255
                )
            })
            .collect();
        std::fs::write(&file, text).unwrap();
        let out = Command::new(&lwtun)
            .args(["-n", &name, "tunnel", "load", "--pin", &pin, "--capacity"])
            .arg((preload + 1000).to_string())
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "a larger capacity than the load's is refused"
        );
        let out = Command::new(&lwtun)
            .args(["-n", &name, "tunnel", "resize", "--pin", &pin, "--capacity"])
            .arg((preload + 1000).to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "resize: {out:?}");
        let out = Command::new(&lwtun)
            .args(["peer", "add", "--pin", &pin, "-b"])
            .arg(&file)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&file);
        assert!(out.status.success(), "preload: {out:?}");
    }
    let words = |bin: &str, args: &str| -> Vec<String> {
        std::iter::once(bin.to_string())
            .chain(
                args.replace("NS", &name)
                    .replace("PIN", &pin)
                    .split_whitespace()
                    .map(str::to_string),
            )
            .collect()
    };
    let peer = "10.{i}.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap";
    let route = "--dev d0 --src 10.30.0.1";
    let mut sides = vec![
        Timed::new(
            "ip route add",
            words("ip", "-n NS route add 10.{i}.0.0/16 dev d0 src 10.30.0.1"),
        ),
        Timed::new(
            "ip route del",
            words("ip", "-n NS route del 10.{i}.0.0/16 dev d0"),
        ),
        Timed::new(
            "lwtun peer add",
            words(
                &lwtun,
                &format!("-n NS peer add --pin PIN {peer} gre key 7"),
            ),
        ),
        Timed::new(
            "lwtun peer replace",
            words(&lwtun, &format!("-n NS peer replace --pin PIN {peer} ipip")),
        ),
        Timed::new(
            "lwtun route add",
            words(
                &lwtun,
                &format!("-n NS route add --pin PIN 10.{{i}}.0.0/16 {route}"),
            ),
        ),
        Timed::new(
            "lwtun route replace",
            words(
                &lwtun,
                &format!("-n NS route replace --pin PIN 10.{{i}}.0.0/16 {route}"),
            ),
        ),
        Timed::new(
            "lwtun route del",
            words(&lwtun, "-n NS route del 10.{i}.0.0/16"),
        ),
        Timed::new(
            "lwtun peer del",
            words(&lwtun, "-n NS peer del --pin PIN 10.{i}.0.0/16"),
        ),
    ];
    if let Ok(base) = std::env::var("LWTUN_BENCH_BASELINE") {
        sides.extend([
            Timed::new(
                "baseline peer add",
                words(&base, &format!("-n NS peer add --pin PIN {peer} gre key 7")),
            ),
            Timed::new(
                "baseline route add",
                words(
                    &base,
                    &format!("-n NS route add --pin PIN 10.{{i}}.0.0/16 {route}"),
                ),
            ),
            Timed::new(
                "baseline route del",
                words(&base, "-n NS route del 10.{i}.0.0/16"),
            ),
            Timed::new(
                "baseline peer del",
                words(&base, "-n NS peer del --pin PIN 10.{i}.0.0/16"),
            ),
        ]);
    }
    // Warm-up (page cache, the namespace's first routes), then the rounds: 10.{i} from 100.
    for i in 0..rounds + 1 {
        for side in &mut sides {
            side.run(100 + i % 150);
        }
        if i == 0 {
            for side in &mut sides {
                side.times.clear();
            }
        }
    }
    let ip_add = sides[0].median().expect("ip route add ran");
    println!(
        "one edit, as a process (median of {rounds} rounds, {preload} other peers in the table, \
         in namespace {name}):"
    );
    println!(
        "  {:<22} {:>10} {:>14}",
        "command", "median ms", "x ip route add"
    );
    for side in &sides {
        match (side.median(), &side.failed) {
            (Some(m), None) => println!(
                "  {:<22} {:>10} {:>14.2}",
                side.label,
                ms(m),
                m.as_secs_f64() / ip_add.as_secs_f64()
            ),
            (_, Some(why)) => println!("  {:<22} failed: {why}", side.label),
            (None, None) => println!("  {:<22} not run", side.label),
        }
    }
    let sum =
        |a: usize, b: usize| -> Option<Duration> { Some(sides[a].median()? + sides[b].median()?) };
    if let (Some(ip_pair), Some(peer_pair), Some(route_pair)) = (sum(0, 1), sum(2, 7), sum(4, 6)) {
        println!(
            "  add + del: ip route {} ms; lwtun peer {} ms ({:.2}x), lwtun route {} ms ({:.2}x)",
            ms(ip_pair),
            ms(peer_pair),
            peer_pair.as_secs_f64() / ip_pair.as_secs_f64(),
            ms(route_pair),
            route_pair.as_secs_f64() / ip_pair.as_secs_f64()
        );
    }
    let _ = Command::new(&lwtun)
        .args(["-n", &name, "tunnel", "unload", "--pin", &pin])
        .output();
    let _ = std::fs::remove_dir_all(&pin);
}
