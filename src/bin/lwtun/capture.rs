//! `lwtun capture`: a chain with a capture program at its exit, attached at a device's XDP or
//! tc hook or installed as a route, writing what the tcpdump filter matches to a pcap file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use lwtun::capture::{Capture, CaptureFormat, CaptureOptions, CaptureWriter, Filter, MAX_SNAPLEN};
use lwtun::chain::{ChainHook, ProgChain};
use lwtun::program::Hook;
use lwtun::route::LwtRoute;
use lwtun::tc::{TcAttach, TcDirection};
use lwtun::xdp::{XdpAttachment, XdpMode, XdpOptions};
use lwtun::{Error, Result};

use crate::Ctx;

#[derive(Clone, Copy, ValueEnum)]
pub enum CaptureHook {
    /// A route to --route PREFIX via DEV, its packets captured at lwt_xmit (raw IP).
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
    /// The device.
    #[arg(long)]
    dev: String,
    /// With --hook route: the prefix of the route the capture installs (removed at the end).
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

/// What holds the chain where it captures; dropping it detaches it (the route is removed).
#[allow(dead_code)] // held only for its Drop
enum Attached {
    _Route(lwtun::route::InstalledRoute),
    _Tc(lwtun::tc::TcAttachment),
    _Xdp(XdpAttachment),
}

pub fn run(ctx: &Ctx, args: CaptureArgs) -> Result<()> {
    let op = "capture";
    let device = ctx.netns.device(&args.dev)?;
    let expression = args.filter.join(" ");
    let chain_hook = match args.hook {
        CaptureHook::Route => ChainHook::LwtXmit,
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
    )?;
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
    let _attached = match args.hook {
        CaptureHook::Route => {
            let prefix = args
                .route
                .as_deref()
                .ok_or_else(|| Error::invalid_input(op, "--hook route needs --route PREFIX"))?;
            let mut nl = ctx.netlink()?;
            Attached::_Route(
                LwtRoute::new(crate::spec::prefix(prefix)?)
                    .device(&device)
                    .program(Hook::Xmit, chain.entry())
                    .install(&mut nl)?,
            )
        }
        CaptureHook::TcIngress => {
            Attached::_Tc(TcAttach::new(&device, TcDirection::Ingress).attach(chain.entry())?)
        }
        CaptureHook::TcEgress => {
            Attached::_Tc(TcAttach::new(&device, TcDirection::Egress).attach(chain.entry())?)
        }
        CaptureHook::Xdp => Attached::_Xdp(XdpAttachment::attach(
            chain.entry(),
            &device,
            XdpOptions {
                mode: XdpMode::Generic,
                ..Default::default()
            },
        )?),
    };
    eprintln!(
        "lwtun: capturing on {} ({}), filter '{}'",
        args.dev, chain_hook, expression
    );
    let until = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut seen = 0u64;
    'outer: while !INTERRUPTED.load(Ordering::SeqCst) && until.is_none_or(|u| Instant::now() < u) {
        for p in capture.poll(Duration::from_millis(100))? {
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
                        "len": p.len,
                        "verdict": p.verdict,
                        "verdict_name": p.verdict_name(),
                        "summary": p.summary(),
                    })
                ),
                None if args.verbose => println!("{}", p.dump()),
                None => println!("{}", p.summary()),
            }
            seen += 1;
            if args.count.is_some_and(|c| seen >= c) {
                break 'outer;
            }
        }
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
