//! `lwtun::probe` against the running kernel (6.18 here and in CI: every feature is present),
//! plus the capability check on a thread that dropped its capabilities.

mod common;

use lwtun::probe::{self, Capability, Feature, Features, Support};
use lwtun::ErrorKind;

#[test]
fn every_probe_passes_on_this_kernel() {
    if !common::privileged("every_probe_passes_on_this_kernel") {
        return;
    }
    probe::lwt_routes().expect("LWT BPF routes");
    probe::lwt_encap_ip().expect("BPF_LWT_ENCAP_IP");
    probe::xdp_link().expect("XDP links");
    probe::lpm_batch().expect("LPM trie batch ops");
    probe::tcx().expect("tcx");
    // Cached answers agree.
    for f in Feature::ALL {
        f.check().unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn features_printout_lists_every_feature_as_present() {
    if !common::privileged("features_printout_lists_every_feature_as_present") {
        return;
    }
    let features = Features::detect();
    let text = features.to_string();
    println!("{text}");
    assert_eq!(text.lines().count(), Feature::ALL.len(), "{text}");
    for f in Feature::ALL {
        assert_eq!(features.get(f), &Support::Yes, "{f}\n{text}");
        let line = text
            .lines()
            .find(|l| l.contains(f.name()))
            .unwrap_or_else(|| panic!("no line for {f}:\n{text}"));
        assert!(line.starts_with("yes "), "{line}");
        assert!(line.contains(&format!("(Linux {})", f.since())), "{line}");
    }
}

#[test]
fn probes_leave_no_routes_links_or_namespaces_behind() {
    if !common::privileged("probes_leave_no_routes_links_or_namespaces_behind") {
        return;
    }
    let netns_before = lwtun::netns::NetNs::list().unwrap();
    let routes_before = std::process::Command::new("ip")
        .args(["route", "show", "192.0.2.0/24"])
        .output()
        .unwrap();
    let _ = Features::detect();
    // The probes ran in scratch namespaces: the host saw no route, and no name was added.
    let routes_after = std::process::Command::new("ip")
        .args(["route", "show", "192.0.2.0/24"])
        .output()
        .unwrap();
    assert_eq!(routes_before.stdout, routes_after.stdout);
    let netns_after = lwtun::netns::NetNs::list().unwrap();
    let ours: Vec<_> = netns_after
        .iter()
        .filter(|n| !netns_before.contains(n) && n.contains("probe"))
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
}

/// Drops capabilities from the effective set of the calling thread only (Linux credentials are
/// per thread; the test's other threads keep theirs) and keeps them permitted.
fn drop_effective(caps: &[u32]) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: v3 header, two data records.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()) };
    assert_eq!(rc, 0);
    for &c in caps {
        d[(c / 32) as usize].effective &= !(1 << (c % 32));
    }
    // SAFETY: as above; lowering the effective set is always allowed.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

#[test]
fn require_caps_names_the_missing_capability() {
    if !common::privileged("require_caps_names_the_missing_capability") {
        return;
    }
    probe::require_caps("install routes").expect("root has every capability");
    assert!(Capability::NetAdmin.is_effective().unwrap());

    std::thread::spawn(|| {
        drop_effective(&[12]); // CAP_NET_ADMIN
        assert!(!Capability::NetAdmin.is_effective().unwrap());
        let e = probe::require_caps("install routes").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permission);
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        assert_eq!(e.operation(), "install routes");
    })
    .join()
    .unwrap();

    std::thread::spawn(|| {
        // CAP_BPF alone missing is fine while CAP_SYS_ADMIN (which covers it) is there.
        drop_effective(&[39]);
        probe::require_caps("load").unwrap();
        drop_effective(&[21]); // CAP_SYS_ADMIN too
        let e = probe::require_caps("load").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Permission);
        assert!(e.to_string().contains("CAP_BPF"), "{e}");
    })
    .join()
    .unwrap();

    // The main thread was never affected.
    probe::require_caps("install routes").unwrap();
}
