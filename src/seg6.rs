//! SRv6 End.BPF functions that do work: [`Seg6Tag`], [`Seg6EndX`], [`Seg6EndDt6`].
//!
//! Each is an `lwt_seg6local` program for a seg6local `End.BPF` route (a SID), built on the
//! kernel's seg6 helpers, with a rule table the control plane edits:
//!
//! ```text
//!  packet to SID ─► seg6local End.BPF route (fc00:2::100/128)
//!                     kernel End step: SRH checked, segments left - 1, dst = next segment
//!                     ▼ rule lookup by the active segment (the new dst), LPM
//!   Seg6Tag     bpf_lwt_seg6_store_bytes(tag) ─► BPF_OK: routed to the active segment
//!   Seg6EndX    [tag] bpf_lwt_seg6_action(END_X, nh6) ─► BPF_REDIRECT: sent to nh6
//!   Seg6EndDt6  bpf_lwt_seg6_action(END_DT6, table) ─► BPF_REDIRECT: the inner IPv6 packet,
//!               decapsulated, is looked up in the rule's table
//! ```
//!
//! The encapsulation side, [`Seg6Policies`], is a table of destination prefix → segment list
//! installed as the kernel's seg6 encap routes through lwtun's typed netlink.
//!
//! Rules are keyed by a prefix of the *active segment*: the IPv6 destination the kernel's End
//! step set, that is `segments[segments_left]` after the decrement (for a 2-segment list
//! arriving at the first SID, the second SID). A packet without a rule follows the
//! [`MissPolicy`]: [`MissPolicy::Pass`] returns `BPF_OK` (the kernel's plain End: forward to
//! the active segment), [`MissPolicy::Drop`] (the default) drops it.
//!
//! # What the kernel allows (6.18)
//!
//! - The kernel drops a packet without an SRH, or with segments left 0, *before* the program
//!   runs (its End step needs a next segment). So an End.BPF SID is never the last segment: a
//!   [`Seg6EndDt6`] SID is the second-to-last, and the last segment names the service (its
//!   rule's key, the table's name on the wire). The kernel's own `End.DT6`
//!   ([`crate::netlink::route::Seg6Local::EndDt6`]) is the choice for a last-segment SID.
//! - `bpf_lwt_seg6_action` accepts `END_X`, `END_T`, `END_DT6`, `END_B6` and `END_B6_ENCAP`
//!   only: there is no End.DT4 from BPF, so [`Seg6EndDt6`] decapsulates inner IPv6 only and
//!   counts (and drops) anything else as [`Seg6Event::InnerNotIpv6`].
//! - After a successful action the program must return `BPF_REDIRECT`; the seg6 helpers work
//!   in `lwt_seg6local` programs only, and `BPF_PROG_TEST_RUN` has no `lwt_seg6local` support.
//!
//! # Testing without routes: the twin
//!
//! The object holds, next to each function, a *twin* (`lwt_xmit`) of the same logic (the C
//! header `bpf/seg6_end.h`) that `BPF_PROG_TEST_RUN` runs on crafted packets:
//! [`Seg6End::test_run`] takes a packet as it arrives at the SID, does the kernel's End step
//! (drop at segments left 0, decrement, destination), applies the same rules and writes the tag
//! the same way, and reports what the End.BPF program would have done ([`Seg6Decision`]) instead
//! of calling the seg6 helpers. The twin shares the function's maps and counters.
//!
//! # Examples
//!
//! ```no_run
//! use lwtun::seg6::{CrossConnect, Seg6EndX};
//! use lwtun::netns::NetNs;
//!
//! let ns = NetNs::open("transit")?;
//! let to_egress = ns.device("to3")?;
//! let mut end_x = Seg6EndX::load()?;
//! // Packets whose next segment is in fc00:3::/64 go to fd77:2::2, tagged 7.
//! end_x.set_next_hop(
//!     "fc00:3::/64".parse().unwrap(),
//!     CrossConnect::to("fd77:2::2".parse().unwrap()).tag(7),
//! )?;
//! let _sid = end_x.install_route("fc00:2::100/128".parse().unwrap(), &to_egress)?;
//! println!("{:?}", end_x.events()?);
//! # Ok::<(), lwtun::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::Ipv6Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv6Network};
use libbpf_rs::{MapCore, MapFlags, Object};

use crate::abi::{self, Pod, ABI_VERSION as LWTUN_ABI_VERSION, MAGIC as LWTUN_MAGIC};
use crate::device::Device;
use crate::error::{Error, ErrorKind, Result};
use crate::family::lpm;
use crate::family::pins::PinLayout;
use crate::family::PinFolder;
use crate::netlink::route::{Encap, Route, Seg6Encap, Seg6Mode};
use crate::netlink::Netlink;
use crate::program::{sum_percpu, Counter, Hook, LwtProgram};
use crate::route::{InstalledRoute, LwtRoute};
use crate::skel::seg6_end::types::{lwtun_seg6_config, lwtun_seg6_decision, lwtun_seg6_rule};

pub use crate::family::MissPolicy;
pub use crate::program::Verdict;

// SAFETY: `struct lwtun_seg6_rule` is a [u8; 16], two u32s, two u16s and a u32, without
// padding (32 bytes, asserted in lwtun.h).
unsafe impl Pod for lwtun_seg6_rule {}
// SAFETY: `struct lwtun_seg6_config` is four u32s (16 bytes, asserted).
unsafe impl Pod for lwtun_seg6_config {}
// SAFETY: `struct lwtun_seg6_decision` is u32s, a [u8; 16], a u16 and two u8s, without
// padding (40 bytes, asserted).
unsafe impl Pod for lwtun_seg6_decision {}

