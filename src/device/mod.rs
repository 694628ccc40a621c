//! Network devices bound to their namespace.
//!
//! An interface index means something only inside one network namespace: index 3 in a test
//! namespace and index 3 on the host are unrelated devices. Every lwtun call that names a
//! device (a route's output device, a tc or XDP attachment, a devmap port, a redirect target)
//! takes a [`Device`], which carries the namespace it was looked up in, and resolves the index
//! there, whatever namespace the calling thread is in. A device is looked up by name with one
//! call, [`NetNs::device`] (or [`Netlink::device`] for the socket's namespace).
//!
//! ```text
//!  NetNs::create_unique("lab")? ──► ns.device("veth0")? ──► Device { index, name, netns }
//!                                                               │
//!        TcAttach::new(&dev, ..) · XdpAttachment::attach(.., &dev, ..) · DevMap::set(k, &dev, ..)
//!        LwtRoute::new(..).device(&dev) · Tunnel::attach_underlay(&dev) · Decap::attach(&dev)
//! ```
//!
//! A `Device` is a snapshot of the name and index: a device renamed or deleted and re-created
//! afterwards gets a new index, and calls with the old value fail with
//! [`ErrorKind::NotFound`] or act on whatever device holds the
//! index then, as the kernel's own interfaces do. [`Device::refresh`] looks it up again.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::netns::NetNs;
//!
//! let ns = NetNs::create_unique("dev")?;
//! ns.output("ip", ["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
//! let d0 = ns.device("d0")?;
//! assert!(d0.is_in(&ns)?);
//! assert!(!d0.is_in(&NetNs::current()?)?);  // not the host's device of that index
//! println!("{d0}");                         // d0 (ifindex 2, netns dev-4242-0)
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

mod counters;

pub(crate) use counters::link_stats;
pub use counters::DeviceCounters;

use crate::error::{Error, ErrorKind, Result};
use crate::netlink::link::{Link, MAX_NAME_LEN};
use crate::netlink::Netlink;
use crate::netns::{NetNs, NetNsId};

/// A network device in a known namespace: its index, its name when looked up, and a handle on
/// its namespace (which the value keeps alive).
///
/// Cheap to clone (the namespace handle is shared). Two values are equal when they name the
/// same index in the same namespace.
#[derive(Clone)]
pub struct Device {
    index: u32,
    name: String,
    netns: Arc<NetNs>,
    fd: Arc<OwnedFd>,
    id: NetNsId,
}

impl Device {
    /// Looks up the device `name` in `netns`. Same as [`NetNs::device`].
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] naming the device and the namespace;
    /// [`ErrorKind::InvalidInput`] for an empty name, one longer than 15 bytes, or one with
    /// `/`, whitespace or NUL.
    pub fn lookup(netns: &NetNs, name: &str) -> Result<Device> {
        let op = "look up device";
        validate_name(op, name)?;
        let held = netns.held_copy()?;
        let link = held
            .enter(|| Netlink::open()?.link_by_name(name))
            .map_err(|e| not_found_in(e, op, name, netns))?;
        Device::from_link(&link, held)
    }

    /// Looks up the device with index `index` in `netns`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when no device has that index there;
    /// [`ErrorKind::InvalidInput`] for index 0.
    pub fn lookup_index(netns: &NetNs, index: u32) -> Result<Device> {
        let op = "look up device";
        if index == 0 {
            return Err(Error::invalid_input(
                op,
                "interface index 0 names no device",
            ));
        }
        let held = netns.held_copy()?;
        let link = held
            .enter(|| Netlink::open()?.link_by_index(index))
            .map_err(|e| not_found_in(e, op, &format!("ifindex {index}"), netns))?;
        Device::from_link(&link, held)
    }

    /// The device `name` in the calling thread's namespace.
    ///
    /// # Errors
    ///
    /// As [`Device::lookup`].
    pub fn current(name: &str) -> Result<Device> {
        Device::lookup(&NetNs::current()?, name)
    }

    /// A device from a link a [`Netlink`] socket in `netns` reported.
    pub(crate) fn from_link(link: &Link, netns: NetNs) -> Result<Device> {
        let id = netns.id()?;
        let fd = netns.held().ok_or_else(|| {
            Error::other(
                ErrorKind::Io,
                "use device",
                "the namespace descriptor is not held",
            )
        })?;
        Ok(Device {
            index: link.index,
            name: link.name.clone(),
            fd,
            netns: Arc::new(netns),
            id,
        })
    }

    /// The interface index, valid in [`Device::netns`] only.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The name the device had when it was looked up.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace the device is in.
    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The identity of the device's namespace.
    pub fn netns_id(&self) -> NetNsId {
        self.id
    }

    /// Whether the device is in `netns`.
    ///
    /// # Errors
    ///
    /// As [`NetNs::id`].
    pub fn is_in(&self, netns: &NetNs) -> Result<bool> {
        Ok(netns.id()? == self.id)
    }

    /// The device's current state (flags, MTU, kind, XDP program, peer), read in its namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the device is gone.
    pub fn link(&self) -> Result<Link> {
        self.enter(|| Netlink::open()?.link_by_index(self.index))
            .map_err(|e| not_found_in(e, "read device", &self.to_string(), &self.netns))
    }

    /// The device's own counters: the kernel's link statistics and the driver's (`ethtool -S`;
    /// veth has XDP counters there), read in the device's namespace. lwtun's program counters
    /// count verdicts; frames dropped after a redirect show here, on the target device.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when the device is gone.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// let veth1 = lwtun::netns::NetNs::open("router")?.device("veth1")?;
    /// let before = veth1.counters()?;
    /// // ... traffic redirected into veth1 ...
    /// let d = veth1.counters()?.since(&before);
    /// println!("sent {} dropped {} xdp drops {}", d.tx_packets, d.tx_dropped, d.xdp_drops());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn counters(&self) -> Result<DeviceCounters> {
        let link = self.link()?;
        let mut c = counters::link_stats(&link).unwrap_or_default();
        c.driver = self.enter(|| counters::driver_stats(&link.name))?;
        Ok(c)
    }

    /// Looks the device up again by name (after a rename, move or re-creation its index
    /// changes).
    ///
    /// # Errors
    ///
    /// As [`Device::lookup`].
    pub fn refresh(&self) -> Result<Device> {
        Device::lookup(&self.netns, &self.name)
    }

    /// A netlink socket in the device's namespace.
    ///
    /// # Errors
    ///
    /// As [`Netlink::open`], and [`ErrorKind::Permission`] without `CAP_SYS_ADMIN` for
    /// another namespace.
    pub fn netlink(&self) -> Result<Netlink> {
        self.enter(Netlink::open)
    }

    /// Runs `f` on the calling thread moved into the device's namespace (see
    /// [`NetNs::enter`]): what resolves an interface index (a map update naming the device,
    /// `bpf_link_create`, a socket) sees this device's index there.
    ///
    /// # Errors
    ///
    /// As [`NetNs::enter`].
    pub fn enter<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.netns.enter(f)
    }

    /// A descriptor of the device's namespace, borrowed from the value (for
    /// `IFLA_NET_NS_FD` or `setns`).
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PartialEq for Device {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.id == other.id
    }
}

