//! `lwtun route`: the routes that steer traffic into a pinned tunnel.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;
use lwtun::netlink::route::Route;
use lwtun::route::lwt_routes;
use lwtun::{Error, ErrorKind, Result};

use crate::cmd::tunnel::{adopt, route_view};
use crate::view::{opt, table, HookView, RouteView};
use crate::{spec, Ctx};

#[derive(Subcommand)]
pub(crate) enum RouteCommand {
    /// Route PREFIX into the tunnel pinned in DIR; the route stays after the command ends.
    Add {
        #[arg(long, value_name = "DIR")]
        pin: PathBuf,
        prefix: String,
        /// The underlay device (the IP-in-IP GSO fix-up is attached to it for IPv4 prefixes).
        #[arg(long)]
        dev: String,
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
    },
    /// Delete lwtun's route to PREFIX.
    Del {
        prefix: String,
        #[arg(long)]
        table: Option<u32>,
    },
    /// Every LWT BPF route with its hooks, program names and ids, whoever made it.
    Show,
}

pub(crate) fn route(ctx: &Ctx, command: RouteCommand) -> Result<()> {
    match command {
        RouteCommand::Add {
            pin,
            prefix,
            dev,
            via,
            src,
            table,
            metric,
            direct,
            forward_only,
        } => {
            let prefix = spec::prefix(&prefix)?;
            let tunnel = adopt(&pin, direct)?;
            if src.is_none() && !forward_only {
                let family = if prefix.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(Error::invalid_input(
                    "steer route into tunnel",
                    format!(
                        "the route has no source, so packets this host sends to {prefix} would \
                         carry its underlay address and the answers would not come back through \
                         the tunnel; give this host's inner {family} address with --src, or \
                         --forward-only if the tunnel only forwards"
                    ),
                ));
            }
            let device = ctx.netns.device(&dev)?;
            let mut nl = ctx.netlink()?;
            let mut spec = tunnel.route(prefix).device(&device);
            if let Some(gw) = via {
                spec = spec.via(gw);
            }
            if let Some(s) = src {
                spec = spec.source(s);
            }
            if let Some(t) = table {
                spec = spec.table(t);
            }
            if let Some(m) = metric {
                spec = spec.metric(m);
            }
            // No IP-in-IP GSO fix-up on the underlay: the xmit program fixes its packets
            // itself (see lwtun::tunnel); fix-ups pinned by older versions are still shown and
            // removed with the tunnel.
            let installed = spec.install(&mut nl)?;
            let route = installed.persist();
            let view = route_view(&mut nl, &route);
            if ctx.json {
                return ctx.print_json(&view);
            }
            println!("{route}");
            Ok(())
        }
        RouteCommand::Del { prefix, table } => {
            let prefix = spec::prefix(&prefix)?;
            let mut nl = ctx.netlink()?;
            let found: Vec<Route> = lwt_routes(&mut nl)?
                .into_iter()
                .filter(|r| {
                    r.dst == prefix
                        && table.is_none_or(|t| t == r.table)
                        && RouteView::new(r, None).lwtun
                })
                .collect();
            if found.is_empty() {
                return Err(Error::other(
                    ErrorKind::NotFound,
                    "delete route",
                    format!(
                        "no lwtun route to {prefix} (see `{}`)",
                        ctx.command("route show")
                    ),
                ));
            }
            for r in &found {
                nl.delete_route(r)?;
            }
            if !ctx.json {
                println!("deleted {} route(s) to {prefix}", found.len());
            } else {
                ctx.print_json(&serde_json::json!({ "deleted": found.len() }))?;
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
