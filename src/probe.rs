//! Cached probes of the kernel features lwtun builds on, and the capability check.
//!
//! Every probe asks the running kernel, never its version string: it loads a tiny program,
//! installs a route or a link in a throwaway network namespace, or runs the map operation, and
//! reads the answer. A missing feature is an [`ErrorKind::Unsupported`] error that names it and
//! the first kernel version that has it. Answers (supported or not) are cached for the life of
//! the process; a probe that could not decide (for example for lack of privileges) is not
//! cached and is asked again next time.
//!
//! Probing needs what lwtun itself needs: `CAP_BPF` (or `CAP_SYS_ADMIN`) and `CAP_NET_ADMIN`
//! ([`require_caps`]), and `CAP_SYS_ADMIN` for the throwaway namespaces of the route and link
//! probes. Without them a probe returns [`ErrorKind::Permission`], never "unsupported".
//!
//! | probe | feature | since |
//! |---|---|---|
//! | [`lwt_routes`] | routes with `encap bpf` (`CONFIG_LWTUNNEL_BPF`) | 4.10 |
//! | [`lwt_encap_ip`] | `bpf_lwt_push_encap(BPF_LWT_ENCAP_IP)` in `lwt_xmit` | 5.3 |
//! | [`xdp_link`] | XDP attached through a `bpf_link` | 5.9 |
//! | [`lpm_batch`] | batch update/lookup on `BPF_MAP_TYPE_LPM_TRIE` | 5.13 |
//! | [`tcx`] | tcx (`BPF_TCX_INGRESS`/`EGRESS` links) | 6.6 |
//! | [`xdp_live_frames`] | `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` | 5.18 |
//! | [`decap_l3`] | `bpf_skb_adjust_room` with `BPF_F_ADJ_ROOM_DECAP_L3_*` | 6.3 |
//! | [`bpf_loop`] | the `bpf_loop` helper (else bounded-loop object variants) | 5.17 |
//! | [`Feature::XdpTestRunContext`] | XDP test runs with an `xdp_md` context | 5.15 |
//! | [`Feature::XdpLoadBytes`] | the `bpf_xdp_load_bytes` helper (XDP capture) | 5.18 |
//! | [`Feature::TunnelKeyLocal`] | an outer source in `bpf_skb_set_tunnel_key` | 6.0 |
//! | [`Feature::CoarseClock`] | `bpf_ktime_get_coarse_ns` in XDP (else `bpf_ktime_get_ns`) | 5.11 |
//! | [`seg6local`] | `lwt_seg6local` programs, End.BPF routes (`CONFIG_IPV6_SEG6_BPF`) | 4.18 |
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::probe;
//!
//! probe::require_caps("install routes")?;
//! probe::lwt_routes()?;                       // Unsupported error naming CONFIG_LWTUNNEL_BPF
//! println!("{}", probe::Features::detect());
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use libbpf_rs::libbpf_sys as sys;
use libbpf_rs::ProgramType;
use neli::consts::nl::NlmF;
use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rta, Rtm, RtmF, Rtn, Rtprot};
use neli::rtnl::{RtattrBuilder, RtmsgBuilder};
use neli::types::{Buffer, RtBuffer};

use crate::error::{Error, ErrorKind, Result, ENOTSUPP};
use crate::netlink::attr::Nest;
use crate::netlink::Netlink;

/// A kernel feature lwtun can probe for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// Routes whose packets run BPF programs at `lwt_in`/`lwt_out`/`lwt_xmit`.
    #[doc(alias = "CONFIG_LWTUNNEL_BPF")]
    LwtRoutes,
    /// `bpf_lwt_push_encap` with `BPF_LWT_ENCAP_IP` from `lwt_xmit` programs.
    #[doc(alias = "BPF_LWT_ENCAP_IP")]
    LwtEncapIp,
    /// XDP programs attached through a `bpf_link` (`BPF_LINK_CREATE` with `BPF_XDP`).
    XdpLink,
    /// `BPF_MAP_UPDATE_BATCH`/`BPF_MAP_LOOKUP_BATCH` on LPM trie maps.
    LpmBatch,
    /// tcx, the link-based tc attach points (`BPF_TCX_INGRESS`, `BPF_TCX_EGRESS`).
    Tcx,
    /// SRv6 End.BPF: `BPF_PROG_TYPE_LWT_SEG6LOCAL` programs and the seg6local routes that run
    /// them, built with `CONFIG_IPV6_SEG6_LWTUNNEL` and `CONFIG_IPV6_SEG6_BPF` (which also
    /// bring the kernel's own seg6 encap and seg6local actions).
    #[doc(alias = "CONFIG_IPV6_SEG6_BPF")]
    #[doc(alias = "BPF_PROG_TYPE_LWT_SEG6LOCAL")]
    Seg6Local,
    /// XDP test runs that inject real frames (`BPF_F_TEST_XDP_LIVE_FRAMES`). A kernel may also
    /// refuse them by policy (a security module answering EPERM to a caller that has
    /// `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), which the probe reports as absent.
    #[doc(alias = "BPF_F_TEST_XDP_LIVE_FRAMES")]
    XdpLiveFrames,
    /// `bpf_skb_adjust_room`'s `BPF_F_ADJ_ROOM_DECAP_L3_IPV4`/`_IPV6` flags, which change the
    /// network protocol of a packet while stripping its outer header: what [`Decap`] needs for
    /// IPv4-in-IPv6 and IPv6-in-IPv4 (same-family decap needs no flag).
    ///
    /// [`Decap`]: crate::decap::Decap
    #[doc(alias = "BPF_F_ADJ_ROOM_DECAP_L3_IPV4")]
    DecapL3,
    /// The `bpf_loop` helper. Where it is absent, [`Tunnel`] and [`Decap`] load a variant of
    /// their object whose checksum loop is bounded instead (the same programs and maps).
    ///
    /// [`Tunnel`]: crate::tunnel::Tunnel
    /// [`Decap`]: crate::decap::Decap
    #[doc(alias = "bpf_loop")]
    BpfLoop,
    /// XDP test runs given an `xdp_md` context (the ingress device), which a router's FIB
    /// lookup needs: [`XdpProgram::test_run_repeat`](crate::xdp::XdpProgram::test_run_repeat)
    /// with an ingress device.
    XdpTestRunContext,
    /// The `bpf_xdp_load_bytes` helper, with which a capture at an XDP chain's exit copies
    /// the packet ([`Capture`](crate::capture::Capture) on [`ChainHook::Xdp`]).
    ///
    /// [`ChainHook::Xdp`]: crate::chain::ChainHook::Xdp
    #[doc(alias = "bpf_xdp_load_bytes")]
    XdpLoadBytes,
    /// An outer source address in `bpf_skb_set_tunnel_key` (`local_ipv4`/`local_ipv6`), which
    /// [`TunnelKey::local`](crate::tunnel_redirect::TunnelKey::local) needs.
    TunnelKeyLocal,
    /// The `bpf_ktime_get_coarse_ns` helper in XDP programs. Where it is absent,
    /// [`XdpRouter`](crate::xdp::XdpRouter)'s route cache (on kernels whose tick rate libbpf
    /// cannot read) keeps time with `bpf_ktime_get_ns` instead: the same unit, a few
    /// nanoseconds dearer per cached frame.
    #[doc(alias = "bpf_ktime_get_coarse_ns")]
    CoarseClock,
}

