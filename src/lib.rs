//! # lwtun: own a BPF tunnel and packet-steering data plane
//!
//! # Lifecycle
//!
//! Every lwtun value that puts something into the kernel owns it (RAII): dropping the value
//! takes it out again, so a process that ends normally leaves nothing behind. The stages, with
//! [`tunnel::Tunnel`] as the example:
//!
//! 1. **Load**: [`tunnel::Tunnel::load`] (or [`tunnel::TunnelBuilder::load`],
//!    [`program::LwtCounter::load`], [`xdp::XdpRouter`], [`decap::Decap`], ...) verifies the
//!    BPF programs and creates their maps. The value owns the programs and maps; they live as
//!    long as it does (or as long as something in the kernel still uses them).
//! 2. **Configure**: fill the tables: peers ([`peer::PeerTable::insert`],
//!    [`peer::PeerTable::insert_batch`]), rules of [`lwt_redirect::LwtRedirect`] or
//!    [`xdp::XdpRedirect`], devmap ports. Table entries belong to the maps, not to a route.
//! 3. **Attach / steer**: [`tunnel::Tunnel::steer`] installs routes ([`route::LwtRoute`] gives
//!    an [`route::InstalledRoute`]), [`tc::TcAttach::attach`] gives a [`tc::TcAttachment`],
//!    [`xdp::XdpAttachment::attach`] an [`xdp::XdpAttachment`]. Each handle removes its route
//!    or detaches its program when dropped; a tunnel owns the routes and underlay fix-ups it
//!    steered.
//! 4. **Run**: packets flow; read counters and events, edit peers and rules while traffic
//!    runs (the kernel writes each map element atomically).
//! 5. **Pin / keep / hand over**: with [`tunnel::TunnelBuilder::pin`] the maps are pinned in a
//!    bpffs folder (one owner at a time, held by a `flock`; every pinned family follows the
//!    same protocol, written down in [`pins`]). [`tunnel::Tunnel::keep_pinned`]
//!    leaves the pins when the tunnel drops (routes and fix-ups are still removed);
//!    [`tunnel::Tunnel::hand_over`] leaves the pins *and* the routes, so traffic never stops.
//!    A single handle can be left in the kernel with `persist`
//!    ([`route::InstalledRoute::persist`], [`tc::TcAttachment::persist`],
//!    [`xdp::XdpAttachment::persist`], [`netns::NetNs::persist`]).
//! 6. **Adopt**: a later process loads with the same pin folder and gets the same tables
//!    ([`tunnel::Tunnel::adopted`] says so), then takes the routes over with
//!    [`tunnel::Tunnel::steer_replace`] (one `NLM_F_REPLACE` request: no moment without a
//!    route). A read-only observer opens the pins with [`tunnel::PinnedTunnel::open`].
//! 7. **Drop / remove leftovers**: dropping the tunnel removes its pins (unless kept), its
//!    routes and its underlay fix-ups; the programs and maps go with their last user. What a killed process leaves (routes tagged
//!    [`route::RTPROT_LWTUN`], tc filters named `lwtun:`) is found and removed by
//!    [`route::remove_leftovers`] and [`tc::remove_leftovers`]. Something is a leftover only
//!    when no live process owns it: [`pins::owner`] names a pin folder's owner, and
//!    [`holders::Holders`] the processes holding a program, map or link by a descriptor.
//!
//! ```no_run
//! use lwtun::netlink::Netlink;
//! use lwtun::{Encap, EncapPeer, Tunnel};
//!
//! // 1. load (adopts the tables when a previous process kept or handed over the pins)
//! let mut tunnel = Tunnel::builder()
//!     .pin("/sys/fs/bpf/lwtun-demo")
//!     .source("10.30.0.1".parse().unwrap())
//!     .load()?;
//! // 2. configure
//! if !tunnel.adopted() {
//!     tunnel.peers_mut().insert(
//!         "10.20.0.0/16".parse().unwrap(),
//!         EncapPeer::new(
//!             "192.0.2.2".parse().unwrap(),
//!             "192.0.2.1".parse().unwrap(),
//!             Encap::Gre { key: None, checksum: false },
//!         ),
//!     )?;
//! }
//! // 3. steer: replaces a route a previous owner left, else installs it
//! let mut nl = Netlink::open()?;
//! let eth0 = nl.device("eth0")?;
//! let route = tunnel.route("10.20.0.0/16".parse().unwrap()).device(&eth0);
//! tunnel.steer_replace(&mut nl, route)?;
//! // 4. run ... then 5. leave pins and routes to the next version of this program
//! tunnel.hand_over()?;
//! // (or just drop `tunnel`: routes, fix-up and pins are removed)
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! # Overview
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
//! Many routes can share one encap: an LWT nexthop object ([`nexthop::LwtNexthop`], Linux 5.3)
//! holds the device and programs once, routes name it by id ([`route::LwtRoute::nexthop`]),
//! and one replace on the nexthop changes the program of all of them.
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
//!
//! # Kernel versions
//!
//! The crate's baseline is **Linux 4.10** (LWT BPF routes, `CONFIG_LWTUNNEL_BPF`): the core
//! types ([`route::LwtRoute`], [`program::LwtCounter`], [`netlink::Netlink`], [`netns::NetNs`])
//! work there. Every public item that needs more says so in a line of its docs starting with
//! "Kernel:", e.g. "Kernel: Linux 5.10+ (tcx: 6.6+)". A program family's line is the newest
//! feature its BPF object uses: libbpf loads every program of an object, so one helper decides
//! for the whole type. [`probe`] asks the running kernel for the features marked *probe*, with
//! the same versions ([`probe::Feature::since`]).
//!
//! The column "ran on" says where the item's tests (named) passed in `scripts/kernel-matrix.sh`
//! runs, which boot Debian's 5.10, 6.1 and 6.12 kernels in VMs next to the host's 6.18 (built
//! without seg6, ipip, gre and fou): every CI run covers the curated set (probe, route, tunnel
//! and decap test runs, SRv6 test runs, XDP programs, tc attach, interop, tc_redirect), and
//! `--full` everything. "typed" marks a kernel where the item answers
//! [`ErrorKind::Unsupported`] naming the feature, as its test checks.
//!
//! | feature | since | lwtun item | ran on |
//! |---|---|---|---|
//! | LWT BPF routes (`encap bpf`) *probe* | 4.10 | [`route::LwtRoute`], [`program::LwtCounter`] | 5.10, 6.1, 6.12, 6.18 (route) |
//! | LPM trie maps | 4.11 | [`lwt_redirect::LwtRedirect`], [`tunnel_redirect::TunnelRedirect`] | 5.10, 6.1, 6.12, 6.18 (tc_redirect) |
//! | map-in-map (`ARRAY_OF_MAPS`, `HASH_OF_MAPS`) | 4.12 | [`table::MapOfMaps`], [`chain::TableStage`] | 5.10, 6.1, 6.12, 6.18 (chain_table) |
//! | generic (skb) XDP, XDP test runs | 4.12 | [`xdp::XdpAttachment`], [`xdp::XdpProgram`] | 5.10, 6.1, 6.12, 6.18 (xdp_programs) |
//! | `BPF_OBJ_GET_INFO_BY_FD` | 4.13 | [`program::ProgramInfo`] | 5.10, 6.1, 6.12, 6.18 (tunnel_test_run) |
//! | devmap, `bpf_redirect_map` | 4.14 | [`xdp::DevMap`] | 5.10, 6.1, 6.12, 6.18 (xdp_programs) |
//! | seg6local | 4.14 | [`netlink::route::Seg6Local`] | 5.10, 6.1, 6.12; 6.18 typed (route) |
//! | collect_md ip6gre devices | 4.16 | [`netlink::Netlink::add_ip6gre_external`] | 5.10, 6.1, 6.12; 6.18 typed (link) |
//! | seg6local `End.BPF`, `bpf_lwt_seg6_*` | 4.18 | [`seg6::Seg6End`] | 5.10, 6.1, 6.12; 6.18 typed (seg6_test_run) |
//! | `bpf_fib_lookup` | 4.18 | [`xdp::XdpRouter`] | 5.10, 6.1, 6.12, 6.18 (xdp_programs, xdp_forwarding) |
//! | global data (`.rodata`) | 5.2 | [`chain::ProgChain`], [`chain::Dispatcher`] | 5.10, 6.1, 6.12, 6.18 (chain_table, chain_lwt) |
//! | `bpf_lwt_push_encap(BPF_LWT_ENCAP_IP)`, `BPF_LWT_REROUTE` *probe* | 5.3 | [`tunnel::Tunnel`] | 5.10, 6.1, 6.12, 6.18 (tunnel_test_run, interop); 5.10, 6.1, 6.18 (tunnel_tcp) |
//! | nexthop objects with an LWT encap (`ip nexthop ... encap bpf`, routes by `nhid`) | 5.3 | [`nexthop::LwtNexthop`], [`route::LwtRoute::nexthop`], [`netlink::nexthop`] | 5.10, 6.1, 6.12, 6.18 (route) |
//! | `BPF_MAP_TYPE_DEVMAP_HASH` | 5.4 | [`xdp::DevMapKind::Hash`] | 5.10, 6.1, 6.12, 6.18 (xdp_programs) |
//! | `XDP_FLAGS_REPLACE` | 5.7 | [`netlink::Netlink::replace_xdp_fd`] | 5.10, 6.1, 6.12, 6.18 (link) |
//! | devmap programs | 5.8 | [`xdp::XdpRedirect`] | 5.10, 6.1, 6.12, 6.18 (xdp_programs) |
//! | BPF ring buffer | 5.8 | `capture::Capture` | 5.10, 6.1, 6.12, 6.18 (capture_tc) |
//! | XDP through a `bpf_link` *probe* | 5.9 | [`xdp::AttachVia`] | 5.10, 6.1, 6.12, 6.18 (probe, xdp_programs) |
//! | `bpf_ktime_get_coarse_ns` *probe* (before it: `bpf_ktime_get_ns`) | 5.11 | [`xdp::XdpRouter`]'s route cache | 6.1, 6.12, 6.18 (xdp_programs); 5.10 `bpf_ktime_get_ns` (xdp_forwarding) |
//! | batch operations on LPM tries *probe* | 5.13 | [`peer::PeerTable`] | 6.1, 6.12, 6.18; 5.10 typed (probe) |
//! | `bpf_loop` *probe* (before it: bounded-loop object variants) | 5.17 | [`tunnel::Tunnel`], [`peer::PeerTable`], [`decap::Decap`] | 6.1, 6.12, 6.18; 5.10 bounded variant (tunnel_tcp, decap_test_run) |
//! | `bpf_xdp_load_bytes`, XDP live-frame test runs | 5.18 | `capture::Capture`, [`xdp::TrafficGen`], [`xdp::LiveFrames`] | 6.1, 6.12, 6.18; 5.10 typed (capture_tc) |
//! | outer source in `bpf_skb_set_tunnel_key` *probe* | 6.0 | [`tunnel_redirect::TunnelKey::local`] | 6.1, 6.12, 6.18; 5.10 typed (tc_redirect) |
//! | `BPF_F_NO_TUNNEL_KEY` | 6.2 | [`tunnel_redirect::TunnelKeyFlags::NO_TUNNEL_KEY`] | not run |
//! | `bpf_skb_adjust_room` with `BPF_F_ADJ_ROOM_DECAP_L3_*` *probe* (4in6, 6in4 decap) | 6.3 | [`decap::Decap`] | 6.12, 6.18; 5.10, 6.1 typed (decap_test_run, interop) |
//! | `netdev` generic netlink (XDP features) | 6.3 | [`netlink::netdev::xdp_features`] | not run |
//! | tcx (`BPF_TCX_INGRESS`/`EGRESS` links) *probe* | 6.6 | [`tc::TcMode`], [`tc::TcxOrder`] | 6.12, 6.18; clsact before (tc_attach) |
#![deny(missing_docs)]
#![warn(unsafe_op_in_unsafe_fn)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod abi;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod aio;
mod bpf_fd;
#[cfg(feature = "capture")]
#[cfg_attr(docsrs, doc(cfg(feature = "capture")))]
pub mod capture;
pub mod chain;
pub mod decap;
pub mod device;
pub mod error;
mod family;
pub use family::pins;
pub mod holders;
pub mod lwt_redirect;
mod lwt_spec;
pub mod netlink;
pub mod netns;
pub mod nexthop;
pub mod peer;
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
/// Rust side of `bpf/lwtun.h`; their `OBJECT` constants the compiled objects. Generated code,
/// public for lwtun's own tests and benches: hidden from the docs, not part of the stable API.
#[doc(hidden)]
pub mod skel;

pub use error::{Error, ErrorKind, Result};

// The types most programs name, also at the crate root (each stays where it is documented):
// `use lwtun::{EncapPeer, LwtRoute, Tunnel};`.
pub use decap::Decap;
pub use device::Device;
pub use netns::NetNs;
pub use peer::{Encap, EncapPeer, MissPolicy};
pub use program::Hook;
pub use route::LwtRoute;
pub use tunnel::Tunnel;

/// The libbpf-rs lwtun is built with, whose types appear in some of lwtun's signatures
/// (`libbpf_rs::Error` in [`Error::bpf`], `libbpf_rs::ProgramType` in
/// [`program::Hook::program_type`], `MapHandle`s of tables): name them through this re-export
/// to get the same version lwtun uses.
///
/// # Examples
///
/// ```
/// use lwtun::libbpf_rs::ProgramType;
///
/// assert_eq!(lwtun::route::Hook::Xmit.program_type(), ProgramType::LwtXmit);
/// ```
pub use libbpf_rs;
