//! L2 forwarding with a MAC rewrite table (`bpf/xdp_redirect.bpf.c`).

use libbpf_rs::{MapCore, MapFlags, MapHandle};

use super::attach::{XdpAttachment, XdpOptions};
use super::devmap::DevMap;
use super::pass::Receivers;
use super::program::{check_sizes, Loaded, XdpProgram};
use super::stats::StatsMap;
use crate::abi::{self, Pod};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::skel::xdp_redirect::types::{lwtun_mac, lwtun_xdp_redirect};

// SAFETY: 6 + 2 bytes, no padding (asserted in lwtun.h).
unsafe impl Pod for lwtun_mac {}
// SAFETY: u32 + 12 bytes, no padding (asserted in lwtun.h).
unsafe impl Pod for lwtun_xdp_redirect {}

/// A MAC address.
pub type MacAddr = [u8; 6];

/// What happens to a frame whose destination MAC matches a rule (the matched MAC is the key
/// of [`XdpRedirect::set_rule`], not a field here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedirectRule {
    /// The port (key of [`XdpRedirect::ports`]) the frame leaves through.
    pub port: u32,
    /// The destination MAC the frame gets before it leaves (the next hop's).
    pub rewrite_dst: MacAddr,
    /// The source MAC the frame gets before it leaves (usually the egress device's).
    pub rewrite_src: MacAddr,
}

/// XDP L2 forwarding (the XDP tutorial's redirect assignment, for any number of ports): a frame
/// whose destination MAC has a rule gets the rule's MACs and is redirected through a
/// `BPF_MAP_TYPE_DEVMAP` port; every other frame goes to the stack untouched.
///
/// Kernel: Linux 5.8+ (a devmap program per port; devmap and `bpf_redirect_map` 4.14).
///
/// # Rule cache
///
/// The rules live in a hash table (up to 4096); in front of it every CPU keeps a small
/// direct-mapped cache of the destination MACs it has seen (256 slots, "no rule" included), which
/// halves the program's cost on a hit. [`set_rule`](Self::set_rule) and
/// [`remove_rule`](Self::remove_rule) invalidate every CPU's cache before they return, so a change
/// applies to the next frame (a frame being processed at that moment may still take the old
/// rule, as it could with the table alone).
///
/// # Examples
///
/// ```no_run
/// use lwtun::xdp::{RedirectRule, XdpOptions, XdpRedirect};
///
/// let ns = lwtun::netns::NetNs::open("switch")?;
/// let fwd = XdpRedirect::load()?;
/// // port 1: out of veth1, whose other end (in namespace "b") gets a pass program
/// fwd.set_port_with_receiver(1, &ns.device("veth1")?, &lwtun::netns::NetNs::open("b")?.device("eth0")?)?;
/// fwd.set_rule([2, 0, 0, 0, 0, 0xb], RedirectRule {
///     port: 1, rewrite_dst: [2, 0, 0, 0, 0, 0xb], rewrite_src: [2, 0, 0, 0, 0, 0x8],
/// })?;
/// let att = fwd.attach(&ns.device("veth0")?, XdpOptions::default())?; // frames arriving there
/// # drop(att);
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct XdpRedirect {
    program: XdpProgram,
    egress: XdpProgram,
    ports: DevMap,
    rules: MapHandle,
    rule_gen: MapHandle,
    stats: StatsMap,
    receivers: Receivers,
}

impl XdpRedirect {
    /// Loads the programs and maps.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Permission`](crate::ErrorKind::Permission) without CAP_BPF.
    pub fn load() -> Result<Self> {
        let obj = Loaded::load("xdp_redirect", crate::skel::xdp_redirect::OBJECT)?;
        let rules = obj.map("redirect_rules")?;
        check_sizes("open redirect rules", &rules, 8, 16)?;
        let rule_gen = obj.map("rule_gen")?;
        check_sizes("open redirect rule generation", &rule_gen, 4, 4)?;
        let fwd = XdpRedirect {
            program: obj.program("xdp_redirect")?,
            egress: obj.program("xdp_egress")?,
            ports: DevMap::from_handle(obj.map("ports")?)?,
            rules,
            rule_gen,
            stats: StatsMap::new(obj.map(super::stats::STATS_MAP)?)?,
            receivers: Receivers::default(),
        };
        fwd.invalidate_cache("load XDP redirect")?; // generation 0 -> 1: the cache is on
        Ok(fwd)
    }

