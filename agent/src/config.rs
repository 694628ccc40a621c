//! The agent's settings: command-line flags and a TOML file (`--config`), one set of names.
//!
//! [`Options`] is both the flags (`clap::Args`) and the file's keys (`serde`), so every flag is
//! a key of the same name in snake case (`--lease-ttl` ↔ `lease_ttl`, `--prefix` ↔ `prefixes`)
//! and a flag added to it later is a key with no further work. Precedence, highest first:
//!
//! ```text
//!  flag on the command line  >  key in the --config file  >  built-in default
//! ```
//!
//! A list given as flags (`--prefix`, `--steer`, `--source`, `--etcd`) replaces the file's list;
//! it is not appended to it. (A flag counts as given when it is set: an empty list, or a
//! boolean flag added later left false, leaves the file's key in force.) The file is checked key by key when read: an unknown key, or a
//! value of the wrong type, is an error naming the file and the key; then the merged settings
//! are validated ([`Config::load`]), again naming where a bad value came from.
//!
//! On SIGHUP the agent reads the file again ([`Config::reload`]): the keys in [`RELOADABLE`]
//! take their new values; a change to any other key (fleet, host, device, netns, capacity, etcd
//! endpoints…) is refused by name and the old value kept.
//!
//! ```
//! use lwtun_agent::config::{Config, Options};
//!
//! let dir = std::env::temp_dir().join(format!("lwtun-config-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let file = dir.join("agent.toml");
//! std::fs::write(&file, r#"
//! fleet = "prod"
//! host = "h1"
//! endpoint = "10.99.0.1"
//! device = "eth0"
//! steer = ["10.192.0.0/10"]
//! sources = ["10.200.1.1"]
//! lease_ttl = 0
//! "#).unwrap();
//! // the file says lease_ttl = 0, which is refused naming the file and the key...
//! let e = Config::load(Some(&file), &Options::default()).unwrap_err();
//! assert!(e.to_string().contains(r#"agent.toml: key "lease_ttl": must be at least 1 second"#), "{e}");
//! // ...unless a flag overrides it
//! let flags = Options { lease_ttl: Some(5), ..Options::default() };
//! let config = Config::load(Some(&file), &flags).unwrap();
//! assert_eq!(config.options().lease_ttl, Some(5));
//! assert_eq!(config.options().capacity, Some(65_536), "a default");
//! # std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use lwtun::peer::Encap;
use serde::{Deserialize, Serialize};

use crate::layout;
use crate::AgentError;

/// The keys whose new values a reload (SIGHUP) applies; a change to any other key is refused.
pub const RELOADABLE: &[&str] = &["prefixes", "prefix_file", "log_level"];

/// The default etcd URL.
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";
/// The default lease TTL, seconds.
pub const DEFAULT_LEASE_TTL: i64 = 10;
/// The default UDP port of `encap = "udp"`.
pub const DEFAULT_UDP_PORT: u16 = 6081;
/// The default number of peers per table.
pub const DEFAULT_CAPACITY: u32 = 65_536;
/// The default reconcile interval (`reconcile_interval`).
pub const DEFAULT_RECONCILE_INTERVAL: &str = "10s";
/// The default log level (when neither `log_level` nor `RUST_LOG` says one).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// How the other hosts encapsulate towards this one (`--encap`, key `encap`).
///
/// # Examples
///
/// ```
/// use lwtun_agent::config::EncapKind;
///
/// let e: EncapKind = toml::Value::String("gre".into()).try_into().unwrap();
/// assert_eq!(e, EncapKind::Gre);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncapKind {
    /// UDP (FOU) to `udp_port`
    Udp,
    /// GRE (with `gre_key` if given)
    Gre,
    /// IP-in-IP
    Ipip,
}

