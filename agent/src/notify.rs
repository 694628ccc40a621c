//! systemd's readiness protocol (`sd_notify(3)`): one datagram of `KEY=VALUE` lines to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! Without the variable (not started by systemd with `Type=notify`) nothing is sent.
//!
//! The protocol is one `sendto`, so it is written here rather than taken from a crate.
//!
//! ```no_run
//! use lwtun_agent::notify::{notify, READY};
//!
//! notify(READY)?; // false when not run by systemd
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The service is up: the initial sync is done.
pub const READY: &str = "READY=1";
/// The service is stopping (withdrawing its record).
pub const STOPPING: &str = "STOPPING=1";
/// The service is alive (sent every half [`watchdog`] period when systemd asks for it).
pub const WATCHDOG: &str = "WATCHDOG=1";

/// The period within which systemd wants [`WATCHDOG`] (`WatchdogSec=`, passed as
/// `$WATCHDOG_USEC`), or `None` when it does not ask this process (`$WATCHDOG_PID` names
/// another one, or the variables are unset or not numbers).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use lwtun_agent::notify::watchdog;
///
/// std::env::set_var("WATCHDOG_USEC", "30000000");
/// std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
/// assert_eq!(watchdog(), Some(Duration::from_secs(30)));
/// std::env::set_var("WATCHDOG_PID", "1");
/// assert_eq!(watchdog(), None, "for another process");
/// ```
pub fn watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `state` (e.g. [`READY`], or `"STATUS=watching"`) to systemd. Returns whether it was
/// sent: false when `$NOTIFY_SOCKET` is unset.
///
/// # Errors
///
/// The socket's error when the variable names a socket that cannot be reached.
///
/// # Examples
///
/// ```
/// use lwtun_agent::notify::notify;
///
/// let dir = std::env::temp_dir().join(format!("lwtun-notify-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("notify");
/// let systemd = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
/// std::env::set_var("NOTIFY_SOCKET", &path);
/// assert!(notify("READY=1")?);
/// let mut buf = [0u8; 64];
/// let n = systemd.recv(&mut buf).unwrap();
/// assert_eq!(&buf[..n], b"READY=1");
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(&target)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}
