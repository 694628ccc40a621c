//! The event monitor read as a `futures` `Stream`, driven by its descriptor's readiness.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::readiness::{Readiness, Source};
use crate::error::Result;
use crate::monitor::{Event, Monitor, Stamped};

// SAFETY: a monitor's descriptor is its epoll instance (the event socket and the peer
// journals' timer), which the monitor owns and keeps open, unchanged, until it is dropped (a
// resync dumps on a second socket; watching peers adds the timer to the same instance).
unsafe impl Source for Monitor {
    type Item = Stamped<Event>;

    fn try_next(&mut self) -> Result<Option<Stamped<Event>>> {
        Monitor::try_next(self)
    }
}

/// A [`Monitor`] as a `Stream` of events, for tokio programs: tokio's `AsyncFd` watches the
/// monitor's descriptor (the event socket, and the timer of the peer journals it watches, see
/// [`Monitor::watch_peers`]) and the stream reads with [`Monitor::try_next`], so no thread blocks waiting
/// for changes. The stream does not end by itself; an error (a resync whose dump failed) is
/// yielded and the stream goes on (the monitor tries the resync again).
///
/// Dropping the stream, or a `next` future, loses no event that was not yet returned.
/// Needs a tokio runtime with IO enabled (`Runtime::new`, `#[tokio::main]`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::aio::AsyncMonitor;
/// use lwtun::monitor::{Event, EventKinds, Monitor};
///
/// # async fn run() -> lwtun::Result<()> {
/// let mut events = AsyncMonitor::new(Monitor::open(EventKinds::ROUTE | EventKinds::LINK)?)?;
/// loop {
///     let event = events.next_event().await?;
///     if let Event::RouteRemoved(r) = &*event {
///         println!("#{}: {} deleted", event.seq, r.dst);
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct AsyncMonitor {
    socket: Readiness<Monitor>,
}

impl AsyncMonitor {
    /// Registers `monitor` with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) outside a tokio runtime;
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) when the descriptor cannot be registered.
    ///
    /// # Panics
    ///
    /// In a runtime built without IO (tokio's rule: build it with `enable_io` or `enable_all`;
    /// `#[tokio::main]` does).
    ///
    /// # Examples
    ///
    /// See [`AsyncMonitor`].
    pub fn new(monitor: Monitor) -> Result<Self> {
        Ok(AsyncMonitor {
            socket: Readiness::new(monitor, "register event monitor with tokio")?,
        })
    }

    /// The monitor (for [`Monitor::resyncs`], [`Monitor::known_routes`], ...).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn show(events: &lwtun::aio::AsyncMonitor) {
    /// println!("{} resync(s)", events.monitor().resyncs());
    /// # }
    /// ```
    pub fn monitor(&self) -> &Monitor {
        self.socket.get_ref()
    }

    /// Deregisters the monitor and gives it back; events still queued stay there.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn back(events: lwtun::aio::AsyncMonitor) -> lwtun::Result<()> {
    /// let mut monitor = events.into_inner();
    /// let next = monitor.next()?; // read synchronously from here on
    /// # Ok(()) }
    /// ```
    pub fn into_inner(self) -> Monitor {
        self.socket.into_inner()
    }

    /// The next event, waiting for one without blocking the thread. Cancel-safe: dropping the
    /// future loses no event.
    ///
    /// # Errors
    ///
    /// As [`Monitor::try_next`], and [`ErrorKind::Io`](crate::ErrorKind::Io) when tokio fails
    /// to poll the descriptor.
    ///
    /// # Examples
    ///
    /// See [`AsyncMonitor`].
    pub async fn next_event(&mut self) -> Result<Stamped<Event>> {
        std::future::poll_fn(|cx| self.socket.poll_next_item(cx)).await
    }
}

impl Stream for AsyncMonitor {
    type Item = Result<Stamped<Event>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().socket.poll_next_item(cx).map(Some)
    }
}
