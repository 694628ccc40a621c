//! How the agent reaches etcd: TLS (the CA that signed etcd's certificate, a client
//! certificate for mutual TLS, a server name override) and user/password authentication, checked
//! and loaded once at start ([`AccessConfig::load`] → [`EtcdAccess`]), turned into the client's
//! connect options in one place ([`EtcdAccess::connect_options`]), and the failures that no
//! retry can fix told apart from transient ones ([`EtcdAccess::refusal`]).
//!
//! ```text
//!  flags ─► AccessConfig::load ─► EtcdAccess ─► connect_options() ─► every (re)connect
//!            │ https:// needs --etcd-ca; --etcd-ca needs https://
//!            │ --etcd-cert and --etcd-key together, files read and checked now
//!            └ --etcd-user with --etcd-password-file or LWTUN_ETCD_PASSWORD
//!  first connection fails ─► refusal(): TLS or credentials? ─► one line, exit (no retry storm)
//!                                       otherwise          ─► rate-limited retry (report)
//! ```
//!
//! ```
//! use lwtun_agent::etcd::AccessConfig;
//!
//! // an https:// endpoint without the CA to check etcd's certificate is refused at start
//! let e = AccessConfig::default()
//!     .load(&["https://10.0.0.9:2379".to_string()])
//!     .unwrap_err();
//! assert!(e.to_string().contains("--etcd-ca"), "{e}");
//! // plain http, no credentials: the defaults
//! let access = AccessConfig::default().load(&["http://127.0.0.1:2379".to_string()])?;
//! assert!(!access.tls());
//! # Ok::<(), lwtun_agent::AgentError>(())
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::report;
use crate::AgentError;

/// The environment variable the password is read from when no `--etcd-password-file` is given.
pub const PASSWORD_ENV: &str = "LWTUN_ETCD_PASSWORD";

/// How to reach etcd, as the operator gave it (paths, names): the agent's `--etcd-*` flags.
///
/// # Examples
///
/// ```
/// use lwtun_agent::etcd::AccessConfig;
///
/// let config = AccessConfig {
///     cert: Some("/etc/lwtun/agent.pem".into()),
///     ..AccessConfig::default()
/// };
/// let e = config.load(&["https://10.0.0.9:2379".to_string()]).unwrap_err();
/// assert!(e.to_string().contains("--etcd-cert"), "{e}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessConfig {
    /// `--etcd-ca`: PEM file of the CA that signed etcd's server certificate (etcd's
    /// `--trusted-ca-file` is usually the same CA). Required by `https://` endpoints.
    pub ca: Option<PathBuf>,
    /// `--etcd-cert`: PEM file of this agent's client certificate (mutual TLS, etcd's
    /// `--client-cert-auth`); needs `key`.
    pub cert: Option<PathBuf>,
    /// `--etcd-key`: PEM file of the client certificate's private key.
    pub key: Option<PathBuf>,
    /// `--etcd-server-name`: the name etcd's certificate must carry, when it is not the host
    /// in the endpoint URL (an endpoint given by IP address, a certificate made for a name).
    pub server_name: Option<String>,
    /// `--etcd-user`: the etcd user the agent authenticates as (etcd `auth enable`).
    pub user: Option<String>,
    /// `--etcd-password-file`: a file whose first line is the user's password. Without it the
    /// password is read from [`PASSWORD_ENV`].
    pub password_file: Option<PathBuf>,
}

/// A checked, loaded [`AccessConfig`]: certificates read, password read. Its `Debug` never
/// shows the password.
///
/// # Examples
///
/// ```
/// use lwtun_agent::etcd::EtcdAccess;
///
/// // what an agent without --etcd-* flags uses: plain http, no credentials
/// let access = EtcdAccess::default();
/// assert!(!access.tls());
/// assert_eq!(access.user(), None);
/// let _options = access.connect_options();
/// ```
#[derive(Clone, Default)]
pub struct EtcdAccess {
    config: AccessConfig,
    tls: Option<TlsOptions>,
    password: Option<String>,
}

impl fmt::Debug for EtcdAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAccess")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// `path`'s text, or a configuration error naming `flag`.
fn read(flag: &str, path: &Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path)
        .map_err(|e| AgentError::Config(format!("{flag} {}: cannot read it: {e}", path.display())))
}