/// Every setting of the agent: each field is a flag (`--lease-ttl`) and a key of the config
/// file (`lease_ttl`). Unset fields are `None` (or empty); [`Config::load`] fills the defaults.
///
/// # Examples
///
/// ```
/// use lwtun_agent::config::Options;
///
/// let o: Options = toml::from_str("host = \"h1\"\nprefixes = [\"10.200.1.0/24\"]").unwrap();
/// assert_eq!(o.host.as_deref(), Some("h1"));
/// assert!(toml::from_str::<Options>("hots = \"h1\"").is_err(), "unknown keys are refused");
/// ```
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// etcd client URL (repeat for a cluster) [default: http://127.0.0.1:2379]
    #[arg(long)]
    pub etcd: Vec<String>,
    /// Key root of all fleets [default: /lwtun/fleet]
    #[arg(long)]
    pub root: Option<String>,
    /// Fleet name: keys live under ROOT/FLEET/hosts/ (required)
    #[arg(long)]
    pub fleet: Option<String>,
    /// This host's name (its key is ROOT/FLEET/hosts/HOST) (required)
    #[arg(long)]
    pub host: Option<String>,
    /// This host's tunnel endpoint (outer address on the underlay) (required); repeat it for an
    /// IPv4 and an IPv6 one when the underlay has both (the first is the one agents before 0.2
    /// read). In the file, an address or a list: `endpoint = ["10.0.0.17", "fd00::17"]`
    #[arg(long)]
    #[serde(deserialize_with = "one_or_many")]
    pub endpoint: Vec<IpAddr>,
    /// How the other hosts encapsulate towards this one [default: udp]
    #[arg(long, value_enum)]
    pub encap: Option<EncapKind>,
    /// UDP port for --encap udp [default: 6081]
    #[arg(long)]
    pub udp_port: Option<u16>,
    /// GRE key for --encap gre
    #[arg(long)]
    pub gre_key: Option<u32>,
    /// A prefix behind this host, published (repeatable; key `prefixes`); reloaded on SIGHUP
    #[arg(long = "prefix")]
    pub prefixes: Vec<IpNetwork>,
    /// A file of prefixes to publish too, one per line (# comments); read again on SIGHUP
    #[arg(long)]
    pub prefix_file: Option<PathBuf>,
    /// A prefix routed into the tunnel, e.g. the fleet's service range (repeatable; required)
    #[arg(long = "steer")]
    pub steer: Vec<IpNetwork>,
    /// This host's inner address, the source of routes into the tunnel (one per family;
    /// repeatable; key `sources`; required)
    #[arg(long = "source")]
    pub sources: Vec<IpAddr>,
    /// Underlay device of the data plane (required)
    #[arg(long)]
    pub device: Option<String>,
    /// Named network namespace of the data plane (the agent itself stays where it runs)
    #[arg(long)]
    pub netns: Option<String>,
    /// Lease TTL of this host's record in seconds: a dead host disappears this long after
    /// [default: 10]
    #[arg(long)]
    pub lease_ttl: Option<i64>,
    /// Peers per table (IPv4 and IPv6 each) [default: 65536]
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Pin the peer tables in this bpffs folder
    #[arg(long)]
    pub pin: Option<PathBuf>,
    /// Write the status (JSON: table, revision, timings) to this file after every change
    #[arg(long)]
    pub status: Option<PathBuf>,
    /// Log filter: a level (error, warn, info, debug, trace) or RUST_LOG directives
    /// [default: RUST_LOG, else info]; reloaded on SIGHUP
    #[arg(long)]
    pub log_level: Option<String>,
    /// PEM file of the CA that signed etcd's certificate (https:// endpoints need it)
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// PEM file of this agent's client certificate, for etcd's --client-cert-auth (with
    /// --etcd-key)
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// The name etcd's certificate carries, when not the host in --etcd
    #[arg(long)]
    pub etcd_server_name: Option<String>,
    /// etcd user to authenticate as (password from --etcd-password-file or
    /// LWTUN_ETCD_PASSWORD)
    #[arg(long)]
    pub etcd_user: Option<String>,
    /// File whose first line is --etcd-user's password
    #[arg(long)]
    pub etcd_password_file: Option<PathBuf>,
    /// How often the table is compared with the fleet and the decap checked, putting back
    /// what someone else changed (bpftool edits): 500ms, 10s, 1m (routes are put back at once)
    /// [default: 10s]
    #[arg(long)]
    pub reconcile_interval: Option<String>,
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz on this address, e.g.
    /// 127.0.0.1:9464 (off when not given)
    #[arg(long)]
    pub metrics_address: Option<std::net::SocketAddr>,
}

impl Options {
    /// The set fields as a TOML table (empty lists left out: "not given").
    fn table(&self) -> Result<toml::Table, AgentError> {
        let mut t = toml::Table::try_from(self)
            .map_err(|e| AgentError::Config(format!("settings as TOML: {e}")))?;
        t.retain(|_, v| !matches!(v, toml::Value::Array(a) if a.is_empty()));
        Ok(t)
    }
}

