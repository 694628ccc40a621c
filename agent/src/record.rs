//! What a host publishes: its tunnel endpoint, how to reach it, and the prefixes behind it.
//!
//! ```json
//! {"endpoint":"10.99.0.1","encap":"udp","udp_port":6081,"prefixes":["10.200.1.0/24"]}
//! {"endpoint":"10.99.0.2","encap":"gre","gre_key":7,"prefixes":["10.200.2.0/24","fd20::/64"]}
//! {"endpoint":"10.99.0.3","encap":"ipip","prefixes":[]}
//! {"endpoint":"10.99.0.4","endpoints":["10.99.0.4","fd99::4"],"encap":"udp","udp_port":6081,"prefixes":["fd20:4::/64"]}
//! ```
//!
//! - `endpoint`: the outer destination other hosts send to (IPv4 or IPv6, unicast, not
//!   loopback or unspecified).
//! - `endpoints` (optional, since agent 0.2): every endpoint of the host, at most one per
//!   address family, `endpoint` among them. A host with an IPv4 and an IPv6 underlay publishes
//!   both; another host sends to the one of a family it has an endpoint of itself (the family of
//!   the inner prefix when it has both, see `crate::fleet`). The encoder writes `endpoint` (the
//!   first) too, so an agent that knows only `endpoint` still reads the record and uses that
//!   one.
//! - `encap`: `udp` (FOU: UDP to `udp_port`, 1..=65535, required), `gre` (optional `gre_key`)
//!   or `ipip`. All three are decapsulated in BPF at tc ingress, so they need no kernel tunnel
//!   module.
//! - `prefixes`: inner prefixes behind the host, in network form (`10.200.1.0/24`, not
//!   `10.200.1.5/24`), each at most once, at most [`MAX_PREFIXES`].
//!
//! Unknown fields are ignored (a newer agent may add some). A value that breaks any rule is
//! refused whole: the fleet then treats the host as absent (see `crate::fleet`).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use lwtun::peer::Encap;
use serde::{Deserialize, Serialize};

/// Most prefixes one host may publish.
pub const MAX_PREFIXES: usize = 1 << 20;

/// Why a published value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON of the record's shape.
    #[error("not a host record ({0}); expected {{\"endpoint\":IP,\"encap\":\"udp|gre|ipip\",\"prefixes\":[CIDR,..]}}")]
    Json(String),
    /// The endpoint is not a usable unicast address.
    #[error("endpoint {0:?}: {1}")]
    Endpoint(String, &'static str),
    /// `endpoints` breaks its rules (more than one per family, or without `endpoint`).
    #[error("endpoints: {0}")]
    Endpoints(String),
    /// The encapsulation or its options.
    #[error("encap: {0}")]
    Encap(String),
    /// A prefix that is not a network in CIDR form, or appears twice.
    #[error("prefix {0:?}: {1}")]
    Prefix(String, String),
    /// More than [`MAX_PREFIXES`] prefixes.
    #[error("{0} prefixes, more than the {MAX_PREFIXES} a host may publish")]
    TooMany(usize),
}

#[derive(Serialize, Deserialize)]
struct Wire {
    endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoints: Option<Vec<String>>,
    encap: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    udp_port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gre_key: Option<u64>,
    #[serde(default)]
    prefixes: Vec<String>,
}

/// One host's published record, checked.
///
/// # Examples
///
/// ```
/// use lwtun::peer::Encap;
/// use lwtun_agent::record::HostRecord;
///
/// let r = HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"udp","udp_port":6081,"prefixes":["10.200.1.0/24"]}"#)?;
/// assert_eq!(r.encap, Encap::Udp { port: 6081 });
/// assert_eq!(HostRecord::decode(r.encode().as_bytes())?, r);
/// assert!(HostRecord::decode(br#"{"endpoint":"10.99.0.1","encap":"udp","prefixes":[]}"#).is_err());
///
/// let both = HostRecord::decode(br#"{"endpoint":"10.99.0.1","endpoints":["10.99.0.1","fd99::1"],"encap":"ipip"}"#)?;
/// assert_eq!(both.other_endpoint, Some("fd99::1".parse().unwrap()));
/// assert_eq!(both.endpoints().count(), 2);
/// # Ok::<(), lwtun_agent::record::RecordError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    /// The outer address other hosts send to (the first published; the only one agents before
    /// 0.2 read).
    pub endpoint: IpAddr,
    /// An endpoint of the other address family, for hosts that reach this one only by it.
    pub other_endpoint: Option<IpAddr>,
    /// How other hosts encapsulate towards it (no GRE checksum).
    pub encap: Encap,
    /// The inner prefixes behind the host, in the order published.
    pub prefixes: Vec<IpNetwork>,
}

