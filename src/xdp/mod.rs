//! XDP forwarding: attach programs to interfaces, forward through device maps, route with the
//! kernel FIB, answer pings, and count every verdict.
//!
//! ```text
//!  program family (owned, loaded from bpf/xdp_*.bpf.c)      what it does
//!  ───────────────────────────────────────────────────      ─────────────────────────────────────
//!  XdpPass      xdp_pass / xdp_drop / xdp_tx                receiver for veth peers, sink, reflector
//!  XdpRedirect  xdp_redirect + xdp_egress, DevMap (array)   L2 forwarding with a MAC rewrite table
//!  XdpRouter    xdp_router, DevMap (hash, by ifindex)       bpf_fib_lookup IPv4/IPv6 router, route
//!                                                          cache dropped on every rtnetlink change
//!  IcmpEcho     xdp_echo                                    XDP_TX ping responder (v4 and v6)
//!  TrafficGen   xdp_gen                                     live-frames traffic generator
//!        │
//!        │ .program() -> &XdpProgram ── test_run / run_live (BPF_PROG_TEST_RUN, live frames)
//!        ▼
//!  XdpAttachment::attach(program, ifindex, XdpOptions { mode, via })   RAII, #[must_use]
//!        bpf_link (5.9+) or netlink; native or generic; replace() atomically; query()
//!
//!  every family: .stats() -> StatsMap -> XdpStats (per action, summed over CPUs) -> XdpRates
//! ```
//!
//! Families own their programs and maps as file descriptors (no skeleton lifetimes); an
//! attachment keeps its program loaded on its own, so a family may be dropped while its
//! attachments keep running (their maps then cannot be changed any more).
//!
//! # Veth and redirects
//!
//! A veth accepts frames redirected into it only while its peer runs an XDP program (any
//! program; `xdp_pass` will do). [`XdpPass::attach_receiver`] puts one there, and
//! [`XdpRouter::add_port_with_receiver`] / [`XdpRedirect::set_port_with_receiver`] do it for you
//! when you ask. Generic-mode XDP has no such need but is slower.
//!
//! # Veth and checksum offload
//!
//! A local stack sending TCP or UDP over a veth leaves the L4 checksum to the "hardware"
//! (`CHECKSUM_PARTIAL`). XDP sees the frame with that checksum unfinished, and a frame it
//! redirects to another device carries it to the receiver, which drops it: ping works, TCP does
//! not. Real NICs finish checksums on transmit, so this bites only when the senders are
//! namespaces on veths (tests, demos): turn transmit checksum offload off on the senders' veths
//! (`ethtool -K DEV tx off`). Frames the router passes to the stack are not affected.
//!
//! # Live frames
//!
//! [`TrafficGen`] (and [`XdpProgram::run_live`]) inject frames with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`. Live frames recycle their pages without re-initialising them
//! and a veth hands the same page to its peer, so a change made downstream (a TTL decrement)
//! comes back in later frames; `TrafficGen` rewrites the headers of every frame from its
//! template for that reason.

mod attach;
mod devmap;
mod echo;
mod pass;
mod program;
mod redirect;
mod router;
mod stats;
mod traffic;

pub use attach::{AttachVia, XdpAttachment, XdpMode, XdpOptions, XdpQuery};
pub use devmap::{DevMap, DevMapKind, EgressPort};
pub use echo::IcmpEcho;
pub use pass::XdpPass;
#[allow(deprecated)]
pub use program::TestRunOutput;
pub use program::{LiveFrames, TestRun, XdpProgram};
pub use redirect::{MacAddr, RedirectRule, XdpRedirect};
pub use router::{
    FibStats, RouteCacheStatus, XdpRouter, ROUTE_CACHE_DEFAULT_AGE, ROUTE_CACHE_MAX_AGE_LIMIT,
};
pub use stats::{Counter, Rate, Stage, StatsMap, XdpRates, XdpStats};
pub use traffic::{TrafficGen, TEMPLATE_LEN};

/// An XDP verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XdpAction {
    /// `XDP_ABORTED` (0): a program error; the frame is dropped and traced.
    Aborted,
    /// `XDP_DROP` (1).
    Drop,
    /// `XDP_PASS` (2): to the stack.
    Pass,
    /// `XDP_TX` (3): back out of the ingress interface.
    Tx,
    /// `XDP_REDIRECT` (4): to another interface, CPU or socket.
    Redirect,
    /// A value outside 0..=4 (the kernel treats it as aborted).
    Unknown(u32),
}

impl XdpAction {
    /// The five actions, in code order.
    pub const ALL: [XdpAction; 5] = [
        XdpAction::Aborted,
        XdpAction::Drop,
        XdpAction::Pass,
        XdpAction::Tx,
        XdpAction::Redirect,
    ];

    /// The action of a program's return value.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => XdpAction::Aborted,
            1 => XdpAction::Drop,
            2 => XdpAction::Pass,
            3 => XdpAction::Tx,
            4 => XdpAction::Redirect,
            other => XdpAction::Unknown(other),
        }
    }

    /// The return value (`Unknown` actions count as aborted: 0).
    pub fn code(self) -> u32 {
        match self {
            XdpAction::Aborted | XdpAction::Unknown(_) => 0,
            XdpAction::Drop => 1,
            XdpAction::Pass => 2,
            XdpAction::Tx => 3,
            XdpAction::Redirect => 4,
        }
    }
}

impl std::fmt::Display for XdpAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdpAction::Aborted => f.write_str("XDP_ABORTED"),
            XdpAction::Drop => f.write_str("XDP_DROP"),
            XdpAction::Pass => f.write_str("XDP_PASS"),
            XdpAction::Tx => f.write_str("XDP_TX"),
            XdpAction::Redirect => f.write_str("XDP_REDIRECT"),
            XdpAction::Unknown(c) => write!(f, "XDP action {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_codes_round_trip() {
        for a in XdpAction::ALL {
            assert_eq!(XdpAction::from_code(a.code()), a);
        }
        assert_eq!(XdpAction::from_code(9), XdpAction::Unknown(9));
        assert_eq!(XdpAction::Unknown(9).code(), 0);
    }
}
