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
//! # Your own programs
//!
//! A program you wrote and built into a `.bpf.o` goes where lwtun's own go: lwtun takes any
//! loaded program by its file descriptor and checks its type against the hook (a program of the
//! wrong type is an [`ErrorKind::InvalidInput`] naming both types, a map or any other fd is
//! refused naming what it holds). Load your object with libbpf-rs named through
//! [`lwtun::libbpf_rs`](crate::libbpf_rs), the version lwtun is built with, so that its types
//! meet lwtun's signatures. The object below is `examples/own/own_count.bpf.c`, which counts
//! packets by protocol into its map `own_counts`; `examples/own_program.rs` runs all four
//! placements with traffic and reads the counts. Your programs stay yours: lwtun keeps a
//! reference of its own to each program it is given, so dropping your `Object` while a route,
//! chain or dispatcher holds one of its programs leaves that program running (and its maps
//! alive) until lwtun's handle goes.
//!
//! **1. On an LWT route**, at the hook its section names (`SEC("lwt_xmit")` for
//! [`Hook::Xmit`]); `ip route show` then shows `encap bpf xmit
//! lwtun:own_lwt_xmit:ID`:
//!
//! ```no_run
//! use lwtun::libbpf_rs::ObjectBuilder;
//! use lwtun::{netns::NetNs, route::{Hook, LwtRoute}, Error};
//!
//! let object = ObjectBuilder::default()
//!     .open_file("own_count.bpf.o")
//!     .and_then(|open| open.load())
//!     .map_err(|e| Error::bpf("load own_count.bpf.o", e))?;
//! let xmit = object.progs().find(|p| p.name() == "own_lwt_xmit").expect("in the object");
//! let ns = NetNs::open("lab")?;
//! let dev = ns.device("eth0")?;
//! let route = LwtRoute::new("10.20.0.0/16".parse().unwrap())
//!     .device(&dev)
//!     .program(Hook::Xmit, &xmit)                // any program fd of the hook's type
//!     .install(&mut dev.netlink()?)?;            // removed when `route` drops
//! # let _ = route;
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! **2. As a chain stage** ([`chain::ProgChain`]): after lwtun's stages, or before them when your
//! program is built on lwtun's `bpf/chain.h` (see 4). A program that knows no chain ends the
//! chain with its own verdict.
//!
//! ```no_run
//! use lwtun::chain::{ChainHook, CountingStage, ProgChain};
//! # let object: lwtun::libbpf_rs::Object = todo!();
//!
//! let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
//! let counting = CountingStage::load(&chain)?;
//! chain.push(counting.program())?;
//! let own = object.progs().find(|p| p.name() == "own_lwt_xmit").expect("in the object");
//! chain.push(&own)?;                              // the last stage: its verdict ends the chain
//! // give chain.lwt_entry()? to a route as in 1.
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! **3. As a dispatcher member** ([`chain::Dispatcher`]): in a slot of its own; members before it
//! decide whether it runs. (Or hand the object's bytes to [`chain::Dispatcher::attach`], which
//! loads the program itself and keeps the object for [`chain::Dispatcher::member_object`].)
//!
//! ```no_run
//! use lwtun::chain::{ChainHook, Dispatcher};
//! use lwtun::xdp::{XdpAttachment, XdpOptions};
//! # let object: lwtun::libbpf_rs::Object = todo!();
//! # let dev: lwtun::Device = todo!();
//!
//! let mut dispatcher = Dispatcher::new(ChainHook::Xdp)?;
//! let _attachment = XdpAttachment::attach(dispatcher.entry(), &dev, XdpOptions::default())?;
//! // lwtun's member in slot 0 lets XDP_PASS (2) go on to slot 1.
//! dispatcher.attach(0, lwtun::skel::dispatch_member::OBJECT, "member_xdp", &[2])?;
//! let own = object.progs().find(|p| p.name() == "own_xdp").expect("in the object");
//! dispatcher.attach_program(1, &own)?;
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! **4. With a capture behind it**: a program built on lwtun's `bpf/chain.h` that ends with
//! `return lwtun_chain_next(ctx, verdict);` hands the packet on through the chain to its exit
//! hook, where a [`capture::Capture`] records it with your program's verdict. It must share the
//! chain's maps: [`chain::ProgChain::share_maps`] between opening and loading the object.
//!
//! ```no_run
//! use std::time::Duration;
//! use lwtun::capture::{Capture, CaptureOptions};
//! use lwtun::chain::{ChainHook, ProgChain};
//! use lwtun::libbpf_rs::ObjectBuilder;
//! use lwtun::Error;
//!
//! let mut chain = ProgChain::new(ChainHook::LwtXmit)?;
//! let mut open = ObjectBuilder::default()
//!     .open_file("own_count.bpf.o")
//!     .map_err(|e| Error::bpf("open own_count.bpf.o", e))?;
//! chain.share_maps(&mut open)?;
//! let object = open.load().map_err(|e| Error::bpf("load own_count.bpf.o", e))?;
//! let stage = object.progs().find(|p| p.name() == "own_stage").expect("in the object");
//! chain.push(&stage)?;
//! let mut capture = Capture::attach(&mut chain, CaptureOptions::default())?;
//! // give chain.lwt_entry()? to a route as in 1, then:
//! for packet in capture.poll(Duration::from_secs(1))? {
//!     println!("{}", packet.summary());          // "... BPF_OK IP 10.81.0.1 > ..."
//! }
//! # Ok::<(), lwtun::Error>(())
//! ```
//!
//! Read your maps with libbpf-rs as usual (`object.maps()`, [`libbpf_rs::MapCore::lookup`]).
//! lwtun's own objects are not yours to load this way: use their families
//! ([`program::LwtCounter`], [`chain::CountingStage`], ...).
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
pub mod keeper;
pub mod lwt_redirect;
mod lwt_spec;
pub mod monitor;
pub mod netlink;
pub mod netns;
pub mod nexthop;
pub mod peer;
pub mod probe;
pub mod program;
pub mod route;
pub mod seg6;
pub mod service;
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