impl HostRecord {
    /// Decodes and checks a value read from etcd.
    ///
    /// # Errors
    ///
    /// [`RecordError`] naming the first rule the value breaks.
    pub fn decode(value: &[u8]) -> Result<Self, RecordError> {
        let wire: Wire =
            serde_json::from_slice(value).map_err(|e| RecordError::Json(e.to_string()))?;
        let endpoint: IpAddr = wire
            .endpoint
            .parse()
            .map_err(|_| RecordError::Endpoint(wire.endpoint.clone(), "not an IP address"))?;
        check_endpoint(endpoint)
            .map_err(|why| RecordError::Endpoint(wire.endpoint.clone(), why))?;
        let other_endpoint = match &wire.endpoints {
            None => None,
            Some(list) => other_endpoint(endpoint, list)?,
        };
        let encap = match wire.encap.as_str() {
            "udp" => match wire.udp_port {
                Some(p @ 1..=65535) => Encap::Udp { port: p as u16 },
                Some(p) => return Err(RecordError::Encap(format!("udp_port {p}: use 1..=65535"))),
                None => return Err(RecordError::Encap("udp needs udp_port".into())),
            },
            "gre" => Encap::Gre {
                key: match wire.gre_key {
                    None => None,
                    Some(k) => Some(u32::try_from(k).map_err(|_| {
                        RecordError::Encap(format!("gre_key {k}: use 0..=4294967295"))
                    })?),
                },
                checksum: false,
            },
            "ipip" => Encap::Ipip,
            other => {
                return Err(RecordError::Encap(format!(
                    "{other:?}: use \"udp\", \"gre\" or \"ipip\""
                )))
            }
        };
        if wire.prefixes.len() > MAX_PREFIXES {
            return Err(RecordError::TooMany(wire.prefixes.len()));
        }
        let mut seen = BTreeSet::new();
        let mut prefixes = Vec::with_capacity(wire.prefixes.len());
        for text in &wire.prefixes {
            let p: IpNetwork = text
                .parse()
                .map_err(|e| RecordError::Prefix(text.clone(), format!("not CIDR ({e})")))?;
            if p.network() != p.ip() {
                return Err(RecordError::Prefix(
                    text.clone(),
                    format!(
                        "host bits set; publish the network {}/{}",
                        p.network(),
                        p.prefix()
                    ),
                ));
            }
            if !seen.insert(p) {
                return Err(RecordError::Prefix(text.clone(), "published twice".into()));
            }
            prefixes.push(p);
        }
        Ok(HostRecord {
            endpoint,
            other_endpoint,
            encap,
            prefixes,
        })
    }