/// `path`'s PEM text, checked to hold a `label` block (`CERTIFICATE`, `PRIVATE KEY`).
fn read_pem(flag: &str, path: &Path, label: &str) -> Result<String, AgentError> {
    let text = read(flag, path)?;
    let holds = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !holds {
        return Err(AgentError::Config(format!(
            "{flag} {}: no PEM \"{label}\" block in it: give the PEM file (-----BEGIN ...{label}-----)",
            path.display()
        )));
    }
    Ok(text)
}

/// The scheme of an endpoint URL: `Some(true)` for https, `Some(false)` for http, `None`
/// without one.
fn https(url: &str) -> Option<bool> {
    let (scheme, _) = url.split_once("://")?;
    Some(scheme.eq_ignore_ascii_case("https"))
}

impl AccessConfig {
    /// Checks the settings against each other and against `endpoints`, and reads the files.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] naming the flag: an `https://` endpoint without `--etcd-ca`, TLS
    /// files with `http://` endpoints, http and https endpoints mixed, a certificate without
    /// its key (or the reverse), a user without a password (or the reverse), an unreadable
    /// file or one without the PEM block it should hold, a scheme other than http/https.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::etcd::AccessConfig;
    ///
    /// let config = AccessConfig { ca: Some("/etc/lwtun/ca.pem".into()), ..AccessConfig::default() };
    /// let e = config.load(&["http://10.0.0.9:2379".to_string()]).unwrap_err();
    /// assert!(e.to_string().contains("use https://"), "{e}");
    /// ```
    pub fn load(&self, endpoints: &[String]) -> Result<EtcdAccess, AgentError> {
        self.check(endpoints)?;
        Ok(EtcdAccess {
            config: self.clone(),
            tls: self.tls_options()?,
            password: self.password()?,
        })
    }

    /// The flags against each other and the endpoints' schemes, before any file is read.
    fn check(&self, endpoints: &[String]) -> Result<(), AgentError> {
        let config_error = |m: String| Err(AgentError::Config(m));
        for url in endpoints {
            if let Some((scheme, _)) = url.split_once("://") {
                if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                    return config_error(format!(
                        "--etcd {url}: scheme {scheme}:// is neither http:// nor https://"
                    ));
                }
            }
        }
        let secure = endpoints.iter().find(|u| https(u) == Some(true));
        let plain = endpoints.iter().find(|u| https(u) == Some(false));
        if let (Some(s), Some(p)) = (secure, plain) {
            return config_error(format!(
                "--etcd {s} and --etcd {p}: all endpoints of one cluster are https:// or all http://"
            ));
        }
        let tls_flag = [
            ("--etcd-ca", self.ca.is_some()),
            ("--etcd-cert", self.cert.is_some()),
            ("--etcd-key", self.key.is_some()),
            ("--etcd-server-name", self.server_name.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given)
        .map(|(flag, _)| flag);
        if let (Some(flag), Some(p)) = (tls_flag, plain) {
            return config_error(format!(
                "{flag} is given but --etcd {p} is plain http: use https:// endpoints for TLS"
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return config_error(
                    "--etcd-cert needs --etcd-key (the client certificate's private key)".into(),
                )
            }
            (None, Some(_)) => {
                return config_error(
                    "--etcd-key needs --etcd-cert (the client certificate it belongs to)".into(),
                )
            }
            _ => {}
        }
        if let (None, Some(flag)) = (&self.ca, tls_flag) {
            return config_error(format!(
                "{flag} needs --etcd-ca (the CA that signed etcd's certificate) and https:// endpoints"
            ));
        }
        if let (None, Some(s)) = (&self.ca, secure) {
            return config_error(format!(
                "--etcd {s} is https:// but --etcd-ca is missing: give the PEM file of the CA that signed etcd's certificate"
            ));
        }
        if self.server_name.as_deref() == Some("") {
            return config_error("--etcd-server-name is empty".into());
        }
        match (&self.user, &self.password_file) {
            (None, Some(_)) => config_error(
                "--etcd-password-file needs --etcd-user (the user it is the password of)".into(),
            ),
            (Some(user), _) if user.is_empty() => config_error("--etcd-user is empty".into()),
            _ => Ok(()),
        }
    }

    /// The TLS settings with the certificates read, `None` without `--etcd-ca`.
    fn tls_options(&self) -> Result<Option<TlsOptions>, AgentError> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
            "--etcd-ca",
            ca,
            "CERTIFICATE",
        )?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--etcd-cert", cert, "CERTIFICATE")?,
                read_pem("--etcd-key", key, "PRIVATE KEY")?,
            ));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(Some(tls))
    }

    /// `--etcd-user`'s password: the first line of `--etcd-password-file`, else
    /// [`PASSWORD_ENV`]; `None` without a user.
    fn password(&self) -> Result<Option<String>, AgentError> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(path) => read("--etcd-password-file", path)?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            None => std::env::var(PASSWORD_ENV).map_err(|_| {
                AgentError::Config(format!(
                    "--etcd-user {user} needs a password: give --etcd-password-file or set {PASSWORD_ENV}"
                ))
            })?,
        };
        if password.is_empty() {
            return Err(AgentError::Config(format!(
                "--etcd-user {user}: the password is empty (--etcd-password-file or {PASSWORD_ENV})"
            )));
        }
        Ok(Some(password))
    }
}