/// libbpf-rs 0.27, the version lwtun is built with. Its types appear in lwtun's signatures:
/// `Error` ([`Error::bpf`], [`Error::verifier`]), `ProgramType` ([`program::Hook::program_type`],
/// [`chain::ChainHook::program_type`]), `Object` ([`chain::Dispatcher::member_object`],
/// [`chain::member_stats`]), `OpenObject` ([`chain::ProgChain::share_maps`]) and `MapHandle`
/// ([`xdp::StatsMap::from_handle`]); and any `AsFd` program you load with it goes to lwtun's
/// routes, chains and dispatchers (see [Your own programs](crate#your-own-programs)).
///
/// Name libbpf-rs through this re-export (`use lwtun::libbpf_rs::ObjectBuilder;`) instead of a
/// `libbpf-rs` dependency of your own: two versions of libbpf-rs are two sets of types, and an
/// `OpenObject` of another version does not fit [`chain::ProgChain::share_maps`]. The re-export
/// follows lwtun's dependency, so a new lwtun with a new libbpf-rs changes your code only where
/// libbpf-rs changed.
///
/// # Examples
///
/// ```
/// use lwtun::libbpf_rs::{Error, MapHandle, Object, OpenObject, ProgramType};
/// use lwtun::chain::{MemberStats, ProgChain};
///
/// assert_eq!(lwtun::route::Hook::Xmit.program_type(), ProgramType::LwtXmit);
/// // Every libbpf-rs type in lwtun's API is the one this re-export names:
/// let _: fn(&ProgChain, &mut OpenObject) -> lwtun::Result<()> = ProgChain::share_maps;
/// let _: fn(&Object) -> lwtun::Result<MemberStats> = lwtun::chain::member_stats;
/// let _: fn(MapHandle) -> lwtun::Result<lwtun::xdp::StatsMap> = lwtun::xdp::StatsMap::from_handle;
/// let _ = |e: Error| lwtun::Error::bpf("load my object", e);
/// ```
pub use libbpf_rs;
