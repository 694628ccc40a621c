//! What the agent says when etcd fails: one line per failure that names the endpoint and
//! what to check ("etcd at 127.0.0.1:2379 refused the connection: is it running?"), never
//! the transport's debug dump, and the same line repeated at most once per [`QUIET`] with
//! how often it happened meanwhile ("… (repeated 12 times in 10 s)"), so a down etcd reads as one line, not six in three
//! seconds.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use lwtun_agent::report::Reporter;
//!
//! let mut r = Reporter::default();
//! let t = Instant::now();
//! let line = "etcd at 127.0.0.1:2379 refused the connection: is it running?";
//! assert!(r.say(line, t).is_some());
//! assert!(r.say(line, t + Duration::from_secs(1)).is_none(), "a repeat within QUIET");
//! let later = r.say(line, t + Duration::from_secs(11)).unwrap();
//! assert!(later.ends_with("(repeated 1 time in 11 s)"), "{later}");
//! ```

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, Instant};

use crate::AgentError;

/// How long the same line stays quiet after it was printed.
pub const QUIET: Duration = Duration::from_secs(10);

/// Rate-limits repeated lines: see the module docs.
#[derive(Debug, Default)]
pub struct Reporter {
    /// The last line printed, when, and how many repeats were held back since.
    last: Option<(String, Instant, u32)>,
}

impl Reporter {
    /// The text to print for `line` at `now`, or `None` when it repeats the last printed line
    /// within [`QUIET`]. A repeat after the quiet time says how many were held back.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Instant;
    /// use lwtun_agent::report::Reporter;
    ///
    /// let mut r = Reporter::default();
    /// let now = Instant::now();
    /// assert_eq!(r.say("a", now).as_deref(), Some("a"));
    /// assert_eq!(r.say("b", now).as_deref(), Some("b"), "a new line is said at once");
    /// ```
    pub fn say(&mut self, line: &str, now: Instant) -> Option<String> {
        if let Some((last, at, held)) = &mut self.last {
            if last == line {
                if now.duration_since(*at) < QUIET {
                    *held += 1;
                    return None;
                }
                let text = match *held {
                    0 => line.to_string(),
                    n => format!(
                        "{line} (repeated {n} {} in {} s)",
                        if n == 1 { "time" } else { "times" },
                        now.duration_since(*at).as_secs()
                    ),
                };
                *at = now;
                *held = 0;
                return Some(text);
            }
        }
        self.last = Some((line.to_string(), now, 0));
        Some(line.to_string())
    }
}

/// `host:port` of an etcd URL (`http://127.0.0.1:2379` → `127.0.0.1:2379`).
fn endpoint(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.trim_end_matches('/')
}

/// The endpoints as a message names them: `127.0.0.1:2379`, or `a:2379, b:2379`.
pub fn endpoints(urls: &[String]) -> String {
    let names: Vec<&str> = urls.iter().map(|u| endpoint(u)).collect();
    names.join(", ")
}

