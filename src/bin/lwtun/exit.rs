//! How the command ends: one exit code per [`ErrorKind`], an error as a sentence or (under `-j`)
//! as a JSON object on stderr, and a quiet end when the reader of stdout goes away
//! (`lwtun peer show --pin D | head -1`).

use std::any::Any;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Mutex;

use lwtun::{Error, ErrorKind};
use serde::Serialize;

/// The exit status table, printed by `lwtun --help`, in the man page and the README. The codes
/// are stable: a kind added later gets the next free number, never one of these.
pub(crate) const EXIT_CODES: &str = "\
Exit status (stable; under -j the error is also a JSON object on stderr):
  0   success (also when the reader of stdout stops early, as `| head -1` does)
  1   an error of a kind this table does not list yet (kind \"other\")
  2   usage: the command line was refused (kind \"usage\")
  3   not_found      the device, route, pin folder, map entry or namespace does not exist
  4   exists         it exists already, or a live process owns it (the message names its pid)
  5   permission     a capability is missing (run as root, or grant CAP_BPF/CAP_NET_ADMIN)
  6   unsupported    this kernel lacks the feature (the message names it and the version)
  7   invalid_input  the input was refused, by lwtun or by the kernel
  8   kernel         the kernel refused for another reason (see errno and its words)
  9   io             a file, socket or thread failed outside netlink
  10  verifier       the kernel's verifier refused a BPF program (its last lines follow)
JSON error (-j, on stderr): {\"error\": {kind, exit_code, op, object, message, errno, kernel,
                 hint, libbpf}}: kind is a name above; object, errno, kernel (the kernel's
                 extended ack) and hint are null when absent; message is the whole sentence;
                 libbpf lists what libbpf warned of (printed after a kernel or io error).";

/// The stable name and exit code of an error kind.
pub(crate) fn kind_code(kind: ErrorKind) -> (&'static str, u8) {
    match kind {
        ErrorKind::NotFound => ("not_found", 3),
        ErrorKind::Exists => ("exists", 4),
        ErrorKind::Permission => ("permission", 5),
        ErrorKind::Unsupported => ("unsupported", 6),
        ErrorKind::InvalidInput => ("invalid_input", 7),
        ErrorKind::Kernel => ("kernel", 8),
        ErrorKind::Io => ("io", 9),
        ErrorKind::Verifier => ("verifier", 10),
        _ => ("other", 1),
    }
}

/// The exit code of a refused command line (as clap exits).
pub(crate) const USAGE: u8 = 2;

/// An error as `-j` prints it: `{"error": {...}}`.
#[derive(Serialize)]
struct JsonError<'a> {
    error: JsonErrorBody<'a>,
}

#[derive(Serialize)]
struct JsonErrorBody<'a> {
    kind: &'static str,
    exit_code: u8,
    op: &'a str,
    object: Option<&'a str>,
    message: String,
    errno: Option<i32>,
    kernel: Option<&'a str>,
    hint: Option<String>,
    libbpf: Vec<String>,
}

/// What libbpf warned of during this run, newest last (at most [`LIBBPF_KEPT`] lines).
static LIBBPF_SAID: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many of libbpf's warnings a run keeps.
const LIBBPF_KEPT: usize = 3;

fn record_libbpf(_level: libbpf_rs::PrintLevel, message: String) {
    let line = message.trim();
    let line = line.strip_prefix("libbpf: ").unwrap_or(line).to_string();
    if let Ok(mut said) = LIBBPF_SAID.lock() {
        said.push(line);
        let excess = said.len().saturating_sub(LIBBPF_KEPT);
        said.drain(..excess);
    }
}

/// Keeps libbpf's own warnings off the terminal: they are kept and reported with the error
/// they led to (in its JSON; in text after a `kernel` or `io` error, where lwtun's message has
/// only the kernel's answer), and dropped when the command succeeds.
pub(crate) fn keep_libbpf_quiet() {
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Warn, record_libbpf)));
}

fn libbpf_said() -> Vec<String> {
    LIBBPF_SAID.lock().map(|s| s.clone()).unwrap_or_default()
}

