//! The edit commands as one list of changes: `peer add|del|replace`, `route add|del|replace`,
//! their `-b FILE` forms and `lwtun -batch FILE` all become [`Edit`]s that an [`Editor`] checks
//! whole, against the tables as they are and the edits before each, and then applies in order.
//!
//! An editor opens each pinned tunnel's tables once ([`TunnelTables`], under the folder's owner
//! lock, without loading programs) and one netlink socket, and keeps them for every line: a
//! single edit costs a few map or netlink calls.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use lwtun::device::Device;
use lwtun::netlink::route::Route;
use lwtun::netlink::Netlink;
use lwtun::peer::EncapPeer;
use lwtun::route::lwt_routes;
use lwtun::tunnel::TunnelTables;
use lwtun::{Error, ErrorKind, Result};

use crate::cmd::tunnel::adopt;
use crate::view::RouteView;
use crate::Ctx;

/// One change to make.
pub(crate) enum Edit {
    /// Add a peer; refused when the prefix has one.
    PeerAdd(PathBuf, IpNetwork, EncapPeer),
    /// Add a peer or change the one the prefix has.
    PeerReplace(PathBuf, IpNetwork, EncapPeer),
    /// Delete a prefix's peer; refused when it has none.
    PeerDel(PathBuf, IpNetwork),
    /// Install a route into a tunnel (replacing one to the same destination with `replace`).
    RouteAdd(Box<RouteEdit>),
    /// Delete lwtun's routes to a prefix (in one table, or all).
    RouteDel(IpNetwork, Option<u32>),
}

/// What `route add|replace` installs.
pub(crate) struct RouteEdit {
    pub(crate) pin: PathBuf,
    pub(crate) prefix: IpNetwork,
    pub(crate) dev: String,
    pub(crate) via: Option<IpAddr>,
    pub(crate) src: Option<IpAddr>,
    pub(crate) table: Option<u32>,
    pub(crate) metric: Option<u32>,
    pub(crate) direct: bool,
    pub(crate) forward_only: bool,
    pub(crate) replace: bool,
}

/// An edit and where it came from (`FILE:LINE`, or none for the command line).
pub(crate) struct Located {
    pub(crate) at: Option<String>,
    pub(crate) edit: Edit,
}

impl Located {
    pub(crate) fn here(edit: Edit) -> Located {
        Located { at: None, edit }
    }
}

/// What a batch did: peers added, changed and deleted, routes installed and deleted.
#[derive(Default, serde::Serialize)]
pub(crate) struct Applied {
    pub(crate) peers_added: usize,
    pub(crate) peers_replaced: usize,
    pub(crate) peers_deleted: usize,
    pub(crate) routes_added: usize,
    pub(crate) routes_deleted: usize,
    /// The routes installed, as `route show` prints them.
    #[serde(skip)]
    pub(crate) routes: Vec<Route>,
}

/// Names the place of an error: `FILE:LINE` before the object it names.
pub(crate) fn at(e: Error, at: &Option<String>) -> Error {
    match (at, e.object().map(str::to_string)) {
        (Some(at), Some(object)) if !object.starts_with(at.as_str()) => {
            e.with_object(format!("{at} ({object})"))
        }
        (Some(at), None) => e.with_object(at.clone()),
        _ => e,
    }
}

/// The prefix as the tables key it (host bits cleared).
fn key(prefix: IpNetwork) -> IpNetwork {
    IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix)
}

/// Whether a dumped route is lwtun's route to `prefix` (in `table`, when given).
fn lwtun_route_to(r: &Route, prefix: IpNetwork, table: Option<u32>) -> bool {
    r.dst == prefix && table.is_none_or(|t| t == r.table) && RouteView::new(r, None).lwtun
}

/// The command that changes a peer that is there, with every flag it needs.
pub(crate) fn replace_command(pin: &Path, prefix: IpNetwork) -> String {
    format!(
        "`lwtun peer replace --pin {} {prefix} remote ADDR local ADDR encap KIND`",
        pin.display()
    )
}

