//! LWT nexthop objects: the device, gateway and BPF programs of many routes, held once by the
//! kernel (`ip nexthop add id N encap bpf xmit ... dev D`), installed as one RAII value.
//!
//! [`LwtNexthop`] gathers the nexthop (id or the kernel's pick, device, gateway, one program
//! per LWT hook, xmit headroom) and installs it in one `RTM_NEWNEXTHOP` whose `NHA_ENCAP`
//! carries the same LWT BPF attributes a route's `RTA_ENCAP` does. Routes then name it with
//! [`LwtRoute::nexthop`](crate::route::LwtRoute::nexthop) (`RTA_NH_ID`) instead of carrying an
//! encap each: the kernel parses the encap and builds its lightweight-tunnel state once, not
//! once per route, which is most of what installing many LWT routes costs it.
//!
//! ```text
//!  LwtNexthop ──install──▶ InstalledNexthop (id N: dev, via, encap bpf in/out/xmit)
//!                              ▲        ▲
//!  LwtRoute::nexthop(&nh) ─────┘        └──── ... 100k routes `DST nhid N`
//! ```
//!
//! The trade-offs:
//! - `ip route show` prints `nhid N` for such a route; with `net.ipv4.nexthop_compat_mode=1`
//!   (the default) the kernel also copies the nexthop's `encap bpf ...` and device into route
//!   dumps, with 0 it does not. `ip nexthop show` always shows the encap. lwtun's listings
//!   ([`crate::route::lwt_routes`], [`crate::route::program_of`]) report the nexthop's programs
//!   either way.
//! - Changing the nexthop's program ([`InstalledNexthop::set_program`], one `NLM_F_REPLACE`)
//!   changes it for every route over the nexthop at once: a feature, one request retargets
//!   100k routes.
//! - Deleting a nexthop (dropping its [`InstalledNexthop`]) deletes every route over it too:
//!   the kernel does not refuse to delete a nexthop in use. Keep the nexthop handle alive
//!   at least as long as the routes' handles.
//!
//! Kernel: Linux 5.3+ (nexthop objects; `NHA_ENCAP` was part of them from the first
//! version). Older kernels answer `EOPNOTSUPP`, reported as
//! [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) naming Linux 5.3.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::AsFd;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::lwt_spec::{collect_programs, take_program, RTPROT_LWTUN};
use crate::netlink::nexthop::Nexthop;
use crate::netlink::route::{Encap, RouteBatch};
use crate::netlink::Netlink;
use crate::program::{Hook, LwtProgram};

/// A nexthop object to install, with its programs.
///
/// Kernel: Linux 5.3+.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::{Hook, LwtRoute}};
///
/// let counter = LwtCounter::load()?;
/// let mut nl = Netlink::open()?;
/// let dev = nl.device("veth0")?;
/// let nh = LwtNexthop::new(Some(7))
///     .device(&dev)
///     .via("10.0.0.2".parse().unwrap())
///     .program(Hook::Xmit, counter.program(Hook::Xmit))
///     .install(&mut nl)?;
/// let route = LwtRoute::new("10.20.0.0/16".parse().unwrap()).nexthop(&nh).install(&mut nl)?;
/// // Dropping `nh` deletes the nexthop and, in the kernel, every route over it.
/// # drop(route);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
#[doc(alias = "ip nexthop")]
pub struct LwtNexthop {
    nexthop: Nexthop,
    device: Option<Device>,
    programs: Vec<(Hook, Result<LwtProgram>)>,
    headroom: Option<u32>,
}

impl LwtNexthop {
    /// A nexthop with id `id` (`None`: the kernel picks a free one at install), tagged
    /// [`RTPROT_LWTUN`], IPv4 unless a gateway or [`LwtNexthop::ipv6`] says otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::nexthop::LwtNexthop;
    ///
    /// assert_eq!(LwtNexthop::new(Some(7)).spec().id, 7);
    /// assert_eq!(LwtNexthop::new(None).spec().id, 0); // the kernel's pick
    /// ```
    pub fn new(id: Option<u32>) -> Self {
        let mut nexthop = Nexthop::new(id.unwrap_or(0));
        nexthop.protocol = RTPROT_LWTUN;
        LwtNexthop {
            nexthop,
            device: None,
            programs: Vec::new(),
            headroom: None,
        }
    }

