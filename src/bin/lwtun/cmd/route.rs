//! `lwtun route`: the routes that steer traffic into a pinned tunnel.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use lwtun::route::lwt_routes;
use lwtun::{Error, Result};

use crate::cmd::edit::{Edit, Editor, Located, RouteEdit};
use crate::cmd::tunnel::route_view;
use crate::view::{opt, table, HookView, RouteView};
use crate::{spec, Ctx};

#[derive(Subcommand)]
pub(crate) enum RouteCommand {
    /// Route PREFIX into the tunnel pinned in DIR; the route stays after the command ends.
    /// The route runs the encap program the tunnel's load pinned in DIR (nothing is loaded).
    Add(RouteArgs),
    /// As `add`, but replaces a route to the same destination (table and metric) in one
    /// request: packets see the old route or the new one, never none.
    Replace(RouteArgs),
    /// Delete lwtun's route to PREFIX.
    Del {
        #[arg(required_unless_present = "batch")]
        prefix: Option<String>,
        #[arg(long)]
        table: Option<u32>,
        /// Routes from FILE (`-`: standard input), one per line as `PREFIX [--table N]`
        /// (`#` comments): every line is checked first; a bad one is reported as FILE:LINE and
        /// nothing is applied.
        #[arg(short = 'b', long = "batch", value_name = "FILE", conflicts_with_all = ["prefix", "table"])]
        batch: Option<PathBuf>,
    },
    /// Every LWT BPF route with its hooks, program names and ids, whoever made it.
    Show,
}

/// The arguments of `route add` and `route replace`.
#[derive(clap::Args)]
pub(crate) struct RouteArgs {
    #[arg(long, value_name = "DIR")]
    pin: PathBuf,
    /// Routes from FILE (`-`: standard input), one per line in the arguments of this command
    /// after `--pin DIR` (`PREFIX --dev DEV [--via ADDR] [--src ADDR] ...`, `#` comments): every
    /// line is checked first; a bad one is reported as FILE:LINE and nothing is applied.
    #[arg(short = 'b', long = "batch", value_name = "FILE", conflicts_with_all = ["prefix", "dev"])]
    batch: Option<PathBuf>,
    #[arg(required_unless_present = "batch")]
    prefix: Option<String>,
    /// The underlay device the route sends by.
    #[arg(long, required_unless_present = "batch")]
    dev: Option<String>,
    /// Gateway.
    #[arg(long)]
    via: Option<IpAddr>,
    /// This host's inner address: the route's preferred source.
    #[arg(long)]
    src: Option<IpAddr>,
    #[arg(long)]
    table: Option<u32>,
    #[arg(long)]
    metric: Option<u32>,
    /// Send encapsulated IPv4-in-IPv4 packets by this route's next hop (no second lookup).
    #[arg(long)]
    direct: bool,
    /// Allow a route without a source (the tunnel only forwards).
    #[arg(long)]
    forward_only: bool,
}

/// The edits a `route add|replace|del` command makes (its file's lines, with -b).
pub(crate) fn route_edits(command: RouteCommand) -> Result<Vec<Located>> {
    let (replace, args) = match command {
        RouteCommand::Add(a) => (false, a),
        RouteCommand::Replace(a) => (true, a),
        RouteCommand::Del {
            prefix,
            table,
            batch,
        } => {
            let Some(file) = batch else {
                let prefix = spec::prefix(prefix.as_deref().unwrap_or_default())?;
                return Ok(vec![Located::here(Edit::RouteDel(prefix, table))]);
            };
            return file_lines(&file, &["route", "del"], |command| match command {
                RouteCommand::Del { batch: Some(_), .. } => Err(nested()),
                c => route_edits(c),
            });
        }
        RouteCommand::Show => return Ok(Vec::new()),
    };
    let verb = if replace { "replace" } else { "add" };
    let Some(file) = args.batch else {
        let prefix = spec::prefix(args.prefix.as_deref().unwrap_or_default())?;
        return Ok(vec![Located::here(Edit::RouteAdd(Box::new(RouteEdit {
            pin: args.pin,
            prefix,
            dev: args.dev.unwrap_or_default(),
            via: args.via,
            src: args.src,
            table: args.table,
            metric: args.metric,
            direct: args.direct,
            forward_only: args.forward_only,
            replace,
        })))]);
    };
    let pin = args.pin.display().to_string();
    file_lines(
        &file,
        &["route", verb, "--pin", &pin],
        |command| match command {
            RouteCommand::Add(RouteArgs { batch: Some(_), .. })
            | RouteCommand::Replace(RouteArgs { batch: Some(_), .. }) => Err(nested()),
            c => route_edits(c),
        },
    )
}

