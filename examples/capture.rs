//! `capture`: attach an lwtun capture to a route's or an interface's hook, print packets live
//! (one line each, or every layer with hex) and write them to a pcap/pcapng file.
//!
//! ```text
//! capture --dev IFACE [--netns NAME] [--hook route|tc-ingress|tc-egress|xdp] [--route PREFIX]
//!         [--filter EXPR] [--write FILE] [--pcapng] [--dump] [--count N] [--seconds S]
//! capture --demo      # two namespaces, a route to the other one captured at lwt_xmit, pings
//! ```
//!
//! `--hook route` (the default) installs `PREFIX dev IFACE` with a chain at `lwt_xmit` whose exit
//! hook carries the capture; the route goes away when the program ends. tc and XDP attach the
//! chain at the interface (tc via tcx or clsact, XDP in driver mode) and detach on exit.
//! The filter is tcpdump syntax (RAW link type at the route hook, Ethernet at tc and XDP).
//! Run as root.

use std::time::{Duration, Instant};

use lwtun::capture::{Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter};
use lwtun::chain::{ChainHook, ProgChain};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::{Error, ErrorKind, Result};

#[derive(Debug, Default)]
struct Args {
    dev: Option<String>,
    netns: Option<String>,
    hook: String,
    route: Option<String>,
    filter: String,
    write: Option<String>,
    pcapng: bool,
    dump: bool,
    count: Option<usize>,
    seconds: u64,
    demo: bool,
}