    /// Every endpoint: [`HostRecord::endpoint`], then [`HostRecord::other_endpoint`].
    pub fn endpoints(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.endpoint).chain(self.other_endpoint)
    }

    /// The JSON value to publish.
    pub fn encode(&self) -> String {
        let (udp_port, gre_key) = match self.encap {
            Encap::Udp { port } => (Some(u32::from(port)), None),
            Encap::Gre { key, .. } => (None, key.map(u64::from)),
            _ => (None, None),
        };
        let encap = self.encap.name();
        let wire = Wire {
            endpoint: self.endpoint.to_string(),
            endpoints: self
                .other_endpoint
                .map(|_| self.endpoints().map(|a| a.to_string()).collect()),
            encap: encap.into(),
            udp_port,
            gre_key,
            prefixes: self.prefixes.iter().map(|p| p.to_string()).collect(),
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

/// The endpoint of `list` other than `first`: `list` holds `first` and at most one usable
/// address of the other family.
fn other_endpoint(first: IpAddr, list: &[String]) -> Result<Option<IpAddr>, RecordError> {
    let mut other = None;
    let mut has_first = false;
    for text in list {
        let addr: IpAddr = text
            .parse()
            .map_err(|_| RecordError::Endpoint(text.clone(), "not an IP address"))?;
        check_endpoint(addr).map_err(|why| RecordError::Endpoint(text.clone(), why))?;
        if addr == first && !has_first {
            has_first = true;
        } else if addr.is_ipv4() == first.is_ipv4() || other.is_some() {
            return Err(RecordError::Endpoints(format!(
                "{text}: a second endpoint of its family; publish at most one IPv4 and one IPv6"
            )));
        } else {
            other = Some(addr);
        }
    }
    if !has_first {
        return Err(RecordError::Endpoints(format!(
            "endpoint {first} is not among them; list it too"
        )));
    }
    Ok(other)
}

/// Checks that `addr` can be a tunnel endpoint: unicast, not loopback, not unspecified.
///
/// # Errors
///
/// Why it cannot.
pub fn check_endpoint(addr: IpAddr) -> Result<(), &'static str> {
    if addr.is_unspecified() {
        Err("unspecified address")
    } else if addr.is_multicast() {
        Err("multicast address")
    } else if addr.is_loopback() {
        Err("loopback address")
    } else if matches!(addr, IpAddr::V4(a) if a.is_broadcast()) {
        Err("broadcast address")
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: &str) -> RecordError {
        HostRecord::decode(v.as_bytes()).unwrap_err()
    }

    #[test]
    fn hostile_values_are_refused_with_the_reason() {
        assert!(matches!(err("not json"), RecordError::Json(_)));
        assert!(matches!(err("[]"), RecordError::Json(_)));
        assert!(matches!(
            err(r#"{"endpoint":1,"encap":"udp"}"#),
            RecordError::Json(_)
        ));
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.300","encap":"ipip"}"#),
            RecordError::Endpoint(..)
        ));
        for ep in [
            "0.0.0.0",
            "127.0.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
        ] {
            let v = format!(r#"{{"endpoint":"{ep}","encap":"ipip"}}"#);
            assert!(matches!(err(&v), RecordError::Endpoint(..)), "{ep}");
        }
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.1","encap":"vxlan"}"#),
            RecordError::Encap(_)
        ));
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.1","encap":"udp","udp_port":0}"#),
            RecordError::Encap(_)
        ));
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.1","encap":"udp","udp_port":70000}"#),
            RecordError::Encap(_)
        ));
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.1","encap":"gre","gre_key":4294967296}"#),
            RecordError::Encap(_)
        ));
        for p in ["10.0.0.0/33", "banana", "10.0.0.5/24", "fd00::1/64", ""] {
            let v = format!(r#"{{"endpoint":"10.0.0.1","encap":"ipip","prefixes":["{p}"]}}"#);
            assert!(matches!(err(&v), RecordError::Prefix(..)), "{p}");
        }
        assert!(matches!(
            err(
                r#"{"endpoint":"10.0.0.1","encap":"ipip","prefixes":["10.1.0.0/16","10.1.0.0/16"]}"#
            ),
            RecordError::Prefix(..)
        ));
        for eps in [
            r#"["10.0.0.1","10.0.0.2"]"#,
            r#"["10.0.0.1","fd00::1","fd00::2"]"#,
            r#"["fd00::1"]"#,
            r#"["10.0.0.1","10.0.0.1"]"#,
            r#"[]"#,
        ] {
            let v = format!(r#"{{"endpoint":"10.0.0.1","endpoints":{eps},"encap":"ipip"}}"#);
            assert!(matches!(err(&v), RecordError::Endpoints(_)), "{eps}");
        }
        assert!(matches!(
            err(r#"{"endpoint":"10.0.0.1","endpoints":["10.0.0.1","::1"],"encap":"ipip"}"#),
            RecordError::Endpoint(..)
        ));
        // the message says what to publish instead
        let msg =
            err(r#"{"endpoint":"10.0.0.1","encap":"ipip","prefixes":["10.1.2.3/16"]}"#).to_string();
        assert!(msg.contains("10.1.0.0/16"), "{msg}");
    }

    #[test]
    fn records_round_trip_and_ignore_unknown_fields() {
        let r = HostRecord::decode(
            br#"{"endpoint":"fd99::1","encap":"gre","gre_key":9,"prefixes":["10.1.0.0/16","fd20::/64"],"future":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.encap,
            Encap::Gre {
                key: Some(9),
                checksum: false
            }
        );
        assert_eq!(r.prefixes.len(), 2);
        assert_eq!(HostRecord::decode(r.encode().as_bytes()).unwrap(), r);
        let empty = HostRecord::decode(br#"{"endpoint":"10.0.0.1","encap":"ipip"}"#).unwrap();
        assert!(empty.prefixes.is_empty());
        assert!(
            !empty.encode().contains("endpoints"),
            "one endpoint: the 0.1 format"
        );
        let both = HostRecord::decode(
            br#"{"endpoint":"fd99::1","endpoints":["10.0.0.1","fd99::1"],"encap":"ipip"}"#,
        )
        .unwrap();
        assert_eq!(both.endpoint, "fd99::1".parse::<IpAddr>().unwrap());
        assert_eq!(both.other_endpoint, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(HostRecord::decode(both.encode().as_bytes()).unwrap(), both);
    }

    /// What an agent before 0.2 (which knew only `endpoint`) reads from a record with two
    /// endpoints: the same record with the first endpoint.
    #[test]
    fn an_agent_that_knows_only_endpoint_reads_the_first() {
        #[derive(Deserialize)]
        struct Old {
            endpoint: String,
        }
        let r = HostRecord {
            endpoint: "10.0.0.1".parse().unwrap(),
            other_endpoint: Some("fd99::1".parse().unwrap()),
            encap: Encap::Ipip,
            prefixes: vec![],
        };
        let old: Old = serde_json::from_str(&r.encode()).unwrap();
        assert_eq!(old.endpoint, "10.0.0.1");
    }
}
