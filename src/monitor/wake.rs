//! The monitor's one pollable descriptor: an epoll instance holding the event socket and, while
//! peer journals are watched, a periodic timer (a journal is memory, not a descriptor, so
//! nothing else could say "look again"). An event loop waits on this descriptor alone.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The epoll descriptor and the timer it holds once armed.
#[derive(Debug)]
pub(super) struct Wake {
    epoll: OwnedFd,
    timer: Option<OwnedFd>,
}

fn check(rc: libc::c_int, op: &'static str) -> Result<libc::c_int> {
    if rc < 0 {
        Err(Error::io(op, io::Error::last_os_error()))
    } else {
        Ok(rc)
    }
}

impl Wake {
    /// An epoll instance watching `socket` for input (level-triggered: readable while the
    /// socket has something queued).
    pub(super) fn new(socket: BorrowedFd<'_>) -> Result<Wake> {
        let op = "make the event monitor's descriptor (epoll)";
        // SAFETY: plain epoll_create1(2); the result is checked.
        let raw = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, op)?;
        // SAFETY: a fresh fd that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        let wake = Wake { epoll, timer: None };
        wake.add(socket, op)?;
        Ok(wake)
    }

    fn add(&self, fd: BorrowedFd<'_>, op: &'static str) -> Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_raw_fd() as u64,
        };
        // SAFETY: both fds are open; ev is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        };
        check(rc, op).map(drop)
    }

    /// Starts the periodic timer (once; later calls change nothing).
    pub(super) fn arm(&mut self, interval: Duration) -> Result<()> {
        if self.timer.is_some() {
            return Ok(());
        }
        let op = "arm the event monitor's peer journal timer (timerfd)";
        // SAFETY: plain timerfd_create(2); the result is checked.
        let raw = check(
            unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            },
            op,
        )?;
        // SAFETY: a fresh fd that nothing else owns.
        let timer = unsafe { OwnedFd::from_raw_fd(raw) };
        let spec = libc::timespec {
            tv_sec: interval.as_secs() as libc::time_t,
            tv_nsec: interval.subsec_nanos() as libc::c_long,
        };
        let its = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: its is a valid itimerspec; the old value is not asked for.
        let rc = unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &its, std::ptr::null_mut()) };
        check(rc, op)?;
        self.add(timer.as_fd(), op)?;
        self.timer = Some(timer);
        Ok(())
    }

    /// Whether the timer expired since the last call (reading it, so its descriptor is quiet
    /// again); false while it is not armed.
    pub(super) fn expired(&self) -> Result<bool> {
        let Some(timer) = &self.timer else {
            return Ok(false);
        };
        let mut count = 0u64;
        loop {
            // SAFETY: count is valid for 8 bytes of writes.
            let n = unsafe {
                libc::read(
                    timer.as_raw_fd(),
                    (&mut count as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n == std::mem::size_of::<u64>() as isize {
                return Ok(count > 0);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(false),
                _ => return Err(Error::io("read the event monitor's timer", err)),
            }
        }
    }

    /// Waits until the socket is readable or the timer expires, at most `timeout` (`None`:
    /// as long as it takes); false when the time ran out.
    pub(super) fn wait(&self, timeout: Option<Duration>) -> Result<bool> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up, so a wait never ends before its time.
                    libc::c_int::try_from(left.as_micros().div_ceil(1000))
                        .unwrap_or(libc::c_int::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.epoll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                return Ok(true);
            }
            if rc == 0 {
                return Ok(false);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(Error::io("wait for events", err));
            }
        }
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_wakes_the_descriptor_and_reading_it_quiets_it() {
        let (a, b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let mut wake = Wake::new(b.as_fd()).unwrap();
        assert!(!wake.wait(Some(Duration::from_millis(20))).unwrap());
        assert!(!wake.expired().unwrap(), "no timer yet");
        wake.arm(Duration::from_millis(5)).unwrap();
        assert!(wake.wait(Some(Duration::from_secs(2))).unwrap());
        assert!(wake.expired().unwrap());
        assert!(!wake.expired().unwrap(), "read once per expiry");
        a.send(b"x").unwrap();
        assert!(
            wake.wait(Some(Duration::ZERO)).unwrap(),
            "the socket wakes it"
        );
    }
}
