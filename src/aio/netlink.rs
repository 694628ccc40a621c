//! lwtun's netlink calls for async programs, on tokio's blocking pool.

use std::sync::{Arc, Mutex};

use crate::error::{Error, ErrorKind, Result};
use crate::netlink::addr::Address;
use crate::netlink::link::Link;
use crate::netlink::route::{BatchReport, Route, RouteBatch, RouteFilter};
use crate::netlink::Netlink;
use crate::netns::NetNs;
use crate::route::{InstalledRoute, LwtRoute};

/// A [`Netlink`] socket for async programs: each call runs on tokio's blocking pool
/// (`spawn_blocking`) and the task awaits it; calls on one `AsyncNetlink` run one at a time
/// (they share the socket and its sequence numbers), calls on clones too. Open one per
/// namespace; the socket works in the namespace it was opened in, whichever thread runs the call.
///
/// Why the blocking pool rather than a readiness-driven socket: see the [module](super) docs.
/// Dropping a call's future does not withdraw its request (it completes, its answer dropped).
///
/// # Examples
///
/// ```no_run
/// use lwtun::aio::AsyncNetlink;
/// use lwtun::netlink::route::{Route, RouteFilter};
///
/// # async fn run() -> lwtun::Result<()> {
/// let nl = AsyncNetlink::open()?;
/// let lo = nl.link_by_name("lo").await?;
/// let mut route = Route::new("10.99.0.0/24".parse().unwrap());
/// route.oif = Some(lo.index);
/// nl.add_route(route.clone()).await?;
/// assert!(nl.routes(RouteFilter::all()).await?.iter().any(|r| r.dst == route.dst));
/// nl.delete_route(route).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct AsyncNetlink {
    socket: Arc<Mutex<Netlink>>,
}

impl From<Netlink> for AsyncNetlink {
    fn from(socket: Netlink) -> Self {
        AsyncNetlink {
            socket: Arc::new(Mutex::new(socket)),
        }
    }
}

impl AsyncNetlink {
    /// A socket in the calling thread's namespace (opening is one quick `socket` + `bind`, done
    /// in place).
    ///
    /// # Errors
    ///
    /// As [`Netlink::open`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink`].
    pub fn open() -> Result<Self> {
        Netlink::open().map(Self::from)
    }

    /// A socket in `netns` (opened in a short-lived thread that enters it, as
    /// [`Netlink::open_in`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::open_in`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn run() -> lwtun::Result<()> {
    /// let ns = lwtun::NetNs::open("blue")?;
    /// let nl = lwtun::aio::AsyncNetlink::open_in(&ns)?;
    /// # Ok(()) }
    /// ```
    pub fn open_in(netns: &NetNs) -> Result<Self> {
        Netlink::open_in(netns).map(Self::from)
    }