const RULE_TAG: u32 = 1 << 0;
const MISS_DROP: u32 = 0;
const MISS_PASS: u32 = 1;
const ACTION_END_X: u32 = 2;
const ACTION_END_DT6: u32 = 7;
/// What a pinned SRv6 function ([`Seg6End`]) leaves in its folder (see [`crate::pins`]): its
/// rule table, settings, counters and decision scratch map, and its program and twin (one
/// function a folder).
pub const PIN_LAYOUT: PinLayout = crate::family::pins::SEG6;
/// Rules a function holds unless the builder says otherwise.
pub const DEFAULT_CAPACITY: u32 = 1024;

mod sealed {
    pub trait Sealed {}
}

/// One of the End.BPF functions of this module (a marker type for [`Seg6End`]).
pub trait Seg6Function: sealed::Sealed + fmt::Debug {
    /// The function's name, as in errors and docs (`End.X`).
    const NAME: &'static str;
    /// The `lwt_seg6local` program.
    const PROGRAM: &'static str;
    /// Its `lwt_xmit` twin for test runs.
    const TWIN: &'static str;
    /// `LWTUN_SEG6_FN_*`, recorded in the config map so that pinned maps are adopted by the
    /// same function only.
    #[doc(hidden)]
    const ID: u32;
}

/// The tagging function: writes the rule's tag into the SRH ([`Seg6Tag`]).
#[derive(Debug, Clone, Copy)]
pub enum Tag {}
/// The End.X cross-connect: sends to the rule's next hop ([`Seg6EndX`]).
#[derive(Debug, Clone, Copy)]
pub enum EndX {}
/// The End.DT6-style decap into the rule's table ([`Seg6EndDt6`]).
#[derive(Debug, Clone, Copy)]
pub enum EndDt6 {}

impl sealed::Sealed for Tag {}
impl sealed::Sealed for EndX {}
impl sealed::Sealed for EndDt6 {}

impl Seg6Function for Tag {
    const NAME: &'static str = "tag";
    const PROGRAM: &'static str = "seg6_tag";
    const TWIN: &'static str = "seg6_tag_twin";
    const ID: u32 = 0;
}
impl Seg6Function for EndX {
    const NAME: &'static str = "End.X";
    const PROGRAM: &'static str = "seg6_end_x";
    const TWIN: &'static str = "seg6_end_x_twin";
    const ID: u32 = 1;
}
impl Seg6Function for EndDt6 {
    const NAME: &'static str = "End.DT6";
    const PROGRAM: &'static str = "seg6_end_dt6";
    const TWIN: &'static str = "seg6_end_dt6_twin";
    const ID: u32 = 2;
}

/// The tagging End.BPF function: writes a 16-bit tag into the SRH's tag field, then the
/// kernel's End goes on (the packet is routed to its active segment).
pub type Seg6Tag = Seg6End<Tag>;
/// The End.X-style cross-connect: the next hop comes from the rule, optionally with a tag.
pub type Seg6EndX = Seg6End<EndX>;
/// The End.DT6-style decap: the inner IPv6 packet is looked up in the rule's table.
pub type Seg6EndDt6 = Seg6End<EndDt6>;

/// An End.X rule: the next hop, and optionally a tag written into the SRH first.
///
/// # Examples
///
/// ```
/// use lwtun::seg6::CrossConnect;
///
/// let c = CrossConnect::to("fd77:2::2".parse().unwrap()).tag(7);
/// assert_eq!(c.tag, Some(7));
/// assert_eq!(c.to_string(), "nh6 fd77:2::2 tag 7");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrossConnect {
    /// The next hop (`SEG6_LOCAL_ACTION_END_X`'s `nh6`): a neighbour on a connected link.
    pub next_hop: Ipv6Addr,
    /// The tag written into the SRH before sending, if any.
    pub tag: Option<u16>,
}

impl CrossConnect {
    /// Sends to `next_hop`, untagged.
    pub fn to(next_hop: Ipv6Addr) -> Self {
        CrossConnect {
            next_hop,
            tag: None,
        }
    }

    /// Writes `tag` into the SRH too.
    pub fn tag(mut self, tag: u16) -> Self {
        self.tag = Some(tag);
        self
    }
}

impl fmt::Display for CrossConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "nh6 {}", self.next_hop)?;
        if let Some(t) = self.tag {
            write!(f, " tag {t}")?;
        }
        Ok(())
    }
}

/// A rule as the program holds it, whatever the function (only the fields the function uses
/// are set).
///
/// # Examples
///
/// ```no_run
/// use lwtun::seg6::Seg6EndDt6;
///
/// let mut dt6 = Seg6EndDt6::load()?;
/// dt6.set_table("fc00:3::100/128".parse().unwrap(), 100)?;
/// let (_, rule) = dt6.rules()[0];
/// assert_eq!(rule.table, Some(100));
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Seg6Rule {
    /// The tag written (tag function; End.X when tagged).
    pub tag: Option<u16>,
    /// End.X: the next hop.
    pub next_hop: Option<Ipv6Addr>,
    /// End.DT6: the table.
    pub table: Option<u32>,
}