fn parse() -> std::result::Result<Args, String> {
    let mut a = Args {
        hook: "route".into(),
        seconds: 10,
        ..Default::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--dev" => a.dev = Some(value()?),
            "--netns" => a.netns = Some(value()?),
            "--hook" => a.hook = value()?,
            "--route" => a.route = Some(value()?),
            "--filter" => a.filter = value()?,
            "--write" => a.write = Some(value()?),
            "--pcapng" => a.pcapng = true,
            "--dump" => a.dump = true,
            "--count" => a.count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--demo" => a.demo = true,
            other => return Err(format!("unknown argument {other} (see the example's doc)")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("capture: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args) {
        eprintln!("capture: {e}");
        if e.kind() == ErrorKind::Permission {
            eprintln!("run it as root (it loads BPF programs and changes routes or hooks)");
        }
        std::process::exit(1);
    }
}

/// What keeps the chain attached; dropping it detaches (route removed, tc/XDP detached).
/// What the capture hangs on; dropping it detaches.
#[allow(dead_code)]
enum Attached {
    Route(lwtun::route::InstalledRoute),
    Tc(lwtun::tc::TcAttachment),
    Xdp(lwtun::xdp::XdpAttachment),
}

fn run(args: Args) -> Result<()> {
    // In --demo mode: two namespaces, the capture on ns A's route to B, pings from A.
    let demo = if args.demo { Some(Demo::new()?) } else { None };
    let opened = match (&demo, &args.netns) {
        (None, Some(name)) => Some(NetNs::open(name)?),
        _ => None,
    };
    let ns: Option<&NetNs> = demo.as_ref().map(|d| &d.a).or(opened.as_ref());
    let dev = match (&demo, &args.dev) {
        (Some(_), _) => "to-b".to_string(),
        (None, Some(d)) => d.clone(),
        (None, None) => return Err(Error::invalid_input("capture", "--dev IFACE is required")),
    };
    let mut nl = match ns {
        Some(ns) => Netlink::open_in(ns)?,
        None => Netlink::open()?,
    };
    let device = nl.device(&dev)?;
    let hook = match args.hook.as_str() {
        "route" => ChainHook::LwtXmit,
        "tc-ingress" | "tc-egress" => ChainHook::Tc,
        "xdp" => ChainHook::Xdp,
        other => {
            return Err(Error::invalid_input(
                "capture",
                format!("--hook {other}: use route, tc-ingress, tc-egress or xdp"),
            ))
        }
    };
    let mut chain = ProgChain::new(hook)?;
    let _attached = match args.hook.as_str() {
        "route" => {
            let prefix = match (&demo, &args.route) {
                (Some(_), _) => "10.79.0.2/32".to_string(),
                (None, Some(p)) => p.clone(),
                (None, None) => {
                    return Err(Error::invalid_input(
                        "capture",
                        "--hook route needs --route PREFIX",
                    ))
                }
            };
            let dst = prefix
                .parse()
                .map_err(|e| Error::invalid_input("capture", format!("--route {prefix}: {e}")))?;
            Attached::Route(
                LwtRoute::new(dst)
                    .device(&device)
                    .program(Hook::Xmit, chain.entry())
                    .install(&mut nl)?,
            )
        }
        // The chain's entry attaches at every hook through the same calls as any program.
        "xdp" => Attached::Xdp(lwtun::xdp::XdpAttachment::attach(
            chain.entry(),
            &device,
            lwtun::xdp::XdpOptions {
                mode: lwtun::xdp::XdpMode::Native,
                ..Default::default()
            },
        )?),
        dir => {
            let direction = if dir == "tc-ingress" {
                TcDirection::Ingress
            } else {
                TcDirection::Egress
            };
            Attached::Tc(TcAttach::new(&device, direction).attach(chain.entry())?)
        }
    };
    let mut capture = Capture::attach(&mut chain, CaptureOptions::default())?;
    let filter = Filter::compile(&args.filter, capture.link_type())?;
    let format = if args.pcapng {
        CaptureFormat::PcapNg
    } else {
        CaptureFormat::Pcap
    };
    let mut out = match &args.write {
        Some(path) => Some(CaptureWriter::new(
            std::fs::File::create(path).map_err(|e| Error::io(format!("create {path}"), e))?,
            format,
            capture.link_type(),
            lwtun::capture::MAX_SNAPLEN,
        )?),
        None => None,
    };
    eprintln!(
        "capturing at {} of {dev} for {} s (filter '{}')",
        args.hook, args.seconds, args.filter
    );
    let pinger = demo.as_ref().map(|d| d.ping_in_background());
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut seen = 0usize;
    'outer: while Instant::now() < until {
        for p in capture.poll(Duration::from_millis(100))? {
            if !filter.matches(&p) {
                continue;
            }
            if args.dump {
                println!("{}", p.dump());
            } else {
                println!("{}", p.summary());
            }
            if let Some(w) = out.as_mut() {
                w.write(&p)?;
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break 'outer;
            }
        }
    }
    capture.detach(&mut chain)?;
    if let Some(mut child) = pinger {
        let _ = child.kill();
        let _ = child.wait();
    }
    eprintln!(
        "{seen} packets{}; {} lost to a full ring",
        args.write
            .as_ref()
            .map(|p| format!(" written to {p}"))
            .unwrap_or_default(),
        capture.lost()?
    );
    Ok(())
}

/// `--demo`: namespaces A and B joined by a veth pair (10.79.0.1 ── 10.79.0.2).
struct Demo {
    a: NetNs,
    _b: NetNs,
}

impl Demo {
    fn new() -> Result<Self> {
        let a = NetNs::create_unique("lwt-capture-a")?;
        let b = NetNs::create_unique("lwt-capture-b")?;
        let mut nl = Netlink::open_in(&a)?;
        nl.add_veth("to-b", "to-a", Some(&b))?;
        let sh = |ns: &NetNs, cmd: &str| -> Result<()> {
            let st = ns
                .command("ip")
                .args(cmd.split_whitespace())
                .status()
                .map_err(|e| Error::io("run ip", e))?;
            if st.success() {
                Ok(())
            } else {
                Err(Error::other(
                    ErrorKind::Io,
                    "demo set-up",
                    format!("ip {cmd} failed"),
                ))
            }
        };
        sh(&a, "addr add 10.79.0.1/24 dev to-b")?;
        sh(&a, "link set to-b up")?;
        sh(&b, "addr add 10.79.0.2/24 dev to-a")?;
        sh(&b, "link set to-a up")?;
        Ok(Demo { a, _b: b })
    }

    fn ping_in_background(&self) -> std::process::Child {
        self.a
            .command("ping")
            .args(["-q", "-i", "0.5", "10.79.0.2"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start ping")
    }
}