/// `endpoint = "10.0.0.17"` or `endpoint = ["10.0.0.17", "fd00::17"]`: one address or a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<IpAddr>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an IP address or a list of IP addresses")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.parse()
                .map(|a| vec![a])
                .map_err(|e| E::custom(format!("{v:?}: {e}")))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut all = Vec::new();
            while let Some(a) = seq.next_element()? {
                all.push(a);
            }
            Ok(all)
        }
    }
    d.deserialize_any(OneOrMany)
}

/// The long flag of a key (`lease_ttl` → `--lease-ttl`, `prefixes` → `--prefix`).
fn flag_of(key: &str) -> String {
    let cmd = <Options as clap::Args>::augment_args(clap::Command::new("lwtun-agent"));
    let long = cmd
        .get_arguments()
        .find(|a| a.get_id().as_str() == key)
        .and_then(|a| a.get_long().map(str::to_string));
    format!("--{}", long.unwrap_or_else(|| key.replace('_', "-")))
}

/// The agent's effective settings: a file's keys under the flags, with defaults filled and
/// validated. See the module docs for precedence and reloading.
///
/// # Examples
///
/// ```
/// use lwtun_agent::config::{Config, Options};
///
/// let flags = Options {
///     fleet: Some("f".into()), host: Some("h1".into()), endpoint: vec!["10.99.0.1".parse().unwrap()],
///     device: Some("eth0".into()), steer: vec!["10.192.0.0/10".parse().unwrap()],
///     sources: vec!["10.200.1.1".parse().unwrap()], ..Options::default()
/// };
/// let config = Config::load(None, &flags)?;
/// assert!(config.to_toml().contains("lease_ttl = 10"));
/// # Ok::<(), lwtun_agent::AgentError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    options: Options,
    file: Option<PathBuf>,
    flags: Options,
    from_flags: BTreeSet<String>,
    from_file: BTreeSet<String>,
}

impl Config {
    /// Reads `file` (if any), puts `flags` over it, fills the defaults and validates.
    ///
    /// # Errors
    ///
    /// [`AgentError::Config`] naming the file and key (or the flag) of a missing, unknown or
    /// bad value; [`AgentError::Io`] when the file cannot be read.
    ///
    /// # Examples
    ///
    /// ```
    /// use lwtun_agent::config::{Config, Options};
    ///
    /// let e = Config::load(None, &Options::default()).unwrap_err();
    /// assert!(e.to_string().contains(r#"key "fleet" (flag --fleet) is required"#), "{e}");
    /// ```
    pub fn load(file: Option<&Path>, flags: &Options) -> Result<Config, AgentError> {
        let file_table = match file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let mut flag_table = flags.table()?;
        // a plain `bool` flag left false was not given
        flag_table.retain(|_, v| !matches!(v, toml::Value::Boolean(false)));
        let from_file = file_table.keys().cloned().collect();
        let from_flags = flag_table.keys().cloned().collect();
        let mut merged = file_table;
        merged.extend(flag_table);
        let options: Options = merged
            .try_into()
            .map_err(|e| AgentError::Config(format!("settings: {e}")))?;
        let config = Config {
            options: with_defaults(options),
            file: file.map(Path::to_path_buf),
            flags: flags.clone(),
            from_flags,
            from_file,
        };
        config.validate()?;
        Ok(config)
    }

