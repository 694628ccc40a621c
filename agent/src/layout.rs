//! The etcd key layout of a fleet.
//!
//! ```text
//! /lwtun/fleet/<fleet>/hosts/<host>  →  JSON HostRecord (under the host's lease)
//! ```
//!
//! The root (`/lwtun/fleet` by default) is configurable; `<fleet>` and `<host>` are names of 1 to
//! 64 characters from `A-Z a-z 0-9 . _ -` (no `/`, so a key names exactly one host).

use crate::AgentError;

/// The default root of every fleet's keys.
pub const DEFAULT_ROOT: &str = "/lwtun/fleet";

/// Longest fleet or host name.
pub const MAX_NAME: usize = 64;

/// Where the hosts of one fleet publish themselves.
///
/// # Examples
///
/// ```
/// use lwtun_agent::layout::Layout;
///
/// let layout = Layout::new("/lwtun/fleet", "prod")?;
/// assert_eq!(layout.hosts_prefix(), "/lwtun/fleet/prod/hosts/");
/// assert_eq!(layout.host_key("edge-1")?, "/lwtun/fleet/prod/hosts/edge-1");
/// assert_eq!(layout.host_of(b"/lwtun/fleet/prod/hosts/edge-1"), Some("edge-1"));
/// assert_eq!(layout.host_of(b"/lwtun/fleet/prod/hosts/a/b"), None);
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

/// Checks a fleet or host name: 1 to [`MAX_NAME`] characters from `A-Z a-z 0-9 . _ -`.
///
/// # Errors
///
/// [`AgentError::Config`] naming the bad name.
///
/// # Examples
///
/// ```
/// assert!(lwtun_agent::layout::check_name("host", "edge-1.eu").is_ok());
/// assert!(lwtun_agent::layout::check_name("host", "a/b").is_err());
/// ```
pub fn check_name(what: &str, name: &str) -> Result<(), AgentError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(AgentError::Config(format!(
            "{what} name {name:?}: use 1 to {MAX_NAME} characters from A-Z a-z 0-9 . _ -"
        )))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Layout {
    /// The layout of fleet `fleet` under `root` (for example [`DEFAULT_ROOT`]).
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for a bad fleet name or a root that does not start with `/`.
    pub fn new(root: &str, fleet: &str) -> Result<Self, AgentError> {
        check_name("fleet", fleet)?;
        if !root.starts_with('/') {
            return Err(AgentError::Config(format!(
                "etcd root {root:?}: it must start with /"
            )));
        }
        Ok(Layout {
            prefix: format!("{}/{fleet}/hosts/", root.trim_end_matches('/')),
        })
    }

    /// The prefix every host key of the fleet starts with (what the agent watches).
    pub fn hosts_prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of host `host`.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] for a bad host name.
    pub fn host_key(&self, host: &str) -> Result<String, AgentError> {
        check_name("host", host)?;
        Ok(format!("{}{host}", self.prefix))
    }

    /// The host a key belongs to; `None` for a key outside the fleet or with a bad host name.
    pub fn host_of<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_bytes())?;
        let name = std::str::from_utf8(rest).ok()?;
        valid_name(name).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_outside_the_fleet_or_with_bad_names_are_not_hosts() {
        let l = Layout::new("/lwtun/fleet/", "f").unwrap();
        assert_eq!(l.hosts_prefix(), "/lwtun/fleet/f/hosts/");
        assert_eq!(l.host_of(b"/lwtun/fleet/f/hosts/"), None);
        assert_eq!(l.host_of(b"/lwtun/fleet/g/hosts/x"), None);
        assert_eq!(l.host_of(b"/lwtun/fleet/f/hosts/x y"), None);
        assert_eq!(l.host_of(b"/lwtun/fleet/f/hosts/\xff"), None);
        let long = format!("/lwtun/fleet/f/hosts/{}", "a".repeat(65));
        assert_eq!(l.host_of(long.as_bytes()), None);
        assert!(Layout::new("lwtun", "f").is_err());
        assert!(Layout::new("/lwtun", "").is_err());
        assert!(l.host_key("..x").is_ok());
        assert!(l.host_key("a/b").is_err());
    }
}