/// Checks and applies edits with the tables and socket opened once.
pub(crate) struct Editor<'c> {
    ctx: &'c Ctx,
    tables: HashMap<PathBuf, TunnelTables>,
    nl: Option<Netlink>,
    devices: HashMap<String, Device>,
    addresses: Option<HashSet<IpAddr>>,
}

/// The check's view of one tunnel: the prefixes the edits before have added or deleted, and
/// how many peers each family will hold.
struct Planned {
    changed: HashMap<IpNetwork, bool>,
    count: [usize; 2],
}

impl<'c> Editor<'c> {
    pub(crate) fn new(ctx: &'c Ctx) -> Self {
        Editor {
            ctx,
            tables: HashMap::new(),
            nl: None,
            devices: HashMap::new(),
            addresses: None,
        }
    }

    /// The tables pinned in `pin`, opened on first use.
    pub(crate) fn tables(&mut self, pin: &Path) -> Result<&mut TunnelTables> {
        if !self.tables.contains_key(pin) {
            let tables = TunnelTables::open(pin).map_err(|e| open_error(e, pin))?;
            self.tables.insert(pin.to_path_buf(), tables);
        }
        Ok(self.tables.get_mut(pin).expect("inserted above"))
    }

    fn nl(&mut self) -> Result<&mut Netlink> {
        if self.nl.is_none() {
            self.nl = Some(self.ctx.netlink()?);
        }
        Ok(self.nl.as_mut().expect("set above"))
    }

    fn device(&mut self, name: &str) -> Result<Device> {
        if let Some(d) = self.devices.get(name) {
            return Ok(d.clone());
        }
        let d = self.ctx.netns.device(name)?;
        self.devices.insert(name.to_string(), d.clone());
        Ok(d)
    }

    /// Checks every edit before any is applied: the words were parsed already; here each edit
    /// meets the tables as the edits before it leave them (a peer added twice, a deletion of a
    /// peer that is not there, a full table), the devices, the pinned programs and the routes.
    /// The first bad edit is the error, named by its place.
    pub(crate) fn check(&mut self, edits: &[Located]) -> Result<()> {
        let mut planned: HashMap<PathBuf, Planned> = HashMap::new();
        let mut routes: Option<Vec<Route>> = None;
        let mut added_routes: HashSet<(IpNetwork, Option<u32>)> = HashSet::new();
        let mut deleted_routes: HashSet<(IpNetwork, Option<u32>)> = HashSet::new();
        for e in edits {
            self.check_one(
                &e.edit,
                &mut planned,
                &mut routes,
                &mut added_routes,
                &mut deleted_routes,
            )
            .map_err(|err| at(err, &e.at))?;
        }
        Ok(())
    }

