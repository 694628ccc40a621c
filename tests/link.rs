//! Links and addresses against the real kernel, each test in namespaces it creates (and removes
//! on drop, panics included): veth pairs across namespaces with v4 and v6 addresses and ping
//! both ways, lookups, MTU, moves, deletion, collect_md tunnel devices, XDP attach/replace/detach
//! and the error kinds of the failure cases. Checked both through lwtun and through iproute2.

mod common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;

use ipnetwork::IpNetwork;
use lwtun::netlink::addr::AddressOptions;
use lwtun::netlink::link::{Link, VxlanOptions, XdpAttachMode, XdpFlags};
use lwtun::netlink::Netlink;
use lwtun::netns::NetNs;
use lwtun::ErrorKind;

fn netlink_in(ns: &NetNs) -> Netlink {
    ns.run(Netlink::open)
        .expect("open rtnetlink in the test namespace")
}

/// Runs a command, returning stdout; panics with stderr on failure.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &NetNs, args: &[&str]) -> String {
    run(ns.command("ip").args(args))
}

/// `ping -c 3` from inside `ns`; returns whether every packet came back.
fn ping(ns: &NetNs, to: &str) -> bool {
    let out = ns
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", to])
        .output()
        .expect("spawn ping");
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.contains("3 received")
}