    /// The output device (required). As for [`crate::route::LwtRoute::device`], the nexthop
    /// must be installed through a socket in the device's namespace.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netns::NetNs, nexthop::LwtNexthop};
    ///
    /// let dev = NetNs::current()?.device("eth0")?;
    /// let nh = LwtNexthop::new(None).device(&dev);
    /// assert_eq!(nh.spec().oif, Some(dev.index()));
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn device(mut self, device: &Device) -> Self {
        self.nexthop.oif = Some(device.index());
        self.device = Some(device.clone());
        self
    }

    /// A gateway; its family becomes the nexthop's.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::nexthop::LwtNexthop;
    ///
    /// let nh = LwtNexthop::new(Some(1)).via("fd00::1".parse().unwrap());
    /// assert!(nh.spec().ipv6);
    /// ```
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.nexthop.gateway = Some(gateway);
        self.nexthop.ipv6 = gateway.is_ipv6();
        self
    }

    /// Makes the nexthop IPv6 (`AF_INET6`). Without a gateway an IPv6 nexthop serves IPv4 and
    /// IPv6 routes; an IPv4 one (the default) IPv4 routes only.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::nexthop::LwtNexthop;
    ///
    /// assert!(LwtNexthop::new(Some(1)).ipv6().spec().ipv6);
    /// ```
    pub fn ipv6(mut self) -> Self {
        self.nexthop.ipv6 = true;
        self
    }

    /// Runs `program` at `hook` ([`Hook::In`], [`Hook::Out`] or [`Hook::Xmit`]) for every
    /// route over the nexthop. Anything `AsFd` holding an LWT program of the hook's type; the
    /// nexthop keeps its own reference.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{nexthop::LwtNexthop, program::LwtCounter, route::Hook};
    ///
    /// let counter = LwtCounter::load()?;
    /// let nh = LwtNexthop::new(None).program(Hook::Xmit, counter.program(Hook::Xmit));
    /// # let _ = nh;
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn program(mut self, hook: Hook, program: impl AsFd) -> Self {
        self.programs.retain(|(h, _)| *h != hook);
        self.programs.push((hook, take_program(hook, program)));
        self
    }

    /// Bytes the xmit program may push in front of the packet (at most 256), as for
    /// [`crate::route::LwtRoute::headroom`].
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::nexthop::LwtNexthop;
    ///
    /// let nh = LwtNexthop::new(Some(1)).headroom(24);
    /// # let _ = nh;
    /// ```
    pub fn headroom(mut self, bytes: u32) -> Self {
        self.headroom = Some(bytes);
        self
    }

    /// The nexthop as it stands now (programs are added at install).
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun::nexthop::LwtNexthop;
    ///
    /// assert_eq!(LwtNexthop::new(Some(3)).spec().protocol, lwtun::route::RTPROT_LWTUN);
    /// ```
    pub fn spec(&self) -> &Nexthop {
        &self.nexthop
    }

    /// Checks the programs against their hooks and builds the netlink nexthop.
    fn build(self) -> Result<(Nexthop, Vec<LwtProgram>)> {
        let op = "build LWT nexthop";
        let LwtNexthop {
            mut nexthop,
            programs,
            headroom,
            ..
        } = self;
        let object = nexthop.to_string();
        let (mut bpf, seg6, owned) = collect_programs(programs, op, &object)?;
        if seg6.is_some() {
            return Err(Error::invalid_input(
                op,
                "a nexthop runs LWT BPF programs (in/out/xmit); seg6local End.BPF is a route's",
            )
            .with_object(object));
        }
        bpf.headroom = headroom;
        nexthop.encap = Some(Encap::Bpf(bpf));
        nexthop.validate()?;
        Ok((nexthop, owned))
    }

    /// Installs the nexthop; fails with Exists if its id is taken.
    ///
    /// Kernel: Linux 5.3+.
    ///
    /// # Errors
    ///
    /// InvalidInput (nothing sent) for no device, no program, a program whose type does not fit
    /// its hook, headroom above 256, a gateway of the other family, a device of another
    /// namespace; Unsupported naming Linux 5.3 on kernels without nexthop objects; then the
    /// kernel's error with its ext-ack text. Nothing is left installed on error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::Hook, ErrorKind};
    ///
    /// let counter = LwtCounter::load()?;
    /// let mut nl = Netlink::open()?;
    /// let dev = nl.device("veth0")?;
    /// match LwtNexthop::new(None).device(&dev).program(Hook::Xmit, counter.program(Hook::Xmit)).install(&mut nl) {
    ///     Ok(nh) => println!("nexthop {}", nh.id()),
    ///     Err(e) if e.kind() == ErrorKind::Unsupported => println!("{e}"), // before Linux 5.3
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn install(self, nl: &mut Netlink) -> Result<InstalledNexthop> {
        if let Some(d) = &self.device {
            nl.check_device("install LWT nexthop", d)?;
        }
        let (mut nexthop, programs) = self.build()?;
        let owner = nl.try_clone()?;
        nexthop.id = nl.add_nexthop(&nexthop)?;
        Ok(InstalledNexthop {
            nl: owner,
            nexthop,
            programs,
            armed: true,
        })
    }
}