/// Puts `-n NAME` into the `ip` commands a message suggests (`` `ip route show D` `` becomes
/// `` `ip -n NAME route show D` ``) when the command acts in the namespace NAME: the library
/// words its advice for the namespace it was given, which the shell user named with `-n`.
fn in_netns(text: &str, netns: Option<&str>) -> String {
    let Some(name) = netns else {
        return text.to_string();
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("`ip ") {
        out.push_str(&rest[..at + 4]);
        rest = &rest[at + 4..];
        if !rest.starts_with("-n ") {
            out.push_str(&format!("-n {name} "));
        }
    }
    out.push_str(rest);
    out
}

/// Reports `e` on stderr (a sentence, or JSON under `-j`) and returns the exit code of its kind;
/// a write to a closed stdout ends quietly with success. `netns` is the name given with `-n`.
pub(crate) fn fail(e: &Error, json: bool, netns: Option<&str>) -> ExitCode {
    if e.operation() == WRITE_STDOUT && e.errno() == Some(libc::EPIPE) {
        return ExitCode::SUCCESS;
    }
    let (kind, code) = kind_code(e.kind());
    if json {
        let body = JsonError {
            error: JsonErrorBody {
                kind,
                exit_code: code,
                op: e.operation(),
                object: e.object(),
                message: in_netns(&e.to_string(), netns),
                errno: e.errno(),
                kernel: e.ext_ack(),
                hint: e.hint().map(|h| in_netns(h, netns)),
                libbpf: libbpf_said(),
            },
        };
        let text = serde_json::to_string(&body).unwrap_or_else(|_| e.to_string());
        let _ = writeln!(std::io::stderr(), "{text}");
    } else {
        let mut text = format!("lwtun: {}\n", in_netns(&e.to_string(), netns));
        // Where lwtun's error diagnoses the failure (a missing capability, feature, object,
        // bad input) libbpf's guesses only mislead ("make sure your kernel supports BPF");
        // they help where the kernel's answer is all there is.
        if matches!(kind, "kernel" | "io" | "other") {
            for line in libbpf_said() {
                text.push_str(&format!("  libbpf: {line}\n"));
            }
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
    ExitCode::from(code)
}

/// Reports a refused command line: clap's own text, or under `-j` a JSON error of kind `usage`.
/// Help and version requests print as clap prints them.
pub(crate) fn usage(e: clap::Error, json: bool) -> ExitCode {
    if !json || !e.use_stderr() {
        e.print().ok();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    let text = e.render().to_string();
    let message = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string();
    let body = JsonError {
        error: JsonErrorBody {
            kind: "usage",
            exit_code: USAGE,
            op: "parse the command line",
            object: None,
            message,
            errno: None,
            kernel: None,
            hint: Some("see `lwtun --help`".to_string()),
            libbpf: Vec::new(),
        },
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    let _ = writeln!(std::io::stderr(), "{body}");
    ExitCode::from(USAGE)
}

/// Whether the raw arguments ask for JSON (`-j`, `--json`, `-p`, `--pretty`, or a cluster of
/// short flags holding one), for reporting errors before clap has parsed them.
pub(crate) fn wants_json(args: &[std::ffi::OsString]) -> bool {
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .take_while(|a| *a != "--")
        .any(|a| match a.strip_prefix("--") {
            Some(long) => long == "json" || long == "pretty",
            None => {
                a.len() > 1
                    && a.starts_with('-')
                    && a[1..].chars().all(|c| c.is_ascii_alphabetic())
                    && a[1..].contains(['j', 'p'])
            }
        })
}

/// Whether a panic's payload is a failed write to a closed stdout or stderr (`println!` panics
/// with "failed printing to stdout: Broken pipe"): the reader went away, nothing is wrong.
pub(crate) fn is_broken_pipe(payload: &(dyn Any + Send)) -> bool {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("");
    text.contains("Broken pipe") || text.contains("BrokenPipe")
}

/// Makes every write to a closed stdout end the command quietly: the panic `println!` raises
/// on `EPIPE` prints nothing here, unwinds (so what the command attached is detached by its
/// handles' drops, as on Ctrl-C) and [`crate::main`] turns it into success. Other panics
/// print as before.
pub(crate) fn quiet_broken_pipes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe(info.payload()) {
            default(info);
        }
    }));
}

/// The operation of a failed write to stdout, which [`fail`] recognises.
const WRITE_STDOUT: &str = "write to standard output";

/// Writes `text` to stdout; a closed stdout is an [`ErrorKind::Io`] error with errno `EPIPE`,
/// which [`fail`] ends quietly.
pub(crate) fn print(text: &str) -> lwtun::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::io(WRITE_STDOUT, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code() {
        let kinds = [
            ErrorKind::NotFound,
            ErrorKind::Exists,
            ErrorKind::Permission,
            ErrorKind::Unsupported,
            ErrorKind::InvalidInput,
            ErrorKind::Kernel,
            ErrorKind::Io,
            ErrorKind::Verifier,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| kind_code(*k).1).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
        for k in kinds {
            let (name, code) = kind_code(k);
            assert!(code > USAGE, "{name}");
            assert!(
                EXIT_CODES.contains(&format!("  {code:<4}{name}")),
                "{name} = {code} is in the documented table"
            );
        }
    }

    #[test]
    fn json_is_asked_for_by_any_spelling() {
        let args = |a: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("lwtun")
                .chain(a.iter().copied())
                .map(Into::into)
                .collect()
        };
        assert!(wants_json(&args(&["-j", "peer"])));
        assert!(wants_json(&args(&["peer", "show", "--json"])));
        assert!(wants_json(&args(&["-jn", "x"])));
        assert!(wants_json(&args(&["--pretty"])));
        assert!(!wants_json(&args(&["-n", "jp", "peer"])));
        assert!(!wants_json(&args(&["peer", "--", "-j"])));
        assert!(!wants_json(&args(&["peer", "10.0.0.0/8"])));
    }

    #[test]
    fn libbpf_warnings_are_kept_for_the_error_not_printed() {
        keep_libbpf_quiet();
        let bytes = b"not an ELF object".to_vec();
        let open = libbpf_rs::ObjectBuilder::default().open_memory(&bytes);
        assert!(open.is_err());
        let said = libbpf_said();
        assert!(!said.is_empty(), "libbpf warned of the bad object");
        assert!(said.len() <= LIBBPF_KEPT, "{said:?}");
        assert!(said.iter().all(|l| !l.starts_with("libbpf: ")), "{said:?}");
    }

    #[test]
    fn suggested_ip_commands_run_where_the_command_did() {
        let text = "there already (`ip route show 10.0.0.0/8`); `ip -n lab link` lists them";
        assert_eq!(
            in_netns(text, Some("lab")),
            "there already (`ip -n lab route show 10.0.0.0/8`); `ip -n lab link` lists them"
        );
        assert_eq!(in_netns(text, None), text);
    }

    #[test]
    fn broken_pipe_panics_are_recognised() {
        let p: Box<dyn Any + Send> =
            Box::new("failed printing to stdout: Broken pipe (os error 32)".to_string());
        assert!(is_broken_pipe(p.as_ref()));
        let p: Box<dyn Any + Send> = Box::new("index out of bounds");
        assert!(!is_broken_pipe(p.as_ref()));
    }
}
