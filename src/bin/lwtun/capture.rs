//! `lwtun capture`: a chain with a capture program at its exit, attached at a device's XDP or
//! tc hook or installed as a route, writing what the tcpdump filter matches to a pcap file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use lwtun::capture::{Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter, MAX_SNAPLEN};
use lwtun::chain::{ChainHook, ProgChain};
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};
use lwtun::{Error, ErrorKind, Result};

use crate::Ctx;

use crate::route_tap::RouteTap;

#[derive(Clone, Copy, ValueEnum)]
pub enum CaptureHook {
    /// The route that carries --route PREFIX (the exact prefix, else the longest one holding
    /// it), its packets captured at the route's free lwt_out hook as they enter it (raw IP,
    /// before a tunnel's encap); the route keeps its programs and is put back as it was.
    Route,
    /// tc ingress of DEV (Ethernet).
    TcIngress,
    /// tc egress of DEV (Ethernet).
    TcEgress,
    /// XDP of DEV (Ethernet; generic mode).
    Xdp,
}

#[derive(Args)]
pub struct CaptureArgs {
    /// Where to capture.
    #[arg(long, value_enum)]
    hook: CaptureHook,
    /// The device (with --hook route: optional, the carrying route must leave through it).
    #[arg(long, required_unless_present = "route")]
    dev: Option<String>,
    /// With --hook route: capture the packets of the route that carries PREFIX.
    #[arg(long, value_name = "PREFIX")]
    route: Option<String>,
    /// Write the matching packets to FILE (pcap; pcapng with --pcapng) instead of printing them.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    write: Option<PathBuf>,
    #[arg(long)]
    pcapng: bool,
    /// Stop after COUNT matching packets.
    #[arg(short = 'c', long)]
    count: Option<u64>,
    /// Stop after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Print every layer of each packet with its fields and a hex dump, not one line.
    #[arg(short = 'v', long)]
    verbose: bool,
    /// Bytes kept of each packet.
    #[arg(short = 's', long, default_value_t = MAX_SNAPLEN)]
    snaplen: u32,
    /// A tcpdump filter expression (the words are joined, as tcpdump does).
    filter: Vec<String>,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// What holds the chain where it captures; dropping it detaches it (the route is put back).
enum Attached<'a> {
    Route(Box<RouteTap<'a>>),
    Tc(#[allow(dead_code)] lwtun::tc::TcAttachment), // held for its Drop
    Xdp(#[allow(dead_code)] XdpAttachment),          // held for its Drop
}

pub fn run(ctx: &Ctx, args: CaptureArgs) -> Result<()> {
    let op = "capture";
    let device = match &args.dev {
        Some(name) => Some(ctx.netns.device(name)?),
        None => None,
    };
    let needs_device = || {
        device.clone().ok_or_else(|| {
            Error::invalid_input(op, "--dev DEV is required with this --hook")
                .with_hint("name the device: lwtun capture --hook tc-ingress --dev DEV [FILTER]")
        })
    };
    let expression = args.filter.join(" ");
    let chain_hook = match args.hook {
        CaptureHook::Route => ChainHook::LwtOut,
        CaptureHook::TcIngress | CaptureHook::TcEgress => ChainHook::Tc,
        CaptureHook::Xdp => ChainHook::Xdp,
    };
    if let Some(t) = args.timeout {
        if !(t > 0.0 && t.is_finite()) {
            return Err(Error::invalid_input(
                op,
                "--timeout takes a positive number of seconds",
            ));
        }
    }
    let mut chain = ProgChain::new(chain_hook)?;
    let mut capture = Capture::attach(
        &mut chain,
        CaptureOptions {
            snaplen: args.snaplen,
        },
    )
    .map_err(|e| match (args.hook, e.kind()) {
        // The library's hint names its Rust API; a shell user gets the command.
        (CaptureHook::Xdp, ErrorKind::Unsupported) => e.with_hint(format!(
            "capture at tc ingress of the same device instead (`{}`), or with tcpdump",
            ctx.command(&format!(
                "capture --hook tc-ingress --dev {} ...",
                args.dev.as_deref().unwrap_or("DEV")
            ))
        )),
        _ => e,
    })?;
    let filter = Filter::compile(&expression, capture.link_type())?;
    let mut out = match &args.write {
        Some(path) => Some(CaptureWriter::new(
            std::fs::File::create(path).map_err(|e| {
                Error::io("create capture file", e).with_object(path.display().to_string())
            })?,
            if args.pcapng {
                CaptureFormat::PcapNg
            } else {
                CaptureFormat::Pcap
            },
            capture.link_type(),
            args.snaplen,
        )?),
        None => None,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let attached = match args.hook {
        CaptureHook::Route => {
            let prefix = args.route.as_deref().ok_or_else(|| {
                Error::invalid_input(op, "--hook route needs --route PREFIX")
                    .with_hint("lwtun capture --hook route --route 10.20.0.0/16 [FILTER]")
            })?;
            Attached::Route(Box::new(RouteTap::hang(
                &ctx.netns,
                crate::spec::prefix(prefix)?,
                device.as_ref(),
                &chain.lwt_entry()?,
            )?))
        }
        CaptureHook::TcIngress => Attached::Tc(
            TcAttach::new(&needs_device()?, TcDirection::Ingress).attach(chain.entry())?,
        ),
        CaptureHook::TcEgress => Attached::Tc(
            TcAttach::new(&needs_device()?, TcDirection::Egress).attach(chain.entry())?,
        ),
        CaptureHook::Xdp => Attached::Xdp(XdpAttachment::attach(
            chain.entry(),
            &needs_device()?,
            XdpOptions {
                mode: XdpMode::Generic,
                ..Default::default()
            },
        )?),
    };
    let place = match &attached {
        Attached::Route(tap) => format!("route {}", tap.route().dst),
        _ => args.dev.clone().unwrap_or_default(),
    };
    eprintln!("lwtun: capturing on {place} ({chain_hook}), filter '{expression}'");
    let devices = DeviceNames::new(
        ctx,
        match &attached {
            Attached::Route(tap) => tap.route().oif,
            _ => None,
        },
    );
    let until = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut seen = 0u64;
    'outer: while !INTERRUPTED.load(Ordering::SeqCst) && until.is_none_or(|u| Instant::now() < u) {
        let packets = match capture.poll(Duration::from_millis(100)) {
            Ok(packets) => packets,
            // Ctrl-C during the wait (EINTR): end as after it.
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => break,
            Err(e) => return Err(e),
        };
        for p in packets {
            if !filter.matches(&p) {
                continue;
            }
            match out.as_mut() {
                Some(w) => w.write(&p)?,
                None if ctx.json => println!(
                    "{}",
                    serde_json::json!({
                        "hook": p.hook.to_string(),
                        "ifindex": p.ifindex,
                        "dev": devices.of(&p),
                        "len": p.len,
                        "verdict": p.verdict,
                        "verdict_name": p.verdict_name(),
                        "summary": devices.named(p.summary(), &p, "if"),
                    })
                ),
                None if args.verbose => println!("{}", devices.named(p.dump(), &p, "ifindex ")),
                None => println!("{}", devices.named(p.summary(), &p, "if")),
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break 'outer;
            }
        }
    }
    if let Attached::Route(tap) = attached {
        tap.restore()?;
    } else {
        drop(attached);
    }
    capture.detach(&mut chain)?;
    eprintln!(
        "lwtun: {seen} packet(s) captured{}, {} lost to a full ring",
        args.write
            .as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default(),
        capture.lost()?
    );
    Ok(())
}

/// The namespace's interface names, to print packets with the name of their device instead of
/// its index. At an LWT hook a packet has no device yet (index 0): the route's is named.
struct DeviceNames {
    names: std::collections::HashMap<u32, String>,
    route_device: Option<u32>,
}

impl DeviceNames {
    fn new(ctx: &Ctx, route_device: Option<u32>) -> Self {
        let names = ctx
            .netlink()
            .and_then(|mut nl| nl.links())
            .map(|links| links.into_iter().map(|l| (l.index, l.name)).collect())
            .unwrap_or_default();
        DeviceNames {
            names,
            route_device,
        }
    }

    /// The name of the packet's device, if known.
    fn of(&self, p: &lwtun::capture::Packet) -> Option<&str> {
        let index = match p.ifindex {
            0 => self.route_device?,
            i => i,
        };
        self.names.get(&index).map(String::as_str)
    }

    /// `text` with the packet's ` {label}{ifindex} ` (as `Packet::summary` and `Packet::dump`
    /// write it) replaced by ` dev NAME ` (the summary: ` NAME `).
    fn named(&self, text: String, p: &lwtun::capture::Packet, label: &str) -> String {
        let Some(name) = self.of(p) else {
            return text;
        };
        let with = if label == "if" {
            format!(" {name} ")
        } else {
            format!(" dev {name} ")
        };
        text.replacen(&format!(" {label}{} ", p.ifindex), &with, 1)
    }
}