/// Every error in `e`'s source chain, `e` first.
fn chain<'a>(e: &'a (dyn StdError + 'static)) -> Vec<&'a (dyn StdError + 'static)> {
    let mut out = vec![e];
    let mut at = e;
    while let Some(next) = at.source() {
        out.push(next);
        at = next;
        if out.len() > 16 {
            break;
        }
    }
    out
}

/// What went wrong talking to etcd, in one line: what happened at which endpoint and what to
/// check.
///
/// # Examples
///
/// ```
/// use lwtun_agent::report::describe;
/// use lwtun_agent::AgentError;
///
/// let e = AgentError::Timeout(std::time::Duration::from_secs(5));
/// let line = describe(&e, &["http://10.0.0.9:2379".to_string()]);
/// assert_eq!(line, "etcd at 10.0.0.9:2379 did not answer within 5 s: is it running, and reachable from here?");
/// ```
pub fn describe(e: &AgentError, urls: &[String]) -> String {
    let at = endpoints(urls);
    match e {
        AgentError::Etcd(e) => describe_etcd(e, &at),
        AgentError::Timeout(d) => format!(
            "etcd at {at} did not answer within {} s: is it running, and reachable from here?",
            d.as_secs_f64()
        ),
        other => one_line(&other.to_string()),
    }
}

/// [`describe`] for an etcd client error.
fn describe_etcd(e: &etcd_client::Error, at: &str) -> String {
    let mut texts = Vec::new();
    let mut io_kind = None;
    let root: &(dyn StdError + 'static) = match e {
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::GRpcStatus(s) => {
            texts.push(s.message().to_string());
            s
        }
        etcd_client::Error::IoError(i) => i,
        other => other,
    };
    for link in chain(root) {
        if let Some(i) = link.downcast_ref::<io::Error>() {
            io_kind.get_or_insert(i.kind());
        }
        texts.push(link.to_string());
    }
    let said = texts.join(" / ").to_lowercase();
    let refused =
        io_kind == Some(io::ErrorKind::ConnectionRefused) || said.contains("connection refused");
    let timed_out = io_kind == Some(io::ErrorKind::TimedOut)
        || said.contains("timed out")
        || said.contains("deadline");
    if refused {
        return format!("etcd at {at} refused the connection: is it running?");
    }
    if timed_out {
        return format!(
            "etcd at {at} did not answer in time: is it running, and reachable from here?"
        );
    }
    // A status with a source is the client's own: it could not connect (DNS, routing, TLS).
    // One without is etcd's answer.
    if let etcd_client::Error::GRpcStatus(s) = e {
        if s.source().is_none() {
            let code = format!("{:?}", s.code());
            let hint = match code.as_str() {
                "Unauthenticated" | "PermissionDenied" => {
                    "check the agent's etcd credentials and role"
                }
                "Unavailable" => "is the cluster up, with a leader elected?",
                "ResourceExhausted" => "etcd refused the size: is its quota exceeded?",
                _ => "see etcd's log",
            };
            return one_line(&format!(
                "etcd at {at} refused the request ({code}: {}): {hint}",
                s.message()
            ));
        }
    }
    let innermost = chain(root)
        .last()
        .map(|e| e.to_string())
        .unwrap_or_default();
    one_line(&format!(
        "cannot reach etcd at {at} ({innermost}): check --etcd and the route to it"
    ))
}

/// The root of an etcd client error: the transport's, the status', the I/O error's.
fn root(e: &etcd_client::Error) -> &(dyn StdError + 'static) {
    match e {
        etcd_client::Error::TransportError(t) => t,
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::IoError(i) => i,
        other => other,
    }
}

/// Every message in `e` (a gRPC status' message, then each error of its source chain), joined
/// by ` / `, for telling failures apart.
pub(crate) fn error_text(e: &etcd_client::Error) -> String {
    let mut texts = Vec::new();
    if let etcd_client::Error::GRpcStatus(s) = e {
        texts.push(s.message().to_string());
    }
    texts.extend(chain(root(e)).iter().map(|l| l.to_string()));
    one_line(&texts.join(" / "))
}

/// The innermost error of `e`'s source chain (the TLS library's or the server's own words).
pub(crate) fn innermost(e: &etcd_client::Error) -> String {
    let text = match e {
        etcd_client::Error::GRpcStatus(s) if s.source().is_none() => s.message().to_string(),
        _ => chain(root(e))
            .last()
            .map(|e| e.to_string())
            .unwrap_or_default(),
    };
    one_line(&text)
}

/// `text` on one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_line_is_held_back_and_counted() {
        let mut r = Reporter::default();
        let t = Instant::now();
        let mut said = Vec::new();
        // six failures in three seconds, then more over 25 s
        for ms in (0..3000).step_by(500).chain((3000..25_000).step_by(2000)) {
            said.extend(r.say("x", t + Duration::from_millis(ms)));
        }
        assert_eq!(said.len(), 3, "{said:?}");
        assert_eq!(said[0], "x");
        assert!(
            said[1].starts_with("x (repeated ") && said[1].contains(" times in "),
            "{said:?}"
        );
    }

    #[test]
    fn endpoints_are_named_without_their_scheme() {
        assert_eq!(
            endpoints(&["http://127.0.0.1:2379".into(), "https://b:2379/".into()]),
            "127.0.0.1:2379, b:2379"
        );
    }

    #[test]
    fn a_refused_connection_says_so_with_the_endpoint() {
        // A port nobody listens on: bind one, note it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The client connects lazily: the first request meets the closed port.
        let e = rt
            .block_on(async {
                let mut client = etcd_client::Client::connect([url.clone()], None).await?;
                client.get("k", None).await
            })
            .expect_err("nothing listens there");
        let raw = e.to_string();
        let line = describe(&AgentError::Etcd(e), &[url]);
        assert_eq!(
            line,
            format!("etcd at 127.0.0.1:{port} refused the connection: is it running?"),
            "from {raw}"
        );
    }

    #[test]
    fn a_name_that_does_not_resolve_is_a_connection_failure_not_etcds_answer() {
        // .invalid never resolves (RFC 6761).
        let url = "http://nosuchhost.invalid:2379".to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(async {
                let options =
                    etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
                let mut client = etcd_client::Client::connect([url.clone()], Some(options)).await?;
                client.get("k", None).await
            })
            .expect_err("the name does not resolve");
        let raw = e.to_string();
        let line = describe(&AgentError::Etcd(e), &[url]);
        assert!(
            line.starts_with("cannot reach etcd at nosuchhost.invalid:2379 (")
                && line.ends_with("): check --etcd and the route to it")
                && !line.contains("tonic"),
            "{line} from {raw}"
        );
    }
}
