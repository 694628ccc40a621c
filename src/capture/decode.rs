//! The terminal view of captured packets: one tcpdump-like line, or every layer with its fields
//! and a hex dump.
//!
//! lwtun's own encapsulations are decoded through to the inner packet, as tcpdump prints them:
//! IP-in-IP and IPv6-in-IP (`IP a > b: IP c > d: ...`), GRE with its key
//! (`GREv0, key=77, length 88: IP ...`) and FOU, UDP carrying an IP packet directly
//! (`UDP a.p > b.5555: FOU, length 84: IP ...`; a UDP payload is taken for FOU when it is an IP
//! packet whose own length fills the datagram exactly). Lengths are tcpdump's: the ICMP message,
//! the TCP or UDP payload, the GRE packet, read from the headers (so they are right for packets cut
//! short by the snap length).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::UNIX_EPOCH;

use super::{LinkType, Packet};
use crate::chain::ChainHook;

/// How deep tunnels are decoded (outer + 3 inner IP headers).
const MAX_DEPTH: u8 = 3;

/// A decoded header: its name and fields.
struct Layer {
    name: String,
    fields: Vec<(&'static str, String)>,
}

/// Every layer decoded, and the tcpdump-like text of the network layers and what they carry.
#[derive(Default)]
struct Decoded {
    layers: Vec<Layer>,
    text: String,
}

impl Decoded {
    fn layer(&mut self, name: impl Into<String>, fields: Vec<(&'static str, String)>) {
        self.layers.push(Layer {
            name: name.into(),
            fields,
        });
    }
}

fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(o)?, *b.get(o + 1)?]))
}

fn be32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The kernel's name of `verdict` at `hook` (`None` for a code the hook does not define).
pub(super) fn verdict_name(hook: ChainHook, verdict: i32) -> Option<&'static str> {
    Some(match (hook, verdict) {
        (ChainHook::Xdp, 0) => "XDP_ABORTED",
        (ChainHook::Xdp, 1) => "XDP_DROP",
        (ChainHook::Xdp, 2) => "XDP_PASS",
        (ChainHook::Xdp, 3) => "XDP_TX",
        (ChainHook::Xdp, 4) => "XDP_REDIRECT",
        // TC_ACT_UNSPEC, which tcx calls TCX_NEXT: the next program on the hook decides.
        (ChainHook::Tc, -1) => "next",
        (ChainHook::Tc, 0) => "TC_ACT_OK",
        (ChainHook::Tc, 1) => "TC_ACT_RECLASSIFY",
        (ChainHook::Tc, 2) => "TC_ACT_SHOT",
        (ChainHook::Tc, 3) => "TC_ACT_PIPE",
        (ChainHook::Tc, 4) => "TC_ACT_STOLEN",
        (ChainHook::Tc, 5) => "TC_ACT_QUEUED",
        (ChainHook::Tc, 6) => "TC_ACT_REPEAT",
        (ChainHook::Tc, 7) => "TC_ACT_REDIRECT",
        (ChainHook::Tc, 8) => "TC_ACT_TRAP",
        (ChainHook::Xdp | ChainHook::Tc, _) => return None,
        (_, 0) => "BPF_OK",
        (_, 2) => "BPF_DROP",
        (_, 7) => "BPF_REDIRECT",
        (_, 128) => "BPF_LWT_REROUTE",
        _ => return None,
    })
}

pub(super) fn verdict_text(p: &Packet) -> String {
    match verdict_name(p.hook, p.verdict) {
        Some(name) => name.to_string(),
        None => format!("unknown verdict {}", p.verdict),
    }
}

/// Decodes every layer it knows; stops at the first it does not (or a truncated one).
fn decode(p: &Packet) -> Decoded {
    let d = &p.data;
    let mut out = Decoded::default();
    let mut off = 0usize;
    let ethertype = match p.link_type() {
        LinkType::Raw => match d.first().map(|b| b >> 4) {
            Some(4) => 0x0800,
            Some(6) => 0x86dd,
            _ => 0,
        },
        LinkType::Ethernet => {
            let Some(mut t) = be16(d, 12) else {
                return out;
            };
            let mut fields = vec![("dst", mac(&d[0..6])), ("src", mac(&d[6..12]))];
            off = 14;
            while t == 0x8100 || t == 0x88a8 {
                let (Some(tci), Some(inner)) = (be16(d, off), be16(d, off + 2)) else {
                    out.layer("Ethernet", fields);
                    return out;
                };
                fields.push(("vlan", (tci & 0x0fff).to_string()));
                t = inner;
                off += 4;
            }
            fields.push(("type", format!("{t:#06x}")));
            out.layer("Ethernet", fields);
            t
        }
    };
    network(d, off, ethertype, 0, &mut out);
    out
}