    /// The effective settings (defaults filled).
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// let config = Config::load(None, &flags)?;
    /// assert_eq!(config.options().etcd, ["http://127.0.0.1:2379"]);
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The config file, if one was given.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// assert!(Config::load(None, &flags)?.file().is_none());
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The effective settings as a TOML file would say them (what `check-config` prints).
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// let text = Config::load(None, &flags)?.to_toml();
    /// assert!(text.contains("host = \"h1\""), "{text}");
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.options).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The encapsulation the settings describe.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// let config = Config::load(None, &flags)?;
    /// assert_eq!(config.encap(), lwtun::peer::Encap::Udp { port: 6081 });
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn encap(&self) -> Encap {
        let o = &self.options;
        match o.encap.unwrap_or(EncapKind::Udp) {
            EncapKind::Udp => Encap::Udp {
                port: o.udp_port.unwrap_or(DEFAULT_UDP_PORT),
            },
            EncapKind::Gre => Encap::Gre {
                key: o.gre_key,
                checksum: false,
            },
            EncapKind::Ipip => Encap::Ipip,
        }
    }

    /// Where `key`'s value came from, as an error names it: `config FILE: key "k"`, or
    /// `flag --k`, or `key "k" (flag --k)` when neither gave it.
    fn origin(&self, key: &str) -> String {
        if self.from_flags.contains(key) {
            return format!("flag {}", flag_of(key));
        }
        match &self.file {
            Some(f) if self.from_file.contains(key) => {
                format!("config {}: key \"{key}\"", f.display())
            }
            _ => format!("key \"{key}\" (flag {})", flag_of(key)),
        }
    }

    fn bad(&self, key: &str, why: impl std::fmt::Display) -> AgentError {
        AgentError::Config(format!("{}: {why}", self.origin(key)))
    }

    fn validate(&self) -> Result<(), AgentError> {
        let o = &self.options;
        let required: [(&str, bool); 6] = [
            ("fleet", o.fleet.is_none()),
            ("host", o.host.is_none()),
            ("endpoint", o.endpoint.is_empty()),
            ("device", o.device.is_none()),
            ("steer", o.steer.is_empty()),
            ("sources", o.sources.is_empty()),
        ];
        for (key, missing) in required {
            if missing {
                let whence = match &self.file {
                    Some(f) => format!(" (none in config {})", f.display()),
                    None => String::new(),
                };
                return Err(AgentError::Config(format!(
                    "key \"{key}\" (flag {}) is required{whence}",
                    flag_of(key)
                )));
            }
        }
        match o.endpoint.as_slice() {
            [] | [_] => {}
            [a, b] if a.is_ipv4() != b.is_ipv4() => {}
            list => {
                return Err(self.bad(
                    "endpoint",
                    format!(
                        "{}: give one address, or one IPv4 and one IPv6",
                        list.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ))
            }
        }
        if let Some(host) = &o.host {
            layout::check_name("host", host).map_err(|e| self.bad("host", e))?;
        }
        if let Some(fleet) = &o.fleet {
            layout::check_name("fleet", fleet).map_err(|e| self.bad("fleet", e))?;
        }
        if let Some(ttl) = o.lease_ttl {
            if ttl < 1 {
                return Err(self.bad("lease_ttl", "must be at least 1 second"));
            }
        }
        if o.capacity == Some(0) {
            return Err(self.bad("capacity", "must be at least 1 peer"));
        }
        if o.udp_port == Some(0) {
            return Err(self.bad("udp_port", "must be a port from 1 to 65535"));
        }
        if o.gre_key.is_some() && o.encap != Some(EncapKind::Gre) {
            return Err(self.bad("gre_key", "only with encap = \"gre\""));
        }
        for url in &o.etcd {
            let scheme_ok = match url.split_once("://") {
                Some((scheme, rest)) => ["http", "https"].contains(&scheme) && !rest.is_empty(),
                None => !url.trim().is_empty(),
            };
            if !scheme_ok {
                return Err(self.bad(
                    "etcd",
                    format!("{url:?}: an URL such as \"http://10.0.0.9:2379\""),
                ));
            }
        }
        if let Some(every) = &o.reconcile_interval {
            crate::repair::parse_interval(every)
                .map_err(|why| self.bad("reconcile_interval", why))?;
        }
        if let Some(level) = &o.log_level {
            // A bare word is a target in RUST_LOG's syntax ("all levels of target verbose"):
            // here it is more likely a mistyped level, so it must be one.
            const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
            for directive in level.split(',').map(str::trim) {
                if !directive.contains(['=', '[', ':'])
                    && !directive.is_empty()
                    && !LEVELS.contains(&directive.to_ascii_lowercase().as_str())
                {
                    return Err(self.bad(
                        "log_level",
                        format!(
                            "{directive:?} is not a level: one of {} (or TARGET=LEVEL)",
                            LEVELS.join(", ")
                        ),
                    ));
                }
            }
            tracing_subscriber::EnvFilter::try_new(level).map_err(|e| {
                self.bad(
                    "log_level",
                    format!("{level:?}: {e} (a level: error, warn, info, debug, trace)"),
                )
            })?;
        }
        Ok(())
    }

    /// Reads the file again (the flags still over it): the keys in [`RELOADABLE`] take their
    /// new values; every other key that changed keeps its old value and is named in the
    /// second result, to be logged as refused.
    ///
    /// # Errors
    ///
    /// As [`Config::load`]: an invalid file changes nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// let config = Config::load(None, &flags)?;
    /// let (same, refused) = config.reload()?;
    /// assert!(refused.is_empty());
    /// assert_eq!(same.options(), config.options());
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn reload(&self) -> Result<(Config, Vec<String>), AgentError> {
        let new = Config::load(self.file.as_deref(), &self.flags)?;
        let old_table = self.options.table()?;
        let new_table = new.options.table()?;
        let keys: BTreeSet<&String> = old_table.keys().chain(new_table.keys()).collect();
        let mut kept = new_table.clone();
        let mut refused = Vec::new();
        for key in keys {
            if old_table.get(key) == new_table.get(key) || RELOADABLE.contains(&key.as_str()) {
                continue;
            }
            refused.push(key.clone());
            match old_table.get(key) {
                Some(v) => kept.insert(key.clone(), v.clone()),
                None => kept.remove(key),
            };
        }
        let options: Options = kept
            .try_into()
            .map_err(|e| AgentError::Config(format!("settings: {e}")))?;
        Ok((Config { options, ..new }, refused))
    }

    /// The value of `key` in the effective settings, as TOML says it, or `(unset)` (for the
    /// messages that refuse a change).
    ///
    /// # Examples
    ///
    /// ```
    /// # use lwtun_agent::config::{Config, Options};
    /// # let flags = Options { fleet: Some("f".into()), host: Some("h1".into()),
    /// #     endpoint: vec!["10.99.0.1".parse().unwrap()], device: Some("eth0".into()),
    /// #     steer: vec!["10.192.0.0/10".parse().unwrap()], sources: vec!["10.200.1.1".parse().unwrap()],
    /// #     ..Options::default() };
    /// let config = Config::load(None, &flags)?;
    /// assert_eq!(config.value_of("host"), "\"h1\"");
    /// assert_eq!(config.value_of("netns"), "(unset)");
    /// # Ok::<(), lwtun_agent::AgentError>(())
    /// ```
    pub fn value_of(&self, key: &str) -> String {
        self.options
            .table()
            .ok()
            .and_then(|t| t.get(key).map(|v| v.to_string()))
            .unwrap_or_else(|| "(unset)".into())
    }
}

