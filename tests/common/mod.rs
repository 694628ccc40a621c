//! Shared test harness: privilege gate, topologies, traffic.
#![allow(dead_code)]

/// Whether privileged tests must fail instead of skipping (CI=true or LWTUN_REQUIRE_PRIV=1).
pub fn privileges_required() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
        || std::env::var("LWTUN_REQUIRE_PRIV")
            .map(|v| v == "1")
            .unwrap_or(false)
}

/// Returns true when the test may run. Without root it prints why the test is skipped and
/// returns false; when privileges are required it panics instead.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let why = format!(
        "{test}: needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces); euid is {euid}"
    );
    if privileges_required() {
        panic!("{why}, and CI=true/LWTUN_REQUIRE_PRIV=1 forbids skipping");
    }
    eprintln!("SKIPPED {why}");
    false
}
