//! Routes kept in place: a route its owner wants is put back when someone else deletes it.
//!
//! A [`RouteKeeper`] watches one network namespace's routes with a [`Monitor`] on a thread of
//! its own. When a route it keeps is deleted (`ip route del`, `lwtun leftovers --remove`, a
//! device's routes flushed by a script), it adds the route again, with the same programs, and
//! reports [`Event::RouteRestored`] with the time from the deletion's event to the route being
//! back; or [`Event::RouteNotRestored`] with the kernel's reason (the device is gone, say).
//!
//! What counts as *deleted* is an `RTM_DELROUTE` for the route's key (table, destination, TOS,
//! metric), or, after the kernel dropped events, a resync that no longer finds it. A route
//! *replaced* by someone else with other programs (`ip route replace`, another process taking
//! the route over with [`Tunnel::steer_replace`](crate::tunnel::Tunnel::steer_replace)) is
//! theirs now: the keeper lets it go, and does not put it back when it is deleted later.
//! (After changing a kept route's program yourself with
//! [`InstalledRoute::set_program`], [`keep`](RouteKeeper::keep) it again.) IPv4 routes the kernel flushes without a message (their device went down) are not
//! seen, so not restored.
//!
//! The owner tells the keeper before it removes a route itself ([`RouteKeeper::release`]), or
//! drops the keeper first: dropping it stops the thread and joins it.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use lwtun::keeper::RouteKeeper;
//! use lwtun::netlink::Netlink;
//! use lwtun::route::{Hook, LwtRoute};
//! use lwtun::tunnel::Tunnel;
//!
//! let tunnel = Tunnel::builder().forward_only(true).load()?;
//! let mut nl = Netlink::open()?;
//! let lo = nl.device("lo")?;
//! let route = LwtRoute::new("10.9.0.0/24".parse().unwrap())
//!     .device(&lo)
//!     .program(Hook::Xmit, tunnel.xmit_program())
//!     .install(&mut nl)?;
//! let keeper = RouteKeeper::start()?;
//! keeper.keep(&route)?;
//! // someone runs `ip route del 10.9.0.0/24`...
//! if let Some(event) = keeper.next_event(Duration::from_secs(1)) {
//!     println!("{event}"); // route restore 10.9.0.0/24 dev#1 encap bpf ... after 0.3 ms
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind, Result};
use crate::monitor::{Event, EventKinds, Monitor, RouteKey, Stamped};
use crate::netlink::route::{Encap, ProgRef, Route};
use crate::netlink::Netlink;
use crate::netns::{NetNs, NetNsId};
use crate::program::LwtProgram;
use crate::route::InstalledRoute;

/// How long the keeper's thread waits for an event before it looks at its stop flag: the
/// longest a drop of the keeper waits for the thread.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A route to put back, with its own references to its programs (so the programs stay loaded
/// and the fds the route names stay valid whatever its owner does with its handles).
struct Kept {
    route: Route,
    _programs: Vec<LwtProgram>,
}

/// What the owner and the keeper's thread share: the routes kept, by key.
type KeptRoutes = Arc<Mutex<HashMap<RouteKey, Kept>>>;

/// Keeps routes in one network namespace: puts back a kept route that someone else deletes.
/// See the [module documentation](self).
///
/// It is `Send` and `Sync`: [`keep`](Self::keep) and [`release`](Self::release) take `&self`.
///
/// # Examples
///
/// ```no_run
/// use lwtun::keeper::RouteKeeper;
/// use lwtun::netns::NetNs;
///
/// let ns = NetNs::open("lab")?;
/// let keeper = RouteKeeper::start_in(&ns)?;
/// for event in keeper.events() {
///     println!("{event}");
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct RouteKeeper {
    netns: NetNsId,
    kept: KeptRoutes,
    stop: Arc<AtomicBool>,
    restored: Arc<AtomicU64>,
    events: Mutex<Receiver<Stamped<Event>>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for RouteKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = self.kept.lock().map(|k| k.len()).unwrap_or(0);
        f.debug_struct("RouteKeeper")
            .field("kept", &kept)
            .field("restored", &self.restored())
            .finish()
    }
}