impl Feature {
    /// Every feature, in the order [`Features`] prints them.
    pub const ALL: [Feature; 13] = [
        Feature::LwtRoutes,
        Feature::LwtEncapIp,
        Feature::XdpLink,
        Feature::LpmBatch,
        Feature::Tcx,
        Feature::Seg6Local,
        Feature::XdpLiveFrames,
        Feature::DecapL3,
        Feature::BpfLoop,
        Feature::XdpTestRunContext,
        Feature::XdpLoadBytes,
        Feature::TunnelKeyLocal,
        Feature::CoarseClock,
    ];

    /// What the feature is, in the words an error uses.
    pub fn name(self) -> &'static str {
        match self {
            Feature::LwtRoutes => "LWT BPF routes (CONFIG_LWTUNNEL_BPF)",
            Feature::LwtEncapIp => "bpf_lwt_push_encap with BPF_LWT_ENCAP_IP in lwt_xmit",
            Feature::XdpLink => "XDP bpf_link attachments",
            Feature::LpmBatch => "batch operations on LPM trie maps",
            Feature::Tcx => "tcx (BPF_TCX_INGRESS/BPF_TCX_EGRESS links)",
            Feature::Seg6Local => {
                "SRv6 End.BPF: lwt_seg6local programs and seg6local routes \
                 (CONFIG_IPV6_SEG6_LWTUNNEL and CONFIG_IPV6_SEG6_BPF)"
            }
            Feature::XdpLiveFrames => {
                "XDP live-frame test runs (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES)"
            }
            Feature::DecapL3 => {
                "decapsulation across families (bpf_skb_adjust_room with \
                 BPF_F_ADJ_ROOM_DECAP_L3_IPV4/IPV6)"
            }
            Feature::BpfLoop => "the bpf_loop helper",
            Feature::XdpTestRunContext => "XDP test runs with an xdp_md context (ingress device)",
            Feature::XdpLoadBytes => "the bpf_xdp_load_bytes helper",
            Feature::TunnelKeyLocal => {
                "an outer source address in bpf_skb_set_tunnel_key (local_ipv4/local_ipv6)"
            }
            Feature::CoarseClock => "the bpf_ktime_get_coarse_ns helper in XDP programs",
        }
    }

    /// What to use where the feature is absent.
    pub fn instead(self) -> &'static str {
        match self {
            Feature::LwtRoutes => {
                "steer with tc (tc::TcProgram) or XDP on the devices instead of routes, or use a \
                 kernel built with CONFIG_LWTUNNEL_BPF"
            }
            Feature::LwtEncapIp => {
                "encapsulate through a collect_md tunnel device (tunnel_redirect) instead"
            }
            Feature::XdpLink => "lwtun attaches XDP through netlink instead where it can",
            Feature::LpmBatch => "lwtun writes LPM entries one at a time instead (slower)",
            Feature::Tcx => "attach through clsact (tc::TcProgram's netlink attach) instead",
            Feature::Seg6Local => {
                "use a kernel built with CONFIG_IPV6_SEG6_LWTUNNEL=y and CONFIG_IPV6_SEG6_BPF=y \
                 (Debian's, Ubuntu's and RHEL's are); Seg6End::test_run logic is the same on \
                 every kernel that loads it"
            }
            Feature::XdpLiveFrames => {
                "send traffic from sockets instead (XdpProgram::test_run still checks verdicts); \
                 on a 5.18+ kernel that refuses with EPERM, a security module (BPF LSM, \
                 lockdown) forbids live frames to this process"
            }
            Feature::DecapL3 => {
                "send IPv4 inside IPv4 and IPv6 inside IPv6 to this host (Decap strips those on \
                 every kernel); a 4in6 or 6in4 packet is dropped and counted as an error"
            }
            Feature::BpfLoop => {
                "nothing to do: Tunnel and Decap load their bounded-loop variants by themselves"
            }
            Feature::XdpTestRunContext => {
                "test-run without an ingress device, or attach the program and send real traffic"
            }
            Feature::XdpLoadBytes => {
                "capture on a tc chain (ChainHook::Tc) of the same device instead, or with \
                 tcpdump"
            }
            Feature::TunnelKeyLocal => {
                "leave TunnelKey::local unset: the route to the remote then chooses the outer \
                 source (give the underlay device the address to use)"
            }
            Feature::CoarseClock => {
                "nothing to do: XdpRouter's route cache uses bpf_ktime_get_ns by itself"
            }
        }
    }

    /// The first mainline kernel version that has the feature.
    pub fn since(self) -> &'static str {
        match self {
            Feature::LwtRoutes => "4.10",
            Feature::LwtEncapIp => "5.3",
            Feature::XdpLink => "5.9",
            Feature::LpmBatch => "5.13",
            Feature::Tcx => "6.6",
            Feature::Seg6Local => "4.18",
            Feature::XdpLiveFrames => "5.18",
            Feature::DecapL3 => "6.3",
            Feature::BpfLoop => "5.17",
            Feature::XdpTestRunContext => "5.15",
            Feature::XdpLoadBytes => "5.18",
            Feature::TunnelKeyLocal => "6.0",
            Feature::CoarseClock => "5.11",
        }
    }

    /// Probes (or answers from the cache) whether the running kernel has the feature.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Unsupported`] naming the feature when it is absent; another kind when the
    /// probe itself failed (for example [`ErrorKind::Permission`]), which is not cached.
    pub fn check(self) -> Result<()> {
        let cell = &CACHE[self as usize];
        if let Some(known) = cell.get() {
            return known.to_result(self);
        }
        match run_probe(self) {
            Ok(supported) => {
                let known = if supported { Known::Yes } else { Known::No };
                let _ = cell.set(known);
                known.to_result(self)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the feature is present, for choosing between variants; a probe that cannot
    /// decide (no privileges) answers yes, so that the load that follows reports the cause.
    pub(crate) fn present(self) -> bool {
        !matches!(self.check(), Err(e) if e.kind() == ErrorKind::Unsupported)
    }

    /// [`Feature::check`] for an operation that needs the feature: the Unsupported error names
    /// `op` (for example `load SRv6 End function`) rather than the probe.
    pub(crate) fn require(self, op: &str) -> Result<()> {
        match self.check() {
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                Err(Error::unsupported(op, self.name(), Some(self.since()))
                    .with_hint(self.instead()))
            }
            other => other,
        }
    }

    fn op(self) -> &'static str {
        match self {
            Feature::LwtRoutes => "probe LWT BPF routes",
            Feature::LwtEncapIp => "probe BPF_LWT_ENCAP_IP",
            Feature::XdpLink => "probe XDP links",
            Feature::LpmBatch => "probe LPM trie batch operations",
            Feature::Tcx => "probe tcx",
            Feature::Seg6Local => "probe lwt_seg6local programs",
            Feature::XdpLiveFrames => "probe XDP live-frame test runs",
            Feature::DecapL3 => "probe BPF_F_ADJ_ROOM_DECAP_L3",
            Feature::BpfLoop => "probe bpf_loop",
            Feature::XdpTestRunContext => "probe XDP test runs with a context",
            Feature::XdpLoadBytes => "probe bpf_xdp_load_bytes",
            Feature::TunnelKeyLocal => "probe bpf_skb_set_tunnel_key with a local address",
            Feature::CoarseClock => "probe bpf_ktime_get_coarse_ns",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy)]
enum Known {
    Yes,
    No,
}

impl Known {
    fn to_result(self, feature: Feature) -> Result<()> {
        match self {
            Known::Yes => Ok(()),
            Known::No => {
                Err(
                    Error::unsupported(feature.op(), feature.name(), Some(feature.since()))
                        .with_hint(feature.instead()),
                )
            }
        }
    }
}

static CACHE: [OnceLock<Known>; Feature::ALL.len()] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// LWT BPF routes (`ip route ... encap bpf`), Linux 4.10. Probed by loading an `lwt_xmit`
/// program and installing a route that runs it, in a throwaway network namespace.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
pub fn lwt_routes() -> Result<()> {
    Feature::LwtRoutes.check()
}

/// `bpf_lwt_push_encap(skb, BPF_LWT_ENCAP_IP, ...)` from `lwt_xmit` programs, Linux 5.3.
/// Probed by verifying an `lwt_xmit` program that calls the helper (before 5.3 the helper is
/// not available to `lwt_xmit`).
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
#[doc(alias = "bpf_lwt_push_encap")]
pub fn lwt_encap_ip() -> Result<()> {
    Feature::LwtEncapIp.check()
}

/// tcx attach points, Linux 6.6. Probed by attaching a `tc` program through a
/// `BPF_TCX_INGRESS` link to the loopback of a throwaway network namespace.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
pub fn tcx() -> Result<()> {
    Feature::Tcx.check()
}

/// XDP links, Linux 5.9. Probed by attaching an XDP program through a `BPF_XDP` link to the
/// loopback (generic XDP) of a throwaway network namespace.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
pub fn xdp_link() -> Result<()> {
    Feature::XdpLink.check()
}

/// Batch update and lookup on LPM trie maps, Linux 5.13. Probed by writing two prefixes into
/// a new trie with one `BPF_MAP_UPDATE_BATCH` and reading them back with
/// `BPF_MAP_LOOKUP_BATCH`.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
#[doc(alias = "BPF_MAP_UPDATE_BATCH")]
pub fn lpm_batch() -> Result<()> {
    Feature::LpmBatch.check()
}

/// SRv6 End.BPF (`lwt_seg6local` programs, seg6local routes), Linux 4.18 with
/// `CONFIG_IPV6_SEG6_LWTUNNEL` and `CONFIG_IPV6_SEG6_BPF`. Probed by asking whether an
/// `lwt_seg6local` program may call `bpf_lwt_seg6_action`: a kernel built without them may know
/// the program type but gives it no seg6 helper.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
///
/// # Examples
///
/// ```no_run
/// match lwtun::probe::seg6local() {
///     Ok(()) => println!("End.BPF routes work here"),
///     Err(e) if e.kind() == lwtun::ErrorKind::Unsupported => println!("{e}"),
///     Err(e) => return Err(e),
/// }
/// # Ok::<(), lwtun::Error>(())
/// ```
#[doc(alias = "CONFIG_IPV6_SEG6_BPF")]
pub fn seg6local() -> Result<()> {
    Feature::Seg6Local.check()
}

/// XDP live-frame test runs (`BPF_F_TEST_XDP_LIVE_FRAMES`), Linux 5.18. Probed by injecting
/// one frame with a program that drops it, on the loopback of a throwaway namespace. A refusal
/// with EPERM while the caller has `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` is a security
/// policy of the kernel (seen on a 6.18 build with lockdown and the BPF LSM), reported as absent.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
///
/// # Examples
///
/// ```no_run
/// if lwtun::probe::xdp_live_frames().is_ok() {
///     println!("TrafficGen can inject frames here");
/// }
/// ```
#[doc(alias = "BPF_F_TEST_XDP_LIVE_FRAMES")]
pub fn xdp_live_frames() -> Result<()> {
    Feature::XdpLiveFrames.check()
}

/// Decapsulation across families (`BPF_F_ADJ_ROOM_DECAP_L3_IPV4`/`_IPV6`), Linux 6.3. Probed
/// by stripping the outer header of an IPv4-in-IPv6 frame in a test run.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
///
/// # Examples
///
/// ```no_run
/// if lwtun::probe::decap_l3().is_err() {
///     println!("only 4in4 and 6in6 are decapsulated here");
/// }
/// ```
#[doc(alias = "BPF_F_ADJ_ROOM_DECAP_L3_IPV6")]
pub fn decap_l3() -> Result<()> {
    Feature::DecapL3.check()
}

/// The `bpf_loop` helper, Linux 5.17. Probed by verifying a `tc` program that calls it.
///
/// # Errors
///
/// [`ErrorKind::Unsupported`] when absent; see [`Feature::check`].
///
/// # Examples
///
/// ```no_run
/// let variant = if lwtun::probe::bpf_loop().is_ok() { "bpf_loop" } else { "bounded loop" };
/// println!("the tunnel's checksum loop: {variant}");
/// ```
#[doc(alias = "BPF_FUNC_loop")]
pub fn bpf_loop() -> Result<()> {
    Feature::BpfLoop.check()
}

/// Whether a probe found a feature, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// The kernel has it.
    Yes,
    /// The kernel lacks it.
    No,
    /// The probe could not decide; the reason.
    Unknown(String),
}