impl Eq for Device {}

impl std::hash::Hash for Device {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.index.hash(state);
        self.id.hash(state);
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ifindex {}, netns {})",
            self.name,
            self.index,
            self.netns.name()
        )
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("index", &self.index)
            .field("name", &self.name)
            .field("netns", &self.netns.name())
            .field("netns_id", &self.id)
            .finish()
    }
}

fn validate_name(op: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':')
        || name == "."
        || name == ".."
    {
        return Err(Error::invalid_input(
            op,
            format!(
                "{name:?} is not an interface name: 1 to {MAX_NAME_LEN} bytes without '/', ':', \
                 whitespace or NUL"
            ),
        ));
    }
    Ok(())
}

/// Turns a lookup's NotFound into one naming the device and the namespace, with the `ip`
/// command that lists the devices there: `ip -n NAME link` for a named namespace, `ip link`
/// for the caller's own, `nsenter --net=PATH ip link` for one known by descriptor only.
fn not_found_in(e: Error, op: &str, what: &str, netns: &NetNs) -> Error {
    if e.kind() != ErrorKind::NotFound {
        return e;
    }
    let own = NetNs::current()
        .and_then(|c| c.id())
        .ok()
        .zip(netns.id().ok())
        .is_some_and(|(a, b)| a == b);
    let (where_, list) = if netns.path().starts_with("/run/netns") {
        (
            format!("network namespace {}", netns.name()),
            format!("ip -n {} link", netns.name()),
        )
    } else if own {
        ("this network namespace".to_string(), "ip link".to_string())
    } else {
        (
            format!("network namespace {}", netns.name()),
            format!("nsenter --net={} ip link", netns.path().display()),
        )
    };
    Error::other(
        ErrorKind::NotFound,
        op,
        format!("no such device in {where_}"),
    )
    .with_object(what)
    .with_hint(format!("`{list}` lists the devices there"))
}

// Device lookups on the lower layers' types live here, with `Device`, so that netns and netlink
// need not know devices.

impl NetNs {
    /// The device `name` in this namespace, as a value that remembers the namespace: every
    /// call that takes a [`Device`] resolves its index here, whatever
    /// namespace the calling thread is in.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] naming the device and the namespace when there is no such
    /// device; [`ErrorKind::InvalidInput`] for a name longer than 15 bytes or with `/`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::netns::NetNs;
    ///
    /// let ns = NetNs::create_unique("dev")?;
    /// let lo = ns.device("lo")?;
    /// println!("{lo}");                          // lo (ifindex 1, netns dev-4242-0)
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn device(&self, name: &str) -> Result<Device> {
        Device::lookup(self, name)
    }

    /// The device with interface index `index` in this namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when no device has that index here.
    pub fn device_by_index(&self, index: u32) -> Result<Device> {
        Device::lookup_index(self, index)
    }
}

impl Netlink {
    /// The device `name` in this socket's namespace, bound to that namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when there is no such device.
    pub fn device(&mut self, name: &str) -> Result<Device> {
        let link = self.link_by_name(name)?;
        Device::from_link(&link, NetNs::of_fd(self.netns()?)?)
    }

    /// The device with index `index` in this socket's namespace.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NotFound`] when no device has that index.
    pub fn device_by_index(&mut self, index: u32) -> Result<Device> {
        let link = self.link_by_index(index)?;
        Device::from_link(&link, NetNs::of_fd(self.netns()?)?)
    }

    /// Fails unless `device` is in this socket's namespace: an index sent here names a device
    /// of this namespace, so a device from another would silently be a different one.
    pub(crate) fn check_device(&self, op: &str, device: &Device) -> Result<()> {
        if self.netns_id()? == device.netns_id() {
            return Ok(());
        }
        Err(Error::invalid_input(
            op,
            format!(
                "{device} is not in this netlink socket's network namespace ({}); open the \
                 socket with Netlink::open_in(device.netns()) or device.netlink()",
                self.netns_id()?
            ),
        ))
    }
}
