//! # lwtun: own a BPF tunnel and packet-steering data plane
//!
//! lwtun installs routes whose packets run BPF programs at the lightweight-tunnel hooks
//! (`lwt_in`, `lwt_out`, `lwt_xmit`), edits the tables those programs read, and attaches tc and
//! XDP programs, all through typed Rust values instead of `ip route ... encap bpf` and bpftool.
//!
//! ```text
//!  user code
//!     │
//!     ▼
//!  route · netns · probe ·        domain modules (what users name)
//!     │              │
//!     ▼              ▼
//!  netlink (rtnetlink over neli)   program (owned BPF objects from bpf/*.bpf.c)
//!     │              │
//!     ▼              ▼
//!           the kernel
//! ```
//!
//! Everything lwtun installs is tagged: routes carry the protocol [`route::RTPROT_LWTUN`] and
//! LWT program names start with `lwtun:`, so leftovers of a crashed process can be found.
//!
//! # Devices and namespaces
//!
//! An interface index means something only inside one network namespace. Every call that
//! names a device takes a [`device::Device`], looked up once with [`netns::NetNs::device`]
//! (or [`netlink::Netlink::device`]) and bound to its namespace: a route, a tc or XDP
//! attachment, a devmap port or a redirect target made from it acts on that device whatever
//! namespace the calling thread is in, and a device from the wrong namespace is an error, not a
//! silently different device. [`netns::NetNs`] is the one namespace type: named ones
//! (`ip netns`), [`netns::NetNs::current`] for the caller's own, [`netns::NetNs::of_fd`] for a
//! descriptor.
//!
//! Every loaded program attaches through the same calls, whether it is a family's own program,
//! a [`chain::ProgChain`]'s or [`chain::Dispatcher`]'s entry, or a skeleton's program: anything
//! `AsFd` goes to [`tc::TcAttach::attach`], [`xdp::XdpAttachment::attach`] and
//! [`route::LwtRoute::program`], which check its type.
//!
//! # Errors
//!
//! Every fallible call returns [`Error`]; match on [`Error::kind`] (an [`ErrorKind`]), never on
//! the message text, which may improve between versions:
//!
//! ```no_run
//! use lwtun::{netns::NetNs, ErrorKind};
//!
//! match NetNs::current()?.device("eth9") {
//!     Ok(dev) => println!("{dev}"),
//!     Err(e) if e.kind() == ErrorKind::NotFound => println!("no eth9 here"),
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! # Example
//!
//! ```no_run
//! use lwtun::{netns::NetNs, program::LwtCounter, route::{LwtRoute, Hook}};
//!
//! let counter = LwtCounter::load()?;                      // the lwt_count program family
//! let ns = NetNs::open("lab")?;                           // made by `ip netns add lab`
//! let dev = ns.device("eth0")?;                           // eth0 of `lab`, from any thread
//! let route = LwtRoute::new("10.20.0.0/16".parse().unwrap())
//!     .device(&dev)
//!     .program(Hook::Xmit, counter.program(Hook::Xmit))
//!     .install(&mut dev.netlink()?)?;                     // removed again when `route` drops
//! println!("{route}");
//! # Ok::<(), lwtun::Error>(())
//! ```
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod abi;
#[cfg(feature = "capture")]
#[cfg_attr(docsrs, doc(cfg(feature = "capture")))]
pub mod capture;
pub mod chain;
pub mod decap;
pub mod device;
pub mod error;
mod family;
pub mod lwt_redirect;
pub mod netlink;
pub mod netns;
pub mod peer;
mod pin_lock;
pub mod probe;
pub mod program;
pub mod route;
pub mod seg6;
pub mod table;
pub mod tc;
pub mod tunnel;
pub mod tunnel_redirect;
pub mod xdp;

/// The libbpf-cargo skeletons of `bpf/*.bpf.c`, one module each. Their `types` modules hold the
/// Rust side of `bpf/lwtun.h`; their `OBJECT` constants the compiled objects.
pub mod skel {
    include!(concat!(env!("OUT_DIR"), "/skeletons.rs"));
}

pub use error::{Error, ErrorKind, Result};
