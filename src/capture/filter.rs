//! tcpdump-syntax filters, compiled by libpcap and run on captured packets in user space.

use std::fmt;

use super::{LinkType, Packet};
use crate::error::{Error, Result};

/// A compiled tcpdump filter expression (`"icmp and host 10.0.0.2"`) for one link type.
///
/// libpcap compiles it (`pcap_compile` on a dead handle of the link type) and runs it on each
/// packet's captured bytes (`pcap_offline_filter`), so it means exactly what it means to
/// tcpdump. The empty expression matches everything.
///
/// # Examples
///
/// ```
/// use lwtun::capture::{Filter, LinkType};
///
/// let f = Filter::compile("icmp", LinkType::Raw)?;
/// assert_eq!(f.expression(), "icmp");
/// assert!(Filter::compile("icmp and and", LinkType::Raw).is_err());
/// # Ok::<(), lwtun::Error>(())
/// ```
pub struct Filter {
    expression: String,
    link: LinkType,
    program: pcap::BpfProgram,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("expression", &self.expression)
            .field("link", &self.link)
            .finish()
    }
}

impl Filter {
    /// Compiles `expression` for packets of `link`.
    ///
    /// # Errors
    ///
    /// InvalidInput with libpcap's message when the expression does not compile.
    pub fn compile(expression: &str, link: LinkType) -> Result<Self> {
        let op = "compile capture filter";
        // pcap_open_dead takes a DLT_* value: DLT_RAW is 12 on Linux, while files carry
        // LINKTYPE_RAW (101); libpcap refuses 101 here.
        let dlt = match link {
            LinkType::Ethernet => 1,
            LinkType::Raw => 12,
        };
        let dead = pcap::Capture::dead(pcap::Linktype(dlt))
            .map_err(|e| Error::invalid_input(op, e.to_string()))?;
        let program = dead
            .compile(expression, true)
            .map_err(|e| Error::invalid_input(op, format!("'{expression}': {e}")))?;
        Ok(Filter {
            expression: expression.to_string(),
            link,
            program,
        })
    }

    /// The expression as given.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether `packet` matches (always false for a packet of another link type).
    pub fn matches(&self, packet: &Packet) -> bool {
        packet.link_type() == self.link && self.matches_bytes(&packet.data)
    }

    /// Whether raw bytes of the filter's link type match.
    pub fn matches_bytes(&self, bytes: &[u8]) -> bool {
        self.program.filter(bytes)
    }
}
