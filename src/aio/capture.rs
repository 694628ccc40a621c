//! A capture read as a `futures` `Stream`, driven by the ring buffer's readiness.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;

use super::readiness::{Readiness, Source};
use crate::capture::{Capture, Packet};
use crate::error::Result;

// SAFETY: a capture's descriptor is its ring buffer's epoll descriptor, which the ring (owned by
// the capture) keeps open, unchanged, until the capture is dropped.
unsafe impl Source for Capture {
    type Item = Packet;

    fn try_next(&mut self) -> Result<Option<Packet>> {
        self.try_packet()
    }
}

/// A [`Capture`] as a `Stream` of packets, for tokio programs: tokio's `AsyncFd` watches the
/// ring buffer's epoll descriptor and the stream reads with [`Capture::try_packet`], so no thread
/// blocks waiting for packets. The stream does not end by itself; an error (a malformed record)
/// is yielded and the stream goes on.
///
/// Dropping the stream, or a `next` future, loses no packet that was not yet returned.
/// [`AsyncCapture::into_inner`] gives the [`Capture`] back (to detach it from its chain, or read
/// it synchronously).
///
/// Needs a tokio runtime with IO enabled (`Runtime::new`, `#[tokio::main]`).
///
/// # Examples
///
/// ```no_run
/// use lwtun::aio::AsyncCapture;
/// use lwtun::capture::{Capture, CaptureOptions};
/// use lwtun::chain::{ChainHook, ProgChain};
///
/// # async fn run() -> lwtun::Result<()> {
/// let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
/// // ... give chain.lwt_entry()? to a route ...
/// let capture = Capture::attach(&mut chain, CaptureOptions::default())?;
/// let mut packets = AsyncCapture::new(capture)?;
/// while let Ok(p) = packets.next_packet().await {
///     println!("{}", p.summary());
/// }
/// packets.into_inner().detach(&mut chain)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsyncCapture {
    ring: Readiness<Capture>,
}

impl AsyncCapture {
    /// Registers `capture` with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) outside a tokio runtime;
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) when the descriptor cannot be registered (a
    /// failure of epoll).
    ///
    /// # Panics
    ///
    /// In a runtime built without IO (tokio's rule: build it with `enable_io` or `enable_all`;
    /// `#[tokio::main]` does).
    ///
    /// # Examples
    ///
    /// See [`AsyncCapture`].
    pub fn new(capture: Capture) -> Result<Self> {
        Ok(AsyncCapture {
            ring: Readiness::new(capture, "register capture ring with tokio")?,
        })
    }

    /// The capture (for [`Capture::lost`], [`Capture::hook`], ...).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn show(packets: &lwtun::aio::AsyncCapture) -> lwtun::Result<()> {
    /// println!("{} lost", packets.capture().lost()?);
    /// # Ok(()) }
    /// ```
    pub fn capture(&self) -> &Capture {
        self.ring.get_ref()
    }

    /// Deregisters the capture and gives it back; packets still in its ring stay there.
    ///
    /// # Examples
    ///
    /// See [`AsyncCapture`].
    pub fn into_inner(self) -> Capture {
        self.ring.into_inner()
    }

    /// The next packet, waiting for one without blocking the thread (the stream's next item,
    /// without needing a `StreamExt` trait in scope). Cancel-safe: dropping the future loses no
    /// packet.
    ///
    /// # Errors
    ///
    /// As [`Capture::try_packet`], and [`ErrorKind::Io`](crate::ErrorKind::Io) when tokio fails
    /// to poll the descriptor.
    ///
    /// # Examples
    ///
    /// See [`AsyncCapture`].
    pub async fn next_packet(&mut self) -> Result<Packet> {
        std::future::poll_fn(|cx| self.ring.poll_next_item(cx)).await
    }
}

impl Stream for AsyncCapture {
    type Item = Result<Packet>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().ring.poll_next_item(cx).map(Some)
    }
}
