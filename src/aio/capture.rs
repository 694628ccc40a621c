//! A capture read as a `futures` `Stream`, driven by the ring buffer's readiness.

use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::capture::{Capture, Packet};
use crate::error::{Error, Result};

/// What tokio's `AsyncFd` registers: the capture, by its ring buffer's epoll descriptor.
#[derive(Debug)]
struct Readiness(Capture);

impl AsRawFd for Readiness {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
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
    fd: AsyncFd<Readiness>,
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
        super::require_runtime("register capture ring with tokio")?;
        // SAFETY: the descriptor is the ring buffer's epoll descriptor, owned by the ring inside
        // the capture that the AsyncFd owns: it stays open, and `as_raw_fd` returns that same
        // descriptor, until the AsyncFd is dropped or gives the capture back.
        let fd = unsafe { AsyncFd::register_with_interest(Readiness(capture), Interest::READABLE) }
            .map_err(|e| Error::io("register capture ring with tokio", e.into()))?;
        Ok(AsyncCapture { fd })
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
        &self.fd.get_ref().0
    }

    /// Deregisters the capture and gives it back; packets still in its ring stay there.
    ///
    /// # Examples
    ///
    /// See [`AsyncCapture`].
    pub fn into_inner(self) -> Capture {
        self.fd.into_inner().0
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
        std::future::poll_fn(|cx| self.poll_packet(cx)).await
    }

    fn poll_packet(&mut self, cx: &mut Context<'_>) -> Poll<Result<Packet>> {
        loop {
            let mut ready = match self.fd.poll_read_ready_mut(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Error::io("wait for capture ring", e)))
                }
                Poll::Pending => return Poll::Pending,
            };
            match ready.get_inner_mut().0.try_packet() {
                Ok(Some(p)) => return Poll::Ready(Ok(p)),
                // Empty: forget the readiness (unless an event came since) and wait again.
                Ok(None) => ready.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl Stream for AsyncCapture {
    type Item = Result<Packet>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_packet(cx).map(Some)
    }
}