/// The network layer at `off` (`ethertype` says which), and everything it carries.
fn network(d: &[u8], off: usize, ethertype: u16, depth: u8, out: &mut Decoded) {
    match ethertype {
        0x0800 => ipv4(d, off, depth, out),
        0x86dd => ipv6(d, off, depth, out),
        0x0806 => {
            let op = be16(d, off + 6).unwrap_or(0);
            out.layer("ARP", vec![("op", op.to_string())]);
            out.text.push_str(match op {
                1 => "ARP, Request",
                2 => "ARP, Reply",
                _ => "ARP",
            });
        }
        0 => {}
        t => {
            let _ = write!(out.text, "ethertype {t:#06x}");
        }
    }
}

fn inner_name(name: &str, depth: u8) -> String {
    if depth == 0 {
        name.to_string()
    } else {
        format!("{name} (inner)")
    }
}

fn ipv4(d: &[u8], off: usize, depth: u8, out: &mut Decoded) {
    let Some(h) = d.get(off..off + 20) else {
        out.text.push_str("IP (truncated)");
        return;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(be16(h, 2).unwrap_or(0));
    let frag = be16(h, 6).unwrap_or(0);
    let proto = h[9];
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    out.layer(
        inner_name("IPv4", depth),
        vec![
            ("src", src.to_string()),
            ("dst", dst.to_string()),
            ("ihl", ihl.to_string()),
            ("tos", format!("{:#04x}", h[1])),
            ("total length", total.to_string()),
            ("id", be16(h, 4).unwrap_or(0).to_string()),
            ("flags+frag", format!("{frag:#06x}")),
            ("ttl", h[8].to_string()),
            ("protocol", proto.to_string()),
            ("checksum", format!("{:#06x}", be16(h, 10).unwrap_or(0))),
        ],
    );
    let len = total.saturating_sub(ihl.max(20));
    if frag & 0x1fff != 0 {
        let _ = write!(
            out.text,
            "IP {src} > {dst}: fragment offset {}, proto {proto}, length {len}",
            usize::from(frag & 0x1fff) * 8
        );
        return;
    }
    let ends = Ends {
        family: "IP",
        src: src.to_string(),
        dst: dst.to_string(),
    };
    transport(d, off + ihl.max(20), proto, len, &ends, depth, out);
}

fn ipv6(d: &[u8], off: usize, depth: u8, out: &mut Decoded) {
    let Some(h) = d.get(off..off + 40) else {
        out.text.push_str("IP6 (truncated)");
        return;
    };
    let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&h[o..o + 16]).expect("16"));
    let (src, dst) = (a(8), a(24));
    let mut next = h[6];
    let mut len = usize::from(be16(h, 4).unwrap_or(0));
    out.layer(
        inner_name("IPv6", depth),
        vec![
            ("src", src.to_string()),
            ("dst", dst.to_string()),
            (
                "flow",
                format!("{:#07x}", be32(h, 0).unwrap_or(0) & 0xfffff),
            ),
            ("payload length", len.to_string()),
            ("next header", next.to_string()),
            ("hop limit", h[7].to_string()),
        ],
    );
    // Hop-by-hop, routing and destination options (the tunnel encapsulation limit of the
    // kernel's ip6tnl and ip6gre) are skipped; a fragment ends the decode.
    let mut at = off + 40;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let (Some(&nh), Some(&hl)) = (d.get(at), d.get(at + 1)) else {
                    break;
                };
                let ext = (usize::from(hl) + 1) * 8;
                out.layer(
                    format!("IPv6 extension {next}"),
                    vec![("next header", nh.to_string()), ("length", ext.to_string())],
                );
                next = nh;
                at += ext;
                len = len.saturating_sub(ext);
            }
            44 => {
                let _ = write!(out.text, "IP6 {src} > {dst}: fragment, length {len}");
                return;
            }
            _ => break,
        }
    }
    let ends = Ends {
        family: "IP6",
        src: src.to_string(),
        dst: dst.to_string(),
    };
    transport(d, at, next, len, &ends, depth, out);
}

/// The family and addresses of the IP header in front of a transport header.
struct Ends {
    family: &'static str,
    src: String,
    dst: String,
}