/// The counter slots of a function (`events` in the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Seg6Event {
    /// The function was applied (tagged, cross-connected, decapsulated).
    Done,
    /// No rule: passed on to the kernel's End (`BPF_OK`).
    MissPassed,
    /// No rule: dropped.
    MissDropped,
    /// Not IPv6, no SRH right after the IPv6 header, an SRH of another type, of a length that
    /// does not hold its list or the packet, or segments left beyond the list: dropped.
    Malformed,
    /// Twin only: segments left 0 on arrival (the kernel drops these before an End.BPF
    /// program runs): dropped.
    SegmentsLeftZero,
    /// End.DT6: the SRH is not followed by an IPv6 packet (no DT4 from BPF): dropped.
    InnerNotIpv6,
    /// The kernel refused the tag store or the action (End.X to an unreachable next hop,
    /// End.DT6 into a table without a route): dropped.
    HelperFailed,
}

impl Seg6Event {
    const ALL: [Seg6Event; 7] = [
        Seg6Event::Done,
        Seg6Event::MissPassed,
        Seg6Event::MissDropped,
        Seg6Event::Malformed,
        Seg6Event::SegmentsLeftZero,
        Seg6Event::InnerNotIpv6,
        Seg6Event::HelperFailed,
    ];

    fn slot(self) -> u32 {
        self as u32
    }

    fn of(slot: u32) -> Option<Seg6Event> {
        Self::ALL.get(slot as usize).copied()
    }
}

/// A function's counters, summed over CPUs (IPv6 bytes as the program saw them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Seg6Events {
    /// [`Seg6Event::Done`].
    pub done: Counter,
    /// [`Seg6Event::MissPassed`].
    pub missed_passed: Counter,
    /// [`Seg6Event::MissDropped`].
    pub missed_dropped: Counter,
    /// [`Seg6Event::Malformed`].
    pub malformed: Counter,
    /// [`Seg6Event::SegmentsLeftZero`] (test runs only).
    pub segments_left_zero: Counter,
    /// [`Seg6Event::InnerNotIpv6`].
    pub inner_not_ipv6: Counter,
    /// [`Seg6Event::HelperFailed`].
    pub helper_failed: Counter,
}

impl Seg6Events {
    /// Packets dropped, for any reason.
    pub fn dropped(&self) -> u64 {
        self.missed_dropped.packets
            + self.malformed.packets
            + self.segments_left_zero.packets
            + self.inner_not_ipv6.packets
            + self.helper_failed.packets
    }
}

/// The seg6 action the End.BPF program would call for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seg6Action {
    /// `SEG6_LOCAL_ACTION_END_X` to `next_hop`.
    EndX {
        /// The next hop.
        next_hop: Ipv6Addr,
    },
    /// `SEG6_LOCAL_ACTION_END_DT6` into `table`; the inner packet starts at `inner_offset`.
    EndDt6 {
        /// The table.
        table: u32,
        /// The offset of the inner IPv6 header in the packet.
        inner_offset: u32,
    },
}

/// What the twin decided for a test-run packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Seg6Decision {
    /// The counter the packet went to.
    pub event: Seg6Event,
    /// The action the End.BPF program would call (`None`: none, the packet was passed on or
    /// dropped).
    pub action: Option<Seg6Action>,
    /// The tag written, if any.
    pub tag: Option<u16>,
    /// Segments left after the End step (0 when the packet did not get that far).
    pub segments_left: u8,
}

/// The result of [`Seg6End::test_run`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestRun {
    /// What the twin returned (what the End.BPF program returns: `Ok` for pass/tag,
    /// `Redirect` after an action, `Drop`).
    pub verdict: Verdict,
    /// The packet after the End step and the tag.
    pub packet: Vec<u8>,
    /// The decision.
    pub decision: Seg6Decision,
    /// The kernel's time for the run.
    pub duration: Duration,
}

/// The old name of [`TestRun`].
#[deprecated(since = "0.2.0", note = "use lwtun::seg6::TestRun")]
pub type Seg6TestRun = TestRun;

/// Options for loading a [`Seg6End`] function.
///
/// Kernel: Linux 4.18+ (seg6local `End.BPF`, `bpf_lwt_seg6_*` helpers).
///
/// # Examples
///
/// ```no_run
/// use lwtun::seg6::{MissPolicy, Seg6Tag};
///
/// let tag = Seg6Tag::builder().capacity(64).miss_policy(MissPolicy::Pass).load()?;
/// assert_eq!(tag.capacity(), 64);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct Seg6Builder<F: Seg6Function> {
    capacity: Option<u32>,
    miss: Option<MissPolicy>,
    pin: Option<PathBuf>,
    function: PhantomData<F>,
}

impl<F: Seg6Function> Default for Seg6Builder<F> {
    fn default() -> Self {
        Seg6Builder {
            capacity: None,
            miss: None,
            pin: None,
            function: PhantomData,
        }
    }
}

impl<F: Seg6Function> Seg6Builder<F> {
    /// How many rules the table holds; default [`DEFAULT_CAPACITY`], or for adopted maps the
    /// capacity they were made with.
    pub fn capacity(mut self, rules: u32) -> Self {
        self.capacity = Some(rules);
        self
    }

    /// What packets without a rule get (default [`MissPolicy::Drop`]; an adopted function
    /// keeps its policy unless this is called).
    pub fn miss_policy(mut self, policy: MissPolicy) -> Self {
        self.miss = Some(policy);
        self
    }

    /// Pins the maps (`rules`, `config`, `events`, `decision`) and the two programs under
    /// `folder` (on bpffs, created if missing). When the folder holds this function's pinned
    /// maps already, they are reused with their rules (adopted). The pins are removed when the
    /// function drops unless [`Seg6End::keep_pinned`] was called.
    pub fn pin(mut self, folder: impl Into<PathBuf>) -> Self {
        self.pin = Some(folder.into());
        self
    }