    fn check_one(
        &mut self,
        edit: &Edit,
        planned: &mut HashMap<PathBuf, Planned>,
        routes: &mut Option<Vec<Route>>,
        added_routes: &mut HashSet<(IpNetwork, Option<u32>)>,
        deleted_routes: &mut HashSet<(IpNetwork, Option<u32>)>,
    ) -> Result<()> {
        let ns = self.ctx.netns_flag();
        match edit {
            Edit::PeerAdd(pin, prefix, _)
            | Edit::PeerReplace(pin, prefix, _)
            | Edit::PeerDel(pin, prefix) => {
                let tables = self.tables(pin)?;
                let peers = tables.peers();
                let plan = planned.entry(pin.clone()).or_insert_with(|| Planned {
                    changed: HashMap::new(),
                    count: [
                        peers.iter().filter(|(p, _)| p.is_ipv4()).count(),
                        peers.iter().filter(|(p, _)| p.is_ipv6()).count(),
                    ],
                });
                let k = key(*prefix);
                let there = plan
                    .changed
                    .get(&k)
                    .copied()
                    .unwrap_or_else(|| peers.get(k).is_some());
                let family = usize::from(k.is_ipv6());
                match edit {
                    Edit::PeerAdd(..) if there => {
                        return Err(Error::other(
                            ErrorKind::Exists,
                            "add tunnel peer",
                            format!(
                                "{k} has a peer already; change it with {}, or delete it with \
                                 `lwtun peer del --pin {} {k}`",
                                replace_command(pin, k),
                                pin.display()
                            ),
                        )
                        .with_object(k.to_string()));
                    }
                    Edit::PeerDel(..) if !there => {
                        return Err(Error::other(
                            ErrorKind::NotFound,
                            "delete tunnel peer",
                            format!(
                                "{k} has no peer in {} (see `lwtun peer show --pin {}`)",
                                pin.display(),
                                pin.display()
                            ),
                        )
                        .with_object(k.to_string()));
                    }
                    Edit::PeerDel(..) => {
                        plan.count[family] -= 1;
                        plan.changed.insert(k, false);
                    }
                    _ if !there => {
                        let capacity = peers.capacity() as usize;
                        if plan.count[family] >= capacity {
                            return Err(Error::invalid_input(
                                "add tunnel peer",
                                format!(
                                    "the {} table of {} is full ({capacity} peers); grow it with \
                                     `lwtun{ns} tunnel resize --pin {} --capacity {}`",
                                    if k.is_ipv6() { "IPv6" } else { "IPv4" },
                                    pin.display(),
                                    pin.display(),
                                    (capacity * 2).max(1)
                                ),
                            )
                            .with_object(k.to_string()));
                        }
                        plan.count[family] += 1;
                        plan.changed.insert(k, true);
                    }
                    _ => {}
                }
                Ok(())
            }
            Edit::RouteAdd(r) => {
                if r.src.is_none() && !r.forward_only {
                    let family = if r.prefix.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(Error::invalid_input(
                        "steer route into tunnel",
                        format!(
                            "the route has no source, so packets this host sends to {} would \
                             carry its underlay address and the answers would not come back \
                             through the tunnel; give this host's inner {family} address with \
                             --src, or --forward-only if the tunnel only forwards",
                            r.prefix
                        ),
                    )
                    .with_object(r.prefix.to_string()));
                }
                if r.src.is_some_and(|s| s.is_ipv4() != r.prefix.is_ipv4())
                    || r.via.is_some_and(|g| g.is_ipv4() != r.prefix.is_ipv4())
                {
                    return Err(Error::invalid_input(
                        "steer route into tunnel",
                        format!("--src and --via must be addresses of {}'s family", r.prefix),
                    )
                    .with_object(r.prefix.to_string()));
                }
                self.device(&r.dev)?;
                if let Some(src) = r.src {
                    if !self.local_addresses()?.contains(&src) {
                        return Err(Error::invalid_input(
                            "steer route into tunnel",
                            format!(
                                "--src {src} is not an address of this host (the kernel takes \
                                 only its own addresses as a route's source); add it first, for \
                                 example `ip{ns} addr add {src}/{} dev lo`",
                                if src.is_ipv4() { 32 } else { 128 }
                            ),
                        )
                        .with_object(r.prefix.to_string()));
                    }
                }
                self.program(&r.pin, r.direct)?;
                let slot = (r.prefix, r.table);
                if !r.replace {
                    let exists = added_routes.contains(&slot)
                        || (!deleted_routes.contains(&slot)
                            && self.routes(routes)?.iter().any(|x| {
                                x.dst == r.prefix
                                    && x.table == r.table.unwrap_or(254)
                                    && x.metric.unwrap_or(0)
                                        == r.metric.unwrap_or(if r.prefix.is_ipv6() {
                                            1024 // the kernel's default IPv6 metric
                                        } else {
                                            0
                                        })
                            }));
                    if exists {
                        return Err(Error::other(
                            ErrorKind::Exists,
                            "add route",
                            format!(
                                "a route to {} is there already (`ip{ns} route show {}`); \
                                 change it with `lwtun{ns} route replace --pin {} {} --dev {} \
                                 ...` or delete it with `ip{ns} route del {}`",
                                r.prefix,
                                r.prefix,
                                r.pin.display(),
                                r.prefix,
                                r.dev,
                                r.prefix
                            ),
                        )
                        .with_object(format!("{} dev {}", r.prefix, r.dev)));
                    }
                }
                added_routes.insert(slot);
                deleted_routes.remove(&slot);
                Ok(())
            }
            Edit::RouteDel(prefix, table) => {
                let slot = (*prefix, *table);
                let there = added_routes.contains(&slot)
                    || (!deleted_routes.contains(&slot)
                        && self
                            .routes(routes)?
                            .iter()
                            .any(|r| lwtun_route_to(r, *prefix, *table)));
                if !there {
                    return Err(Error::other(
                        ErrorKind::NotFound,
                        "delete route",
                        format!(
                            "no lwtun route to {prefix} (see `{}`)",
                            self.ctx.command("route show")
                        ),
                    )
                    .with_object(prefix.to_string()));
                }
                added_routes.remove(&slot);
                deleted_routes.insert(slot);
                Ok(())
            }
        }
    }

