//! The `netdev` generic-netlink family (Linux 6.3): what XDP features a device has.
//!
//! `ip link` does not show these; `ynl --family netdev --dump dev-get` does. lwtun reads them
//! before it points a devmap port at a device, because a device without `ndo-xmit` (for
//! example a veth whose peer runs no XDP program and has GRO off) accepts the map entry and
//! then drops every redirected frame.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use bitflags::bitflags;

use super::attr;
use crate::error::{Error, Result};

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

bitflags! {
    /// A device's XDP features (`enum netdev_xdp_act`, Linux 6.3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct XdpFeatures: u64 {
        /// XDP_PASS, XDP_DROP, XDP_ABORTED, XDP_TX in the driver.
        const BASIC = 1 << 0;
        /// XDP_REDIRECT out of this device's program.
        const REDIRECT = 1 << 1;
        /// The device takes frames redirected into it (`ndo_xdp_xmit`).
        const NDO_XMIT = 1 << 2;
        /// AF_XDP zero copy.
        const XSK_ZEROCOPY = 1 << 3;
        /// Hardware offload.
        const HW_OFFLOAD = 1 << 4;
        /// Multi-buffer frames in the driver's programs.
        const RX_SG = 1 << 5;
        /// Multi-buffer frames redirected into the device.
        const NDO_XMIT_SG = 1 << 6;
    }
}

/// The XDP features of device `ifindex` in the calling thread's namespace, or `None` when the
/// kernel has no `netdev` family (before 6.3: nothing can be told).
///
/// Kernel: Linux 6.3+ (`netdev` generic netlink family); `Ok(None)` before.
///
/// # Errors
///
/// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) when there is no such device; the
/// kernel's error otherwise.
pub fn xdp_features(ifindex: u32) -> Result<Option<XdpFeatures>> {
    let op = "read XDP features";
    let sock = GenlSocket::open(op)?;
    let Some(family) = sock.family_id(op, "netdev")? else {
        return Ok(None);
    };
    let mut attrs = attr::Nest::new();
    attrs.u32(NETDEV_A_DEV_IFINDEX, ifindex);
    let reply = sock
        .request(op, family, NETDEV_CMD_DEV_GET, attrs.bytes())
        .map_err(|e| e.with_object(format!("ifindex {ifindex}")))?;
    Ok(attr::find(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(|v| XdpFeatures::from_bits_retain(u64::from_ne_bytes(v))))
}

struct GenlSocket {
    fd: OwnedFd,
}

impl GenlSocket {
    fn open(op: &str) -> Result<Self> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(Error::io(op, std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new socket nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads `one`; NETLINK_EXT_ACK (11) is optional.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                11,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(GenlSocket { fd })
    }

    /// The id of generic-netlink family `name`, `None` when the kernel has no such family.
    fn family_id(&self, op: &str, name: &str) -> Result<Option<u16>> {
        let mut attrs = attr::Nest::new();
        attrs.str(CTRL_ATTR_FAMILY_NAME, name);
        match self.request(op, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, attrs.bytes()) {
            Ok(reply) => Ok(attr::find(&reply, CTRL_ATTR_FAMILY_ID)
                .and_then(|v| <[u8; 2]>::try_from(v).ok())
                .map(u16::from_ne_bytes)),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request and returns the attributes of its answer (after the genl header).
    fn request(&self, op: &str, family: u16, cmd: u8, attrs: &[u8]) -> Result<Vec<u8>> {
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        msg.extend_from_slice(attrs);
        // SAFETY: msg is a valid buffer of msg.len() bytes; the socket is unconnected (the
        // kernel is the default destination of a netlink socket).
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(Error::io(op, std::io::Error::last_os_error()));
        }
        let mut payload = None;
        let mut buf = vec![0u8; 16384];
        loop {
            // SAFETY: buf is writable for its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(Error::io(op, std::io::Error::last_os_error()));
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= 16 {
                let mlen = u32::from_ne_bytes(rest[..4].try_into().unwrap_or([0; 4])) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                if mlen < 16 || mlen > rest.len() {
                    return Err(Error::other(
                        crate::ErrorKind::Kernel,
                        op,
                        "malformed generic-netlink answer",
                    ));
                }
                let body = &rest[16..mlen];
                if ty == libc::NLMSG_ERROR as u16 {
                    let errno = body
                        .get(..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                        .unwrap_or(0);
                    if errno == 0 {
                        return payload.ok_or_else(|| {
                            Error::other(crate::ErrorKind::Kernel, op, "the kernel sent no answer")
                        });
                    }
                    return Err(Error::netlink(op, -errno, None));
                }
                if ty == libc::NLMSG_DONE as u16 {
                    return payload.ok_or_else(|| {
                        Error::other(crate::ErrorKind::Kernel, op, "the kernel sent no answer")
                    });
                }
                if ty == family || family == GENL_ID_CTRL {
                    payload = Some(body.get(4..).unwrap_or_default().to_vec());
                }
                rest = &rest[(mlen + 3) & !3..];
                if rest.len() < 16 {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_features_of_loopback() {
        // Every kernel with the netdev family reports loopback; it has no XDP transmit.
        if let Ok(Some(f)) = xdp_features(1) {
            assert!(!f.contains(XdpFeatures::NDO_XMIT), "{f:?}");
        }
    }
}