    /// Loads (verifies) the function and its twin and creates the maps.
    ///
    /// # Errors
    ///
    /// Permission without CAP_BPF/CAP_NET_ADMIN; InvalidInput for capacity 0, a pin folder
    /// outside bpffs, or pinned maps of another function, ABI version or capacity;
    /// [`ErrorKind::Unsupported`] naming `CONFIG_IPV6_SEG6_BPF` on a kernel without seg6 helpers
    /// ([`crate::probe::seg6local`]); the verifier's or kernel's error otherwise.
    pub fn load(self) -> Result<Seg6End<F>> {
        let op = format!("load SRv6 {} function", F::NAME);
        let capacity = self.capacity.unwrap_or(DEFAULT_CAPACITY);
        if capacity == 0 {
            return Err(Error::invalid_input(op, "capacity 0 holds no rules"));
        }
        crate::probe::Feature::Seg6Local.require(&op)?;
        let pin = self
            .pin
            .map(|folder| PinFolder::open(folder, &PIN_LAYOUT, &op))
            .transpose()?;
        let adopted = pin.as_ref().is_some_and(PinFolder::adopted);
        let mut capacity = capacity;
        if let Some(pin) = pin.as_ref().filter(|p| p.adopted()) {
            // Adopted maps keep the size they were made with.
            let path = pin.path().join("rules");
            let pinned = lpm::trie_capacity(pin.adopted_map("rules", &op)?.max_entries());
            match self.capacity {
                Some(c) if c != pinned => {
                    return Err(Error::invalid_input(
                        op,
                        format!(
                            "the pinned rules at {} hold {pinned} rules, not {c}: load without a \
                             capacity to adopt them",
                            path.display()
                        ),
                    ))
                }
                _ => capacity = pinned,
            }
        }
        let mut open = crate::program::open_object("seg6_end", crate::skel::seg6_end::OBJECT, &op)?;
        for mut map in open.maps_mut() {
            if map.name() == "rules" {
                map.set_max_entries(lpm::trie_entries(capacity))
                    .map_err(|e| Error::bpf(op.clone(), e).with_object("rules"))?;
            }
        }
        // Only this function and its twin are loaded.
        for mut prog in open.progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            prog.set_autoload(name == F::PROGRAM || name == F::TWIN);
        }
        if let Some(pin) = &pin {
            pin.reuse_maps(&mut open)?;
        }
        let object = crate::program::load_opened(open, &op)?;
        let program = crate::program::lwt_program(&object, F::PROGRAM)?;
        let twin = crate::program::lwt_program(&object, F::TWIN)?;
        let mut family = Seg6End {
            object,
            program,
            twin,
            rules: BTreeMap::new(),
            capacity,
            miss: self.miss.unwrap_or_default(),
            pin,
            decision: std::sync::Mutex::new(()),
            function: PhantomData,
        };
        let setup = (|| {
            if adopted {
                family.adopt(self.miss.is_none(), &op)?;
            }
            family.write_config(family.miss)?;
            if let Some(pin) = &mut family.pin {
                pin.pin_maps(&mut family.object, &op)?;
                pin.pin_program(F::PROGRAM, family.program.as_fd(), &op)?;
                pin.pin_program(F::TWIN, family.twin.as_fd(), &op)?;
            }
            Ok(())
        })();
        // On error the folder is left as it was found (crate::pins): adopted pins stay.
        setup?;
        if let Some(pin) = &mut family.pin {
            pin.commit();
        }
        Ok(family)
    }
}

/// An SRv6 End.BPF function: its `lwt_seg6local` program, its twin, its rule table and
/// counters. Use the aliases [`Seg6Tag`], [`Seg6EndX`] and [`Seg6EndDt6`].
///
/// Kernel: Linux 4.18+ (seg6local `End.BPF`, `bpf_lwt_seg6_*` helpers).
///
/// # Examples
///
/// ```no_run
/// use lwtun::seg6::Seg6Tag;
/// use lwtun::netns::NetNs;
///
/// let ns = NetNs::open("transit")?;
/// let dev = ns.device("to3")?;
/// let mut tag = Seg6Tag::load()?;
/// tag.set_tag("fc00:3::/64".parse().unwrap(), 42)?;
/// let _sid = tag.install_route("fc00:2::1/128".parse().unwrap(), &dev)?;
/// # Ok::<(), lwtun::Error>(())
/// ```
///
/// # Lifetime
///
/// Routes keep the program (and with it the maps) loaded by themselves: a route that outlives
/// the value goes on with the last rules set.
#[doc(alias = "End.BPF")]
#[doc(alias = "bpf_lwt_seg6_action")]
pub struct Seg6End<F: Seg6Function> {
    object: Object,
    program: LwtProgram,
    twin: LwtProgram,
    rules: BTreeMap<Ipv6Network, Seg6Rule>,
    capacity: u32,
    miss: MissPolicy,
    pin: Option<PinFolder>,
    /// Held from a twin's test run to its read of the `decision` map (one slot), so that threads
    /// sharing the function (`&self`) each read their own decision.
    decision: std::sync::Mutex<()>,
    function: PhantomData<F>,
}

impl<F: Seg6Function> fmt::Debug for Seg6End<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seg6End")
            .field("function", &F::NAME)
            .field("program", &self.program.id())
            .field("rules", &self.rules.len())
            .field("capacity", &self.capacity)
            .field("miss", &self.miss)
            .field("pin", &self.pin.as_ref().map(PinFolder::path))
            .finish()
    }
}