/// Every probe's answer, for printing (`lwtun` examples print it at start).
///
/// # Examples
///
/// ```no_run
/// let features = lwtun::probe::Features::detect();
/// print!("{features}");
/// if features.tcx != lwtun::probe::Support::Yes {
///     eprintln!("falling back to clsact");
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Features {
    /// [`lwt_routes`].
    pub lwt_routes: Support,
    /// [`lwt_encap_ip`].
    pub lwt_encap_ip: Support,
    /// [`xdp_link`].
    pub xdp_link: Support,
    /// [`lpm_batch`].
    pub lpm_batch: Support,
    /// [`tcx`].
    pub tcx: Support,
    /// [`seg6local`].
    pub seg6local: Support,
    /// [`xdp_live_frames`].
    pub xdp_live_frames: Support,
    /// [`decap_l3`].
    pub decap_l3: Support,
    /// [`bpf_loop`].
    pub bpf_loop: Support,
    /// [`Feature::XdpTestRunContext`].
    pub xdp_test_run_context: Support,
    /// [`Feature::XdpLoadBytes`].
    pub xdp_load_bytes: Support,
    /// [`Feature::TunnelKeyLocal`].
    pub tunnel_key_local: Support,
    /// [`Feature::CoarseClock`].
    pub coarse_clock: Support,
}

