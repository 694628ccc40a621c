//! `lwtun xdp`: lwtun's XDP programs on a device, and their counters.

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use lwtun::xdp::{Stage, StatsMap, XdpAction, XdpAttachment, XdpMode, XdpOptions, XdpPass};
use lwtun::{Error, ErrorKind, Result};
use serde::Serialize;

use crate::view::table;
use crate::Ctx;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum XdpProgramName {
    Pass,
    Drop,
    Tx,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Mode {
    Auto,
    Native,
    Generic,
}

#[derive(Subcommand)]
pub(crate) enum XdpCommand {
    /// Attach one of lwtun's counting XDP programs to DEV (stays attached after the command).
    Attach {
        dev: String,
        #[arg(long, value_enum, default_value = "pass")]
        program: XdpProgramName,
        #[arg(long, value_enum, default_value = "auto")]
        mode: Mode,
    },
    /// Detach the XDP program of DEV (netlink attachments, any mode).
    Detach { dev: String },
    /// Per-action counters of the lwtun XDP program on DEV, with rates.
    Stats {
        dev: String,
        /// Sample again every SECS seconds (like `watch`) until interrupted or --count samples.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
        /// With --watch: stop after this many samples.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Seconds over which the rates of a single sample are measured.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
}

#[derive(Serialize)]
pub(crate) struct ActionView {
    action: &'static str,
    packets: u64,
    bytes: u64,
    pps: f64,
    bps: f64,
}

#[derive(Serialize)]
pub(crate) struct XdpSample {
    dev: String,
    program_id: u32,
    interval_secs: f64,
    actions: Vec<ActionView>,
}

pub(crate) fn action_name(a: XdpAction) -> &'static str {
    match a {
        XdpAction::Aborted => "aborted",
        XdpAction::Drop => "drop",
        XdpAction::Pass => "pass",
        XdpAction::Tx => "tx",
        XdpAction::Redirect => "redirect",
        XdpAction::Unknown(_) => "unknown",
    }
}

/// The `xdp_stats` map of the program attached to `device`.
pub(crate) fn xdp_stats_map(ctx: &Ctx, device: &lwtun::device::Device) -> Result<(u32, StatsMap)> {
    let op = "read XDP stats";
    let dev = device.name();
    let attach = ctx.command(&format!("xdp attach {dev}"));
    let id = XdpAttachment::query(device)?
        .program(XdpMode::Auto)
        .ok_or_else(|| {
            Error::other(
                ErrorKind::NotFound,
                op,
                format!("no XDP program is attached to {dev}"),
            )
            .with_object(dev.to_string())
            .with_hint(format!("attach lwtun's counting one with `{attach}`"))
        })?;
    if let Some(stats) = StatsMap::of_program(id)? {
        return Ok((id, stats));
    }
    Err(Error::other(
        ErrorKind::NotFound,
        op,
        format!(
            "XDP program {id} on {dev} has no xdp_stats map: it is not one of lwtun's XDP \
             programs, which count per action"
        ),
    )
    .with_object(dev.to_string())
    .with_hint(format!(
        "`bpftool prog show id {id}` shows what it is; to count with lwtun's, detach it and run \
         `{attach}`"
    )))
}

pub(crate) fn xdp(ctx: &Ctx, command: XdpCommand) -> Result<()> {
    match command {
        XdpCommand::Attach { dev, program, mode } => {
            let device = ctx.netns.device(&dev)?;
            let family = XdpPass::load()?;
            let prog = match program {
                XdpProgramName::Pass => family.program(),
                XdpProgramName::Drop => family.drop_program(),
                XdpProgramName::Tx => family.tx_program(),
            };
            let options = XdpOptions {
                mode: match mode {
                    Mode::Auto => XdpMode::Auto,
                    Mode::Native => XdpMode::Native,
                    Mode::Generic => XdpMode::Generic,
                },
                via: lwtun::xdp::AttachVia::Netlink,
            };
            let att = XdpAttachment::attach(prog, &device, options).map_err(|e| {
                match (e.kind(), mode) {
                    (ErrorKind::Unsupported, Mode::Native) => e.with_hint(format!(
                        "attach in generic mode, which every driver has: `{}`",
                        ctx.command(&format!("xdp attach {dev} --mode generic"))
                    )),
                    _ => e,
                }
            })?;
            let id = att.program_id();
            att.persist()?;
            if ctx.json {
                return ctx.print_json(&serde_json::json!({ "dev": dev, "program_id": id }));
            }
            println!("attached {} (id {id}) to {dev}", prog.name());
            Ok(())
        }
        XdpCommand::Detach { dev } => {
            let device = ctx.netns.device(&dev)?;
            XdpAttachment::detach_interface(&device, XdpMode::Auto)?;
            if !ctx.json {
                println!("detached XDP from {dev}");
            } else {
                ctx.print_json(&serde_json::json!({ "dev": dev }))?;
            }
            Ok(())
        }
        XdpCommand::Stats {
            dev,
            watch,
            count,
            interval,
        } => {
            let device = ctx.netns.device(&dev)?;
            let (id, stats) = xdp_stats_map(ctx, &device)?;
            let period = watch.unwrap_or(interval);
            if !(period > 0.0 && period.is_finite()) {
                return Err(Error::invalid_input(
                    "read XDP stats",
                    "the interval must be a positive number of seconds",
                ));
            }
            let samples = if watch.is_some() {
                count.unwrap_or(u64::MAX)
            } else {
                1
            };
            let mut before = stats.snapshot(Stage::Ingress)?;
            for i in 0..samples {
                std::thread::sleep(Duration::from_secs_f64(period));
                let now = stats.snapshot(Stage::Ingress)?;
                let rates = now.rates_since(&before);
                let sample = XdpSample {
                    dev: dev.clone(),
                    program_id: id,
                    interval_secs: now.taken_at.duration_since(before.taken_at).as_secs_f64(),
                    actions: XdpAction::ALL
                        .iter()
                        .map(|a| ActionView {
                            action: action_name(*a),
                            packets: now.get(*a).packets,
                            bytes: now.get(*a).bytes,
                            pps: rates.get(*a).packets_per_sec,
                            bps: rates.get(*a).bits_per_sec,
                        })
                        .collect(),
                };
                if ctx.json {
                    ctx.print_json(&sample)?;
                } else {
                    if watch.is_some() && std::io::stdout().is_terminal() {
                        print!("\x1b[H\x1b[2J");
                    }
                    if watch.is_some() || i > 0 {
                        println!("every {period}s: XDP program {id} on {dev}");
                    }
                    let rows: Vec<Vec<String>> = sample
                        .actions
                        .iter()
                        .map(|a| {
                            vec![
                                a.action.to_string(),
                                a.packets.to_string(),
                                a.bytes.to_string(),
                                format!("{:.0}", a.pps),
                                format!("{:.0}", a.bps),
                            ]
                        })
                        .collect();
                    table(&["ACTION", "PACKETS", "BYTES", "PPS", "BIT/S"], &rows);
                }
                before = now;
            }
            Ok(())
        }
    }
}