    /// Runs `f` with the socket on tokio's blocking pool: any sync call of [`Netlink`] (or of
    /// lwtun's types that take one), awaited.
    ///
    /// # Errors
    ///
    /// `f`'s error; [`ErrorKind::InvalidInput`] outside a tokio runtime; [`ErrorKind::Io`]
    /// when the runtime shuts down before the call ran, or the call panicked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink) -> lwtun::Result<()> {
    /// let up = nl.call(|nl| nl.link_by_name("eth0").map(|l| l.up)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Netlink) -> Result<T> + Send + 'static,
    {
        super::require_runtime("run a netlink call")?;
        let socket = Arc::clone(&self.socket);
        tokio::task::spawn_blocking(move || {
            // A call that panicked leaves the socket usable: requests are matched by sequence.
            let mut nl = socket.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut nl)
        })
        .await
        .map_err(|e| {
            Error::other(
                ErrorKind::Io,
                "run a netlink call",
                format!("the blocking task did not complete: {e}"),
            )
        })?
    }

    /// Adds `route` ([`Netlink::add_route`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::add_route`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink`].
    pub async fn add_route(&self, route: Route) -> Result<()> {
        self.call(move |nl| nl.add_route(&route)).await
    }

    /// Adds or replaces `route` ([`Netlink::replace_route`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::replace_route`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink, route: lwtun::netlink::route::Route) -> lwtun::Result<()> {
    /// nl.replace_route(route).await?;
    /// # Ok(()) }
    /// ```
    pub async fn replace_route(&self, route: Route) -> Result<()> {
        self.call(move |nl| nl.replace_route(&route)).await
    }

    /// Deletes `route` ([`Netlink::delete_route`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::delete_route`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink`].
    pub async fn delete_route(&self, route: Route) -> Result<()> {
        self.call(move |nl| nl.delete_route(&route)).await
    }

    /// Dumps the routes `filter` selects ([`Netlink::routes`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::routes`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink`].
    pub async fn routes(&self, filter: RouteFilter) -> Result<Vec<Route>> {
        self.call(move |nl| nl.routes(&filter)).await
    }

    /// Applies `batch`, pipelined, reporting each change ([`Netlink::apply_batch`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::apply_batch`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::route::{Route, RouteBatch};
    /// # async fn run(nl: lwtun::aio::AsyncNetlink) -> lwtun::Result<()> {
    /// let mut batch = RouteBatch::new();
    /// batch.add(Route::new("10.99.1.0/24".parse().unwrap()));
    /// let applied = nl.apply_batch(batch).await?.into_result()?;
    /// # Ok(()) }
    /// ```
    pub async fn apply_batch(&self, batch: RouteBatch) -> Result<BatchReport> {
        self.call(move |nl| nl.apply_batch(&batch)).await
    }

    /// Applies `batch` all or nothing ([`Netlink::apply_batch_atomic`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::apply_batch_atomic`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink, batch: lwtun::netlink::route::RouteBatch) -> lwtun::Result<()> {
    /// let applied = nl.apply_batch_atomic(batch).await?;
    /// # Ok(()) }
    /// ```
    pub async fn apply_batch_atomic(&self, batch: RouteBatch) -> Result<usize> {
        self.call(move |nl| nl.apply_batch_atomic(&batch)).await
    }

    /// Every link ([`Netlink::links`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::links`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink) -> lwtun::Result<()> {
    /// for link in nl.links().await? {
    ///     println!("{} {}", link.index, link.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn links(&self) -> Result<Vec<Link>> {
        self.call(|nl| nl.links()).await
    }

    /// The link named `name` ([`Netlink::link_by_name`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::link_by_name`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink`].
    pub async fn link_by_name(&self, name: &str) -> Result<Link> {
        let name = name.to_owned();
        self.call(move |nl| nl.link_by_name(&name)).await
    }

    /// The addresses of link `index`, or of every link ([`Netlink::addresses`]).
    ///
    /// # Errors
    ///
    /// As [`Netlink::addresses`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink) -> lwtun::Result<()> {
    /// for a in nl.addresses(None).await? {
    ///     println!("{a:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<Address>> {
        self.call(move |nl| nl.addresses(index)).await
    }

    /// Installs an LWT route ([`LwtRoute::install`]); the handle owns a socket of its own (a
    /// clone of this one's namespace), as the sync call's does.
    ///
    /// # Errors
    ///
    /// As [`LwtRoute::install`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(nl: lwtun::aio::AsyncNetlink, tunnel: &lwtun::Tunnel) -> lwtun::Result<()> {
    /// let route = nl.install(tunnel.route("10.90.0.0/24".parse().unwrap())).await?;
    /// // ...
    /// lwtun::aio::AsyncNetlink::remove(route).await?;
    /// # Ok(()) }
    /// ```
    pub async fn install(&self, route: LwtRoute) -> Result<InstalledRoute> {
        self.call(move |nl| route.install(nl)).await
    }

    /// Removes an installed route ([`InstalledRoute::remove`]) on the blocking pool, instead of
    /// in the task (as dropping the handle would).
    ///
    /// # Errors
    ///
    /// As [`InstalledRoute::remove`] and [`AsyncNetlink::call`].
    ///
    /// # Examples
    ///
    /// See [`AsyncNetlink::install`].
    pub async fn remove(route: InstalledRoute) -> Result<()> {
        super::require_runtime("remove a route")?;
        tokio::task::spawn_blocking(move || route.remove())
            .await
            .map_err(|e| {
                Error::other(
                    ErrorKind::Io,
                    "remove a route",
                    format!("the blocking task did not complete: {e}"),
                )
            })?
    }
}