/// `o` with every defaulted key set.
fn with_defaults(mut o: Options) -> Options {
    if o.etcd.is_empty() {
        o.etcd = vec![DEFAULT_ETCD.to_string()];
    }
    o.root
        .get_or_insert_with(|| layout::DEFAULT_ROOT.to_string());
    o.encap.get_or_insert(EncapKind::Udp);
    if o.encap == Some(EncapKind::Udp) {
        o.udp_port.get_or_insert(DEFAULT_UDP_PORT);
    }
    o.lease_ttl.get_or_insert(DEFAULT_LEASE_TTL);
    o.capacity.get_or_insert(DEFAULT_CAPACITY);
    o.reconcile_interval
        .get_or_insert_with(|| DEFAULT_RECONCILE_INTERVAL.to_string());
    o
}

/// The file's table, each key checked alone so that an error names it.
fn read_file(path: &Path) -> Result<toml::Table, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::Io {
        op: format!("read config {}", path.display()),
        source: e,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| format!(" line {}", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        AgentError::Config(format!(
            "config {}:{line}: not TOML: {}",
            path.display(),
            e.message().trim()
        ))
    })?;
    for (key, value) in &table {
        let mut alone = toml::Table::new();
        alone.insert(key.clone(), value.clone());
        if let Err(e) = alone.try_into::<Options>() {
            let why = e.message().trim().to_string();
            let why = match why.split_once("expected one of ") {
                Some((_, known)) if why.starts_with("unknown field") => {
                    format!("unknown key; the keys are {}", known.replace('`', ""))
                }
                _ => why,
            };
            return Err(AgentError::Config(format!(
                "config {}: key \"{key}\": {why}",
                path.display()
            )));
        }
    }
    Ok(table)
}