/// `proto`'s header at `off`, `len` bytes long by the IP header, and what it carries.
fn transport(d: &[u8], off: usize, proto: u8, len: usize, ip: &Ends, depth: u8, out: &mut Decoded) {
    let rest = d.get(off..).unwrap_or_default();
    let Ends { family, src, dst } = ip;
    let tunnel = depth < MAX_DEPTH;
    match proto {
        1 | 58 if rest.len() >= 4 => {
            let (t, c) = (rest[0], rest[1]);
            let v6 = proto == 58;
            let what = match (v6, t) {
                (false, 8) | (true, 128) => "echo request".to_string(),
                (false, 0) | (true, 129) => "echo reply".to_string(),
                (false, 3) | (true, 1) => "destination unreachable".to_string(),
                (false, 11) | (true, 3) => "time exceeded".to_string(),
                (true, 2) => "packet too big".to_string(),
                (true, 135) => "neighbor solicitation".to_string(),
                (true, 136) => "neighbor advertisement".to_string(),
                _ => format!("type {t}, code {c}"),
            };
            let echo = matches!((v6, t), (false, 0 | 8) | (true, 128 | 129));
            let mut fields = vec![("type", t.to_string()), ("code", c.to_string())];
            let _ = write!(
                out.text,
                "{family} {src} > {dst}: {}{what}",
                if v6 { "ICMP6, " } else { "ICMP " }
            );
            if echo {
                let (id, seq) = (be16(rest, 4).unwrap_or(0), be16(rest, 6).unwrap_or(0));
                fields.push(("id", id.to_string()));
                fields.push(("seq", seq.to_string()));
                let _ = write!(out.text, ", id {id}, seq {seq}");
            }
            fields.push(("length", len.to_string()));
            let _ = write!(out.text, ", length {len}");
            out.layer(if v6 { "ICMPv6" } else { "ICMP" }, fields);
        }
        6 if rest.len() >= 20 => {
            let (sp, dp) = (be16(rest, 0).unwrap_or(0), be16(rest, 2).unwrap_or(0));
            let doff = usize::from(rest[12] >> 4) * 4;
            let flags = rest[13];
            let names: String = [
                (0x02, 'S'),
                (0x01, 'F'),
                (0x08, 'P'),
                (0x04, 'R'),
                (0x10, '.'),
            ]
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, c)| *c)
            .collect();
            let (seq, ack) = (be32(rest, 4).unwrap_or(0), be32(rest, 8).unwrap_or(0));
            let win = be16(rest, 14).unwrap_or(0);
            let payload = len.saturating_sub(doff);
            let _ = write!(
                out.text,
                "{family} {src}.{sp} > {dst}.{dp}: Flags [{names}], seq {seq}"
            );
            if flags & 0x10 != 0 {
                let _ = write!(out.text, ", ack {ack}");
            }
            let _ = write!(out.text, ", win {win}, length {payload}");
            out.layer(
                "TCP",
                vec![
                    ("src port", sp.to_string()),
                    ("dst port", dp.to_string()),
                    ("seq", seq.to_string()),
                    ("ack", ack.to_string()),
                    ("flags", format!("{flags:#04x} [{names}]")),
                    ("window", win.to_string()),
                    ("length", payload.to_string()),
                ],
            );
        }
        17 if rest.len() >= 8 => {
            let (sp, dp) = (be16(rest, 0).unwrap_or(0), be16(rest, 2).unwrap_or(0));
            let payload = usize::from(be16(rest, 4).unwrap_or(0)).saturating_sub(8);
            let fou = tunnel.then(|| fou_inner(&rest[8..], payload)).flatten();
            let fields = vec![
                ("src port", sp.to_string()),
                ("dst port", dp.to_string()),
                ("length", be16(rest, 4).unwrap_or(0).to_string()),
            ];
            match fou {
                Some(ethertype) => {
                    out.layer(format!("UDP (FOU, port {dp})"), fields);
                    let _ = write!(
                        out.text,
                        "{family} {src}.{sp} > {dst}.{dp}: FOU, length {payload}: "
                    );
                    network(d, off + 8, ethertype, depth + 1, out);
                }
                None => {
                    out.layer("UDP", fields);
                    let _ = write!(
                        out.text,
                        "{family} {src}.{sp} > {dst}.{dp}: UDP, length {payload}"
                    );
                }
            }
        }
        4 | 41 if tunnel => {
            let _ = write!(out.text, "{family} {src} > {dst}: ");
            network(
                d,
                off,
                if proto == 4 { 0x0800 } else { 0x86dd },
                depth + 1,
                out,
            );
        }
        47 if tunnel && rest.len() >= 4 => gre(d, off, len, ip, depth, out),
        _ => {
            let _ = write!(
                out.text,
                "{family} {src} > {dst}: ip-proto-{proto}, length {len}"
            );
        }
    }
}