impl Features {
    /// Runs (or reads from the cache) every probe.
    pub fn detect() -> Features {
        let get = |f: Feature| match f.check() {
            Ok(()) => Support::Yes,
            Err(e) if e.kind() == ErrorKind::Unsupported => Support::No,
            Err(e) => Support::Unknown(e.to_string()),
        };
        Features {
            lwt_routes: get(Feature::LwtRoutes),
            lwt_encap_ip: get(Feature::LwtEncapIp),
            xdp_link: get(Feature::XdpLink),
            lpm_batch: get(Feature::LpmBatch),
            tcx: get(Feature::Tcx),
            seg6local: get(Feature::Seg6Local),
            xdp_live_frames: get(Feature::XdpLiveFrames),
            decap_l3: get(Feature::DecapL3),
            bpf_loop: get(Feature::BpfLoop),
            xdp_test_run_context: get(Feature::XdpTestRunContext),
            xdp_load_bytes: get(Feature::XdpLoadBytes),
            tunnel_key_local: get(Feature::TunnelKeyLocal),
            coarse_clock: get(Feature::CoarseClock),
        }
    }

    /// The answer for one feature.
    pub fn get(&self, feature: Feature) -> &Support {
        match feature {
            Feature::LwtRoutes => &self.lwt_routes,
            Feature::LwtEncapIp => &self.lwt_encap_ip,
            Feature::XdpLink => &self.xdp_link,
            Feature::LpmBatch => &self.lpm_batch,
            Feature::Tcx => &self.tcx,
            Feature::Seg6Local => &self.seg6local,
            Feature::XdpLiveFrames => &self.xdp_live_frames,
            Feature::DecapL3 => &self.decap_l3,
            Feature::BpfLoop => &self.bpf_loop,
            Feature::XdpTestRunContext => &self.xdp_test_run_context,
            Feature::XdpLoadBytes => &self.xdp_load_bytes,
            Feature::TunnelKeyLocal => &self.tunnel_key_local,
            Feature::CoarseClock => &self.coarse_clock,
        }
    }
}

impl fmt::Display for Features {
    /// One line per feature: `yes`/`no`/`unknown`, the feature and its first kernel version.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for feature in Feature::ALL {
            let (word, why) = match self.get(feature) {
                Support::Yes => ("yes", String::new()),
                Support::No => ("no", String::new()),
                Support::Unknown(why) => ("unknown", format!(": {why}")),
            };
            writeln!(
                f,
                "{word:<8} {} (Linux {}){why}",
                feature.name(),
                feature.since()
            )?;
        }
        Ok(())
    }
}

/// A Linux capability lwtun's operations need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `CAP_NET_ADMIN` (12): routes, links, tc, XDP.
    NetAdmin,
    /// `CAP_SYS_ADMIN` (21): namespaces, mounts; stands in for `CAP_BPF` before Linux 5.8.
    SysAdmin,
    /// `CAP_BPF` (39, Linux 5.8): loading programs, creating maps.
    Bpf,
}

impl Capability {
    /// The capability's name, such as `CAP_BPF`.
    pub fn name(self) -> &'static str {
        match self {
            Capability::NetAdmin => "CAP_NET_ADMIN",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
            Capability::Bpf => "CAP_BPF",
        }
    }

    fn bit(self) -> u32 {
        match self {
            Capability::NetAdmin => 12,
            Capability::SysAdmin => 21,
            Capability::Bpf => 39,
        }
    }

    /// Whether the calling thread has the capability in its effective set.
    ///
    /// # Errors
    ///
    /// The failed `capget` call.
    pub fn is_effective(self) -> Result<bool> {
        let set = effective_caps()?;
        Ok(set & (1u64 << self.bit()) != 0)
    }
}

