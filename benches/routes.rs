//! Route install/delete rate: lwtun's pipelined batch vs `ip -batch`, in one run.
//!
//! Both install N LWT xmit routes (one program, each route a /32 in its own table) into a fresh
//! namespace, then delete them. lwtun sends up to 256 requests per `sendmsg` and reads the ACKs
//! after; iproute2 reads a batch file and sends one request at a time, naming the program by a
//! bpffs pin (`encap bpf xmit pinned PATH`), entered with `nsenter --net=` (not `ip -n`, which
//! remounts /sys and hides the pin). iproute2 6.1 leaks one fd per pinned-program route, and
//! this machine's hard fd limit is 20000, so its batch is split into files of 10000 routes, one
//! `ip -batch` process each (the per-process start-up is included: it is what a user pays).
//!
//! Run as root: `cargo bench --bench routes` (`LWTUN_BENCH_ROUTES=N` to change N, default 100000).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::time::Instant;

use lwtun::netlink::route::{BpfEncap, Encap, Route, RouteBatch, RouteFilter};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::{Hook, LwtCounter};

const IP_BATCH_CHUNK: usize = 10_000;

fn addr(i: usize) -> String {
    format!("10.{}.{}.{}/32", 64 + (i >> 16), (i >> 8) & 255, i & 255)
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("routes bench: SKIPPED, needs root (namespaces, BPF, routes)");
        return;
    }
    let n: usize = std::env::var("LWTUN_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let ns = NetNs::create_unique("bench-rt").expect("namespace");
    let mut nl = Netlink::open_in(&ns).unwrap();
    nl.add_veth("d0", "d1", None).unwrap();
    let d0 = nl.link_by_name("d0").unwrap().index;
    let d1 = nl.link_by_name("d1").unwrap().index;
    nl.set_link_up(d0, true).unwrap();
    nl.set_link_up(d1, true).unwrap();

    let progs = LwtCounter::load().expect("load lwt_count");
    let xmit = progs.program(Hook::Xmit);
    let pin_dir = format!("/sys/fs/bpf/lwtun-bench-{}", std::process::id());
    std::fs::create_dir_all(&pin_dir).expect("bpffs mounted at /sys/fs/bpf");
    let pin = format!("{pin_dir}/xmit");
    let cpin = CString::new(pin.clone()).unwrap();
    // SAFETY: valid fd and NUL-terminated path.
    let rc = unsafe { libbpf_rs::libbpf_sys::bpf_obj_pin(xmit.as_fd().as_raw_fd(), cpin.as_ptr()) };
    assert_eq!(rc, 0, "pin the xmit program");

    // lwtun: one batch of adds, one of deletes, in table 100.
    let route = |i: usize| {
        let mut r = Route::new(addr(i).parse().unwrap());
        r.oif = Some(d0);
        r.table = 100;
        r.encap = Some(Encap::Bpf(BpfEncap {
            xmit: Some(xmit.prog_ref()),
            ..Default::default()
        }));
        r
    };
    let mut adds = RouteBatch::new();
    let mut dels = RouteBatch::new();
    for i in 0..n {
        adds.add(route(i));
        dels.delete(route(i));
    }
    let t = Instant::now();
    let report = nl.apply_batch(&adds).unwrap();
    let lwtun_add = t.elapsed().as_secs_f64();
    assert!(report.is_complete(), "{report}");
    let table = |t| RouteFilter {
        table: Some(t),
        ..RouteFilter::all()
    };
    assert_eq!(nl.routes(&table(100)).unwrap().len(), n);
    let t = Instant::now();
    let report = nl.apply_batch(&dels).unwrap();
    let lwtun_del = t.elapsed().as_secs_f64();
    assert!(report.is_complete(), "{report}");

    // iproute2: batch files of IP_BATCH_CHUNK lines, table 101.
    let dir = std::env::temp_dir().join(format!("lwtun-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write_files = |verb: &str| -> Vec<std::path::PathBuf> {
        (0..n)
            .step_by(IP_BATCH_CHUNK)
            .enumerate()
            .map(|(k, start)| {
                let path = dir.join(format!("{verb}-{k}.batch"));
                let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
                for i in start..(start + IP_BATCH_CHUNK).min(n) {
                    if verb == "add" {
                        writeln!(
                            f,
                            "route add {} encap bpf xmit pinned {pin} dev d0 table 101",
                            addr(i)
                        )
                        .unwrap();
                    } else {
                        writeln!(f, "route del {} dev d0 table 101", addr(i)).unwrap();
                    }
                }
                path
            })
            .collect()
    };
    let run_ip = |files: &[std::path::PathBuf]| -> f64 {
        let t = Instant::now();
        for f in files {
            let out = ns
                .command("ip")
                .arg("-batch")
                .arg(f)
                .output()
                .expect("run ip -batch");
            assert!(
                out.status.success(),
                "ip -batch: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        t.elapsed().as_secs_f64()
    };
    let add_files = write_files("add");
    let del_files = write_files("del");
    let ip_add = run_ip(&add_files);
    assert_eq!(
        nl.routes(&table(101)).unwrap().len(),
        n,
        "ip -batch installed them all"
    );
    let ip_del = run_ip(&del_files);
    assert!(nl.routes(&table(101)).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_file(&pin).unwrap();
    std::fs::remove_dir(&pin_dir).unwrap();

    println!("LWT xmit routes, {n} each, one program, in a namespace:");
    println!(
        "  install  lwtun batch {:>9.0} routes/s   ip -batch (pinned) {:>9.0} routes/s   ratio {:.2}",
        rate(n, lwtun_add),
        rate(n, ip_add),
        ip_add / lwtun_add
    );
    println!(
        "  delete   lwtun batch {:>9.0} routes/s   ip -batch          {:>9.0} routes/s   ratio {:.2}",
        rate(n, lwtun_del),
        rate(n, ip_del),
        ip_del / lwtun_del
    );
    println!(
        "  install+delete ratio {:.2} (goal: at least 3.5 x ip -batch)",
        (ip_add + ip_del) / (lwtun_add + lwtun_del)
    );
}
