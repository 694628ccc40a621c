//! The one pattern every async reader of lwtun follows: a source with a descriptor that is
//! readable while items wait, and a non-blocking read; tokio's `AsyncFd` waits for readiness.
//!
//! A new reader (the capture today; the event monitor next) implements [`Source`] and wraps a
//! [`Readiness`] in its public type.

use std::os::fd::{AsRawFd, RawFd};
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::error::{Error, Result};

/// What can be read once its descriptor is readable.
///
/// # Safety
///
/// `as_raw_fd` must return the same open descriptor for as long as the value lives (tokio
/// registers it once, and deregisters it when the value is given back or dropped).
pub(crate) unsafe trait Source: AsRawFd {
    /// What one read gives.
    type Item;
    /// The next item if one waits, `Ok(None)` when none does; never blocks.
    fn try_next(&mut self) -> Result<Option<Self::Item>>;
}

/// A [`Source`] registered with the current tokio runtime.
#[derive(Debug)]
pub(crate) struct Readiness<S: Source> {
    fd: AsyncFd<Registered<S>>,
}

/// What `AsyncFd` holds: the source, by its descriptor.
#[derive(Debug)]
struct Registered<S>(S);

impl<S: Source> AsRawFd for Registered<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl<S: Source> Readiness<S> {
    /// Registers `source` for readability; `op` names it in errors.
    pub(crate) fn new(source: S, op: &str) -> Result<Self> {
        super::require_runtime(op)?;
        // SAFETY: `Source`'s contract: the descriptor stays open and the same while the source
        // lives, and the AsyncFd owns the source until it is dropped or gives it back.
        let fd = unsafe { AsyncFd::register_with_interest(Registered(source), Interest::READABLE) }
            .map_err(|e| Error::io(op.to_string(), e.into()))?;
        Ok(Readiness { fd })
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.fd.get_ref().0
    }

    pub(crate) fn into_inner(self) -> S {
        self.fd.into_inner().0
    }

    /// The next item: ready when one waits, pending (woken by readiness) when none does. An
    /// item leaves the source only in the poll that returns it, so a dropped future loses none.
    pub(crate) fn poll_next_item(&mut self, cx: &mut Context<'_>) -> Poll<Result<S::Item>> {
        loop {
            let mut ready = match self.fd.poll_read_ready_mut(cx) {
                Poll::Ready(Ok(ready)) => ready,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::io("wait for readiness", e))),
                Poll::Pending => return Poll::Pending,
            };
            match ready.get_inner_mut().0.try_next() {
                Ok(Some(item)) => return Poll::Ready(Ok(item)),
                // Empty: forget the readiness (unless an event came since) and wait again.
                Ok(None) => ready.clear_ready(),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