impl<F: Seg6Function> Seg6End<F> {
    /// Options: capacity, miss policy.
    pub fn builder() -> Seg6Builder<F> {
        Seg6Builder::default()
    }

    /// Loads the function with default options (misses dropped).
    ///
    /// # Errors
    ///
    /// As [`Seg6Builder::load`].
    pub fn load() -> Result<Self> {
        Self::builder().load()
    }

    /// The `lwt_seg6local` program, for an End.BPF route ([`LwtRoute`] with
    /// [`Hook::Seg6Local`]; [`Seg6End::route`] builds one).
    pub fn program(&self) -> &LwtProgram {
        &self.program
    }

    /// The `lwt_xmit` twin [`Seg6End::test_run`] runs.
    pub fn twin(&self) -> &LwtProgram {
        &self.twin
    }

    /// How many rules the table holds.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The pin folder, when pinned.
    pub fn pin_folder(&self) -> Option<&Path> {
        self.pin.as_ref().map(PinFolder::path)
    }

    /// Leaves the pins in place when the function drops, so a later process (or bpftool)
    /// finds them and a later [`Seg6Builder::pin`] at the folder adopts the rules.
    pub fn keep_pinned(&mut self) {
        if let Some(p) = &mut self.pin {
            p.keep();
        }
    }

    /// The miss policy in force.
    pub fn miss_policy(&self) -> MissPolicy {
        self.miss
    }

    /// Changes the miss policy; packets in flight see the old policy or the new one.
    ///
    /// # Errors
    ///
    /// The kernel's error writing the config map (the old policy stays).
    pub fn set_miss_policy(&mut self, policy: MissPolicy) -> Result<()> {
        self.write_config(policy)?;
        self.miss = policy;
        Ok(())
    }

    /// The rules set, by active-segment prefix.
    pub fn rules(&self) -> Vec<(Ipv6Network, Seg6Rule)> {
        self.rules.iter().map(|(p, r)| (*p, *r)).collect()
    }

    /// Removes the rule for `segment`; its packets follow the miss policy (or a shorter
    /// prefix's rule).
    ///
    /// # Errors
    ///
    /// NotFound when no rule has that prefix.
    pub fn remove_rule(&mut self, segment: Ipv6Network) -> Result<()> {
        let op = format!("remove SRv6 {} rule", F::NAME);
        let segment = normalize6(segment);
        if !self.rules.contains_key(&segment) {
            return Err(Error::not_found(op, format!("rule {segment}")));
        }
        let key = lpm::key(&IpNetwork::V6(segment));
        self.map("rules")?
            .delete(&key)
            .map_err(|e| Error::bpf(op, e).with_object(segment.to_string()))?;
        self.rules.remove(&segment);
        Ok(())
    }

    /// The function's counters, summed over CPUs.
    ///
    /// # Errors
    ///
    /// The kernel's error reading the map.
    pub fn events(&self) -> Result<Seg6Events> {
        let map = self.map("events")?;
        let op = format!("read SRv6 {} counters", F::NAME);
        let c = |ev: Seg6Event| sum_percpu(&map, ev.slot(), &op);
        Ok(Seg6Events {
            done: c(Seg6Event::Done)?,
            missed_passed: c(Seg6Event::MissPassed)?,
            missed_dropped: c(Seg6Event::MissDropped)?,
            malformed: c(Seg6Event::Malformed)?,
            segments_left_zero: c(Seg6Event::SegmentsLeftZero)?,
            inner_not_ipv6: c(Seg6Event::InnerNotIpv6)?,
            helper_failed: c(Seg6Event::HelperFailed)?,
        })
    }

    /// An End.BPF route for the SID `sid` through `device`, running this function, for the
    /// caller to add options (table, metric) to and install. The device is where the
    /// kernel's seg6local route sits; what the function does decides where packets go.
    pub fn route(&self, sid: Ipv6Network, device: &Device) -> LwtRoute {
        LwtRoute::new(IpNetwork::V6(sid))
            .device(device)
            .program(Hook::Seg6Local, &self.program)
    }

    /// Installs the End.BPF route for `sid` through `device` in `device`'s namespace; the
    /// route is removed when the returned value drops.
    ///
    /// # Errors
    ///
    /// As [`LwtRoute::install`].
    pub fn install_route(&self, sid: Ipv6Network, device: &Device) -> Result<InstalledRoute> {
        self.route(sid, device).install(&mut device.netlink()?)
    }

    /// Runs the twin once on `packet` (an IPv6 packet as it arrives at the SID, from the IPv6
    /// header) with BPF_PROG_TEST_RUN: the kernel's End step, then this function's decision.
    /// Counters count it like a real packet. The decision is read back from the object's
    /// `decision` map, which holds the last run's: run one test at a time per function.
    ///
    /// # Errors
    ///
    /// InvalidInput for an empty packet; the kernel's error otherwise (for example for a
    /// packet larger than a page).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use lwtun::seg6::{Seg6Event, Seg6Tag, Verdict};
    ///
    /// let tag = Seg6Tag::load()?;
    /// let run = tag.test_run(&[0x60, 0, 0, 0])?;    // a truncated IPv6 header
    /// assert_eq!(run.verdict, Verdict::Drop);
    /// assert_eq!(run.decision.event, Seg6Event::Malformed);
    /// # Ok::<(), lwtun::Error>(())
    /// ```
    pub fn test_run(&self, packet: &[u8]) -> Result<TestRun> {
        self.test_run_as(0x86dd, packet)
    }

