//! The `ip`-style peer words shared by `lwtun peer add` and its batch files:
//!
//! ```text
//! PREFIX remote ADDR local ADDR encap { ipip | gre [key N] [csum] | udp port N }
//!        [ttl { N | inherit }] [tos { N | inherit }]
//! ```

use std::net::IpAddr;
use std::path::Path;

use ipnetwork::IpNetwork;
use lwtun::peer::{Encap, EncapPeer};
use lwtun::{Error, Result};

const OP: &str = "parse tunnel peer";

/// The usage line printed with parse errors.
pub const USAGE: &str =
    "PREFIX remote ADDR local ADDR encap { ipip | gre [key N] [csum] | udp port N } \
                         [ttl N|inherit] [tos N|inherit]";

fn value<'a>(words: &mut impl Iterator<Item = &'a str>, key: &str) -> Result<&'a str> {
    words
        .next()
        .ok_or_else(|| Error::invalid_input(OP, format!("`{key}` needs a value; usage: {USAGE}")))
}

fn parse<T: std::str::FromStr>(text: &str, what: &str) -> Result<T> {
    text.parse()
        .map_err(|_| Error::invalid_input(OP, format!("{what} {text:?} is not valid")))
}

/// A prefix as `ip` writes it; a bare address is a host prefix.
pub fn prefix(text: &str) -> Result<IpNetwork> {
    parse::<IpNetwork>(text, "prefix")
}

/// Parses one peer from its words.
pub fn peer<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<(IpNetwork, EncapPeer)> {
    let mut words = words.into_iter();
    let dst = prefix(
        words
            .next()
            .ok_or_else(|| Error::invalid_input(OP, format!("no prefix; usage: {USAGE}")))?,
    )?;
    let (mut remote, mut local, mut kind) = (None::<IpAddr>, None::<IpAddr>, None::<&str>);
    let (mut key, mut csum, mut port) = (None::<u32>, false, None::<u16>);
    let (mut ttl, mut tos) = (None::<Option<u8>>, None::<Option<u8>>);
    while let Some(word) = words.next() {
        match word {
            "remote" => remote = Some(parse(value(&mut words, word)?, "remote address")?),
            "local" => local = Some(parse(value(&mut words, word)?, "local address")?),
            "encap" => kind = Some(value(&mut words, word)?),
            "key" => key = Some(parse(value(&mut words, word)?, "GRE key")?),
            "csum" => csum = true,
            "port" => port = Some(parse(value(&mut words, word)?, "UDP port")?),
            "ttl" | "tos" => {
                let v = value(&mut words, word)?;
                let field = if v == "inherit" {
                    None
                } else {
                    Some(parse::<u8>(v, word)?)
                };
                if word == "ttl" {
                    ttl = Some(field);
                } else {
                    tos = Some(field);
                }
            }
            other => {
                return Err(Error::invalid_input(
                    OP,
                    format!("unknown word {other:?}; usage: {USAGE}"),
                ))
            }
        }
    }
    let missing = |what: &str| Error::invalid_input(OP, format!("no `{what}`; usage: {USAGE}"));
    let remote = remote.ok_or_else(|| missing("remote ADDR"))?;
    let local = local.ok_or_else(|| missing("local ADDR"))?;
    let encap = match kind.ok_or_else(|| missing("encap KIND"))? {
        "ipip" => Encap::Ipip,
        "gre" => Encap::Gre {
            key,
            checksum: csum,
        },
        "udp" => Encap::Udp {
            port: port.ok_or_else(|| missing("port N (for encap udp)"))?,
        },
        other => {
            return Err(Error::invalid_input(
                OP,
                format!("encap {other:?}: use ipip, gre or udp"),
            ))
        }
    };
    if !matches!(encap, Encap::Gre { .. }) && (key.is_some() || csum) {
        return Err(Error::invalid_input(
            OP,
            "`key` and `csum` go with encap gre",
        ));
    }
    if !matches!(encap, Encap::Udp { .. }) && port.is_some() {
        return Err(Error::invalid_input(OP, "`port` goes with encap udp"));
    }
    let mut peer = EncapPeer::new(remote, local, encap);
    match ttl {
        Some(Some(v)) => peer = peer.ttl(v),
        Some(None) => peer = peer.inherit_ttl(),
        None => {}
    }
    match tos {
        Some(Some(v)) => peer = peer.tos(v),
        Some(None) => peer = peer.inherit_tos(),
        None => {}
    }
    peer.validate()
        .map_err(|e| e.with_object(dst.to_string()))?;
    Ok((dst, peer))
}

/// Reads a batch file (`-`: standard input).
pub fn read(file: &Path) -> Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(file)
    }
    .map_err(|e| Error::io("read batch file", e).with_object(file.display().to_string()))
}

