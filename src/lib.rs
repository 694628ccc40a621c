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
//! # Example
//!
//! ```no_run
//! use lwtun::{netlink::Netlink, program::LwtCounter, route::{LwtRoute, Hook}};
//!
//! let counter = LwtCounter::load()?;                      // the lwt_count program family
//! let mut nl = Netlink::open()?;
//! let dev = nl.link_by_name("eth0")?;
//! let route = LwtRoute::new("10.20.0.0/16".parse().unwrap())
//!     .device(dev.index)
//!     .program(Hook::Xmit, counter.program(Hook::Xmit))
//!     .install(&mut nl)?;                                 // removed again when `route` drops
//! println!("{route}");
//! # Ok::<(), lwtun::Error>(())
//! ```
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]

mod abi;
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
pub mod probe;
pub mod program;
pub mod route;
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
