//! `lwtun man`: manual pages made from the command-line definitions themselves (clap_mangen),
//! so a page can never describe a flag the command does not have.
//!
//! `lwtun man --out DIR` writes `lwtun.1` and one `lwtun-SUB[-SUB].1` per subcommand; without
//! `--out` the `lwtun.1` page goes to stdout (`lwtun man | man -l -`).

use std::path::{Path, PathBuf};

use clap::Command;
use clap_mangen::Man;
use lwtun::{Error, Result};

use crate::exit::EXIT_CODES;

/// The man page's own sections after the generated ones: exit status and the JSON fields.
fn extra_sections(json_fields: &str) -> String {
    let mut roff = String::new();
    for (title, text) in [("EXIT STATUS", EXIT_CODES), ("JSON OUTPUT", json_fields)] {
        roff.push_str(&format!(".SH \"{title}\"\n.nf\n"));
        for line in text.lines() {
            roff.push_str(&escape(line));
            roff.push('\n');
        }
        roff.push_str(".fi\n");
    }
    roff
}

/// Escapes a line of plain text for roff: backslashes, and a leading `.` or `'` that would
/// read as a request.
fn escape(line: &str) -> String {
    let line = line.replace('\\', "\\e");
    if line.starts_with('.') || line.starts_with('\'') {
        format!("\\&{line}")
    } else {
        line
    }
}

/// The top page, `lwtun.1`: clap_mangen's sections, then exit status and JSON output in place
/// of the `--help` epilogue that holds the same text.
fn top_page(cmd: &Command, json_fields: &str) -> Result<Vec<u8>> {
    let man = Man::new(cmd.clone().after_help(None::<&str>));
    let mut page = Vec::new();
    let io = |e| Error::io("render man page", e).with_object("lwtun.1");
    man.render(&mut page).map_err(io)?;
    page.extend_from_slice(extra_sections(json_fields).as_bytes());
    Ok(page)
}

/// Writes `lwtun.1` and a page for every subcommand, at every depth, into `dir`; returns the
/// files written.
pub(crate) fn write_pages(cmd: Command, dir: &Path, json_fields: &str) -> Result<Vec<PathBuf>> {
    let op = "write man pages";
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(op, e).with_object(dir.display().to_string()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    let top = dir.join("lwtun.1");
    std::fs::write(&top, top_page(&cmd, json_fields)?)
        .map_err(|e| Error::io(op, e).with_object(top.display().to_string()))?;
    written.push(top);
    fn sub_pages(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let man = Man::new(sub.clone());
            let path = dir.join(man.get_filename());
            man.generate_to(dir).map_err(|e| {
                Error::io("write man pages", e).with_object(path.display().to_string())
            })?;
            written.push(path);
            sub_pages(sub, dir, written)?;
        }
        Ok(())
    }
    sub_pages(&cmd, dir, &mut written)?;
    Ok(written)
}

/// The `lwtun.1` page, for stdout.
pub(crate) fn top(cmd: Command, json_fields: &str) -> Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    top_page(&cmd, json_fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roff_requests_in_text_are_escaped() {
        assert_eq!(escape(".SH x"), "\\&.SH x");
        assert_eq!(escape("a\\b"), "a\\eb");
        assert_eq!(escape("plain"), "plain");
    }
}
