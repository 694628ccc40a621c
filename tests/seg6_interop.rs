//! seg6 interop with iproute2: End.BPF routes iproute2 makes from an object file decode in lwtun,
//! and lwtun's End.BPF routes (and the kernel seg6 routes it makes) print in `ip -6 route` as
//! iproute2 prints its own.

mod common;

use std::net::Ipv6Addr;

use lwtun::netlink::route::{Encap, Route, RouteFilter, Seg6Encap, Seg6Local, Seg6Mode};
use lwtun::netns::NetNs;
use lwtun::probe::Feature;
use lwtun::route::{lwt_routes, program_of, Hook};
use lwtun::seg6::{CrossConnect, Seg6EndDt6, Seg6EndX, Seg6Policies, Seg6Tag};
use lwtun::ErrorKind;

/// A temporary folder removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn veth_ns(prefix: &str) -> NetNs {
    let ns = common::netns(prefix);
    common::ip(
        &ns,
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"],
    );
    common::ip(&ns, &["link", "set", "d0", "up"]);
    common::ip(&ns, &["link", "set", "d1", "up"]);
    common::ip(
        &ns,
        &["-6", "addr", "add", "fd55::1/64", "dev", "d0", "nodad"],
    );
    ns
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn iproute2_end_bpf_route_from_an_object_decodes() {
    require!(Feature::Seg6Local);
    let ns = veth_ns("s6ip");
    let dir = TempDir(std::env::temp_dir().join(format!("lwtun-seg6-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let obj = dir.0.join("seg6_end.bpf.o");
    std::fs::write(&obj, lwtun::skel::seg6_end::OBJECT).unwrap();
    let _iproute2_state = common::Iproute2Bpffs::new();
    common::ip(
        &ns,
        &[
            "-6",
            "route",
            "add",
            "fc00:e::1/128",
            "encap",
            "seg6local",
            "action",
            "End.BPF",
            "endpoint",
            "obj",
            obj.to_str().unwrap(),
            "sec",
            "lwt_seg6local",
            "dev",
            "d0",
            "table",
            "77",
        ],
    );
    let mut nl = ns.device("d0").unwrap().netlink().unwrap();
    let d0 = nl.device("d0").unwrap();
    let routes = nl
        .routes(&RouteFilter {
            table: Some(77),
            ipv4: false,
            ..RouteFilter::all()
        })
        .unwrap();
    assert_eq!(routes.len(), 1, "{routes:?}");
    let r = &routes[0];
    assert_eq!(r.dst, "fc00:e::1/128".parse().unwrap());
    assert_eq!(r.oif, Some(d0.index()));
    match &r.encap {
        Some(Encap::Seg6LocalBpf(p)) => {
            assert_eq!(p.name, "seg6_end.bpf.o:[lwt_seg6local]")
        }
        other => panic!("not decoded as End.BPF: {other:?}"),
    }
    // A bpf-only listing finds it, as iproute2 printed it.
    let listed = lwt_routes(&mut nl).unwrap();
    assert!(listed.iter().any(|l| l.dst == r.dst), "{listed:?}");
    assert!(
        r.to_string()
            .contains("encap seg6local End.BPF seg6_end.bpf.o:[lwt_seg6local]"),
        "{r}"
    );
    // iproute2's names do not lead to a program: said so, not guessed.
    let e = program_of(r, Hook::Seg6Local).unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    nl.delete_route(r).unwrap();
    assert!(common::ip(&ns, &["-6", "route", "show", "table", "77"])
        .trim()
        .is_empty());
}

#[test]
fn lwtun_end_bpf_routes_print_as_iproute2_prints_them() {
    require!(Feature::Seg6Local);
    let ns = veth_ns("s6show");
    let d0 = ns.device("d0").unwrap();
    let mut tag = Seg6Tag::load().unwrap();
    tag.set_tag("fc00:3::/64".parse().unwrap(), 9).unwrap();
    let mut x = Seg6EndX::load().unwrap();
    x.set_next_hop(
        "fc00:3::/64".parse().unwrap(),
        CrossConnect::to("fd55::2".parse().unwrap()),
    )
    .unwrap();
    let mut dt6 = Seg6EndDt6::load().unwrap();
    dt6.set_table("fc00:3::100/128".parse().unwrap(), 100)
        .unwrap();
    let mut nl = d0.netlink().unwrap();
    let installed = [
        ("fc00:e::1", tag.program().route_name().to_string(), {
            tag.route("fc00:e::1/128".parse().unwrap(), &d0)
                .install(&mut nl)
                .unwrap()
        }),
        ("fc00:e::2", x.program().route_name().to_string(), {
            x.route("fc00:e::2/128".parse().unwrap(), &d0)
                .metric(7)
                .install(&mut nl)
                .unwrap()
        }),
        ("fc00:e::3", dt6.program().route_name().to_string(), {
            dt6.install_route("fc00:e::3/128".parse().unwrap(), &d0)
                .unwrap()
        }),
    ];
    for (sid, name, route) in &installed {
        let metric = if *sid == "fc00:e::2" { 7 } else { 1024 };
        let shown = common::ip(&ns, &["-6", "route", "show", sid]);
        assert_eq!(
            one_line(&shown),
            format!(
                "{sid} encap seg6local action End.BPF endpoint {name} dev d0 proto 76 metric {metric} pref medium"
            ),
            "{shown}"
        );
        // ...and lwtun maps its own dumped route back to the program.
        let dumped = lwt_routes(&mut nl)
            .unwrap()
            .into_iter()
            .find(|r| r.dst == route.route().dst)
            .unwrap_or_else(|| panic!("{sid} not listed"));
        let p = program_of(&dumped, Hook::Seg6Local).unwrap().unwrap();
        assert_eq!(p.route_name(), name);
        assert_eq!(p.hook(), Hook::Seg6Local);
    }
    drop(installed);
    assert!(lwt_routes(&mut nl).unwrap().is_empty());
}

#[test]
fn kernel_seg6_routes_made_by_lwtun_and_by_iproute2_agree() {
    require!(Feature::Seg6Local);
    let ns = veth_ns("s6k");
    let d0 = ns.device("d0").unwrap();
    let mut nl = d0.netlink().unwrap();
    let segs: Vec<Ipv6Addr> = vec!["fc00:2::100".parse().unwrap(), "fc00:3::6".parse().unwrap()];
    let mut encap = Route::new("fd77:3::/64".parse().unwrap());
    encap.oif = Some(d0.index());
    encap.encap = Some(Encap::Seg6(Seg6Encap {
        mode: Seg6Mode::Encap,
        segments: segs.clone(),
    }));
    nl.add_route(&encap).unwrap();
    let mut end_x = Route::new("fc00:e::5/128".parse().unwrap());
    end_x.oif = Some(d0.index());
    end_x.encap = Some(Encap::Seg6Local(Seg6Local::EndX {
        nh6: "fd55::2".parse().unwrap(),
    }));
    nl.add_route(&end_x).unwrap();
    assert_eq!(
        one_line(&common::ip(&ns, &["-6", "route", "show", "fd77:3::/64"])),
        "fd77:3::/64 encap seg6 mode encap segs 2 [ fc00:2::100 fc00:3::6 ] dev d0 metric 1024 pref medium"
    );
    assert_eq!(
        one_line(&common::ip(&ns, &["-6", "route", "show", "fc00:e::5"])),
        "fc00:e::5 encap seg6local action End.X nh6 fd55::2 dev d0 metric 1024 pref medium"
    );
    // The same routes from iproute2 decode to the same values.
    common::ip(
        &ns,
        &[
            "-6",
            "route",
            "add",
            "fd77:4::/64",
            "encap",
            "seg6",
            "mode",
            "encap",
            "segs",
            "fc00:2::100,fc00:3::6",
            "dev",
            "d0",
        ],
    );
    common::ip(
        &ns,
        &[
            "-6",
            "route",
            "add",
            "fc00:e::6",
            "encap",
            "seg6local",
            "action",
            "End.DT6",
            "table",
            "100",
            "dev",
            "d0",
        ],
    );
    let routes = nl
        .routes(&RouteFilter {
            ipv4: false,
            ..RouteFilter::all()
        })
        .unwrap();
    let find = |dst: &str| {
        let dst = dst.parse().unwrap();
        routes
            .iter()
            .find(|r| r.dst == dst)
            .unwrap_or_else(|| panic!("{dst} not dumped: {routes:?}"))
    };
    assert_eq!(
        find("fd77:4::/64").encap,
        Some(Encap::Seg6(Seg6Encap {
            mode: Seg6Mode::Encap,
            segments: segs
        }))
    );
    assert_eq!(
        find("fc00:e::6/128").encap,
        Some(Encap::Seg6Local(Seg6Local::EndDt6 { table: 100 }))
    );
    assert_eq!(find("fc00:e::5/128").encap, end_x.encap);
}

#[test]
fn seg6_policies_refuse_lists_the_kernel_would_and_clean_up() {
    require!(Feature::Seg6Local);
    let ns = veth_ns("s6pol");
    let d0 = ns.device("d0").unwrap();
    let mut policies = Seg6Policies::new(&d0, Seg6Mode::Encap).unwrap();
    let dst = "fd77:5::/64".parse().unwrap();
    for bad in [vec![], vec!["ff02::1".parse().unwrap()]] {
        let e = policies.set(dst, bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    assert!(policies.policies().is_empty());
    let segs: Vec<Ipv6Addr> = vec!["fc00:2::1".parse().unwrap()];
    policies
        .set("fd77:5::9/64".parse().unwrap(), segs.clone())
        .unwrap();
    assert_eq!(policies.policies(), vec![(dst, segs)]);
    let shown = common::ip(&ns, &["-6", "route", "show", "fd77:5::/64"]);
    assert!(
        shown.contains("encap seg6 mode encap segs 1 [ fc00:2::1 ]"),
        "{shown}"
    );
    assert!(shown.contains("proto 76"), "{shown}");
    assert_eq!(
        policies
            .remove("fd77:6::/64".parse().unwrap())
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    policies.remove(dst).unwrap();
    assert!(common::ip(&ns, &["-6", "route", "show", "fd77:5::/64"])
        .trim()
        .is_empty());
    policies
        .set(dst, vec!["fc00:2::1".parse().unwrap()])
        .unwrap();
    drop(policies);
    assert!(common::ip(&ns, &["-6", "route", "show", "fd77:5::/64"])
        .trim()
        .is_empty());
}