/// The EtherType of the IP packet a UDP payload is, when it is one that fills the datagram
/// exactly (FOU: UDP directly followed by the inner IPv4 or IPv6 packet).
fn fou_inner(payload: &[u8], len: usize) -> Option<u16> {
    match payload.first()? >> 4 {
        4 => {
            let h = payload.get(..20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let whole = ihl >= 20 && usize::from(be16(h, 2)?) == len;
            // The header checksum, where the whole header was captured.
            let sum_ok = payload.get(..ihl).is_none_or(|h| {
                let sum: u32 = h
                    .chunks(2)
                    .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
                    .sum();
                let folded = (sum & 0xffff) + (sum >> 16);
                (folded & 0xffff) + (folded >> 16) == 0xffff
            });
            (whole && sum_ok).then_some(0x0800)
        }
        6 => (usize::from(be16(payload, 4)?) + 40 == len).then_some(0x86dd),
        _ => None,
    }
}

/// A GRE header at `off` (`len` bytes of GRE packet) and the packet it carries.
fn gre(d: &[u8], off: usize, len: usize, ip: &Ends, depth: u8, out: &mut Decoded) {
    let rest = &d[off..];
    let flags = be16(rest, 0).unwrap_or(0);
    let ptype = be16(rest, 2).unwrap_or(0);
    let version = flags & 7;
    let mut at = 4;
    let mut fields = vec![
        ("flags", format!("{flags:#06x}")),
        ("protocol", format!("{ptype:#06x}")),
    ];
    let _ = write!(
        out.text,
        "{} {} > {}: GREv{version}",
        ip.family, ip.src, ip.dst
    );
    if flags & 0x8000 != 0 {
        let csum = be16(rest, at).unwrap_or(0);
        fields.push(("checksum", format!("{csum:#06x}")));
        let _ = write!(out.text, ", csum {csum:#06x}");
        at += 4;
    }
    if flags & 0x2000 != 0 {
        let Some(key) = be32(rest, at) else {
            out.text.push_str(" (truncated)");
            out.layer("GRE", fields);
            return;
        };
        fields.push(("key", format!("{key} ({key:#x})")));
        let _ = write!(out.text, ", key={key}");
        at += 4;
    }
    if flags & 0x1000 != 0 {
        let seq = be32(rest, at).unwrap_or(0);
        fields.push(("sequence", seq.to_string()));
        let _ = write!(out.text, ", seq {seq}");
        at += 4;
    }
    let _ = write!(out.text, ", length {len}");
    out.layer("GRE", fields);
    if version == 0 && matches!(ptype, 0x0800 | 0x86dd) {
        out.text.push_str(": ");
        network(d, off + at, ptype, depth + 1, out);
    } else {
        let _ = write!(out.text, ", proto {ptype:#06x}");
    }
}

fn clock(p: &Packet) -> String {
    let t = p.time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_micros()
    )
}

pub(super) fn summary(p: &Packet) -> String {
    let decoded = decode(p);
    let mut line = format!(
        "{} {} if{} {}",
        clock(p),
        p.hook,
        p.ifindex,
        verdict_text(p)
    );
    if decoded.text.is_empty() {
        let _ = write!(line, " (undecoded), length {}", p.len);
    } else {
        let _ = write!(line, " {}", decoded.text);
    }
    line
}

