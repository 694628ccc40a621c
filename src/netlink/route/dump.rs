//! Reading routes: a dump of the namespace's routes, narrowed by a [`RouteFilter`].

use neli::consts::rtnl::{RtAddrFamily, RtScope, RtTable, Rtm, RtmF, Rtn, Rtprot};
use neli::rtnl::RtmsgBuilder;

use super::{Encap, Route, RT_TABLE_LOCAL};
use crate::error::Result;
use crate::netlink::Netlink;

/// Which routes a dump returns.
///
/// # Examples
///
/// ```
/// use lwtun::netlink::route::RouteFilter;
///
/// // IPv4 routes of table 100 with a BPF encap.
/// let f = RouteFilter { ipv4: true, ipv6: false, table: Some(100), bpf_only: true, ..Default::default() };
/// # let _ = f;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteFilter {
    /// Include IPv4 routes.
    pub ipv4: bool,
    /// Include IPv6 routes.
    pub ipv6: bool,
    /// Only this table (`None`: every table but the local one).
    pub table: Option<u32>,
    /// Only routes of this protocol.
    pub protocol: Option<u8>,
    /// Only routes whose encap is LWT BPF or seg6local End.BPF (for a route over a nexthop
    /// object: whose nexthop's encap is, as far as the dump tells; see
    /// [`crate::route::lwt_routes`]).
    pub bpf_only: bool,
}

impl RouteFilter {
    /// IPv4 and IPv6 routes of every table but the local one.
    pub fn all() -> Self {
        RouteFilter {
            ipv4: true,
            ipv6: true,
            ..Default::default()
        }
    }

    /// Whether the filter selects `r`.
    pub(crate) fn keeps(&self, r: &Route) -> bool {
        let fam = if r.dst.is_ipv4() {
            self.ipv4
        } else {
            self.ipv6
        };
        let table = match self.table {
            Some(t) => r.table == t,
            None => r.table != RT_TABLE_LOCAL,
        };
        let bpf = !self.bpf_only
            || matches!(
                r.effective_encap(),
                Some(Encap::Bpf(_)) | Some(Encap::Seg6LocalBpf(_))
            );
        fam && table && bpf && self.protocol.is_none_or(|p| p == r.protocol)
    }
}

impl Netlink {
    /// Dumps the routes `filter` selects.
    pub fn routes(&mut self, filter: &RouteFilter) -> Result<Vec<Route>> {
        let mut all = Vec::new();
        for (want, family) in [
            (filter.ipv4, RtAddrFamily::Inet),
            (filter.ipv6, RtAddrFamily::Inet6),
        ] {
            if !want {
                continue;
            }
            let req = RtmsgBuilder::default()
                .rtm_family(family)
                .rtm_dst_len(0)
                .rtm_src_len(0)
                .rtm_tos(0)
                .rtm_table(RtTable::Unspec)
                .rtm_protocol(Rtprot::Unspec)
                .rtm_scope(RtScope::Universe)
                .rtm_type(Rtn::Unspec)
                .rtm_flags(RtmF::empty())
                .build()
                .expect("every field of Rtmsg is set");
            let routes = self.dump("dump routes", Rtm::Getroute, req, |ty, body| {
                if ty != libc::RTM_NEWROUTE {
                    return Ok(None);
                }
                Ok(Route::decode(body)?.filter(|r| filter.keeps(r)))
            })?;
            all.extend(routes);
        }
        Ok(all)
    }
}
