//! The async layer, for tokio programs (the `tokio` feature, off by default).
//!
//! ```text
//!  Capture ──(AsFd: ring buffer epoll fd)──▶ AsyncFd ──▶ AsyncCapture: Stream<Item = Result<Packet>>
//!  Monitor ──(AsFd: rtnetlink event socket)──▶ AsyncFd ──▶ AsyncMonitor: Stream<Item = Result<Stamped<Event>>>
//!  Netlink ──(Arc<Mutex<_>>)──▶ spawn_blocking ──▶ AsyncNetlink: async fn routes / add_route / apply_batch ...
//! ```
//!
//! - [`AsyncCapture`] reads a [`Capture`](crate::capture::Capture) as a `futures` `Stream`,
//!   driven by readiness: tokio's `AsyncFd` watches the ring buffer's epoll descriptor and the
//!   stream drains it with [`Capture::try_packet`](crate::capture::Capture::try_packet), which
//!   never blocks. No thread waits for packets.
//!   Every readiness-driven reader shares that one pattern (a descriptor readable while items
//!   wait, a non-blocking read): [`AsyncMonitor`] reads a
//!   [`Monitor`](crate::monitor::Monitor)'s events the same way.
//! - [`AsyncNetlink`] runs lwtun's netlink calls on tokio's blocking pool (`spawn_blocking`),
//!   one at a time per socket. This is a choice, not an oversight: every call is one short
//!   request/ACK exchange (a dump a few; a batch pipelines 256 requests per `sendmsg`), its
//!   sequence matching, extended-ACK and error decoding stay in one place (the sync
//!   [`Netlink`](crate::netlink::Netlink)), and the socket keeps the namespace it was opened in
//!   whichever pool thread runs it. The cost is one thread hop per call (tens of microseconds),
//!   small beside the kernel's own work for a route; a program that makes many changes should
//!   send them as one [`RouteBatch`](crate::netlink::route::RouteBatch) rather than many calls.
//!   A readiness-driven socket is the right shape for what waits for the kernel indefinitely:
//!   multicast events, which the monitor serves.
//!
//! Sharing: lwtun's handles of kernel objects are `Send + Sync` (see the crate's tests
//! `send_sync`), so a [`Tunnel`](crate::tunnel::Tunnel) can live in an
//! `Arc<tokio::sync::RwLock<_>>` with readers looking peers up (`&self`) while one task edits
//! (`&mut self`).
//!
//! Cancellation: dropping an [`AsyncCapture`]'s `next` future loses no packet (a packet is taken
//! from the ring only in the poll that returns it). Dropping an [`AsyncNetlink`] call's future
//! does not withdraw the request: it completes on the blocking pool and its answer is dropped, as
//! a netlink request already sent cannot be taken back.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::aio::AsyncNetlink;
//! use lwtun::netlink::route::RouteFilter;
//! use lwtun::netns::NetNs;
//!
//! # async fn run() -> lwtun::Result<()> {
//! let ns = NetNs::open("blue")?;
//! let nl = AsyncNetlink::open_in(&ns)?;
//! for route in nl.routes(RouteFilter::all()).await? {
//!     println!("{route}");
//! }
//! # Ok(()) }
//! ```

#[cfg(feature = "capture")]
mod capture;
mod monitor;
mod netlink;
mod readiness;

#[cfg(feature = "capture")]
pub use capture::AsyncCapture;
pub use monitor::AsyncMonitor;
pub use netlink::AsyncNetlink;

use crate::error::{Error, Result};

/// Fails with a clear error, instead of tokio's panic, when called outside a tokio runtime.
fn require_runtime(op: &str) -> Result<()> {
    tokio::runtime::Handle::try_current()
        .map(|_| ())
        .map_err(|_| {
            Error::invalid_input(op, "not inside a tokio runtime")
                .with_hint("call it from a task of a runtime (#[tokio::main], Runtime::block_on)")
        })
}