fn nested() -> Error {
    Error::invalid_input(
        "read batch file",
        "a line of a batch file cannot name another batch file (-b)",
    )
}

/// The edits of every line of `file`, each parsed as the command `lead` followed by the line's
/// words; a bad line is the error, reported as FILE:LINE.
fn file_lines(
    file: &std::path::Path,
    lead: &[&str],
    edits: impl Fn(RouteCommand) -> Result<Vec<Located>>,
) -> Result<Vec<Located>> {
    let text = spec::read(file)?;
    let mut out = Vec::new();
    for (at, line) in spec::lines(file, &text, |_| {}) {
        let words = lead
            .iter()
            .copied()
            .chain(line.split_whitespace())
            .map(str::to_string);
        let command = match crate::parse_line(words).map_err(|e| e.with_object(&at))? {
            crate::Command::Route { command } => command,
            _ => unreachable!("the line starts with `route`"),
        };
        for mut e in edits(command).map_err(|e| e.with_object(&at))? {
            e.at = Some(at.clone());
            out.push(e);
        }
    }
    Ok(out)
}

pub(crate) fn route(ctx: &Ctx, command: RouteCommand) -> Result<()> {
    match command {
        RouteCommand::Add(_) | RouteCommand::Replace(_) | RouteCommand::Del { .. } => {
            let edits = route_edits(command)?;
            let mut editor = Editor::new(ctx);
            editor.check(&edits)?;
            let done = editor.apply(&edits)?;
            if done.routes_deleted > 0 || done.routes.is_empty() {
                if !ctx.json {
                    println!("deleted {} route(s)", done.routes_deleted);
                } else {
                    ctx.print_json(&serde_json::json!({ "deleted": done.routes_deleted }))?;
                }
                return Ok(());
            }
            let mut nl = ctx.netlink()?;
            let views: Vec<RouteView> =
                done.routes.iter().map(|r| route_view(&mut nl, r)).collect();
            if ctx.json {
                return match views.as_slice() {
                    [one] => ctx.print_json(one),
                    _ => ctx.print_json(&views),
                };
            }
            for r in &done.routes {
                println!("{r}");
            }
            Ok(())
        }
        RouteCommand::Show => {
            let mut nl = ctx.netlink()?;
            let routes = lwt_routes(&mut nl)?;
            let views: Vec<RouteView> = routes.iter().map(|r| route_view(&mut nl, r)).collect();
            if ctx.json {
                return ctx.print_json(&views);
            }
            print_routes(&views);
            Ok(())
        }
    }
}

pub(crate) fn hooks_text(hooks: &[HookView]) -> String {
    hooks
        .iter()
        .map(|h| format!("{} {} (id {})", h.hook, h.name, opt(&h.program_id)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn print_routes(views: &[RouteView]) {
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.dst.clone(),
                opt(&v.dev),
                opt(&v.gateway),
                opt(&v.src),
                v.table.to_string(),
                format!("{}{}", v.protocol, if v.lwtun { " (lwtun)" } else { "" }),
                hooks_text(&v.hooks),
            ]
        })
        .collect();
    table(
        &["DST", "DEV", "VIA", "SRC", "TABLE", "PROTO", "HOOKS"],
        &rows,
    );
}
