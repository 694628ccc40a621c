//! The terminal view of captured packets: one tcpdump-like line, or every layer with its fields
//! and a hex dump.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::UNIX_EPOCH;

use super::{LinkType, Packet};

/// A decoded header: its name and fields, and the protocol and offset of what follows.
struct Layer {
    name: &'static str,
    fields: Vec<(&'static str, String)>,
    brief: String,
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

/// Decodes every layer it knows; stops at the first it does not (or a truncated one).
fn layers(p: &Packet) -> Vec<Layer> {
    let d = &p.data;
    let mut out = Vec::new();
    let mut off = 0usize;
    let mut ethertype = match p.link_type() {
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
                    return out;
                };
                fields.push(("vlan", (tci & 0x0fff).to_string()));
                t = inner;
                off += 4;
            }
            fields.push(("type", format!("{t:#06x}")));
            out.push(Layer {
                name: "Ethernet",
                brief: format!("{} > {}", mac(&d[6..12]), mac(&d[0..6])),
                fields,
            });
            t
        }
    };
    let mut proto = 0u8;
    let (mut src, mut dst) = (String::new(), String::new());
    match ethertype {
        0x0800 => {
            let Some(h) = d.get(off..off + 20) else {
                return out;
            };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            proto = h[9];
            src = Ipv4Addr::new(h[12], h[13], h[14], h[15]).to_string();
            dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]).to_string();
            out.push(Layer {
                name: "IPv4",
                brief: format!("IP {src} > {dst}"),
                fields: vec![
                    ("src", src.clone()),
                    ("dst", dst.clone()),
                    ("ihl", ihl.to_string()),
                    ("tos", format!("{:#04x}", h[1])),
                    ("total length", be16(h, 2).unwrap_or(0).to_string()),
                    ("id", be16(h, 4).unwrap_or(0).to_string()),
                    ("flags+frag", format!("{:#06x}", be16(h, 6).unwrap_or(0))),
                    ("ttl", h[8].to_string()),
                    ("protocol", proto.to_string()),
                    ("checksum", format!("{:#06x}", be16(h, 10).unwrap_or(0))),
                ],
            });
            off += ihl.max(20);
        }
        0x86dd => {
            let Some(h) = d.get(off..off + 40) else {
                return out;
            };
            proto = h[6];
            let a = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&h[o..o + 16]).expect("16"));
            src = a(8).to_string();
            dst = a(24).to_string();
            out.push(Layer {
                name: "IPv6",
                brief: format!("IP6 {src} > {dst}"),
                fields: vec![
                    ("src", src.clone()),
                    ("dst", dst.clone()),
                    (
                        "flow",
                        format!("{:#07x}", be32(h, 0).unwrap_or(0) & 0xfffff),
                    ),
                    ("payload length", be16(h, 4).unwrap_or(0).to_string()),
                    ("next header", proto.to_string()),
                    ("hop limit", h[7].to_string()),
                ],
            });
            off += 40;
        }
        0x0806 => {
            out.push(Layer {
                name: "ARP",
                brief: "ARP".into(),
                fields: vec![("op", be16(d, off + 6).unwrap_or(0).to_string())],
            });
            return out;
        }
        _ => {
            ethertype = 0;
        }
    }
    if ethertype == 0 {
        return out;
    }
    let rest = &d[off.min(d.len())..];
    match proto {
        1 | 58 if rest.len() >= 4 => {
            let (t, c) = (rest[0], rest[1]);
            let what = match (proto, t) {
                (1, 8) | (58, 128) => "echo request".to_string(),
                (1, 0) | (58, 129) => "echo reply".to_string(),
                (1, 3) => "destination unreachable".to_string(),
                (1, 11) => "time exceeded".to_string(),
                (58, 135) => "neighbor solicitation".to_string(),
                (58, 136) => "neighbor advertisement".to_string(),
                _ => format!("type {t} code {c}"),
            };
            let echo = matches!((proto, t), (1, 0 | 8) | (58, 128 | 129));
            let mut fields = vec![("type", t.to_string()), ("code", c.to_string())];
            let mut brief = format!("{}: {what}", if proto == 1 { "ICMP" } else { "ICMP6" });
            if echo {
                let (id, seq) = (be16(rest, 4).unwrap_or(0), be16(rest, 6).unwrap_or(0));
                fields.push(("id", id.to_string()));
                fields.push(("seq", seq.to_string()));
                let _ = write!(brief, ", id {id}, seq {seq}");
            }
            out.push(Layer {
                name: if proto == 1 { "ICMP" } else { "ICMPv6" },
                brief,
                fields,
            });
        }
        6 if rest.len() >= 20 => {
            let (sp, dp) = (be16(rest, 0).unwrap_or(0), be16(rest, 2).unwrap_or(0));
            let flags = rest[13];
            let names: String = [
                (0x02, 'S'),
                (0x10, '.'),
                (0x08, 'P'),
                (0x01, 'F'),
                (0x04, 'R'),
            ]
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, c)| *c)
            .collect();
            out.push(Layer {
                name: "TCP",
                brief: format!("TCP {sp} > {dp} [{names}]"),
                fields: vec![
                    ("src port", sp.to_string()),
                    ("dst port", dp.to_string()),
                    ("seq", be32(rest, 4).unwrap_or(0).to_string()),
                    ("ack", be32(rest, 8).unwrap_or(0).to_string()),
                    ("flags", format!("{flags:#04x} [{names}]")),
                    ("window", be16(rest, 14).unwrap_or(0).to_string()),
                ],
            });
        }
        17 if rest.len() >= 8 => {
            let (sp, dp) = (be16(rest, 0).unwrap_or(0), be16(rest, 2).unwrap_or(0));
            out.push(Layer {
                name: "UDP",
                brief: format!("UDP {sp} > {dp}"),
                fields: vec![
                    ("src port", sp.to_string()),
                    ("dst port", dp.to_string()),
                    ("length", be16(rest, 4).unwrap_or(0).to_string()),
                ],
            });
        }
        _ => {}
    }
    let _ = (src, dst);
    out
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
    let ls = layers(p);
    let mut line = format!(
        "{} {} if{} verdict {}",
        clock(p),
        p.hook,
        p.ifindex,
        p.verdict
    );
    // The IP layer carries the addresses; the layer after it the protocol details.
    let ip = ls.iter().position(|l| l.name == "IPv4" || l.name == "IPv6");
    match ip {
        Some(i) => {
            let _ = write!(line, " {}", ls[i].brief);
            if let Some(next) = ls.get(i + 1) {
                let _ = write!(line, " {}", next.brief);
            }
        }
        None => match ls.first() {
            Some(l) => {
                let _ = write!(line, " {}", l.brief);
            }
            None => line.push_str(" (undecoded)"),
        },
    }
    let _ = write!(line, ", length {}", p.len);
    line
}

pub(super) fn dump(p: &Packet) -> String {
    let mut s = format!(
        "{} hook {} ifindex {} verdict {} length {} captured {}\n",
        clock(p),
        p.hook,
        p.ifindex,
        p.verdict,
        p.len,
        p.data.len()
    );
    for l in layers(p) {
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

    #[test]
    fn summary_names_addresses_and_icmp_fields() {
        let p = packet(ChainHook::LwtXmit, icmp_echo_v4());
        assert_eq!(
            p.summary(),
            "01:02:03.000042 lwt_xmit if3 verdict 0 IP 10.77.0.1 > 10.77.0.2 ICMP: echo request, id 7, seq 3, length 28"
        );
        let mut eth = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        eth.extend(icmp_echo_v4());
        let p = packet(ChainHook::Tc, eth);
        assert!(
            p.summary()
                .contains("tc if3 verdict 0 IP 10.77.0.1 > 10.77.0.2 ICMP: echo request"),
            "{}",
            p.summary()
        );
        let d = p.dump();
        for want in [
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
        assert!(packet(ChainHook::LwtIn, vec![0x00, 1, 2])
            .summary()
            .contains("(undecoded)"));
    }
}
