//! Health checks for services' backends, through the data path: each probe is an ICMP echo
//! request to the service's address, marked so that the services program sends it to one
//! backend (the mark names it) with that backend's own encapsulation and outer source, as its
//! data goes (Katran's lesson: a probe that takes another path proves nothing about the data's).
//! The backend answers from the service address, like any reply. A backend that misses `fall`
//! rounds in a row is [drained](super::Services::drain); one that the check drained and that
//! answers `rise` rounds in a row is [restored](super::Services::restore).
//!
//! ```text
//!  HealthCheck::round ── echo to VIP, SO_MARK = probe value | backend index ──► service_xmit
//!      ▲                                    (backend by mark, its encap) ──► backend ──┐
//!      └──────────────── echo reply from the VIP (any path back) ◄─────────────────────┘
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

use super::Services;
use crate::error::{Error, Result};

/// How often and how strictly backends are probed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lwtun::service::HealthConfig;
///
/// let fast = HealthConfig { interval: Duration::from_millis(100), timeout: Duration::from_millis(80), ..HealthConfig::default() };
/// assert_eq!(fast.fall, 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between the starts of two rounds ([`HealthCheck::spawn`]).
    pub interval: Duration,
    /// How long a round waits for the answers (at most `interval`).
    pub timeout: Duration,
    /// Rounds missed in a row before a backend is drained.
    pub fall: u32,
    /// Rounds answered in a row before a backend the check drained is restored.
    pub rise: u32,
}

impl Default for HealthConfig {
    /// One round a second, answers within 0.5 s, drained after 3 misses, back after 2 answers.
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 3,
            rise: 2,
        }
    }
}

/// A backend the check took out of service or put back.
///
/// # Examples
///
/// ```no_run
/// # let change: lwtun::service::HealthChange = todo!();
/// println!("{} of {}: {}", change.remote, change.service, if change.up { "back" } else { "drained" });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HealthChange {
    /// The service.
    pub service: IpNetwork,
    /// The backend's remote.
    pub remote: IpAddr,
    /// Restored (`true`) or drained.
    pub up: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Record {
    missed: u32,
    answered: u32,
    drained_by_us: bool,
}

/// What the probes of one round go to.
struct Target {
    service: IpNetwork,
    remote: IpAddr,
    index: u32,
    up: bool,
}

/// Probes the backends of a [`Services`] data plane from the namespace it was made in (the
/// services route's namespace): ICMP echo through the data path, raw sockets (CAP_NET_RAW),
/// marks (CAP_NET_ADMIN).
///
/// # Examples
///
/// ```no_run
/// use std::sync::{Arc, Mutex};
/// use lwtun::service::{HealthCheck, HealthConfig, Services};
///
/// let services = Arc::new(Mutex::new(Services::load()?));
/// // ... services.lock().unwrap().set(vip, &backends)?, a route to the VIP ...
/// let watch = HealthCheck::new(HealthConfig::default())?.spawn(services.clone());
/// // backends that stop answering are drained within fall × interval; dropping `watch` stops it
/// # Ok::<(), lwtun::Error>(())
/// ```
#[derive(Debug)]
pub struct HealthCheck {
    config: HealthConfig,
    v4: OwnedFd,
    v6: OwnedFd,
    id: u16,
    round: u32,
    records: BTreeMap<(IpNetwork, IpAddr), Record>,
}

/// The probe payload's first bytes.
const PROBE_MAGIC: &[u8; 4] = b"LWTP";

