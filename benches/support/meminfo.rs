//! The kernel's memory as /proc tells it, for the benches that measure what tables cost.

/// A field of /proc/self/status or /proc/meminfo (`file`), in KiB.
pub fn kib(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The kernel's slab and per-CPU memory, in bytes (what BPF map elements come from).
pub fn kernel_memory() -> u64 {
    (kib("/proc/meminfo", "Slab:") + kib("/proc/meminfo", "Percpu:")) * 1024
}