    /// [`Seg6End::test_run`] with another `skb->protocol` (the EtherType), to see what the
    /// function does with what is not IPv6.
    ///
    /// # Errors
    ///
    /// As [`Seg6End::test_run`].
    pub fn test_run_as(&self, protocol: u16, packet: &[u8]) -> Result<TestRun> {
        let op = format!("run SRv6 {} twin (BPF_PROG_TEST_RUN)", F::NAME);
        let _one_at_a_time = self.decision.lock().unwrap_or_else(|p| p.into_inner());
        let run =
            crate::program::test_run_l3(self.twin.as_fd(), &op, protocol, packet, Some(64), 1)?;
        let raw = self
            .map("decision")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op.clone(), e))?
            .unwrap_or_default();
        let d: lwtun_seg6_decision = abi::from_bytes(&raw).ok_or_else(|| {
            Error::other(ErrorKind::Kernel, op.clone(), "decision of the wrong size")
        })?;
        Ok(TestRun {
            verdict: verdict_of(run.retval),
            packet: run.data,
            decision: decode_decision(&d).ok_or_else(|| {
                Error::other(
                    ErrorKind::Kernel,
                    op,
                    format!("the twin recorded an unknown event {}", d.event),
                )
            })?,
            duration: run.duration,
        })
    }

    /// Measures the twin: `repeat` runs of `packet` in the kernel, the mean time per run.
    ///
    /// # Errors
    ///
    /// As [`Seg6End::test_run`].
    pub fn time_twin(&self, packet: &[u8], repeat: u32) -> Result<Duration> {
        let op = format!("time SRv6 {} twin", F::NAME);
        let run = crate::program::test_run_l3(
            self.twin.as_fd(),
            &op,
            0x86dd,
            packet,
            None,
            repeat.max(1),
        )?;
        Ok(run.duration)
    }

    fn set_rule(&mut self, segment: Ipv6Network, rule: Seg6Rule) -> Result<()> {
        let op = format!("set SRv6 {} rule", F::NAME);
        let segment = normalize6(segment);
        if !self.rules.contains_key(&segment) && self.rules.len() >= self.capacity as usize {
            return Err(Error::invalid_input(
                op,
                format!(
                    "all {} rules are in use; load the function with a larger capacity",
                    self.capacity
                ),
            )
            .with_object(segment.to_string()));
        }
        let value = encode_rule(&rule);
        let key = lpm::key(&IpNetwork::V6(segment));
        self.map("rules")?
            .update(&key, abi::as_bytes(&value), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e).with_object(segment.to_string()))?;
        self.rules.insert(segment, rule);
        Ok(())
    }

    /// Takes over the rules of adopted maps, and their miss policy when `take_miss`.
    fn adopt(&mut self, take_miss: bool, op: &str) -> Result<()> {
        let raw = self
            .map("config")?
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op.to_string(), e))?
            .unwrap_or_default();
        let cfg: lwtun_seg6_config = abi::from_bytes(&raw)
            .ok_or_else(|| Error::other(ErrorKind::Kernel, op, "config value of the wrong size"))?;
        if cfg.magic == LWTUN_MAGIC {
            if cfg.version != LWTUN_ABI_VERSION || cfg.function != F::ID {
                return Err(Error::invalid_input(
                    op,
                    format!(
                        "the pinned maps belong to SRv6 function {} of lwtun ABI version {}, not \
                         {} of version {LWTUN_ABI_VERSION}: pin each function in a folder of its \
                         own, or remove the folder",
                        cfg.function,
                        cfg.version,
                        F::ID
                    ),
                ));
            }
            if take_miss {
                self.miss = if cfg.miss == MISS_PASS {
                    MissPolicy::Pass
                } else {
                    MissPolicy::Drop
                };
            }
        }
        let map = self.map("rules")?;
        let mut found = BTreeMap::new();
        for key in map.keys() {
            let Some(value) = map
                .lookup(&key, MapFlags::ANY)
                .map_err(|e| Error::bpf(op.to_string(), e))?
            else {
                continue;
            };
            let (Some(segment), Some(rule)) = (decode_key(&key), abi::from_bytes(&value)) else {
                return Err(Error::other(
                    ErrorKind::Kernel,
                    op,
                    "an adopted rule of the wrong size",
                ));
            };
            found.insert(segment, decode_rule::<F>(&rule));
        }
        self.capacity = lpm::trie_capacity(map.max_entries());
        self.rules = found;
        Ok(())
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>> {
        self.object
            .maps()
            .find(|m| m.name() == name)
            .ok_or_else(|| Error::not_found("find map", format!("map {name} in seg6_end")))
    }

    fn write_config(&self, miss: MissPolicy) -> Result<()> {
        let cfg = lwtun_seg6_config {
            magic: LWTUN_MAGIC,
            version: LWTUN_ABI_VERSION,
            miss: match miss {
                MissPolicy::Drop => MISS_DROP,
                MissPolicy::Pass => MISS_PASS,
            },
            function: F::ID,
        };
        self.map("config")?
            .update(&0u32.to_ne_bytes(), abi::as_bytes(&cfg), MapFlags::ANY)
            .map_err(|e| Error::bpf(format!("write SRv6 {} config", F::NAME), e))
    }
}

impl Seg6End<Tag> {
    /// Tags packets whose active segment is in `segment` with `tag` (replacing a rule for
    /// the same prefix atomically).
    ///
    /// # Errors
    ///
    /// InvalidInput when the table is full; the kernel's error writing the map.
    pub fn set_tag(&mut self, segment: Ipv6Network, tag: u16) -> Result<()> {
        self.set_rule(
            segment,
            Seg6Rule {
                tag: Some(tag),
                ..Default::default()
            },
        )
    }
}