    /// Moves the rule generation on (never to 0, which turns the cache off): every CPU's cached
    /// rules stop matching. Two threads calling this at once may both write the same next value,
    /// and that suffices: each changed the table before reading the generation, so no CPU can
    /// have tagged a rule older than their changes with the value they write.
    fn invalidate_cache(&self, op: &str) -> Result<()> {
        let zero = 0u32.to_ne_bytes();
        let gen = self
            .rule_gen
            .lookup(&zero, MapFlags::ANY)
            .map_err(|e| Error::bpf(op.to_string(), e))?
            .and_then(|v| {
                v.get(..4)
                    .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            })
            .unwrap_or(0);
        let next = match gen.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        self.rule_gen
            .update(&zero, &next.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| Error::bpf(op.to_string(), e))
    }

    /// The ingress program (`xdp_redirect`).
    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    /// The per-port program (`xdp_egress`, a devmap program): give it to
    /// [`DevMap::set`] to count what leaves a port ([`Stage::Egress`](super::Stage::Egress)).
    pub fn egress_program(&self) -> &XdpProgram {
        &self.egress
    }

    /// The egress ports (`BPF_MAP_TYPE_DEVMAP`, keys 0..64).
    pub fn ports(&self) -> &DevMap {
        &self.ports
    }

    /// The counters of both programs.
    pub fn stats(&self) -> &StatsMap {
        &self.stats
    }

    /// Attaches the ingress program to `device`.
    ///
    /// # Errors
    ///
    /// As [`XdpAttachment::attach`].
    pub fn attach(&self, device: &Device, options: XdpOptions) -> Result<XdpAttachment> {
        XdpAttachment::attach(&self.program, device, options)
    }

    /// Sets port `port` to `device` after putting a pass program on `receiver`, the veth at
    /// the other end of `device` (kept while this value lives), so the veth accepts redirected
    /// frames. A receiver that runs an XDP program already is left as it is.
    ///
    /// # Errors
    ///
    /// As [`DevMap::set`] and [`XdpPass::attach_receiver`](super::XdpPass::attach_receiver);
    /// on failure the port is left as it was.
    pub fn set_port_with_receiver(
        &self,
        port: u32,
        device: &Device,
        receiver: &Device,
    ) -> Result<()> {
        self.receivers.ensure(receiver)?;
        self.ports.set(port, device, None)
    }

    /// Sets the rule for frames whose destination MAC is `match_dst`.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput) for a port outside the
    /// devmap; [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the table (4096 rules) is full.
    pub fn set_rule(&self, match_dst: MacAddr, rule: RedirectRule) -> Result<()> {
        let op = "set XDP redirect rule";
        if rule.port >= self.ports.capacity() {
            return Err(Error::invalid_input(
                op,
                format!("port {} is outside 0..{}", rule.port, self.ports.capacity()),
            ));
        }
        let value = lwtun_xdp_redirect {
            port: rule.port,
            dst: rule.rewrite_dst,
            src: rule.rewrite_src,
        };
        self.rules
            .update(
                abi::as_bytes(&key(match_dst)),
                abi::as_bytes(&value),
                MapFlags::ANY,
            )
            .map_err(|e| {
                crate::family::table_write_error(op, e, "XDP redirect rules", &self.rules)
                    .with_object(fmt_mac(&match_dst))
            })?;
        self.invalidate_cache(op)
    }

    /// The rule for `match_dst`, if any.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the table cannot be read.
    pub fn rule(&self, match_dst: MacAddr) -> Result<Option<RedirectRule>> {
        let op = "read XDP redirect rule";
        let v = self
            .rules
            .lookup(abi::as_bytes(&key(match_dst)), MapFlags::ANY)
            .map_err(|e| Error::bpf(op, e))?;
        Ok(v.and_then(|b| abi::from_bytes::<lwtun_xdp_redirect>(&b))
            .map(|v| RedirectRule {
                port: v.port,
                rewrite_dst: v.dst,
                rewrite_src: v.src,
            }))
    }

    /// Removes the rule for `match_dst`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the table cannot be changed.
    pub fn remove_rule(&self, match_dst: MacAddr) -> Result<bool> {
        match self.rules.delete(abi::as_bytes(&key(match_dst))) {
            Ok(()) => {
                self.invalidate_cache("remove XDP redirect rule")?;
                Ok(true)
            }
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::bpf("remove XDP redirect rule", e)),
        }
    }

    /// Every rule, by matched destination MAC.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Kernel`](crate::ErrorKind::Kernel) when the table cannot be read.
    pub fn rules(&self) -> Result<Vec<(MacAddr, RedirectRule)>> {
        let mut out = Vec::new();
        for k in self.rules.keys() {
            let Some(k) = abi::from_bytes::<lwtun_mac>(&k) else {
                continue;
            };
            if let Some(rule) = self.rule(k.addr)? {
                out.push((k.addr, rule));
            }
        }
        Ok(out)
    }
}

fn key(mac: MacAddr) -> lwtun_mac {
    lwtun_mac {
        addr: mac,
        pad: [0; 2],
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn fmt_mac(m: &MacAddr) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