impl RouteKeeper {
    /// Starts keeping routes in the calling thread's network namespace (none kept yet: add
    /// them with [`keep`](Self::keep)).
    ///
    /// # Errors
    ///
    /// As [`Monitor::open`]; [`ErrorKind::Io`] when the thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// assert_eq!(keeper.restored(), 0);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn start() -> Result<RouteKeeper> {
        let netns = NetNs::current()?.id()?;
        let monitor = Monitor::open(EventKinds::ROUTE)?;
        let nl = Netlink::open()?;
        RouteKeeper::spawn(netns, monitor, nl)
    }

    /// Starts keeping routes in the namespace `netns`.
    ///
    /// # Errors
    ///
    /// As [`RouteKeeper::start`]; [`ErrorKind::Permission`] without the right to enter the
    /// namespace.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::keeper::RouteKeeper;
    /// use lwtun::netns::NetNs;
    ///
    /// let keeper = RouteKeeper::start_in(&NetNs::open("lab")?)?;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn start_in(netns: &NetNs) -> Result<RouteKeeper> {
        let monitor = Monitor::open_in(netns, EventKinds::ROUTE)?;
        let nl = netns.run(Netlink::open)?;
        RouteKeeper::spawn(netns.id()?, monitor, nl)
    }

    /// Starts keeping routes in the namespace an installed route lives in (the namespace of the
    /// netlink socket it was installed with).
    ///
    /// # Errors
    ///
    /// As [`RouteKeeper::start_in`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::keeper::RouteKeeper;
    /// # fn f(route: &lwtun::route::InstalledRoute) -> lwtun::Result<()> {
    /// let keeper = RouteKeeper::start_for(route)?;
    /// keeper.keep(route)?;
    /// # Ok(()) }
    /// ```
    pub fn start_for(route: &InstalledRoute) -> Result<RouteKeeper> {
        RouteKeeper::start_in(&NetNs::of_fd(route.netns()?)?)
    }

    /// The namespace whose routes it keeps.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    ///
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// assert_eq!(keeper.netns_id(), NetNs::current()?.id()?);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn netns_id(&self) -> NetNsId {
        self.netns
    }

    fn spawn(netns: NetNsId, monitor: Monitor, nl: Netlink) -> Result<RouteKeeper> {
        let kept: KeptRoutes = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let restored = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel();
        let watch = Watch {
            monitor,
            nl,
            kept: kept.clone(),
            stop: stop.clone(),
            restored: restored.clone(),
            tx,
            seq: 0,
        };
        let thread = std::thread::Builder::new()
            .name("lwtun-keeper".into())
            .spawn(move || watch.run())
            .map_err(|e| Error::io("start route keeper thread", e))?;
        Ok(RouteKeeper {
            netns,
            kept,
            stop,
            restored,
            events: Mutex::new(rx),
            thread: Some(thread),
        })
    }

    /// Keeps `route`: from now on, when someone deletes it, the keeper adds it again. The
    /// keeper holds its own references to the route's programs. Keeping a route with the key
    /// of one kept already (table, destination, TOS, metric) keeps the newer one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] when the programs' fds cannot be duplicated (out of descriptors).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(route: &lwtun::route::InstalledRoute) -> lwtun::Result<()> {
    /// let keeper = lwtun::keeper::RouteKeeper::start_for(route)?;
    /// keeper.keep(route)?;
    /// assert!(keeper.keeps(route.route()));
    /// # Ok(()) }
    /// ```
    pub fn keep(&self, route: &InstalledRoute) -> Result<()> {
        let programs = route
            .programs()
            .iter()
            .map(LwtProgram::try_clone)
            .collect::<Result<Vec<_>>>()?;
        let spec = with_programs(route.route(), &programs);
        self.kept_routes().insert(
            RouteKey::of(&spec),
            Kept {
                route: spec,
                _programs: programs,
            },
        );
        Ok(())
    }

    /// Stops keeping the route with `route`'s key; call it before removing a kept route
    /// yourself. Returns whether it was kept.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn f(keeper: &lwtun::keeper::RouteKeeper, route: lwtun::route::InstalledRoute) -> lwtun::Result<()> {
    /// keeper.release(route.route());
    /// route.remove()?; // not put back
    /// # Ok(()) }
    /// ```
    pub fn release(&self, route: &Route) -> bool {
        self.kept_routes().remove(&RouteKey::of(route)).is_some()
    }

    /// Whether the route with `route`'s key is kept.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netlink::route::Route;
    ///
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// assert!(!keeper.keeps(&Route::new("10.0.0.0/8".parse().unwrap())));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn keeps(&self, route: &Route) -> bool {
        self.kept_routes().contains_key(&RouteKey::of(route))
    }

    /// How many routes the keeper has put back since it started.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// println!("{} route(s) put back", keeper.restored());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn restored(&self) -> u64 {
        self.restored.load(Ordering::Relaxed)
    }

    /// The next thing the keeper did ([`Event::RouteRestored`], [`Event::RouteNotRestored`]),
    /// waiting at most `timeout`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// if keeper.next_event(Duration::from_millis(100)).is_none() {
    ///     println!("nothing deleted");
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn next_event(&self, timeout: Duration) -> Option<Stamped<Event>> {
        let rx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        rx.recv_timeout(timeout).ok()
    }

    /// What the keeper did since last asked, without waiting.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let keeper = lwtun::keeper::RouteKeeper::start()?;
    /// for event in keeper.events() {
    ///     println!("{} {event}", event.seq);
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn events(&self) -> Vec<Stamped<Event>> {
        let rx = self.events.lock().unwrap_or_else(|p| p.into_inner());
        rx.try_iter().collect()
    }

    fn kept_routes(&self) -> std::sync::MutexGuard<'_, HashMap<RouteKey, Kept>> {
        // A panic on the keeper's thread while holding the lock leaves a map that is still
        // whole (inserts and removes only): keep using it.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// A keeper is as unwind-safe as the tunnel that holds it was before it had one: the routes kept