/// The calling thread's effective capability set, as a bit mask (bit N is capability N).
fn effective_caps() -> Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0, // the calling thread
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget with a v3 header writes two Data records, which `data` holds.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut Header,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::io("read capabilities", io::Error::last_os_error()));
    }
    Ok(u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
}

/// Checks that the calling thread may do what lwtun does: `CAP_NET_ADMIN`, and `CAP_BPF` (or
/// `CAP_SYS_ADMIN`, which covers it, and is all kernels before 5.8 know).
///
/// # Errors
///
/// [`ErrorKind::Permission`] naming the first missing capability, with `op` as the operation.
///
/// # Examples
///
/// ```no_run
/// lwtun::probe::require_caps("install LWT routes")?;
/// # Ok::<(), lwtun::Error>(())
/// ```
pub fn require_caps(op: &str) -> Result<()> {
    let set = effective_caps()?;
    let has = |c: Capability| set & (1u64 << c.bit()) != 0;
    if !has(Capability::Bpf) && !has(Capability::SysAdmin) {
        return Err(Error::permission(op, Capability::Bpf.name()));
    }
    if !has(Capability::NetAdmin) {
        return Err(Error::permission(op, Capability::NetAdmin.name()));
    }
    Ok(())
}

// ---- the probes themselves ----

/// Whether programs of type `ty` exist and may call `helper`.
fn helper_supported(op: &str, ty: ProgramType, helper: u32) -> Result<bool> {
    if !prog_type_supported(op, ty)? {
        return Ok(false);
    }
    ty.is_helper_supported(helper)
        .map_err(|e| Error::bpf(op, e))
}

/// `Ok(true)` supported, `Ok(false)` absent, `Err` could not tell.
fn run_probe(feature: Feature) -> Result<bool> {
    let op = feature.op();
    // Without privileges every load fails, and libbpf's probes read that as "unsupported":
    // refuse to probe (and so to cache an answer) instead.
    require_caps(op)?;
    match feature {
        Feature::LwtRoutes => probe_lwt_routes(op),
        Feature::LwtEncapIp => {
            helper_supported(op, ProgramType::LwtXmit, sys::BPF_FUNC_lwt_push_encap)
        }
        Feature::XdpLink => probe_link(op, sys::BPF_PROG_TYPE_XDP, XDP_PASS, sys::BPF_XDP),
        Feature::Tcx => probe_link(
            op,
            sys::BPF_PROG_TYPE_SCHED_CLS,
            TCX_NEXT,
            sys::BPF_TCX_INGRESS,
        ),
        Feature::LpmBatch => probe_lpm_batch(op),
        Feature::Seg6Local => {
            // A kernel without CONFIG_IPV6_SEG6_BPF still knows the program type (seen on
            // 6.18) but gives it no seg6 helper: ask for the helper End.BPF programs use.
            helper_supported(op, ProgramType::LwtSeg6local, sys::BPF_FUNC_lwt_seg6_action)
        }
        Feature::XdpLiveFrames => {
            probe_xdp_on_loopback(op, XDP_DROP, sys::BPF_F_TEST_XDP_LIVE_FRAMES)
        }
        Feature::DecapL3 => probe_decap_l3(op),
        Feature::XdpTestRunContext => probe_xdp_on_loopback(op, XDP_PASS, 0),
        Feature::TunnelKeyLocal => probe_tunnel_key_local(op),
        Feature::XdpLoadBytes => {
            helper_supported(op, ProgramType::Xdp, sys::BPF_FUNC_xdp_load_bytes)
        }
        Feature::BpfLoop => helper_supported(op, ProgramType::SchedCls, sys::BPF_FUNC_loop),
        Feature::CoarseClock => {
            helper_supported(op, ProgramType::Xdp, sys::BPF_FUNC_ktime_get_coarse_ns)
        }
    }
}

const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TCX_NEXT: i32 = -1;
const LWTUNNEL_ENCAP_BPF: u16 = 6;
const LWT_BPF_XMIT: u16 = 3;
const LWT_BPF_PROG_FD: u16 = 1;
const LWT_BPF_PROG_NAME: u16 = 2;

