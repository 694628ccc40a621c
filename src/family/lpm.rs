//! LPM trie keys, as every lwtun table keyed by prefix lays them out (`struct lwtun_peer_key4`
//! and `lwtun_redirect_key4`, `…key6`, in `bpf/lwtun.h`): the prefix length as a native-endian
//! `u32`, then the network address (4 or 16 bytes), host bits cleared.

use ipnetwork::IpNetwork;
use libbpf_rs::OpenObject;

use crate::error::{Error, Result};

/// `prefix` with its host bits cleared, so that `10.20.3.4/16` and `10.20.0.0/16` name the same
/// entry (the kernel's trie would treat them as one, a copy kept in user space must too).
pub(crate) fn normalize(prefix: IpNetwork) -> IpNetwork {
    IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix)
}

/// The `max_entries` an LPM trie holding up to `capacity` prefixes is created with: one more.
///
/// Older kernels (seen on 5.10) check whether a trie is full before they look for the key an
/// update writes, so giving a prefix already in a full trie a new value fails with ENOSPC. With
/// one spare entry the trie is never full (lwtun enforces `capacity` itself), and replacing
/// works on every kernel.
pub(crate) fn trie_entries(capacity: u32) -> u32 {
    capacity.saturating_add(1)
}

/// Sizes the maps of a rule family (LWT and tunnel redirects) before load, for `capacity`
/// rules: the prefix tries `rules_v4` and `rules_v6` with the spare entry of [`trie_entries`],
/// the per-rule counters `rule_stats` at `capacity`; other maps keep their size.
pub(crate) fn size_rule_maps(open: &mut OpenObject, capacity: u32, op: &str) -> Result<()> {
    for mut map in open.maps_mut() {
        let name = map.name().to_string_lossy().into_owned();
        let entries = match name.as_str() {
            n if RULE_TABLES.contains(&n) => trie_entries(capacity),
            "rule_stats" => capacity,
            _ => continue,
        };
        map.set_max_entries(entries)
            .map_err(|e| Error::bpf(op, e).with_object(name))?;
    }
    Ok(())
}

/// The capacity of an adopted trie: its `max_entries` less the spare entry of
/// [`trie_entries`] (a trie pinned before the spare entry existed holds one prefix less).
pub(crate) fn trie_capacity(max_entries: u32) -> u32 {
    max_entries.saturating_sub(1).max(1)
}

/// Appends the key of `prefix` to `out` (no allocation when `out` has room: batch writes).
pub(crate) fn put_key(out: &mut Vec<u8>, prefix: &IpNetwork) {
    out.extend_from_slice(&u32::from(prefix.prefix()).to_ne_bytes());
    match prefix {
        IpNetwork::V4(n) => out.extend_from_slice(&n.network().octets()),
        IpNetwork::V6(n) => out.extend_from_slice(&n.network().octets()),
    }
}

/// The key of `prefix`.
pub(crate) fn key(prefix: &IpNetwork) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    put_key(&mut v, prefix);
    v
}

/// The rule tables of the families keyed by destination prefix alone (both redirect families):
/// IPv4 and IPv6, in the order [`table_key`] takes them.
pub(crate) const RULE_TABLES: [&str; 2] = ["rules_v4", "rules_v6"];

/// The key of `prefix` and which of a family's two tables (`[IPv4, IPv6]`) holds it.
pub(crate) fn table_key(prefix: &IpNetwork, tables: [&'static str; 2]) -> (&'static str, Vec<u8>) {
    let table = if prefix.is_ipv4() {
        tables[0]
    } else {
        tables[1]
    };
    (table, key(prefix))
}

/// The prefix a key names; `None` for a key of another length or an impossible prefix length.
pub(crate) fn decode(key: &[u8]) -> Option<IpNetwork> {
    let (len, addr) = key.split_at_checked(4)?;
    let len = u32::from_ne_bytes(len.try_into().ok()?);
    let addr: std::net::IpAddr = match addr.len() {
        4 => <[u8; 4]>::try_from(addr).ok()?.into(),
        16 => <[u8; 16]>::try_from(addr).ok()?.into(),
        _ => return None,
    };
    IpNetwork::new(addr, u8::try_from(len).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi;

    #[test]
    fn keys_have_the_layout_of_every_family_s_key_structs() {
        let v4: IpNetwork = "10.1.2.3/16".parse().unwrap();
        let v6: IpNetwork = "fd00:1::5/64".parse().unwrap();
        let (n4, n6) = (normalize(v4), normalize(v6));
        assert_eq!(n4.to_string(), "10.1.0.0/16");
        assert_eq!(key(&v4), [16, 0, 0, 0, 10, 1, 0, 0].map(|b: i32| b as u8));
        let IpNetwork::V6(n) = n6 else { unreachable!() };
        let peer6 = crate::skel::lwt_encap::types::lwtun_peer_key6 {
            prefixlen: 64,
            addr: n.network().octets(),
        };
        let rule6 = crate::skel::tc_redirect::types::lwtun_redirect_key6 {
            prefixlen: 64,
            addr: n.network().octets(),
        };
        assert_eq!(key(&v6), abi::as_bytes(&peer6));
        assert_eq!(key(&v6), abi::as_bytes(&rule6));
        let rule4 = crate::skel::tc_redirect::types::lwtun_redirect_key4 {
            prefixlen: 16,
            addr: [10, 1, 0, 0],
        };
        assert_eq!(key(&v4), abi::as_bytes(&rule4));
        assert_eq!(table_key(&v4, ["a", "b"]).0, "a");
        assert_eq!(table_key(&v6, ["a", "b"]).0, "b");
        for p in [
            n4,
            n6,
            "0.0.0.0/0".parse().unwrap(),
            "::/0".parse().unwrap(),
        ] {
            assert_eq!(decode(&key(&p)), Some(p), "{p}");
        }
        assert_eq!(decode(&[1, 2, 3]), None);
        assert_eq!(
            decode(&[33, 0, 0, 0, 10, 0, 0, 0]),
            None,
            "/33 is no IPv4 prefix"
        );
        assert_eq!(decode(&[0; 12]), None);
    }
}