    /// The addresses of the namespace, dumped once for the check.
    fn local_addresses(&mut self) -> Result<&HashSet<IpAddr>> {
        if self.addresses.is_none() {
            let found = self.nl()?.addresses(None)?;
            self.addresses = Some(found.iter().map(|a| a.network.ip()).collect());
        }
        Ok(self.addresses.as_ref().expect("set above"))
    }

    /// The routes of the namespace, dumped once for the check.
    fn routes<'r>(&mut self, routes: &'r mut Option<Vec<Route>>) -> Result<&'r [Route]> {
        if routes.is_none() {
            let nl = self.nl()?;
            *routes = Some(nl.routes(&lwtun::netlink::route::RouteFilter::all())?);
        }
        Ok(routes.as_deref().unwrap_or_default())
    }

    /// The pinned `lwt_xmit` program of `pin`. A folder pinned by lwtun 0.2.0 has none: the
    /// tunnel is loaded once (which pins its programs) and the tables opened again.
    fn program(&mut self, pin: &Path, direct: bool) -> Result<lwtun::program::LwtProgram> {
        if let Some(p) = self.tables(pin)?.xmit_program(direct)? {
            return Ok(p);
        }
        self.tables.remove(pin);
        drop(adopt(pin, direct)?);
        self.tables(pin)?.xmit_program(direct)?.ok_or_else(|| {
            Error::not_found(
                "open pinned tunnel program",
                format!("{}'s encap program", pin.display()),
            )
        })
    }

    /// Applies checked edits in order; on a failure, the error names the edit's place and says
    /// how many edits before it were applied.
    pub(crate) fn apply(&mut self, edits: &[Located]) -> Result<Applied> {
        let mut done = Applied::default();
        let mut i = 0;
        while i < edits.len() {
            // Runs of additions (or deletions) of one tunnel's peers go in one batch call.
            let run = edits[i..]
                .iter()
                .take_while(|e| same_batch(&edits[i].edit, &e.edit))
                .count();
            let result = if run > 1 {
                self.apply_run(&edits[i..i + run], &mut done)
            } else {
                self.apply_one(&edits[i].edit, &mut done)
            };
            if let Err(e) = result {
                let first = i;
                let e = at(e, &edits[first].at);
                return Err(if edits.len() > 1 {
                    e.with_hint(format!(
                        "the {first} edit(s) before it were applied, none after it"
                    ))
                } else {
                    e
                });
            }
            i += run.max(1);
        }
        Ok(done)
    }

    fn apply_run(&mut self, run: &[Located], done: &mut Applied) -> Result<()> {
        match &run[0].edit {
            Edit::PeerAdd(pin, ..) => {
                let peers: Vec<(IpNetwork, EncapPeer)> = run
                    .iter()
                    .filter_map(|e| match &e.edit {
                        Edit::PeerAdd(_, p, peer) => Some((*p, *peer)),
                        _ => None,
                    })
                    .collect();
                self.tables(pin)?.peers_mut().insert_batch(&peers)?;
                done.peers_added += peers.len();
            }
            Edit::PeerDel(pin, _) => {
                let prefixes: Vec<IpNetwork> = run
                    .iter()
                    .filter_map(|e| match &e.edit {
                        Edit::PeerDel(_, p) => Some(*p),
                        _ => None,
                    })
                    .collect();
                self.tables(pin)?.peers_mut().remove_batch(&prefixes)?;
                done.peers_deleted += prefixes.len();
            }
            _ => {
                for e in run {
                    self.apply_one(&e.edit, done)?;
                }
            }
        }
        Ok(())
    }

    fn apply_one(&mut self, edit: &Edit, done: &mut Applied) -> Result<()> {
        match edit {
            Edit::PeerAdd(pin, prefix, peer) => {
                self.tables(pin)?.peers_mut().insert(*prefix, *peer)?;
                done.peers_added += 1;
            }
            Edit::PeerReplace(pin, prefix, peer) => {
                self.tables(pin)?.peers_mut().replace(*prefix, *peer)?;
                done.peers_replaced += 1;
            }
            Edit::PeerDel(pin, prefix) => {
                self.tables(pin)?.peers_mut().remove(*prefix)?;
                done.peers_deleted += 1;
            }
            Edit::RouteAdd(r) => {
                let program = self.program(&r.pin, r.direct)?;
                let headroom = self.tables(&r.pin)?.headroom();
                let device = self.device(&r.dev)?;
                let mut spec = lwtun::route::LwtRoute::new(r.prefix)
                    .program(lwtun::program::Hook::Xmit, &program)
                    .headroom(headroom)
                    .device(&device);
                if let Some(gw) = r.via {
                    spec = spec.via(gw);
                }
                if let Some(s) = r.src {
                    spec = spec.source(s);
                }
                if let Some(t) = r.table {
                    spec = spec.table(t);
                }
                if let Some(m) = r.metric {
                    spec = spec.metric(m);
                }
                let nl = self.nl()?;
                let installed = if r.replace {
                    spec.replace(nl)?
                } else {
                    spec.install(nl)?
                };
                done.routes.push(installed.persist());
                done.routes_added += 1;
            }
            Edit::RouteDel(prefix, table) => {
                let nl = self.nl()?;
                let found: Vec<Route> = lwt_routes(nl)?
                    .into_iter()
                    .filter(|r| lwtun_route_to(r, *prefix, *table))
                    .collect();
                if found.is_empty() {
                    return Err(Error::other(
                        ErrorKind::NotFound,
                        "delete route",
                        format!(
                            "no lwtun route to {prefix} (see `{}`)",
                            self.ctx.command("route show")
                        ),
                    ));
                }
                for r in &found {
                    nl.delete_route(r)?;
                }
                done.routes_deleted += found.len();
            }
        }
        Ok(())
    }
}

/// Whether `b` can go in one batch call with the run that `a` starts: peer additions (or
/// deletions) of the same tunnel.
fn same_batch(a: &Edit, b: &Edit) -> bool {
    match (a, b) {
        (Edit::PeerAdd(p, ..), Edit::PeerAdd(q, ..)) => p == q,
        (Edit::PeerDel(p, _), Edit::PeerDel(q, _)) => p == q,
        _ => false,
    }
}

/// The error of opening a tunnel's tables for editing, with the command to fix it.
pub(crate) fn open_error(e: Error, pin: &Path) -> Error {
    match e.kind() {
        ErrorKind::NotFound => Error::other(
            ErrorKind::NotFound,
            "open pinned tunnel",
            format!(
                "{} holds no lwtun tunnel; load one with `lwtun tunnel load --pin {}`",
                pin.display(),
                pin.display()
            ),
        ),
        _ => e,
    }
}