/// A nexthop object lwtun installed. Dropping it deletes the nexthop, and with it (the kernel
/// does so) every route over it, unless [`InstalledNexthop::persist`] was called. Best effort,
/// errors ignored; [`InstalledNexthop::remove`] reports them.
///
/// It owns a netlink socket in the namespace the nexthop was installed in and references to
/// its programs, which stay loaded while the handle lives; a persisted nexthop keeps its
/// programs loaded in the kernel by itself.
///
/// Kernel: Linux 5.3+.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::{Hook, LwtRoute}};
///
/// let (a, b) = (LwtCounter::load()?, LwtCounter::load()?);
/// let mut nl = Netlink::open()?;
/// let dev = nl.device("veth0")?;
/// let mut nh = LwtNexthop::new(None).device(&dev).program(Hook::Xmit, a.program(Hook::Xmit)).install(&mut nl)?;
/// let r = LwtRoute::new("10.20.0.0/16".parse().unwrap()).nexthop(&nh).install(&mut nl)?;
/// nh.set_program(Hook::Xmit, b.program(Hook::Xmit))?; // every route over `nh` now runs b's
/// drop(r);
/// nh.remove()?;
/// # Ok::<(), lwtun::Error>(())
/// ```
#[must_use = "dropping an InstalledNexthop deletes the nexthop and every route over it; call persist() to keep it"]
pub struct InstalledNexthop {
    nl: Netlink,
    nexthop: Nexthop,
    programs: Vec<LwtProgram>,
    armed: bool,
}