/// Whether the kernel loads a trivial program of type `ty`. Unlike libbpf's probe, a refusal
/// for lack of privileges is an error, not "unsupported".
fn prog_type_supported(op: &str, ty: ProgramType) -> Result<bool> {
    match load_trivial(op, ty as sys::bpf_prog_type, 0) {
        Ok(_) => Ok(true),
        Err(e) if e.errno() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One BPF instruction: `code`, destination register, immediate.
fn insn(code: u8, dst: u8, imm: i32) -> sys::bpf_insn {
    sys::bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: sys::bpf_insn::new_bitfield_1(dst, 0),
        off: 0,
        imm,
    }
}

/// An instruction with every field given.
fn insn_full(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> sys::bpf_insn {
    sys::bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: sys::bpf_insn::new_bitfield_1(dst, src),
        off,
        imm,
    }
}

/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
const MOV64_IMM: u8 = 0xb7;
/// `BPF_ALU64 | BPF_MOV | BPF_X`: `dst = src`.
const MOV64_REG: u8 = 0xbf;
/// `BPF_ALU64 | BPF_ADD | BPF_K`: `dst += imm`.
const ADD64_IMM: u8 = 0x07;
/// `BPF_ST | BPF_MEM | BPF_DW`: `*(u64 *)(dst + off) = imm`.
const ST_MEM_DW: u8 = 0x7a;
/// `BPF_JMP | BPF_CALL`: call helper `imm`.
const CALL: u8 = 0x85;
/// `BPF_JMP | BPF_EXIT`.
const EXIT: u8 = 0x95;

/// Loads `r0 = ret; exit` as a program of type `ty`.
fn load_trivial(op: &str, ty: sys::bpf_prog_type, ret: i32) -> Result<OwnedFd> {
    load_insns(op, ty, &[insn(MOV64_IMM, 0, ret), insn(EXIT, 0, 0)])
}

/// Loads `insns` as a program of type `ty`.
fn load_insns(op: &str, ty: sys::bpf_prog_type, insns: &[sys::bpf_insn]) -> Result<OwnedFd> {
    let name: &CStr = c"lwtun_probe";
    let license: &CStr = c"GPL";
    // SAFETY: the pointers are valid for the call; insns holds insns.len() instructions; null
    // opts means defaults.
    let fd = unsafe {
        sys::bpf_prog_load(
            ty,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            std::ptr::null_mut(),
        )
    };
    owned_fd(op, fd)
}

/// Strips the outer IPv6 header of an IPv4-in-IPv6 frame with `bpf_skb_adjust_room(-40,
/// BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV4)` in a test run: kernels before 6.3 refuse
/// the flag (-EINVAL), later ones strip the header (0).
fn probe_decap_l3(op: &str) -> Result<bool> {
    const DECAP_L3_IPV4: i32 = 1 << 7;
    const ADJ_ROOM_MAC: i32 = 1;
    let insns = [
        // r1 is the skb already
        insn(MOV64_IMM, 2, -40),
        insn(MOV64_IMM, 3, ADJ_ROOM_MAC),
        insn(MOV64_IMM, 4, DECAP_L3_IPV4),
        insn(CALL, 0, sys::BPF_FUNC_skb_adjust_room as i32),
        insn(EXIT, 0, 0),
    ];
    let Some(prog) = load_tc_or_unknown(op, &insns)? else {
        return Ok(false);
    };
    // Ethernet (IPv6), an IPv6 header (next header 4), an IPv4 header and 60 bytes: the
    // packet left after the strip is longer than an IPv6 header, as the helper wants.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x86, 0xdd]);
    frame.extend_from_slice(&[0x60, 0, 0, 0, 0, 80, 4, 64]);
    frame.extend_from_slice(&[0xfd; 32]);
    frame.extend_from_slice(&[0x45, 0, 0, 80, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    frame.resize(frame.len() + 60, 0);
    Ok(test_run_retval(op, &prog, &frame)? == 0)
}

/// Sets a tunnel key of the full 6.0 size (`struct bpf_tunnel_key` with `local_ipv6`, 44
/// bytes) from a `tc` program in a test run: older kernels answer EINVAL for the size.
fn probe_tunnel_key_local(op: &str) -> Result<bool> {
    const KEY_SIZE: i32 = 44;
    let mut insns = Vec::new();
    // the key on the stack, zeroed: *(u64 *)(r10 - 8k) = 0 for k = 1..=6
    for k in 1..=6i16 {
        insns.push(insn_full(ST_MEM_DW, 10, 0, -8 * k, 0));
    }
    insns.extend([
        insn_full(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, -48),
        insn(MOV64_IMM, 3, KEY_SIZE),
        insn(MOV64_IMM, 4, 0),
        insn(CALL, 0, sys::BPF_FUNC_skb_set_tunnel_key as i32),
        insn(EXIT, 0, 0),
    ]);
    let Some(prog) = load_tc_or_unknown(op, &insns)? else {
        return Ok(false);
    };
    // Ethernet (IPv4) and an IPv4 header.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 17, 0, 0]);
    frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    Ok(test_run_retval(op, &prog, &frame)? == 0)
}

/// Loads `insns` as a `tc` program; `None` when the kernel refuses it as unknown (a helper or
/// size it does not have).
fn load_tc_or_unknown(op: &str, insns: &[sys::bpf_insn]) -> Result<Option<OwnedFd>> {
    match load_insns(op, sys::BPF_PROG_TYPE_SCHED_CLS, insns) {
        Ok(p) => Ok(Some(p)),
        Err(e) if means_unsupported(e.errno()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One test run of `prog` over `frame`; its return value.
fn test_run_retval(op: &str, prog: &OwnedFd, frame: &[u8]) -> Result<u32> {
    let run = crate::program::test_run_raw(
        std::os::fd::AsFd::as_fd(prog),
        crate::program::TestRunArgs {
            data: frame,
            repeat: 1,
            ..Default::default()
        },
    )
    .map_err(|errno| Error::io(op, io::Error::from_raw_os_error(errno)))?;
    Ok(run.retval)
}

/// Turns libbpf's `fd or -errno` into an owned fd or an error.
fn owned_fd(op: &str, fd: i32) -> Result<OwnedFd> {
    if fd < 0 {
        return Err(Error::io(op, io::Error::from_raw_os_error(-fd)));
    }
    // SAFETY: libbpf returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether an errno from an attach or map call means "the kernel does not know this".
fn means_unsupported(errno: Option<i32>) -> bool {
    matches!(
        errno,
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) | Some(ENOTSUPP) | Some(libc::E2BIG)
    )
}

/// Runs `f` on a thread in a new, unnamed network namespace with its loopback up. The
/// namespace (and whatever `f` made in it) goes away with the thread.
fn in_scratch_netns<T: Send>(op: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("lwtun-probe".into())
            .spawn_scoped(scope, move || -> Result<T> {
                // SAFETY: unshare changes only this thread, which ends after `f`.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::io(
                        format!("{op}: create a scratch network namespace"),
                        io::Error::last_os_error(),
                    ));
                }
                set_loopback_up(op)?;
                f()
            })
            .map_err(|e| Error::io(op, e))?;
        handle
            .join()
            .unwrap_or_else(|_| Err(Error::other(ErrorKind::Io, op, "the probe thread panicked")))
    })
}

/// `ip link set lo up` in the calling thread's namespace, through `SIOCSIFFLAGS`.
fn set_loopback_up(op: &str) -> Result<()> {
    // SAFETY: plain socket call.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::io(op, io::Error::last_os_error()));
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; zeroed is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: req names a device; the flags field of the union is the one SIOC[GS]IFFLAGS use.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
            return Err(Error::io(op, io::Error::last_os_error()).with_object("lo"));
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
            return Err(Error::io(op, io::Error::last_os_error()).with_object("lo"));
        }
    }
    Ok(())
}

fn probe_link(
    op: &str,
    prog_type: sys::bpf_prog_type,
    ret: i32,
    attach: sys::bpf_attach_type,
) -> Result<bool> {
    let prog = match load_trivial(op, prog_type, ret) {
        Ok(p) => p,
        Err(e) if means_unsupported(e.errno()) => return Ok(false),
        Err(e) => return Err(e),
    };
    link_loopback(op, &prog, attach)
}

