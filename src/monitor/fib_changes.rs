//! Wake-ups for every change a FIB lookup's answer depends on: a thread holding a
//! `NETLINK_ROUTE` socket of one namespace, subscribed to links, addresses, routes, policy
//! rules, neighbours, nexthop objects and forwarding settings, that calls back once per wake-up
//! in which anything arrived. Nothing is decoded: whoever caches lookups (the XDP router's route
//! cache) only needs to know that its answers may be stale.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::socket::{self, Recv, Subscription};
use crate::error::{Error, Result};
use crate::netns::NetNs;

/// Every change an output route lookup's answer (device, gateway)
/// depends on. A neighbour entry decides the next hop's MAC, never which next hop, and ARP
/// refreshes arrive all the time.
pub(crate) const ROUTING_GROUPS: [u32; 10] = [
    socket::RTNLGRP_LINK,
    socket::RTNLGRP_IPV4_IFADDR,
    socket::RTNLGRP_IPV4_ROUTE,
    socket::RTNLGRP_IPV4_RULE,
    socket::RTNLGRP_IPV6_IFADDR,
    socket::RTNLGRP_IPV6_ROUTE,
    socket::RTNLGRP_IPV6_RULE,
    socket::RTNLGRP_IPV4_NETCONF,
    socket::RTNLGRP_IPV6_NETCONF,
    socket::RTNLGRP_NEXTHOP,
];

/// Every multicast group whose messages can change what `bpf_fib_lookup` answers: the routing
/// groups and neighbours (a cached answer holds the next hop's MAC).
const GROUPS: [u32; 11] = with_neighbours(ROUTING_GROUPS);

const fn with_neighbours(routing: [u32; 10]) -> [u32; 11] {
    let mut all = [socket::RTNLGRP_NEIGH; 11];
    let mut i = 0;
    while i < routing.len() {
        all[i + 1] = routing[i];
        i += 1;
    }
    all
}

/// The socket's receive buffer: an overrun is only another "something changed", so a small
/// buffer loses nothing that matters.
const RECEIVE_BUFFER: usize = 256 << 10;

/// What the watching thread tells its callback.
#[derive(Debug)]
pub(crate) enum FibNotice {
    /// One or more changes arrived (or the kernel dropped some: `ENOBUFS`) since the last one.
    Changed,
    /// The socket failed; no more notices follow.
    Lost(Error),
}

/// The running watch; dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct FibChanges {
    /// An eventfd the thread polls beside the socket: written to stop it.
    stop: Arc<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl FibChanges {
    /// Subscribes in `netns` (the socket is made there; the thread may run anywhere), then
    /// starts the thread calling `notice` for every wake-up with changes. The subscription is
    /// complete when this returns, so a change made afterwards always reaches `notice`.
    pub(crate) fn start_in(
        netns: &NetNs,
        notice: impl FnMut(FibNotice) + Send + 'static,
    ) -> Result<FibChanges> {
        Self::start_groups_in(netns, &GROUPS, notice)
    }

    /// [`FibChanges::start_in`] for the given `RTNLGRP_*` groups only (such as
    /// [`ROUTING_GROUPS`]).
    pub(crate) fn start_groups_in(
        netns: &NetNs,
        groups: &[u32],
        mut notice: impl FnMut(FibNotice) + Send + 'static,
    ) -> Result<FibChanges> {
        let socket = netns.enter(|| Subscription::open_groups(groups, true, RECEIVE_BUFFER))?;
        // SAFETY: plain eventfd(2); the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(Error::io(
                "make the FIB change watch's stop event (eventfd)",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lwtun-fib-watch".into())
            .spawn(move || {
                if let Err(e) = watch(&socket, &stop_seen, &mut notice) {
                    notice(FibNotice::Lost(e));
                }
            })
            .map_err(|e| Error::io("start the FIB change watch thread", e))?;
        Ok(FibChanges {
            stop,
            thread: Some(thread),
        })
    }
}

/// The thread's loop: until `stop` is written, waits for the socket, empties it and calls
/// `notice` once if anything was there.
fn watch(socket: &Subscription, stop: &OwnedFd, notice: &mut impl FnMut(FibNotice)) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::io("wait for FIB changes", err));
        }
        if fds[1].revents != 0 {
            return Ok(());
        }
        let mut changed = false;
        while !matches!(socket.recv(&mut buf)?, Recv::Empty) {
            changed = true; // a datagram, or ENOBUFS: changes were dropped
        }
        if changed {
            notice(FibNotice::Changed);
        }
    }
}

impl Drop for FibChanges {
    fn drop(&mut self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from `one` to the eventfd the thread polls.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_route_change_wakes_the_watch_and_drop_joins_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                "SKIPPED a_route_change_wakes_the_watch_and_drop_joins_it: needs root\n".as_bytes(),
            );
            return;
        }
        let ns = NetNs::create_unique("lwt-fibw").unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = FibChanges::start_in(&ns, move |n| {
            let _ = tx.send(matches!(n, FibNotice::Changed));
        })
        .unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "quiet"
        );
        let out = ns
            .command("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        drop(watch);
        // The thread is gone: the callback (and its sender) was dropped with it.
        while rx.try_recv().is_ok() {}
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(10)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