impl InstalledNexthop {
    /// The id routes name the nexthop by (`nhid`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::Hook};
    /// # let c = LwtCounter::load()?; let mut nl = Netlink::open()?; let dev = nl.device("veth0")?;
    /// let nh = LwtNexthop::new(Some(42)).device(&dev).program(Hook::Xmit, c.program(Hook::Xmit)).install(&mut nl)?;
    /// assert_eq!(nh.id(), 42);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn id(&self) -> u32 {
        self.nexthop.id
    }

    /// The nexthop as installed (with its id).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::Hook};
    /// # let c = LwtCounter::load()?; let mut nl = Netlink::open()?; let dev = nl.device("veth0")?;
    /// let nh = LwtNexthop::new(None).device(&dev).program(Hook::Xmit, c.program(Hook::Xmit)).install(&mut nl)?;
    /// println!("{}", nh.nexthop()); // id 1 encap bpf xmit lwtun:count_xmit:17 dev#2
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn nexthop(&self) -> &Nexthop {
        &self.nexthop
    }

    /// The programs the nexthop runs.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::Hook};
    /// # let c = LwtCounter::load()?; let mut nl = Netlink::open()?; let dev = nl.device("veth0")?;
    /// let nh = LwtNexthop::new(None).device(&dev).program(Hook::Xmit, c.program(Hook::Xmit)).install(&mut nl)?;
    /// assert_eq!(nh.programs()[0].id(), c.program(Hook::Xmit).id());
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn programs(&self) -> &[LwtProgram] {
        &self.programs
    }

    /// Swaps the program at `hook` for `program` in one `NLM_F_REPLACE`: every route over the
    /// nexthop runs the new program from then on, none ever runs neither. The other hooks'
    /// programs, the device, gateway and headroom stay.
    ///
    /// # Errors
    ///
    /// As [`LwtNexthop::install`]; on error the old program stays in place.
    ///
    /// # Examples
    ///
    /// See [`InstalledNexthop`].
    pub fn set_program(&mut self, hook: Hook, program: impl AsFd) -> Result<()> {
        let mut next = LwtNexthop {
            nexthop: self.nexthop.clone(),
            device: None,
            programs: self
                .programs
                .iter()
                .map(|p| (p.hook(), p.try_clone()))
                .collect(),
            headroom: self.nexthop.bpf_encap().and_then(|b| b.headroom),
        };
        next.nexthop.encap = None;
        next = next.program(hook, program);
        let (nexthop, programs) = next.build()?;
        self.nl.replace_nexthop(&nexthop)?;
        self.nexthop = nexthop;
        self.programs = programs;
        Ok(())
    }

    /// Keeps the nexthop (and the routes over it) after this value is gone, and returns it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use lwtun::{netlink::Netlink, nexthop::LwtNexthop, program::LwtCounter, route::Hook};
    /// # let c = LwtCounter::load()?; let mut nl = Netlink::open()?; let dev = nl.device("veth0")?;
    /// let nh = LwtNexthop::new(Some(9)).device(&dev).program(Hook::Xmit, c.program(Hook::Xmit)).install(&mut nl)?;
    /// let kept = nh.persist(); // `ip nexthop del id 9` or remove_leftovers() removes it later
    /// assert_eq!(kept.id, 9);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn persist(mut self) -> Nexthop {
        self.armed = false;
        self.nexthop.clone()
    }

    /// Deletes the nexthop now, and with it every route over it.
    ///
    /// # Errors
    ///
    /// The kernel's error (NotFound if someone else deleted it).
    ///
    /// # Examples
    ///
    /// See [`InstalledNexthop`].
    pub fn remove(mut self) -> Result<()> {
        self.armed = false;
        self.nl.delete_nexthop(self.nexthop.id)
    }
}

impl Drop for InstalledNexthop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.nl.delete_nexthop(self.nexthop.id);
        }
    }
}

impl fmt::Display for InstalledNexthop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.nexthop.fmt(f)
    }
}

impl fmt::Debug for InstalledNexthop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstalledNexthop")
            .field("nexthop", &self.nexthop)
            .field("programs", &self.programs)
            .field("armed", &self.armed)
            .finish()
    }
}

/// Deletes every nexthop tagged [`RTPROT_LWTUN`] (left by a process that persisted or
/// crashed), the routes over them first in one batch, and returns how many nexthops were
/// deleted. On a kernel without nexthop objects there is nothing to delete: `Ok(0)`.
///
/// # Errors
///
/// The dumps' errors, or the first failed delete.
///
/// # Examples
///
/// ```no_run
/// use lwtun::{netlink::Netlink, nexthop, route};
///
/// let mut nl = Netlink::open()?;
/// let routes = route::remove_leftovers(&mut nl)?;
/// let nexthops = nexthop::remove_leftovers(&mut nl)?;
/// println!("removed {routes} routes and {nexthops} nexthops");
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn remove_leftovers(nl: &mut Netlink) -> Result<usize> {
    let ours: Vec<u32> = match nl.nexthops() {
        Ok(all) => all
            .into_iter()
            .filter(|nh| nh.protocol == RTPROT_LWTUN)
            .map(|nh| nh.id)
            .collect(),
        Err(e) if e.kind() == crate::ErrorKind::Unsupported => return Ok(0),
        Err(e) => return Err(e),
    };
    if ours.is_empty() {
        return Ok(0);
    }
    // The kernel would delete the routes with their nexthop one by one; a batch is faster.
    let mut batch = RouteBatch::new();
    for r in nl.routes(&crate::netlink::route::RouteFilter::all())? {
        if r.nhid.is_some_and(|id| ours.contains(&id)) {
            batch.delete(r);
        }
    }
    nl.apply_batch(&batch)?.into_result()?;
    for id in &ours {
        nl.delete_nexthop(*id)?;
    }
    Ok(ours.len())
}
