//! `lwtun::probe` against the running kernel, whichever it is: every probe answers, and each
//! answer agrees with the kernel's version (for features that came with a version) or its build
//! configuration (for features a build may leave out); plus the capability check on a thread
//! that dropped its capabilities.

mod common;

use lwtun::probe::{self, Capability, Feature, Features, Support};
use lwtun::ErrorKind;

/// The running kernel's (major, minor).
fn release() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = text
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap(), parts.next().unwrap())
}

/// The running kernel's build configuration, where it shows it.
fn config() -> Option<String> {
    let out = std::process::Command::new("zcat")
        .arg("/proc/config.gz")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    out.or_else(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
    })
}

/// What the kernel should answer for `f`: from the build configuration for features a build
/// may leave out, from the version for the others. `None`: cannot tell here.
fn expected(f: Feature, config: Option<&str>) -> Option<bool> {
    let built = |option: &str| config.map(|c| c.lines().any(|l| l == format!("{option}=y")));
    let since = |v: &str| {
        let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap());
        release() >= (p.next().unwrap(), p.next().unwrap())
    };
    match f {
        Feature::LwtRoutes => built("CONFIG_LWTUNNEL_BPF"),
        Feature::Seg6Local => built("CONFIG_IPV6_SEG6_BPF"),
        Feature::LwtEncapIp
        | Feature::XdpLink
        | Feature::LpmBatch
        | Feature::Tcx
        | Feature::DecapL3
        | Feature::XdpLoadBytes
        | Feature::TunnelKeyLocal
        | Feature::CoarseClock => Some(since(f.since())),
        _ => None,
    }
}

#[test]
fn every_probe_answers_as_the_kernel_version_and_config_say() {
    require!();
    let config = config();
    for f in Feature::ALL {
        let got = f.check();
        match &got {
            Ok(()) => {}
            Err(e) => {
                // A "no" is a typed answer naming the feature, its version and what to use.
                assert_eq!(e.kind(), ErrorKind::Unsupported, "{f}: {e}");
                let text = e.to_string();
                assert!(text.contains(f.name()), "{text}");
                assert!(text.contains(&format!("Linux {}", f.since())), "{text}");
                assert_eq!(e.hint(), Some(f.instead()), "{text}");
            }
        }
        if let Some(want) = expected(f, config.as_deref()) {
            assert_eq!(got.is_ok(), want, "{f} on {:?}: {got:?}", release());
        }
        // The cached answer is the same.
        assert_eq!(f.check().is_ok(), got.is_ok(), "{f}");
    }
    // The functions are the features' checks.
    assert_eq!(
        probe::lwt_routes().is_ok(),
        Feature::LwtRoutes.check().is_ok()
    );
    assert_eq!(
        probe::lwt_encap_ip().is_ok(),
        Feature::LwtEncapIp.check().is_ok()
    );
    assert_eq!(probe::xdp_link().is_ok(), Feature::XdpLink.check().is_ok());
    assert_eq!(
        probe::lpm_batch().is_ok(),
        Feature::LpmBatch.check().is_ok()
    );
    assert_eq!(probe::tcx().is_ok(), Feature::Tcx.check().is_ok());
    assert_eq!(
        probe::seg6local().is_ok(),
        Feature::Seg6Local.check().is_ok()
    );
}

#[test]
fn features_printout_lists_every_feature_with_its_answer() {
    require!();
    let features = Features::detect();
    let text = features.to_string();
    println!("{text}");
    assert_eq!(text.lines().count(), Feature::ALL.len(), "{text}");
    for f in Feature::ALL {
        let word = match f.check() {
            Ok(()) => "yes ",
            Err(_) => "no ",
        };
        assert_eq!(
            features.get(f),
            if f.check().is_ok() {
                &Support::Yes
            } else {
                &Support::No
            },
            "{f}\n{text}"
        );
        let line = text
            .lines()
            .find(|l| l.contains(f.name()))
            .unwrap_or_else(|| panic!("no line for {f}:\n{text}"));
        assert!(line.starts_with(word), "{line}");
        assert!(line.contains(&format!("(Linux {})", f.since())), "{line}");
    }
}

#[test]
fn probes_leave_no_routes_links_or_namespaces_behind() {
    require!();
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
    require!();
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