impl Seg6End<EndX> {
    /// Sends packets whose active segment is in `segment` to the cross-connect's next hop
    /// (and tags them when it has a tag).
    ///
    /// # Errors
    ///
    /// InvalidInput for a next hop that is not unicast or the table full; the kernel's error
    /// writing the map.
    pub fn set_next_hop(&mut self, segment: Ipv6Network, to: CrossConnect) -> Result<()> {
        let nh = to.next_hop;
        if nh.is_unspecified() || nh.is_multicast() || nh.is_loopback() {
            return Err(Error::invalid_input(
                "set SRv6 End.X rule",
                format!("next hop {nh} is not a unicast neighbour address"),
            )
            .with_object(segment.to_string()));
        }
        self.set_rule(
            segment,
            Seg6Rule {
                tag: to.tag,
                next_hop: Some(nh),
                table: None,
            },
        )
    }
}

impl Seg6End<EndDt6> {
    /// Decapsulates packets whose active segment (the last, service segment) is in `segment`
    /// and looks the inner IPv6 packet up in `table`.
    ///
    /// # Errors
    ///
    /// InvalidInput for table 0 (`RT_TABLE_UNSPEC`) or the table full; the kernel's error
    /// writing the map.
    pub fn set_table(&mut self, segment: Ipv6Network, table: u32) -> Result<()> {
        if table == 0 {
            return Err(Error::invalid_input(
                "set SRv6 End.DT6 rule",
                "table 0 is RT_TABLE_UNSPEC; name a table (254 is main)",
            )
            .with_object(segment.to_string()));
        }
        self.set_rule(
            segment,
            Seg6Rule {
                table: Some(table),
                ..Default::default()
            },
        )
    }
}

/// The encapsulation side: a table of destination prefix → segment list, each installed as the
/// kernel's seg6 encap route (`ip route ... encap seg6 mode M segs ...`) through one device,
/// made with lwtun's typed netlink. Setting a prefix again replaces its route atomically (the
/// kernel swaps it); every route is removed when the table drops.
///
/// Kernel: Linux 4.18+ (seg6local `End.BPF`).
///
/// The routes carry the protocol [`crate::route::RTPROT_LWTUN`], so
/// [`crate::route::remove_leftovers`] finds them after a crash.
///
/// # Examples
///
/// ```no_run
/// use lwtun::netlink::route::Seg6Mode;
/// use lwtun::netns::NetNs;
/// use lwtun::seg6::Seg6Policies;
///
/// let ns = NetNs::open("ingress")?;
/// let mut policies = Seg6Policies::new(&ns.device("to2")?, Seg6Mode::Encap)?;
/// policies.set(
///     "fd77:3::/64".parse().unwrap(),
///     vec!["fc00:2::100".parse().unwrap(), "fc00:3::6".parse().unwrap()],
/// )?;
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Seg6Policies {
    nl: Netlink,
    device: Device,
    mode: Seg6Mode,
    routes: BTreeMap<IpNetwork, Route>,
}

impl fmt::Debug for Seg6Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seg6Policies")
            .field("device", &self.device.to_string())
            .field("mode", &self.mode)
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl Seg6Policies {
    /// An empty table whose routes go through `device` (in its namespace) with `mode`.
    ///
    /// # Errors
    ///
    /// As [`Device::netlink`].
    pub fn new(device: &Device, mode: Seg6Mode) -> Result<Self> {
        Ok(Seg6Policies {
            nl: device.netlink()?,
            device: device.clone(),
            mode,
            routes: BTreeMap::new(),
        })
    }

    /// Packets to `dst` get an SRH with `segments` (in path order: the first is visited
    /// first). Adds the route, or replaces this table's route for `dst`.
    ///
    /// # Errors
    ///
    /// InvalidInput for a list the kernel would refuse (empty, too long, a segment that is not
    /// unicast, inline mode for IPv4), nothing sent; the kernel's error otherwise (Exists when
    /// a route for `dst` that is not this table's is there).
    pub fn set(&mut self, dst: IpNetwork, segments: Vec<Ipv6Addr>) -> Result<()> {
        let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
        let mut route = Route::new(dst);
        route.protocol = crate::route::RTPROT_LWTUN;
        route.oif = Some(self.device.index());
        route.encap = Some(Encap::Seg6(Seg6Encap {
            mode: self.mode,
            segments,
        }));
        route.validate()?;
        if self.routes.contains_key(&dst) {
            self.nl.replace_route(&route)?;
        } else {
            self.nl.add_route(&route)?;
        }
        self.routes.insert(dst, route);
        Ok(())
    }

    /// Removes the route for `dst`.
    ///
    /// # Errors
    ///
    /// NotFound when the table has no route for `dst`; the kernel's error deleting it.
    pub fn remove(&mut self, dst: IpNetwork) -> Result<()> {
        let dst = IpNetwork::new(dst.network(), dst.prefix()).unwrap_or(dst);
        let route = self
            .routes
            .get(&dst)
            .ok_or_else(|| Error::not_found("remove seg6 policy", format!("policy {dst}")))?;
        self.nl.delete_route(route)?;
        self.routes.remove(&dst);
        Ok(())
    }

    /// The policies: destination and segment list.
    pub fn policies(&self) -> Vec<(IpNetwork, Vec<Ipv6Addr>)> {
        self.routes
            .iter()
            .filter_map(|(d, r)| match &r.encap {
                Some(Encap::Seg6(e)) => Some((*d, e.segments.clone())),
                _ => None,
            })
            .collect()
    }
}