/// Test-runs a program returning `ret` on one frame with the loopback of a scratch namespace as
/// its ingress device (an `xdp_md` context) and `flags`: live frames when asked for.
fn probe_xdp_on_loopback(op: &str, ret: i32, flags: u32) -> Result<bool> {
    let prog = match load_trivial(op, sys::BPF_PROG_TYPE_XDP, ret) {
        Ok(p) => p,
        Err(e) if means_unsupported(e.errno()) => return Ok(false),
        Err(e) => return Err(e),
    };
    in_scratch_netns(op, || {
        let frame = [0u8; 64];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex (the loopback: 1), ...
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&1u32.to_ne_bytes());
        let run = crate::program::test_run_raw(
            std::os::fd::AsFd::as_fd(&prog),
            crate::program::TestRunArgs {
                data: &frame,
                ctx_in: Some(&ctx),
                repeat: 1,
                flags,
                ..Default::default()
            },
        );
        match run {
            Ok(_) => Ok(true),
            Err(errno) if means_unsupported(Some(errno)) => Ok(false),
            // run_probe checked CAP_BPF and CAP_NET_ADMIN; with CAP_SYS_ADMIN too, EPERM is
            // the kernel's policy, not the caller's privileges.
            Err(libc::EPERM) if Capability::SysAdmin.is_effective()? => Ok(false),
            Err(errno) => Err(Error::io(op, io::Error::from_raw_os_error(errno))),
        }
    })
}

/// Attaches `prog` to the loopback of a scratch namespace through a `bpf_link`.
fn link_loopback(op: &str, prog: &OwnedFd, attach: sys::bpf_attach_type) -> Result<bool> {
    in_scratch_netns(op, || {
        const LOOPBACK_IFINDEX: i32 = 1;
        // SAFETY: prog is an open program fd; null opts means defaults.
        let fd = unsafe {
            sys::bpf_link_create(prog.as_raw_fd(), LOOPBACK_IFINDEX, attach, std::ptr::null())
        };
        match owned_fd(op, fd) {
            // Closing the link detaches the program; the namespace goes with the thread.
            Ok(_link) => Ok(true),
            Err(e) if means_unsupported(e.errno()) => Ok(false),
            Err(e) => Err(e),
        }
    })
}

fn probe_lwt_routes(op: &str) -> Result<bool> {
    for ty in [
        ProgramType::LwtIn,
        ProgramType::LwtOut,
        ProgramType::LwtXmit,
    ] {
        if !prog_type_supported(op, ty)? {
            return Ok(false);
        }
    }
    let prog = load_trivial(op, sys::BPF_PROG_TYPE_LWT_XMIT, 0)?;
    add_lwt_route(op, &prog)
}

/// Installs `192.0.2.0/24 dev lo encap bpf xmit fd PROG` in a scratch namespace.
fn add_lwt_route(op: &str, prog: &OwnedFd) -> Result<bool> {
    in_scratch_netns(op, || {
        let mut nl = Netlink::open()?;
        let mut encap = Nest::new();
        let xmit = encap.begin(LWT_BPF_XMIT);
        encap.u32(LWT_BPF_PROG_FD, prog.as_raw_fd() as u32);
        encap.str(LWT_BPF_PROG_NAME, "lwtun:probe");
        encap.end(xmit);
        let attr = |ty: Rta, payload: Vec<u8>| {
            RtattrBuilder::default()
                .rta_type(ty)
                .rta_payload(Buffer::from(payload))
                .build()
                .map_err(|e| Error::other(ErrorKind::Io, op, e.to_string()))
        };
        let mut attrs = RtBuffer::new();
        // 192.0.2.0/24 (TEST-NET-1) via the scratch namespace's loopback.
        attrs.push(attr(Rta::Dst, vec![192, 0, 2, 0])?);
        attrs.push(attr(Rta::Oif, 1u32.to_ne_bytes().to_vec())?);
        attrs.push(attr(
            Rta::EncapType,
            LWTUNNEL_ENCAP_BPF.to_ne_bytes().to_vec(),
        )?);
        attrs.push(attr(Rta::Encap, encap.into_bytes())?);
        let msg = RtmsgBuilder::default()
            .rtm_family(RtAddrFamily::Inet)
            .rtm_dst_len(24)
            .rtm_src_len(0)
            .rtm_tos(0)
            .rtm_table(RtTable::Main)
            .rtm_protocol(Rtprot::Boot)
            .rtm_scope(RtScope::Link)
            .rtm_type(Rtn::Unicast)
            .rtm_flags(RtmF::empty())
            .rtattrs(attrs)
            .build()
            .map_err(|e| Error::other(ErrorKind::Io, op, e.to_string()))?;
        match nl.request(
            op,
            &"192.0.2.0/24 dev lo encap bpf xmit",
            Rtm::Newroute,
            NlmF::CREATE | NlmF::EXCL,
            msg,
        ) {
            Ok(()) => Ok(true),
            // lwtunnel_valid_encap_type(): no BPF encap compiled in.
            Err(e) if e.kind() == ErrorKind::Unsupported => Ok(false),
            Err(e) => Err(e),
        }
    })
}