/// The lines of a batch file that say something, each with its place (`FILE:LINE`): blank
/// lines and lines starting with `#` are skipped. `progress` is told the bytes read.
pub fn lines<'t>(
    file: &Path,
    text: &'t str,
    mut progress: impl FnMut(u64) + 't,
) -> impl Iterator<Item = (String, &'t str)> + 't {
    let name = file.display().to_string();
    text.lines().enumerate().filter_map(move |(i, line)| {
        progress(line.len() as u64 + 1);
        let line = line.trim();
        (!line.is_empty() && !line.starts_with('#')).then(|| (format!("{name}:{}", i + 1), line))
    })
}

/// Parses a batch file of peers: one per line in the words of [`peer`]. The first bad line is
/// the error, reported as `FILE:LINE`; whether the peers fit the table is checked later, with
/// the other edits.
pub fn batch(
    file: &Path,
    text: &str,
    progress: impl FnMut(u64),
) -> Result<Vec<(String, IpNetwork, EncapPeer)>> {
    lines(file, text, progress)
        .map(|(at, line)| {
            let (prefix, peer) = peer(line.split_whitespace()).map_err(|e| e.with_object(&at))?;
            Ok((at, prefix, peer))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lwtun::peer::OuterField;
    use lwtun::ErrorKind;

    fn words(s: &str) -> Result<(IpNetwork, EncapPeer)> {
        peer(s.split_whitespace())
    }

    #[test]
    fn parses_every_encap_and_option() {
        let (p, g) = words(
            "10.20.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap gre key 5 csum ttl inherit tos 8",
        )
        .unwrap();
        assert_eq!(p.to_string(), "10.20.0.0/16");
        assert_eq!(
            g.encap,
            Encap::Gre {
                key: Some(5),
                checksum: true
            }
        );
        assert_eq!(g.ttl, OuterField::Inherit);
        assert_eq!(g.tos, OuterField::Fixed(8));
        let (_, u) = words("fd00::/64 encap udp port 5555 remote fd77::2 local fd77::1").unwrap();
        assert_eq!(u.encap, Encap::Udp { port: 5555 });
        assert_eq!(u.ttl, OuterField::Fixed(64));
        let (_, i) = words("10.1.2.3 remote 1.2.3.4 local 1.2.3.5 encap ipip").unwrap();
        assert_eq!(i.encap, Encap::Ipip);
    }

    #[test]
    fn refuses_bad_words_with_what_to_do() {
        for (line, needle) in [
            ("10.0.0.0/8 remote 1.1.1.1 encap ipip", "local"),
            ("10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2", "encap"),
            ("10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2 encap udp", "port"),
            (
                "10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2 encap ipip key 3",
                "gre",
            ),
            (
                "10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2 encap vxlan",
                "vxlan",
            ),
            (
                "10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2 encap ipip mtu 3",
                "unknown",
            ),
            (
                "10.0.0.0/8 remote 1.1.1.1 local fd00::1 encap ipip",
                "families",
            ),
            (
                "10.0.0.0/33 remote 1.1.1.1 local 2.2.2.2 encap ipip",
                "prefix",
            ),
            (
                "10.0.0.0/8 remote 1.1.1.1 local 2.2.2.2 encap gre key",
                "needs a value",
            ),
        ] {
            let e = words(line).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{line}");
            assert!(e.to_string().contains(needle), "{line}: {e}");
        }
    }

    /// Batch files are outside bytes: mutated lines (bytes flipped, cut, spliced from other
    /// lines, words repeated) never panic the parser, and every line it accepts is a valid peer.
    /// `LWTUN_FUZZ_ITERATIONS` sets the count (default 20 000).
    #[test]
    fn mutated_lines_never_panic() {
        let seeds: Vec<&[u8]> = vec![
            b"10.20.0.0/16 remote 10.77.0.2 local 10.77.0.1 encap gre key 5 csum ttl inherit tos 8",
            b"fd00::/64 encap udp port 5555 remote fd77::2 local fd77::1",
            b"10.1.2.3 remote 1.2.3.4 local 1.2.3.5 encap ipip ttl 3 tos inherit",
            b"::/0 remote fd77::2 local fd77::1 encap gre",
        ];
        let n: usize = std::env::var("LWTUN_FUZZ_ITERATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d) as usize
        };
        let mut accepted = 0;
        for _ in 0..n {
            let mut v = seeds[rand() % seeds.len()].to_vec();
            for _ in 0..1 + rand() % 4 {
                let len = v.len();
                match rand() % 5 {
                    0 if len > 0 => v[rand() % len] ^= 1 << (rand() % 8),
                    1 => v.truncate(rand() % (len + 1)),
                    2 => {
                        let other = seeds[rand() % seeds.len()];
                        let at = rand() % (len + 1);
                        let from = rand() % (other.len() + 1);
                        v.splice(at..at, other[from..].iter().copied());
                    }
                    3 if len > 0 => {
                        let at = rand() % len;
                        v.insert(at, b"0123456789 /:.x"[rand() % 15]);
                    }
                    _ => {
                        let text = String::from_utf8_lossy(&v).into_owned();
                        let words: Vec<&str> = text.split_whitespace().collect();
                        if let Some(w) = words.get(rand() % (words.len() + 1)) {
                            v.extend_from_slice(format!(" {w}").as_bytes());
                        }
                    }
                }
            }
            let line = String::from_utf8_lossy(&v);
            if let Ok((_, p)) = words(&line) {
                p.validate()
                    .unwrap_or_else(|e| panic!("{line:?} accepted but invalid: {e}"));
                accepted += 1;
            }
        }
        assert!(
            accepted > 0,
            "no mutation was a valid line: the seeds are broken"
        );
    }
}