impl EtcdAccess {
    /// Whether the endpoints are reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The etcd user the agent authenticates as, if any.
    pub fn user(&self) -> Option<&str> {
        self.config.user.as_deref()
    }

    /// The settings it was loaded from.
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// The client's connect options: TLS and credentials (an expired token renewed), with the
    /// agent's timeouts (connect within 1 s; an HTTP/2 ping every second, the connection lost
    /// after 2 s without answer).
    pub fn connect_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.clone());
        }
        if let (Some(user), Some(password)) = (&self.config.user, &self.password) {
            // etcd's tokens expire (--auth-token-ttl, 5 min by default): a call refused for
            // an expired token authenticates again and is retried, not a lost session
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        options
    }

    /// When `e` is a connection etcd closed without a word (no TLS alert, no gRPC status), the
    /// line to say if that keeps happening, and which mismatch it points to:
    /// - TLS, closed during the handshake: etcd serves plain http;
    /// - TLS, closed after it: etcd refused the client certificate (with TLS 1.3 etcd checks
    ///   it after the client's side of the handshake is done, and its alert may be lost with
    ///   the connection);
    /// - plain http, closed: etcd serves TLS only.
    ///
    /// `None` for any other failure. One such close can be an etcd going down; the agent
    /// takes it for the mismatch only when it happens every time at start.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::etcd::EtcdAccess;
    /// use lwtun_agent::AgentError;
    ///
    /// let e = AgentError::Timeout(std::time::Duration::from_secs(3));
    /// assert_eq!(EtcdAccess::default().closed_early(&e, &["http://127.0.0.1:2379".into()]), None);
    /// ```
    pub fn closed_early(&self, e: &AgentError, endpoints: &[String]) -> Option<String> {
        let AgentError::Etcd(e) = e else {
            return None;
        };
        let low = report::error_text(e).to_lowercase();
        let closed = [
            "tls handshake eof",
            "connection closed",
            "connection reset",
            "broken pipe",
        ];
        if !closed.iter().any(|c| low.contains(c)) {
            return None;
        }
        let at = report::endpoints(endpoints);
        // The client maps a failure to connect (TCP and TLS handshake) to Unavailable, a
        // failure of the HTTP/2 connection after it to Unknown ("transport error").
        let connecting = matches!(e, etcd_client::Error::GRpcStatus(s)
            if format!("{:?}", s.code()) == "Unavailable");
        if self.tls.is_some() && connecting {
            return Some(format!(
                "etcd at {at} closed every connection during the TLS handshake: does it serve plain http? use http:// endpoints without --etcd-ca"
            ));
        }
        if self.tls.is_none() {
            return Some(format!(
                "etcd at {at} closed every plain http connection: does it serve TLS only? use https:// endpoints with --etcd-ca"
            ));
        }
        let why = match &self.config.cert {
            None => "it likely requires a client certificate: give --etcd-cert and --etcd-key".to_string(),
            Some(cert) => format!(
                "it likely refuses the client certificate --etcd-cert {}: check it is signed by etcd's --trusted-ca-file and valid now",
                cert.display()
            ),
        };
        Some(format!(
            "etcd at {at} closed every TLS connection right after the handshake: {why}"
        ))
    }

    /// When `e` is a failure no retry can fix — etcd's certificate not signed by `--etcd-ca`,
    /// not made for its name or expired; etcd refusing the client certificate or asking for
    /// one; a wrong user or password, authentication enabled without `--etcd-user`, a user
    /// without permission — the one line that says what is wrong and what to check.
    /// `None` for anything else (etcd down, a timeout), which the agent retries.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::etcd::EtcdAccess;
    /// use lwtun_agent::AgentError;
    ///
    /// let e = AgentError::Timeout(std::time::Duration::from_secs(3));
    /// assert_eq!(EtcdAccess::default().refusal(&e, &["http://127.0.0.1:2379".into()]), None);
    /// ```
    pub fn refusal(&self, e: &AgentError, endpoints: &[String]) -> Option<String> {
        let AgentError::Etcd(e) = e else {
            return None;
        };
        let at = report::endpoints(endpoints);
        let said = report::error_text(e);
        let low = said.to_lowercase();
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let ca = path(&self.config.ca);
        let cert = path(&self.config.cert);
        let detail = report::innermost(e);
        if low.contains("invalid peer certificate") {
            let why = if low.contains("unknownissuer") || low.contains("unknown issuer") {
                format!("etcd's certificate is not signed by --etcd-ca {ca}: check that --etcd-ca is the CA of etcd's --cert-file")
            } else if low.contains("not valid for name") || low.contains("notvalidforname") {
                match &self.config.server_name {
                    Some(name) => format!("etcd's certificate is not made for --etcd-server-name {name}: give a name it carries"),
                    None => "etcd's certificate is not made for the host in --etcd: use a name it carries, or --etcd-server-name".to_string(),
                }
            } else if low.contains("expired") {
                "etcd's certificate has expired: renew etcd's --cert-file".to_string()
            } else if low.contains("not valid yet") {
                "etcd's certificate is not valid yet: check this host's clock".to_string()
            } else {
                format!("etcd's certificate is refused ({detail}): check --etcd-ca {ca}")
            };
            return Some(format!("etcd at {at} failed the TLS handshake: {why}"));
        }
        if low.contains("received fatal alert") || low.contains("certificate required") {
            let why = if self.config.cert.is_none() {
                "etcd requires a client certificate: give --etcd-cert and --etcd-key".to_string()
            } else if low.contains("expired") {
                format!(
                    "etcd refused the client certificate --etcd-cert {cert} as expired: renew it"
                )
            } else {
                format!(
                    "etcd refused the client certificate --etcd-cert {cert} ({detail}): check it is signed by etcd's --trusted-ca-file and valid now"
                )
            };
            return Some(format!("etcd at {at} refused the TLS handshake: {why}"));
        }
        if low.contains("corrupt message") || low.contains("invalidcontenttype") {
            return Some(format!(
                "etcd at {at} did not answer TLS ({detail}): is it serving plain http? use http:// endpoints without --etcd-ca"
            ));
        }
        let user = self.config.user.as_deref().unwrap_or("");
        let pw = match &self.config.password_file {
            Some(f) => format!("--etcd-password-file {}", f.display()),
            None => PASSWORD_ENV.to_string(),
        };
        if low.contains("invalid user id or password") {
            return Some(format!(
                "etcd at {at} refused user {user}: wrong user or password: check --etcd-user and {pw}"
            ));
        }
        if low.contains("user name is empty") || low.contains("user name not found") {
            return Some(format!(
                "etcd at {at} has authentication enabled: give --etcd-user and --etcd-password-file"
            ));
        }
        if low.contains("authentication is not enabled") {
            return Some(format!(
                "etcd at {at} does not have authentication enabled: drop --etcd-user, or enable auth in etcd"
            ));
        }
        if low.contains("permission denied") {
            if user.is_empty() {
                return Some(format!(
                    "etcd at {at} has authentication enabled and denied this agent (no --etcd-user, so etcd took its client certificate's name): give --etcd-user and --etcd-password-file"
                ));
            }
            return Some(format!(
                "etcd at {at} denied user {user} access to the fleet's keys: give its role readwrite on the key root (etcdctl role grant-permission --prefix=true)"
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: &AccessConfig, endpoints: &[&str]) -> String {
        let urls: Vec<String> = endpoints.iter().map(|s| s.to_string()).collect();
        match config.load(&urls) {
            Err(AgentError::Config(m)) => m,
            other => panic!("not a configuration error: {other:?}"),
        }
    }

    /// A private file under /tmp with `text`, removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> File {
            let p = std::env::temp_dir()
                .join(format!("lwtun-agent-etcd-{}-{name}", std::process::id()));
            std::fs::write(&p, text).unwrap();
            File(p)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const PEM_KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n";

    #[test]
    fn endpoints_and_tls_flags_must_agree() {
        let none = AccessConfig::default();
        let m = refused(&none, &["https://a:2379", "http://b:2379"]);
        assert!(
            m.contains("https://a:2379") && m.contains("http://b:2379"),
            "{m}"
        );
        let m = refused(&none, &["unix://a:2379"]);
        assert!(m.contains("neither http:// nor https://"), "{m}");
        let m = refused(&none, &["https://a:2379"]);
        assert!(
            m.starts_with("--etcd https://a:2379 is https:// but --etcd-ca is missing"),
            "{m}"
        );
        let named = AccessConfig {
            server_name: Some("etcd.example".into()),
            ..AccessConfig::default()
        };
        let m = refused(&named, &["http://a:2379"]);
        assert!(
            m.starts_with("--etcd-server-name is given but --etcd http://a:2379 is plain http"),
            "{m}"
        );
        let m = refused(&named, &["a:2379"]);
        assert!(m.starts_with("--etcd-server-name needs --etcd-ca"), "{m}");
    }

    #[test]
    fn files_are_read_and_checked_at_start() {
        let ca = File::new("ca.pem", PEM_CERT);
        let key = File::new("key.pem", PEM_KEY);
        let not_pem = File::new("not.pem", "hello\n");
        let key_only = AccessConfig {
            ca: Some(ca.0.clone()),
            key: Some(key.0.clone()),
            ..AccessConfig::default()
        };
        let m = refused(&key_only, &["https://a:2379"]);
        assert!(m.starts_with("--etcd-key needs --etcd-cert"), "{m}");
        let bad_cert = AccessConfig {
            cert: Some(not_pem.0.clone()),
            ..key_only.clone()
        };
        let m = refused(&bad_cert, &["https://a:2379"]);
        assert!(
            m.starts_with(&format!(
                "--etcd-cert {}: no PEM \"CERTIFICATE\" block",
                not_pem.0.display()
            )),
            "{m}"
        );
        let missing = AccessConfig {
            ca: Some("/nonexistent/ca.pem".into()),
            ..AccessConfig::default()
        };
        let m = refused(&missing, &["https://a:2379"]);
        assert!(
            m.starts_with("--etcd-ca /nonexistent/ca.pem: cannot read it"),
            "{m}"
        );
        let good = AccessConfig {
            cert: Some(ca.0.clone()),
            ..key_only
        };
        let access = good.load(&["https://a:2379".to_string()]).unwrap();
        assert!(access.tls());
    }

    #[test]
    fn the_password_comes_from_the_environment_without_a_file() {
        // the only test that touches this variable
        let user = AccessConfig {
            user: Some("agent".into()),
            ..AccessConfig::default()
        };
        std::env::remove_var(PASSWORD_ENV);
        let m = refused(&user, &["http://a:2379"]);
        assert_eq!(
            m,
            format!("--etcd-user agent needs a password: give --etcd-password-file or set {PASSWORD_ENV}")
        );
        std::env::set_var(PASSWORD_ENV, "from-env");
        let access = user.load(&["http://a:2379".to_string()]);
        std::env::remove_var(PASSWORD_ENV);
        assert_eq!(access.unwrap().password.as_deref(), Some("from-env"));
    }

    #[test]
    fn a_user_needs_a_password_and_debug_hides_it() {
        let password = File::new("password", "s3cret\nignored\n");
        let no_user = AccessConfig {
            password_file: Some(password.0.clone()),
            ..AccessConfig::default()
        };
        let m = refused(&no_user, &["http://a:2379"]);
        assert!(
            m.starts_with("--etcd-password-file needs --etcd-user"),
            "{m}"
        );
        let user = AccessConfig {
            user: Some("agent".into()),
            ..no_user
        };
        let access = user.load(&["http://a:2379".to_string()]).unwrap();
        assert_eq!(access.password.as_deref(), Some("s3cret"));
        let shown = format!("{access:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<hidden>"),
            "{shown}"
        );
        let empty = File::new("empty", "\n");
        let m = refused(
            &AccessConfig {
                password_file: Some(empty.0.clone()),
                ..user
            },
            &["http://a:2379"],
        );
        assert!(m.contains("the password is empty"), "{m}");
    }
}