fn probe_lpm_batch(op: &str) -> Result<bool> {
    #[repr(C)]
    #[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
    struct Key {
        prefixlen: u32,
        addr: [u8; 4],
    }
    let opts = sys::bpf_map_create_opts {
        sz: std::mem::size_of::<sys::bpf_map_create_opts>() as _,
        map_flags: sys::BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    let name: &CStr = c"lwtun_probe";
    // SAFETY: name and opts are valid for the call.
    let fd = unsafe {
        sys::bpf_map_create(
            sys::BPF_MAP_TYPE_LPM_TRIE,
            name.as_ptr(),
            std::mem::size_of::<Key>() as u32,
            4,
            8,
            &opts,
        )
    };
    let map = match owned_fd(op, fd) {
        Ok(m) => m,
        Err(e) if means_unsupported(e.errno()) => return Ok(false),
        Err(e) => return Err(e),
    };
    let keys = [
        Key {
            prefixlen: 24,
            addr: [10, 1, 2, 0],
        },
        Key {
            prefixlen: 16,
            addr: [10, 1, 0, 0],
        },
    ];
    let values: [u32; 2] = [7, 9];
    let mut count = keys.len() as u32;
    // SAFETY: keys and values hold `count` entries of the map's key and value sizes.
    let rc = unsafe {
        sys::bpf_map_update_batch(
            map.as_raw_fd(),
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            &mut count,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let e = io::Error::from_raw_os_error(-rc);
        return if means_unsupported(e.raw_os_error()) {
            Ok(false)
        } else {
            Err(Error::io(op, e))
        };
    }
    let mut out_keys = [Key::default(); 4];
    let mut out_values = [0u32; 4];
    let mut out_batch = Key::default();
    let mut count = out_keys.len() as u32;
    // SAFETY: the out buffers hold `count` keys and values; out_batch holds one key.
    let rc = unsafe {
        sys::bpf_map_lookup_batch(
            map.as_raw_fd(),
            std::ptr::null_mut(),
            (&mut out_batch as *mut Key).cast(),
            out_keys.as_mut_ptr().cast(),
            out_values.as_mut_ptr().cast(),
            &mut count,
            std::ptr::null(),
        )
    };
    // ENOENT: the walk reached the end, which with room for 4 and 2 entries it must.
    if rc != 0 && -rc != libc::ENOENT {
        let e = io::Error::from_raw_os_error(-rc);
        return if means_unsupported(e.raw_os_error()) {
            Ok(false)
        } else {
            Err(Error::io(op, e))
        };
    }
    let mut got: Vec<(Key, u32)> = out_keys
        .iter()
        .copied()
        .zip(out_values.iter().copied())
        .take(count as usize)
        .collect();
    got.sort_by_key(|(k, _)| k.prefixlen);
    if got != [(keys[1], 9), (keys[0], 7)] {
        return Err(Error::other(
            ErrorKind::Kernel,
            op,
            format!("a batch lookup returned {got:?} after a batch update of two prefixes"),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_errors_name_feature_and_version() {
        for f in Feature::ALL {
            let e = Known::No.to_result(f).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported);
            let text = e.to_string();
            assert!(text.contains(f.name()), "{text}");
            assert!(
                text.contains(&format!("since Linux {}", f.since())),
                "{text}"
            );
        }
    }

    fn root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            // Not eprintln!: libtest would capture it in a passing test.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!("SKIPPED {test}: needs root\n").as_bytes(),
            );
        }
        root
    }

    /// The route probe reaches the kernel: a program of the wrong type is refused by it (and
    /// that refusal is an error, not "unsupported").
    #[test]
    fn lwt_route_probe_is_answered_by_the_kernel() {
        if !root("lwt_route_probe_is_answered_by_the_kernel") {
            return;
        }
        let xmit = load_trivial("t", sys::BPF_PROG_TYPE_LWT_XMIT, 0).unwrap();
        assert!(add_lwt_route("t", &xmit).unwrap());
        let xdp = load_trivial("t", sys::BPF_PROG_TYPE_XDP, XDP_PASS).unwrap();
        let e = add_lwt_route("t", &xdp).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }

    /// The link probes tell an attach type the kernel refuses apart from one it takes.
    #[test]
    fn link_probe_says_no_to_a_refused_attach() {
        if !root("link_probe_says_no_to_a_refused_attach") {
            return;
        }
        let xdp = load_trivial("t", sys::BPF_PROG_TYPE_XDP, XDP_PASS).unwrap();
        assert!(link_loopback("t", &xdp, sys::BPF_XDP).unwrap());
        assert!(!link_loopback("t", &xdp, sys::BPF_TCX_INGRESS).unwrap());
        let tc = load_trivial("t", sys::BPF_PROG_TYPE_SCHED_CLS, TCX_NEXT).unwrap();
        assert!(link_loopback("t", &tc, sys::BPF_TCX_EGRESS).unwrap());
        assert!(!link_loopback("t", &tc, sys::BPF_XDP).unwrap());
    }

    /// Without privileges a probe is an error, never a cached "unsupported" (libbpf's own
    /// prog-type probe reads EPERM as "not supported").
    #[test]
    fn probes_without_privileges_are_errors_not_answers() {
        if !root("probes_without_privileges_are_errors_not_answers") {
            return;
        }
        std::thread::spawn(|| {
            // Lower this thread's effective set to nothing (credentials are per thread).
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            let mut h = Header {
                version: 0x2008_0522,
                pid: 0,
            };
            let mut d = [[0u32; 3]; 2];
            // SAFETY: v3 header and two (effective, permitted, inheritable) records.
            let rc =
                unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
            assert_eq!(rc, 0);
            d[0][0] = 0;
            d[1][0] = 0;
            // SAFETY: as above; lowering the effective set is always allowed.
            let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
            assert_eq!(rc, 0);
            for f in Feature::ALL {
                let e = run_probe(f).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::Permission, "{f}: {e}");
            }
            let e = prog_type_supported("t", ProgramType::LwtXmit).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Permission, "{e}");
        })
        .join()
        .unwrap();
        // With the privileges back, every probe answers (yes or no, whatever this kernel has).
        for f in Feature::ALL {
            run_probe(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        }
    }

    #[test]
    fn features_print_one_line_each() {
        let f = Features {
            lwt_routes: Support::Yes,
            lwt_encap_ip: Support::No,
            xdp_link: Support::Unknown("needs CAP_BPF".into()),
            lpm_batch: Support::Yes,
            tcx: Support::Yes,
            seg6local: Support::No,
            xdp_live_frames: Support::Yes,
            decap_l3: Support::Yes,
            bpf_loop: Support::Yes,
            xdp_test_run_context: Support::Yes,
            xdp_load_bytes: Support::No,
            tunnel_key_local: Support::Yes,
            coarse_clock: Support::Yes,
        };
        let text = f.to_string();
        assert_eq!(text.lines().count(), Feature::ALL.len(), "{text}");
        assert!(text.contains("no       bpf_lwt_push_encap"), "{text}");
        assert!(
            text.contains("unknown  XDP bpf_link attachments (Linux 5.9): needs CAP_BPF"),
            "{text}"
        );
    }
}