pub(super) fn dump(p: &Packet) -> String {
    let mut s = format!(
        "{} hook {} ifindex {} verdict {} length {} captured {}\n",
        clock(p),
        p.hook,
        p.ifindex,
        verdict_text(p),
        p.len,
        p.data.len()
    );
    for l in decode(p).layers {
        let _ = writeln!(s, "  {}", l.name);
        for (k, v) in l.fields {
            let _ = writeln!(s, "    {k:<15} {v}");
        }
    }
    for (i, chunk) in p.data.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let text: String = chunk
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        let _ = writeln!(s, "  {:04x}  {:<47}  {text}", i * 16, hex.join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHook;
    use std::time::{Duration, SystemTime};

    fn icmp_echo_v4() -> Vec<u8> {
        let mut b = vec![
            0x45, 0, 0, 28, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2,
        ];
        b.extend_from_slice(&[8, 0, 0, 0, 0, 7, 0, 3]);
        b
    }

    fn packet(hook: ChainHook, data: Vec<u8>) -> Packet {
        Packet {
            time: SystemTime::UNIX_EPOCH + Duration::from_micros(3_723_000_042),
            hook,
            ifindex: 3,
            verdict: 0,
            len: data.len() as u32,
            protocol: 0x0800,
            data,
        }
    }

    fn unhex(chunks: &[&str]) -> Vec<u8> {
        let s: String = chunks.concat();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Real packets, as lwtun's encap sent them and `tcpdump -xx` captured them on the peer:
    //   lwtun tunnel load --pin P; lwtun peer add --pin P 10.20.0.0/24 remote 10.66.0.2
    //   local 10.66.0.1 encap gre key 77 (and fd20::/64 ... encap udp port 5555, 10.21.0.0/24
    //   ... encap ipip); lwtun route add --pin P PREFIX --dev v0 --src 10.30.0.1 / fd30::1;
    //   ping -s 56 10.20.0.9, ping -6 -s 56 fd20::9, ping -s 56 10.21.0.9
    fn gre_key_77() -> Vec<u8> {
        unhex(&[
            "4a74a12f8ff56e63cc6701e108004500007000004000402f25d90a4200010a42",
            "0002200008000000004d450000543b9940004001ead40a1e00010a1400090800",
            "4030625c0001649f166b000000000f950c000000000010111213141516171819",
            "1a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637",
        ])
    }

    fn fou_6in4() -> Vec<u8> {
        unhex(&[
            "4a74a12f8ff56e63cc6701e108004500008400004000401125e30a4200010a42",
            "0002d5ca15b30070000060027af000403a40fd30000000000000000000000000",
            "0001fd20000000000000000000000000000980002d3462700001659f166b0000",
            "0000aea60c0000000000101112131415161718191a1b1c1d1e1f202122232425",
            "262728292a2b2c2d2e2f3031323334353637",
        ])
    }

    fn ipip() -> Vec<u8> {
        unhex(&[
            "4a74a12f8ff56e63cc6701e1080045000068000040004004260c0a4200010a42",
            "0002450000540b1c400040011b510a1e00010a1500090800757862e70001669f",
            "166b00000000d7c10c0000000000101112131415161718191a1b1c1d1e1f2021",
            "22232425262728292a2b2c2d2e2f3031323334353637",
        ])
    }

    #[test]
    fn summary_names_addresses_icmp_fields_and_tcpdumps_length() {
        let p = packet(ChainHook::LwtXmit, icmp_echo_v4());
        assert_eq!(
            p.summary(),
            "01:02:03.000042 lwt_xmit if3 BPF_OK IP 10.77.0.1 > 10.77.0.2: ICMP echo request, \
             id 7, seq 3, length 8"
        );
        let mut eth = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        eth.extend(icmp_echo_v4());
        let mut p = packet(ChainHook::Tc, eth);
        p.verdict = -1;
        assert!(
            p.summary()
                .contains("tc if3 next IP 10.77.0.1 > 10.77.0.2: ICMP echo request"),
            "{}",
            p.summary()
        );
        let d = p.dump();
        for want in [
            "verdict next length 42 captured 42",
            "  Ethernet",
            "    src             02:00:00:00:00:01",
            "  IPv4",
            "    ttl             64",
            "  ICMP",
            "    seq             3",
            "  0000  02 00 00 00",
        ] {
            assert!(d.contains(want), "{want:?} in\n{d}");
        }
    }

    #[test]
    fn gre_shows_its_key_and_the_inner_packet() {
        let p = packet(ChainHook::Tc, gre_key_77());
        // tcpdump: "IP 10.66.0.1 > 10.66.0.2: GREv0, key=0x4d, length 92: IP 10.30.0.1 >
        // 10.20.0.9: ICMP echo request, id 25180, seq 1, length 64"
        assert_eq!(
            p.summary(),
            "01:02:03.000042 tc if3 TC_ACT_OK IP 10.66.0.1 > 10.66.0.2: GREv0, key=77, length 92: \
             IP 10.30.0.1 > 10.20.0.9: ICMP echo request, id 25180, seq 1, length 64"
        );
        let d = p.dump();
        for want in [
            "  GRE\n",
            "    key             77 (0x4d)",
            "  IPv4 (inner)\n",
            "    src             10.30.0.1",
            "  ICMP\n",
            "    length          64",
        ] {
            assert!(d.contains(want), "{want:?} in\n{d}");
        }
    }

    #[test]
    fn fou_shows_its_port_and_the_inner_ipv6_packet() {
        let p = packet(ChainHook::Xdp, fou_6in4());
        // tcpdump (without being told the port is FOU): "IP 10.66.0.1.54730 >
        // 10.66.0.2.5555: UDP, length 104"; the inner ICMPv6 message is 64 bytes.
        assert_eq!(
            p.summary(),
            "01:02:03.000042 xdp if3 XDP_ABORTED IP 10.66.0.1.54730 > 10.66.0.2.5555: FOU, \
             length 104: IP6 fd30::1 > fd20::9: ICMP6, echo request, id 25200, seq 1, length 64"
        );
        let d = p.dump();
        assert!(d.contains("  UDP (FOU, port 5555)\n"), "{d}");
        assert!(d.contains("  IPv6 (inner)\n"), "{d}");
        // The same inner packet at an LWT hook, before the encap: length 64, not 104.
        let inner = fou_6in4()[14 + 28..].to_vec();
        let p = packet(ChainHook::LwtXmit, inner);
        assert_eq!(p.len, 104);
        assert!(
            p.summary().ends_with(
                "IP6 fd30::1 > fd20::9: ICMP6, echo request, id 25200, seq 1, length 64"
            ),
            "{}",
            p.summary()
        );
        // A UDP payload that is not an IP packet filling the datagram stays UDP.
        let mut plain = fou_6in4();
        plain[14 + 28 + 5] ^= 1; // the inner payload length
        assert!(packet(ChainHook::Tc, plain)
            .summary()
            .ends_with("10.66.0.2.5555: UDP, length 104"),);
    }

    #[test]
    fn ipip_shows_the_inner_packet() {
        let mut p = packet(ChainHook::Tc, ipip());
        p.verdict = 2;
        assert_eq!(
            p.summary(),
            "01:02:03.000042 tc if3 TC_ACT_SHOT IP 10.66.0.1 > 10.66.0.2: IP 10.30.0.1 > \
             10.21.0.9: ICMP echo request, id 25319, seq 1, length 64"
        );
    }

    #[test]
    fn verdicts_have_their_kernel_names() {
        let name = |hook, v| {
            let mut p = packet(hook, icmp_echo_v4());
            p.verdict = v;
            p.verdict_name()
        };
        assert_eq!(name(ChainHook::Xdp, 2), "XDP_PASS");
        assert_eq!(name(ChainHook::Xdp, 4), "XDP_REDIRECT");
        assert_eq!(name(ChainHook::Tc, -1), "next");
        assert_eq!(name(ChainHook::Tc, 7), "TC_ACT_REDIRECT");
        assert_eq!(name(ChainHook::LwtIn, 128), "BPF_LWT_REROUTE");
        assert_eq!(name(ChainHook::LwtOut, 2), "BPF_DROP");
        assert_eq!(name(ChainHook::Xdp, -1), "unknown verdict -1");
        assert_eq!(name(ChainHook::LwtXmit, 1), "unknown verdict 1");
    }

    #[test]
    fn truncated_and_unknown_packets_do_not_panic() {
        for n in 0..icmp_echo_v4().len() {
            let p = packet(ChainHook::LwtIn, icmp_echo_v4()[..n].to_vec());
            let _ = (p.summary(), p.dump());
            let mut eth = vec![0u8; 12];
            eth.extend_from_slice(&[0x81, 0x00, 0, 5, 0x08, 0x00]);
            eth.extend_from_slice(&icmp_echo_v4()[..n]);
            let p = packet(ChainHook::Xdp, eth);
            let _ = (p.summary(), p.dump());
        }
        for bytes in [gre_key_77(), fou_6in4(), ipip()] {
            for n in 0..bytes.len() {
                let mut p = packet(ChainHook::Tc, bytes[..n].to_vec());
                p.len = bytes.len() as u32;
                let _ = (p.summary(), p.dump());
                let mut bad = p.clone();
                bad.data.iter_mut().skip(14).for_each(|b| *b ^= 0x5a);
                let _ = (bad.summary(), bad.dump());
            }
        }
        assert!(packet(ChainHook::LwtIn, vec![0x00, 1, 2])
            .summary()
            .contains("(undecoded)"));
    }
}