impl Drop for Seg6Policies {
    fn drop(&mut self) {
        for r in self.routes.values() {
            let _ = self.nl.delete_route(r);
        }
    }
}

/// The prefix of an LPM key (`struct lwtun_redirect_key6`).
fn decode_key(key: &[u8]) -> Option<Ipv6Network> {
    match lpm::decode(key)? {
        IpNetwork::V6(n) => Some(n),
        IpNetwork::V4(_) => None,
    }
}

fn decode_rule<F: Seg6Function>(r: &lwtun_seg6_rule) -> Seg6Rule {
    Seg6Rule {
        tag: (r.flags & RULE_TAG != 0).then_some(r.tag),
        next_hop: (F::ID == EndX::ID).then(|| Ipv6Addr::from(r.nh6)),
        table: (F::ID == EndDt6::ID).then_some(r.table),
    }
}

fn normalize6(n: Ipv6Network) -> Ipv6Network {
    Ipv6Network::new(n.network(), n.prefix()).unwrap_or(n)
}

fn encode_rule(rule: &Seg6Rule) -> lwtun_seg6_rule {
    lwtun_seg6_rule {
        nh6: rule.next_hop.map(|a| a.octets()).unwrap_or_default(),
        table: rule.table.unwrap_or(0),
        flags: if rule.tag.is_some() { RULE_TAG } else { 0 },
        tag: rule.tag.unwrap_or(0),
        ..Default::default()
    }
}

fn verdict_of(retval: u32) -> Verdict {
    match retval as i32 {
        0 => Verdict::Ok,
        2 => Verdict::Drop,
        7 => Verdict::Redirect,
        v => Verdict::Other(v),
    }
}

fn decode_decision(d: &lwtun_seg6_decision) -> Option<Seg6Decision> {
    let action = match d.action {
        ACTION_END_X => Some(Seg6Action::EndX {
            next_hop: Ipv6Addr::from(d.nh6),
        }),
        ACTION_END_DT6 => Some(Seg6Action::EndDt6 {
            table: d.table,
            inner_offset: d.inner_offset,
        }),
        _ => None,
    };
    Some(Seg6Decision {
        event: Seg6Event::of(d.event)?,
        action,
        tag: (d.tagged != 0).then_some(d.tag),
        segments_left: d.segments_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_lwtun_h() {
        assert_eq!(std::mem::size_of::<lwtun_seg6_rule>(), 32);
        assert_eq!(std::mem::size_of::<lwtun_seg6_config>(), 16);
        assert_eq!(std::mem::size_of::<lwtun_seg6_decision>(), 40);
    }

    #[test]
    fn rules_encode_the_fields_their_function_uses() {
        let r = encode_rule(&Seg6Rule {
            tag: Some(0x1234),
            next_hop: Some("fd77:2::2".parse().unwrap()),
            table: None,
        });
        assert_eq!(r.flags, RULE_TAG);
        assert_eq!(r.tag, 0x1234);
        assert_eq!(
            Ipv6Addr::from(r.nh6),
            "fd77:2::2".parse::<Ipv6Addr>().unwrap()
        );
        let r = encode_rule(&Seg6Rule {
            table: Some(100),
            ..Default::default()
        });
        assert_eq!((r.flags, r.table), (0, 100));
    }

    #[test]
    fn decisions_decode_and_unknown_events_are_refused() {
        let d = lwtun_seg6_decision {
            event: 0,
            action: ACTION_END_DT6,
            table: 100,
            inner_offset: 88,
            segments_left: 1,
            ..Default::default()
        };
        let got = decode_decision(&d).unwrap();
        assert_eq!(got.event, Seg6Event::Done);
        assert_eq!(
            got.action,
            Some(Seg6Action::EndDt6 {
                table: 100,
                inner_offset: 88
            })
        );
        assert_eq!(got.tag, None);
        let bad = lwtun_seg6_decision {
            event: 99,
            ..Default::default()
        };
        assert!(decode_decision(&bad).is_none());
        for (i, ev) in Seg6Event::ALL.iter().enumerate() {
            assert_eq!(Seg6Event::of(i as u32), Some(*ev));
        }
    }

    #[test]
    fn adopted_keys_and_rules_decode() {
        let key = lpm::key(&"fc00:3::/64".parse().unwrap());
        assert_eq!(decode_key(&key), Some("fc00:3::/64".parse().unwrap()));
        assert_eq!(decode_key(&key[..10]), None);
        let mut bad = key.clone();
        bad[..4].copy_from_slice(&200u32.to_ne_bytes());
        assert_eq!(decode_key(&bad), None, "prefix length past 128");
        let rule = Seg6Rule {
            tag: Some(9),
            next_hop: Some("fd77:2::2".parse().unwrap()),
            table: None,
        };
        assert_eq!(decode_rule::<EndX>(&encode_rule(&rule)), rule);
        let dt6 = Seg6Rule {
            table: Some(100),
            ..Default::default()
        };
        assert_eq!(decode_rule::<EndDt6>(&encode_rule(&dt6)), dt6);
        let tag = Seg6Rule {
            tag: Some(0),
            ..Default::default()
        };
        assert_eq!(decode_rule::<Tag>(&encode_rule(&tag)), tag);
    }

    #[test]
    fn prefixes_are_normalised() {
        let n: Ipv6Network = "fc00:3::1/64".parse().unwrap();
        assert_eq!(normalize6(n).to_string(), "fc00:3::/64");
    }
}