impl HealthCheck {
    /// Opens the probe sockets in the calling thread's namespace.
    ///
    /// # Errors
    ///
    /// InvalidInput for a zero `fall`, `rise` or `interval`, or a `timeout` above the
    /// interval; Permission without CAP_NET_RAW.
    pub fn new(config: HealthConfig) -> Result<HealthCheck> {
        let op = "open health check";
        if config.fall == 0 || config.rise == 0 || config.interval.is_zero() {
            return Err(Error::invalid_input(
                op,
                "fall, rise and interval must be above 0",
            ));
        }
        if config.timeout > config.interval || config.timeout.is_zero() {
            return Err(Error::invalid_input(
                op,
                format!(
                    "timeout {:?}: above 0 and at most the interval ({:?})",
                    config.timeout, config.interval
                ),
            ));
        }
        let raw = |family, proto| -> Result<OwnedFd> {
            // SAFETY: plain syscall; a non-negative return is a new descriptor we own.
            let fd = unsafe {
                libc::socket(
                    family,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                    proto,
                )
            };
            if fd < 0 {
                let e = io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EPERM) {
                    Error::permission(op, "CAP_NET_RAW")
                } else {
                    Error::io(op, e)
                });
            }
            // SAFETY: fd is new and owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let v4 = raw(libc::AF_INET, libc::IPPROTO_ICMP)?;
        let v6 = raw(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
        let id = (std::process::id() as u16) ^ 0x4c57;
        Ok(HealthCheck {
            config,
            v4,
            v6,
            id,
            round: 0,
            records: BTreeMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// One round: probes every backend of every service once, waits up to the timeout for the
    /// answers, and drains or restores backends by their records. The lock is held only to
    /// read the backends and to apply the changes, not while waiting.
    ///
    /// # Errors
    ///
    /// The kernel's error sending a probe or changing a service.
    pub fn round(&mut self, services: &Mutex<Services>) -> Result<Vec<HealthChange>> {
        let op = "health check round";
        let (targets, mark) = {
            let s = services.lock().unwrap_or_else(|p| p.into_inner());
            let targets: Vec<Target> = s
                .entries
                .iter()
                .flat_map(|(prefix, e)| {
                    e.backends.iter().map(|h| Target {
                        service: *prefix,
                        remote: h.backend.peer.remote,
                        index: h.index,
                        up: h.up,
                    })
                })
                .collect();
            (targets, s.probe_mark)
        };
        self.round = self.round.wrapping_add(1);
        for t in &targets {
            self.send(t, mark.0 | t.index).map_err(|e| {
                Error::io(op, e).with_object(format!("probe to {} of {}", t.remote, t.service))
            })?;
        }
        let answered = self.collect(targets.len());
        // Forget backends that are gone.
        let live: BTreeSet<(IpNetwork, IpAddr)> =
            targets.iter().map(|t| (t.service, t.remote)).collect();
        self.records.retain(|k, _| live.contains(k));
        let mut changes = Vec::new();
        let mut s = services.lock().unwrap_or_else(|p| p.into_inner());
        for t in &targets {
            let r = self.records.entry((t.service, t.remote)).or_default();
            if answered.contains(&t.index) {
                r.answered += 1;
                r.missed = 0;
            } else {
                r.missed += 1;
                r.answered = 0;
            }
            // Still the same backend at the same index (a set() meanwhile may have changed it)?
            let same = s.entries.get(&t.service).is_some_and(|e| {
                e.backends
                    .iter()
                    .any(|h| h.index == t.index && h.backend.peer.remote == t.remote)
            });
            if !same {
                continue;
            }
            if t.up && r.missed >= self.config.fall {
                s.drain(t.service, t.remote)?;
                r.drained_by_us = true;
                changes.push(HealthChange {
                    service: t.service,
                    remote: t.remote,
                    up: false,
                });
            } else if !t.up && r.drained_by_us && r.answered >= self.config.rise {
                s.restore(t.service, t.remote)?;
                r.drained_by_us = false;
                changes.push(HealthChange {
                    service: t.service,
                    remote: t.remote,
                    up: true,
                });
            }
        }
        Ok(changes)
    }

    /// Sends one echo request to the service's address, marked for backend `t.index`.
    fn send(&self, t: &Target, mark: u32) -> io::Result<()> {
        let v6 = t.service.is_ipv6();
        let fd = if v6 { &self.v6 } else { &self.v4 };
        set_mark(fd, mark)?;
        let mut msg = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
        msg.extend_from_slice(&self.id.to_be_bytes());
        msg.extend_from_slice(&(self.round as u16).to_be_bytes());
        msg.extend_from_slice(PROBE_MAGIC);
        msg.extend_from_slice(&t.index.to_be_bytes());
        msg.extend_from_slice(&self.round.to_be_bytes());
        if !v6 {
            // ICMPv6's checksum the kernel fills in; ICMP's is ours.
            let sum = checksum(&msg);
            msg[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        let dst = SocketAddr::new(t.service.ip(), 0);
        let (addr, len) = sockaddr(&dst);
        // SAFETY: msg and addr are live for the call; len is addr's size.
        let rc = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // A probe the data plane drops (no such backend any more) is a missed answer.
            if e.raw_os_error() != Some(libc::EPERM) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The backend indexes that answered this round, read until all did or the timeout.
    fn collect(&self, expected: usize) -> BTreeSet<u32> {
        let until = Instant::now() + self.config.timeout;
        let mut answered = BTreeSet::new();
        let mut buf = [0u8; 1500];
        while answered.len() < expected {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.v4.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.v6.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: fds is a live array of two pollfds.
            if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } <= 0 {
                continue;
            }
            for (i, fd) in [&self.v4, &self.v6].into_iter().enumerate() {
                if fds[i].revents & libc::POLLIN == 0 {
                    continue;
                }
                loop {
                    // SAFETY: buf is live and of the length given.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if n <= 0 {
                        break;
                    }
                    let pkt = &buf[..n as usize];
                    // IPv4 raw sockets hand over the IP header too.
                    let icmp = if i == 0 {
                        let ihl = usize::from(pkt[0] & 0x0f) * 4;
                        pkt.get(ihl..).unwrap_or_default()
                    } else {
                        pkt
                    };
                    if let Some(index) = self.answer(icmp, i == 1) {
                        answered.insert(index);
                    }
                }
            }
        }
        answered
    }

    /// The backend index an echo reply of this round answers for, if it is one.
    fn answer(&self, icmp: &[u8], v6: bool) -> Option<u32> {
        let reply = if v6 { 129 } else { 0 };
        if icmp.len() < 20 || icmp[0] != reply || icmp[4..6] != self.id.to_be_bytes() {
            return None;
        }
        if &icmp[8..12] != PROBE_MAGIC || icmp[16..20] != self.round.to_be_bytes() {
            return None;
        }
        Some(u32::from_be_bytes([icmp[12], icmp[13], icmp[14], icmp[15]]))
    }

    /// Runs rounds every `interval` on a thread of its own until the returned watch drops.
    pub fn spawn(mut self, services: Arc<Mutex<Services>>) -> HealthWatch {
        let (stop, stopped) = mpsc::channel::<()>();
        let log = Arc::new(Mutex::new(HealthLog::default()));
        let shared = log.clone();
        let thread = std::thread::spawn(move || loop {
            let start = Instant::now();
            let result = self.round(&services);
            {
                let mut l = shared.lock().unwrap_or_else(|p| p.into_inner());
                l.rounds += 1;
                match result {
                    Ok(changes) => l.changes.extend(changes),
                    Err(e) => l.last_error = Some(e.to_string()),
                }
            }
            let next = self.config.interval.saturating_sub(start.elapsed());
            if !matches!(
                stopped.recv_timeout(next),
                Err(mpsc::RecvTimeoutError::Timeout)
            ) {
                return;
            }
        });
        HealthWatch {
            stop: Some(stop),
            thread: Some(thread),
            log,
        }
    }
}

#[derive(Debug, Default)]
struct HealthLog {
    rounds: u64,
    changes: Vec<HealthChange>,
    last_error: Option<String>,
}

/// Health checks running on their own thread ([`HealthCheck::spawn`]); stops when dropped.
///
/// # Examples
///
/// ```no_run
/// # let watch: lwtun::service::HealthWatch = todo!();
/// for change in watch.take_changes() {
///     println!("{change:?}");
/// }
/// ```
#[derive(Debug)]
pub struct HealthWatch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    log: Arc<Mutex<HealthLog>>,
}

impl HealthWatch {
    /// The drains and restores since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<HealthChange> {
        std::mem::take(&mut self.log.lock().unwrap_or_else(|p| p.into_inner()).changes)
    }

    /// Rounds run so far.
    pub fn rounds(&self) -> u64 {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).rounds
    }

    /// The last round's error, if a round failed.
    pub fn last_error(&self) -> Option<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error
            .clone()
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set_mark(fd: &OwnedFd, mark: u32) -> io::Result<()> {
    // SAFETY: mark lives for the call; the length is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_an_echo_request_is_right() {
        // type 8, code 0, id 1, seq 1: sum 0x0802 -> !0x0802 = 0xf7fd
        let msg = [8u8, 0, 0, 0, 0, 1, 0, 1];
        assert_eq!(checksum(&msg), 0xf7fd);
    }
}