fn names(links: &[Link]) -> Vec<String> {
    let mut v: Vec<String> = links.iter().map(|l| l.name.clone()).collect();
    v.sort();
    v
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// Two namespaces joined by a veth pair `a0` (in `a`) <-> `b0` (in `b`), made by lwtun, up,
/// with 10.77.0.1/24 + fd77::1/64 on `a0` and .2 / ::2 on `b0`.
struct Pair {
    a: NetNs,
    b: NetNs,
    nla: Netlink,
    nlb: Netlink,
}

fn pair(prefix: &str) -> Pair {
    let a = NetNs::create_unique(prefix).unwrap();
    let b = NetNs::create_unique(prefix).unwrap();
    let mut nla = netlink_in(&a);
    let mut nlb = netlink_in(&b);
    nla.add_veth("a0", "b0", Some(&b)).unwrap();
    let a0 = nla.link_by_name("a0").unwrap();
    let b0 = nlb.link_by_name("b0").unwrap();
    let nodad = AddressOptions::nodad();
    let brd = AddressOptions {
        broadcast: true,
        ..Default::default()
    };
    nla.add_address_with(a0.index, net("10.77.0.1/24"), &brd)
        .unwrap();
    nla.add_address_with(a0.index, net("fd77::1/64"), &nodad)
        .unwrap();
    nlb.add_address(b0.index, net("10.77.0.2/24")).unwrap();
    nlb.add_address_with(b0.index, net("fd77::2/64"), &nodad)
        .unwrap();
    for (nl, l) in [(&mut nla, &a0), (&mut nlb, &b0)] {
        let lo = nl.link_by_name("lo").unwrap();
        nl.set_link_up(lo.index, true).unwrap();
        nl.set_link_up(l.index, true).unwrap();
    }
    Pair { a, b, nla, nlb }
}

#[test]
fn veth_across_namespaces_carries_ping_both_ways_v4_and_v6() {
    require!();
    let Pair {
        a,
        b,
        mut nla,
        mut nlb,
    } = pair("lk-veth");

    // The peer went to `b`, not `a`.
    let a0 = nla.link_by_name("a0").unwrap();
    let b0 = nlb.link_by_name("b0").unwrap();
    assert_eq!(
        nla.link_by_name("b0").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(a0.kind.as_deref(), Some("veth"));
    assert_eq!(b0.kind.as_deref(), Some("veth"));
    assert!(a0.up && b0.up);
    assert!(a0.mac.is_some());
    assert!(a0.link_netnsid.is_some(), "peer is in another namespace");
    assert_eq!(a0.mtu, 1500);

    // Lookups by name and by index agree, and the dump lists the same link.
    let by_index = nla.link_by_index(a0.index).unwrap();
    assert_eq!(by_index.name, "a0");
    assert_eq!(by_index.index, a0.index);
    let all = nla.links().unwrap();
    assert_eq!(names(&all), vec!["a0".to_string(), "lo".to_string()]);
    let listed = all.iter().find(|l| l.name == "a0").unwrap();
    assert_eq!(listed.index, a0.index);
    assert_eq!(listed.mac, a0.mac);

    // Addresses, as lwtun and iproute2 see them.
    let addrs = nla.addresses(Some(a0.index)).unwrap();
    let nets: Vec<IpNetwork> = addrs.iter().map(|x| x.network).collect();
    assert!(nets.contains(&net("10.77.0.1/24")), "{nets:?}");
    assert!(nets.contains(&net("fd77::1/64")), "{nets:?}");
    assert!(addrs.iter().all(|x| x.index == a0.index));
    // nodad: usable at once (the kernel's own fe80:: address may still be tentative).
    assert!(addrs
        .iter()
        .filter(
            |x| !matches!(x.network, IpNetwork::V6(n) if n.ip().segments()[0] & 0xffc0 == 0xfe80)
        )
        .all(|x| !x.is_tentative()));
    let v6 = addrs
        .iter()
        .find(|x| x.network == net("fd77::1/64"))
        .unwrap();
    assert_ne!(v6.flags & libc::IFA_F_NODAD, 0);
    let shown = ip(&a, &["addr", "show", "dev", "a0"]);
    assert!(
        shown.contains("inet 10.77.0.1/24 brd 10.77.0.255"),
        "{shown}"
    );
    let v4 = addrs
        .iter()
        .find(|x| x.network == net("10.77.0.1/24"))
        .unwrap();
    assert_eq!(v4.broadcast, Some("10.77.0.255".parse().unwrap()));
    assert_eq!(v4.label.as_deref(), Some("a0"));
    assert!(shown.contains("inet6 fd77::1/64"), "{shown}");
    assert!(
        nla.addresses(None).unwrap().len() > addrs.len(),
        "lo's addresses too"
    );

    // Real traffic, both ways, both families.
    assert!(ping(&a, "10.77.0.2"), "a -> b over IPv4");
    assert!(ping(&b, "10.77.0.1"), "b -> a over IPv4");
    assert!(ping(&a, "fd77::2"), "a -> b over IPv6");
    assert!(ping(&b, "fd77::1"), "b -> a over IPv6");

    // Deleting an address stops traffic to it.
    nlb.delete_address(b0.index, net("10.77.0.2/24")).unwrap();
    assert!(!ip(&b, &["addr", "show", "dev", "b0"]).contains("10.77.0.2"));
    assert_eq!(
        nlb.delete_address(b0.index, net("10.77.0.2/24"))
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    assert!(!ping(&a, "10.77.0.2"), "address removed");
    assert!(ping(&a, "fd77::2"), "the v6 address is still there");
}

#[test]
fn mtu_up_down_and_delete() {
    require!();
    let ns = NetNs::create_unique("lk-mtu").unwrap();
    let mut nl = netlink_in(&ns);
    nl.add_veth("m0", "m1", None).unwrap();
    let m0 = nl.link_by_name("m0").unwrap();
    let m1 = nl.link_by_name("m1").unwrap();
    assert_eq!(m0.link, Some(m1.index), "IFLA_LINK names the peer");
    assert!(!m0.up, "new links start down");

    nl.set_link_mtu(m0.index, 1400).unwrap();
    assert_eq!(nl.link_by_index(m0.index).unwrap().mtu, 1400);
    assert!(ip(&ns, &["link", "show", "dev", "m0"]).contains("mtu 1400"));
    // Outside the device's range (veth: 68..=65535), said by the kernel.
    let e = nl.set_link_mtu(m0.index, 65536).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert_eq!(nl.link_by_index(m0.index).unwrap().mtu, 1400);

    nl.set_link_up(m0.index, true).unwrap();
    assert!(nl.link_by_index(m0.index).unwrap().up);
    assert!(ip(&ns, &["link", "show", "dev", "m0"]).contains(",UP"));
    nl.set_link_up(m0.index, false).unwrap();
    assert!(!nl.link_by_index(m0.index).unwrap().up);

    // Deleting one end deletes the pair.
    nl.delete_link(m0.index).unwrap();
    assert_eq!(names(&nl.links().unwrap()), vec!["lo".to_string()]);
    assert!(!ip(&ns, &["link", "show"]).contains("m1"));
    let e = nl.delete_link(m0.index).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[test]
fn move_link_to_another_namespace() {
    require!();
    let a = NetNs::create_unique("lk-move").unwrap();
    let b = NetNs::create_unique("lk-move").unwrap();
    let mut nla = netlink_in(&a);
    let mut nlb = netlink_in(&b);
    nla.add_veth("mv0", "mv1", None).unwrap();
    let mv1 = nla.link_by_name("mv1").unwrap();
    nla.move_link_to_netns(mv1.index, &b).unwrap();
    assert_eq!(
        nla.link_by_name("mv1").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let moved = nlb.link_by_name("mv1").unwrap();
    assert_eq!(moved.kind.as_deref(), Some("veth"));
    assert!(ip(&b, &["link", "show", "dev", "mv1"]).contains("mv1@"));
    // Moving back onto a taken name fails and leaves it where it was.
    nla.add_veth("mv1", "mv2", None).unwrap();
    let e = nlb.move_link_to_netns(moved.index, &a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(nlb.link_by_name("mv1").is_ok());
}

#[test]
fn vxlan_external_device_is_created() {
    require!();
    let ns = NetNs::create_unique("lk-vxlan").unwrap();
    let mut nl = netlink_in(&ns);
    nl.add_vxlan_external("vx0", &VxlanOptions::default())
        .unwrap();
    let vx = nl.link_by_name("vx0").unwrap();
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    let shown = ip(&ns, &["-d", "link", "show", "dev", "vx0"]);
    assert!(shown.contains("vxlan external"), "{shown}");
    assert!(shown.contains("dstport 4789"), "{shown}");
    assert!(shown.contains("nolearning"), "{shown}");

    // Options: another port, a local address and TTL, learning on.
    let opts = VxlanOptions {
        port: 4790,
        local: Some("10.9.9.9".parse().unwrap()),
        learning: true,
        ttl: Some(33),
    };
    nl.add_vxlan_external("vx1", &opts).unwrap();
    let shown = ip(&ns, &["-d", "link", "show", "dev", "vx1"]);
    for want in ["external", "dstport 4790", "local 10.9.9.9", "ttl 33"] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    assert!(!shown.contains("nolearning"), "{shown}");

    // A second external device on a taken port, or a taken name: Exists, nothing created.
    let before = names(&nl.links().unwrap());
    let e = nl
        .add_vxlan_external("vx2", &VxlanOptions::default())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    let e = nl
        .add_vxlan_external(
            "vx0",
            &VxlanOptions {
                port: 4791,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert_eq!(names(&nl.links().unwrap()), before);
}

#[test]
fn gre_and_ipip_external_are_created_or_unsupported() {
    require!();
    let ns = NetNs::create_unique("lk-tun").unwrap();
    let mut nl = netlink_in(&ns);
    type Add = fn(&mut Netlink, &str) -> lwtun::Result<()>;
    let kinds: [(&str, &str, Add); 4] = [
        ("gre", "CONFIG_NET_IPGRE", Netlink::add_gre_external),
        ("ip6gre", "CONFIG_IPV6_GRE", Netlink::add_ip6gre_external),
        ("ipip", "CONFIG_NET_IPIP", Netlink::add_ipip_external),
        ("ip6tnl", "CONFIG_IPV6_TUNNEL", Netlink::add_ip6tnl_external),
    ];
    for (kind, config, add) in kinds {
        let name = format!("t-{kind}");
        let before = nl.links().unwrap().len();
        match add(&mut nl, &name) {
            Ok(()) => {
                // A kernel that has the kind (not this project's 6.18 machine).
                let l = nl.link_by_name(&name).unwrap();
                assert_eq!(l.kind.as_deref(), Some(kind));
                let shown = ip(&ns, &["-d", "link", "show", "dev", &name]);
                assert!(shown.contains("external"), "{shown}");
                eprintln!("{kind}: created (the kernel has it)");
            }
            Err(e) => {
                eprintln!("{kind}: {e}");
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{kind}: {e}");
                let text = e.to_string();
                assert!(text.contains(config), "{text}");
                assert!(text.contains(&format!("'{name}'")), "{text}");
                assert!(text.contains("collect_md (external)"), "{text}");
                assert_eq!(nl.links().unwrap().len(), before, "nothing created");
                // Cross-check: iproute2 fails the same way.
                let out = ns
                    .command("ip")
                    .args(["link", "add", "x0", "type", kind, "external"])
                    .output()
                    .unwrap();
                assert!(!out.status.success(), "iproute2 made a {kind} device");
            }
        }
    }
}

#[test]
fn unknown_interfaces_are_not_found_with_their_name() {
    require!();
    let ns = NetNs::create_unique("lk-nf").unwrap();
    let mut nl = netlink_in(&ns);
    let e = nl.link_by_name("eth9").unwrap_err();
    eprintln!("{e}");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("unknown interface 'eth9'"), "{e}");
    let e = nl.link_by_index(4242).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("index 4242"), "{e}");
    for e in [
        nl.set_link_up(4242, true).unwrap_err(),
        nl.set_link_mtu(4242, 1400).unwrap_err(),
        nl.delete_link(4242).unwrap_err(),
        nl.clear_xdp(4242, XdpFlags::empty()).unwrap_err(),
        nl.add_address(4242, net("10.1.1.1/24")).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("4242"), "{e}");
    }
}

#[test]
fn duplicates_are_exists_and_create_nothing() {
    require!();
    let ns = NetNs::create_unique("lk-dup").unwrap();
    let mut nl = netlink_in(&ns);
    nl.add_veth("d0", "d1", None).unwrap();
    let before = names(&nl.links().unwrap());
    for (name, peer) in [("d0", "d2"), ("d2", "d1"), ("d0", "d1")] {
        let e = nl.add_veth(name, peer, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists, "{name}/{peer}: {e}");
        assert!(e.to_string().contains(&format!("'{name}'")), "{e}");
    }
    assert_eq!(names(&nl.links().unwrap()), before);

    let d0 = nl.link_by_name("d0").unwrap();
    nl.add_address(d0.index, net("10.5.0.1/24")).unwrap();
    let e = nl.add_address(d0.index, net("10.5.0.1/24")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert_eq!(nl.addresses(Some(d0.index)).unwrap().len(), 1);
}

#[test]
fn invalid_names_are_refused_and_create_nothing() {
    require!();
    let ns = NetNs::create_unique("lk-inv").unwrap();
    let mut nl = netlink_in(&ns);
    let before = names(&nl.links().unwrap());
    for (name, peer) in [
        ("", "p0"),
        ("p0", ""),
        ("sixteen-bytes-xx", "p0"),
        ("a/b", "p0"),
        ("p0", "a b"),
        ("p0", "x:y"),
        ("p0", "p0"),
    ] {
        let e = nl.add_veth(name, peer, None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}/{peer:?}: {e}");
    }
    for bad in ["", "this-is-too-long", "no/slash"] {
        assert_eq!(
            nl.add_vxlan_external(bad, &VxlanOptions::default())
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            nl.add_gre_external(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        assert_eq!(
            nl.link_by_name(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    let lo = nl.link_by_name("lo").unwrap();
    assert_eq!(
        nl.set_link_mtu(lo.index, 10).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(names(&nl.links().unwrap()), before);
    assert_eq!(ip(&ns, &["-o", "link", "show"]).lines().count(), 1);
}

/// The xdp_pass object's programs `xdp_pass` and `xdp_drop`, loaded.
struct XdpProgs {
    _obj: libbpf_rs::Object,
    pass: OwnedFd,
    drop: OwnedFd,
}

fn xdp_progs() -> XdpProgs {
    let obj = libbpf_rs::ObjectBuilder::default()
        .open_memory(lwtun::skel::xdp_pass::OBJECT)
        .unwrap()
        .load()
        .unwrap();
    let fd_of = |name: &str| {
        obj.progs()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("{name} in xdp_pass.bpf.c"))
            .as_fd()
            .try_clone_to_owned()
            .unwrap()
    };
    let (pass, drop) = (fd_of("xdp_pass"), fd_of("xdp_drop"));
    XdpProgs {
        _obj: obj,
        pass,
        drop,
    }
}

fn prog_id(fd: &OwnedFd) -> u32 {
    libbpf_rs::Program::id_from_fd(fd.as_fd()).unwrap()
}

#[test]
fn xdp_attach_replace_and_detach() {
    require!();
    let Pair {
        a,
        b: _b,
        mut nla,
        nlb: _nlb,
    } = pair("lk-xdp");
    let progs = xdp_progs();
    let (pass_id, drop_id) = (prog_id(&progs.pass), prog_id(&progs.drop));
    let a0 = nla.link_by_name("a0").unwrap();
    assert_eq!(a0.xdp_prog_id, None);

    // Native mode on veth; traffic still flows through xdp_pass.
    nla.set_xdp_fd(a0.index, progs.pass.as_fd(), XdpFlags::DRV_MODE)
        .unwrap();
    let l = nla.link_by_index(a0.index).unwrap();
    assert_eq!(l.xdp_prog_id, Some(pass_id));
    assert_eq!(l.xdp_attach_mode, Some(XdpAttachMode::Driver));
    let shown = ip(&a, &["-d", "link", "show", "dev", "a0"]);
    assert!(shown.contains(&format!("prog/xdp id {pass_id}")), "{shown}");
    assert!(ping(&a, "10.77.0.2"));

    // UPDATE_IF_NOEXIST refuses to replace; REPLACE checks the expected program.
    let e = nla
        .set_xdp_fd(
            a0.index,
            progs.drop.as_fd(),
            XdpFlags::DRV_MODE | XdpFlags::UPDATE_IF_NOEXIST,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    let e = nla
        .replace_xdp_fd(
            a0.index,
            progs.drop.as_fd(),
            progs.drop.as_fd(),
            XdpFlags::DRV_MODE,
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert_eq!(
        nla.link_by_index(a0.index).unwrap().xdp_prog_id,
        Some(pass_id)
    );
    nla.replace_xdp_fd(
        a0.index,
        progs.drop.as_fd(),
        progs.pass.as_fd(),
        XdpFlags::DRV_MODE,
    )
    .unwrap();
    assert_eq!(
        nla.link_by_index(a0.index).unwrap().xdp_prog_id,
        Some(drop_id)
    );
    // xdp_drop on a0 drops the echo replies coming back.
    assert!(!ping(&a, "10.77.0.2"), "xdp_drop is attached");

    // Detach: traffic flows again, and nothing is attached.
    nla.clear_xdp(a0.index, XdpFlags::DRV_MODE).unwrap();
    let l = nla.link_by_index(a0.index).unwrap();
    assert_eq!((l.xdp_prog_id, l.xdp_attach_mode), (None, None));
    assert!(!ip(&a, &["-d", "link", "show", "dev", "a0"]).contains("prog/xdp"));
    assert!(ping(&a, "10.77.0.2"));
    // Detaching again is fine.
    nla.clear_xdp(a0.index, XdpFlags::DRV_MODE).unwrap();

    // Generic mode is reported as such.
    nla.set_xdp_fd(a0.index, progs.pass.as_fd(), XdpFlags::SKB_MODE)
        .unwrap();
    let l = nla.link_by_index(a0.index).unwrap();
    assert_eq!(l.xdp_attach_mode, Some(XdpAttachMode::Generic));
    assert!(ip(&a, &["-d", "link", "show", "dev", "a0"]).contains("xdpgeneric"));
    nla.clear_xdp(a0.index, XdpFlags::SKB_MODE).unwrap();
    assert_eq!(nla.link_by_index(a0.index).unwrap().xdp_prog_id, None);

    // A non-XDP fd is refused by the kernel (here: a namespace file).
    let nsfd = a.fd().unwrap();
    let e = nla
        .set_xdp_fd(a0.index, nsfd.as_fd(), XdpFlags::DRV_MODE)
        .unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::InvalidInput,
        "{e} ({})",
        nsfd.as_raw_fd()
    );
}