// are a map behind a mutex that is used whole after a panic (inserts and removes only, poison
// ignored), the event channel loses nothing a panic could leave half-written, and the thread
// handle is only joined on drop. Without these, `JoinHandle` and `Receiver` would take
// `UnwindSafe` away from `Tunnel`, which had it in 0.2.0.
impl std::panic::UnwindSafe for RouteKeeper {}
impl std::panic::RefUnwindSafe for RouteKeeper {}

impl Drop for RouteKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `route` naming `programs`' fds (the keeper's own duplicates) instead of its owner's.
fn with_programs(route: &Route, programs: &[LwtProgram]) -> Route {
    let mut spec = route.clone();
    let ours = |p: &mut Option<ProgRef>| {
        if let Some(r) = p {
            if let Some(prog) = programs.iter().find(|q| q.route_name() == r.name) {
                *r = prog.prog_ref();
            }
        }
    };
    match &mut spec.encap {
        Some(Encap::Bpf(b)) => {
            ours(&mut b.input);
            ours(&mut b.output);
            ours(&mut b.xmit);
        }
        Some(Encap::Seg6LocalBpf(r)) => {
            let mut one = Some(r.clone());
            ours(&mut one);
            if let Some(new) = one {
                *r = new;
            }
        }
        _ => {}
    }
    spec
}

/// What tells a route's owner apart: the names of the programs it runs (the kernel reports
/// the names it was given; lwtun's names carry the program's id) and its nexthop object.
fn programs(route: &Route) -> (Vec<&str>, Option<u32>) {
    fn name(p: &Option<ProgRef>) -> Option<&str> {
        p.as_ref().map(|p| p.name.as_str())
    }
    let names = match &route.encap {
        Some(Encap::Bpf(b)) => [name(&b.input), name(&b.output), name(&b.xmit)]
            .into_iter()
            .flatten()
            .collect(),
        Some(Encap::Seg6LocalBpf(p)) => vec![p.name.as_str()],
        _ => Vec::new(),
    };
    (names, route.nhid)
}

/// The keeper's thread: reads route events and puts kept routes back.
struct Watch {
    monitor: Monitor,
    nl: Netlink,
    kept: KeptRoutes,
    stop: Arc<AtomicBool>,
    restored: Arc<AtomicU64>,
    tx: Sender<Stamped<Event>>,
    seq: u64,
}

impl Watch {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            match self.monitor.next_timeout(STOP_POLL) {
                Ok(Some(event)) => match &event.event {
                    Event::RouteRemoved(gone) => self.put_back(gone, event.time),
                    Event::RouteAdded(now) | Event::RouteChanged(now) => self.let_go(now),
                    _ => {}
                },
                Ok(None) => {}
                // A failed resync dump: the monitor tries again on the next call.
                Err(_) => std::thread::sleep(STOP_POLL),
            }
        }
    }

    /// A kept route's key now holds a route with other programs: someone else replaced it,
    /// and it is theirs now.
    fn let_go(&mut self, now: &Route) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let key = RouteKey::of(now);
        if kept
            .get(&key)
            .is_some_and(|k| programs(&k.route) != programs(now))
        {
            kept.remove(&key);
        }
    }

    fn put_back(&mut self, gone: &Route, deleted: SystemTime) {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let Some(k) = kept.get(&RouteKey::of(gone)) else {
            return;
        };
        let event = match self.nl.add_route(&k.route) {
            Ok(()) => {
                self.restored.fetch_add(1, Ordering::Relaxed);
                Event::RouteRestored {
                    route: gone.clone(),
                    after: deleted.elapsed().unwrap_or_default(),
                }
            }
            // Someone added a route with this key in between: theirs stays.
            Err(e) if e.kind() == ErrorKind::Exists => return,
            Err(e) => Event::RouteNotRestored {
                route: gone.clone(),
                error: e.to_string(),
            },
        };
        drop(kept);
        self.seq += 1;
        let _ = self.tx.send(Stamped {
            seq: self.seq,
            time: SystemTime::now(),
            event,
        });
    }
}
