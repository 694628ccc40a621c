//! The subscription: one non-blocking `NETLINK_ROUTE` socket that joined the multicast groups
//! of the chosen [`EventKinds`], with the receive buffer the caller asked for.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::EventKinds;
use crate::error::{Error, Result};
use crate::netlink::nexthop::NEXTHOP_SINCE;

pub(super) const RTNLGRP_LINK: u32 = 1;
pub(super) const RTNLGRP_NEIGH: u32 = 3;
pub(super) const RTNLGRP_IPV4_IFADDR: u32 = 5;
pub(super) const RTNLGRP_IPV4_ROUTE: u32 = 7;
pub(super) const RTNLGRP_IPV4_RULE: u32 = 8;
pub(super) const RTNLGRP_IPV6_IFADDR: u32 = 9;
pub(super) const RTNLGRP_IPV6_ROUTE: u32 = 11;
pub(super) const RTNLGRP_IPV6_RULE: u32 = 19;
pub(super) const RTNLGRP_IPV4_NETCONF: u32 = 24;
pub(super) const RTNLGRP_IPV6_NETCONF: u32 = 25;
pub(super) const RTNLGRP_NEXTHOP: u32 = 32;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;

/// The multicast groups of each kind.
pub(super) fn groups(kinds: EventKinds) -> Vec<(EventKinds, u32)> {
    [
        (EventKinds::LINK, RTNLGRP_LINK),
        (EventKinds::ADDRESS, RTNLGRP_IPV4_IFADDR),
        (EventKinds::ADDRESS, RTNLGRP_IPV6_IFADDR),
        (EventKinds::ROUTE, RTNLGRP_IPV4_ROUTE),
        (EventKinds::ROUTE, RTNLGRP_IPV6_ROUTE),
        (EventKinds::NEIGH, RTNLGRP_NEIGH),
        (EventKinds::NEXTHOP, RTNLGRP_NEXTHOP),
    ]
    .into_iter()
    .filter(|(k, _)| kinds.contains(*k))
    .collect()
}

/// What joining `group` failing with `errno` means: a kernel without nexthop objects has no
/// group 32 and answers `EINVAL`.
pub(super) fn membership_error(group: u32, errno: i32) -> Error {
    let op = "subscribe to rtnetlink events";
    if group == RTNLGRP_NEXTHOP && errno == libc::EINVAL {
        return Error::unsupported(
            op,
            "nexthop object events (RTNLGRP_NEXTHOP)",
            Some(NEXTHOP_SINCE),
        )
        .with_hint("leave EventKinds::NEXTHOP out of the kinds on this kernel");
    }
    Error::io(op, io::Error::from_raw_os_error(errno)).with_object(format!("group {group}"))
}

/// What one read of the socket gave.
pub(super) enum Recv {
    /// A datagram of this many bytes.
    Data(usize),
    /// Nothing queued.
    Empty,
    /// The kernel dropped events (`ENOBUFS`).
    Overrun,
}

/// The subscribed socket.
#[derive(Debug)]
pub(super) struct Subscription {
    fd: OwnedFd,
}

impl Subscription {
    /// Opens the socket in the calling thread's namespace, joins the groups of `kinds` and sets
    /// the receive buffer to `rcvbuf` bytes (`SO_RCVBUFFORCE`, else `SO_RCVBUF`, capped by
    /// `net.core.rmem_max`).
    pub(super) fn open(kinds: EventKinds, rcvbuf: usize) -> Result<Subscription> {
        let groups: Vec<u32> = groups(kinds).into_iter().map(|(_, g)| g).collect();
        Subscription::open_groups(&groups, false, rcvbuf)
    }

    /// [`open`](Self::open) for raw multicast group numbers; with `skip_absent_nexthop` a
    /// kernel without the nexthop group (`EINVAL` on joining group 32) is no error: the socket
    /// goes without it.
    pub(super) fn open_groups(
        groups: &[u32],
        skip_absent_nexthop: bool,
        rcvbuf: usize,
    ) -> Result<Subscription> {
        let op = "open rtnetlink event socket";
        // SAFETY: plain socket(2); the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(Error::io(op, io::Error::last_os_error()));
        }
        // SAFETY: a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: addr is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::io(op, io::Error::last_os_error()));
        }
        for &group in groups {
            match setsockopt(
                &fd,
                libc::SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                group as libc::c_int,
            ) {
                Ok(()) => {}
                Err(libc::EINVAL) if skip_absent_nexthop && group == RTNLGRP_NEXTHOP => {}
                Err(errno) => return Err(membership_error(group, errno)),
            }
        }
        let size = libc::c_int::try_from(rcvbuf / 2).unwrap_or(libc::c_int::MAX);
        // The kernel doubles the value it is given (for its bookkeeping): ask for half.
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size)
                .map_err(|errno| Error::io(op, io::Error::from_raw_os_error(errno)))?;
        }
        Ok(Subscription { fd })
    }

    /// The receive buffer the kernel granted, in bytes (`SO_RCVBUF`).
    pub(super) fn receive_buffer(&self) -> usize {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for getsockopt to write.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            v.max(0) as usize
        } else {
            0
        }
    }

    /// Reads one datagram into `buf` without blocking.
    pub(super) fn recv(&self, buf: &mut [u8]) -> Result<Recv> {
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(Recv::Data(n as usize));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(Recv::Empty),
                Some(libc::ENOBUFS) => return Ok(Recv::Overrun),
                _ => return Err(Error::io("read rtnetlink events", err)),
            }
        }
    }

    /// Reads and drops everything queued (before a resync's dump, which covers it). Returns the
    /// number of datagrams dropped.
    pub(super) fn drain(&self, buf: &mut [u8]) -> Result<usize> {
        let mut dropped = 0;
        loop {
            match self.recv(buf)? {
                Recv::Data(_) => dropped += 1,
                Recv::Overrun => {}
                Recv::Empty => return Ok(dropped),
            }
        }
    }
}

impl AsFd for Subscription {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn setsockopt(
    fd: &OwnedFd,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> std::result::Result<(), i32> {
    // SAFETY: setsockopt reads `value` for its size; the fd is a live socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn kinds_join_their_groups() {
        let g: Vec<u32> = groups(EventKinds::ROUTE | EventKinds::NEXTHOP)
            .into_iter()
            .map(|(_, g)| g)
            .collect();
        assert_eq!(
            g,
            vec![RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_NEXTHOP]
        );
        assert_eq!(groups(EventKinds::all()).len(), 7);
    }

    #[test]
    fn a_kernel_without_the_nexthop_group_is_unsupported() {
        let e = membership_error(RTNLGRP_NEXTHOP, libc::EINVAL);
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("5.3"), "{e}");
        let other = membership_error(RTNLGRP_LINK, libc::EPERM);
        assert_eq!(other.kind(), ErrorKind::Permission);
    }
}
