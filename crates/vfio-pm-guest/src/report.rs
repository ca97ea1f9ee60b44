//! The console protocol between the guest program and the host harness.
//!
//! Every result is one line starting with `VFIOPM `, written with a single `write` so that it is
//! not split by this process (the kernel may still print around it; the host parser copes):
//!
//! ```text
//! VFIOPM INFO <key> <value...>
//! VFIOPM BEGIN <phase>
//! VFIOPM CHECK <name> PASS|FAIL <detail...>
//! VFIOPM TRACE <scenario> <line...>
//! VFIOPM END <phase>
//! VFIOPM DONE pass=<n> fail=<m>
//! ```
//!
//! Names and keys contain no whitespace; details and values are made single-line.

use std::fmt::Display;
use std::io::Write;

/// Prints protocol lines (on stdout, or into a buffer) and counts passed and failed checks.
#[derive(Debug, Default)]
pub struct Reporter {
    pass: u32,
    fail: u32,
    /// `Some` when lines are collected instead of printed.
    buffer: Option<std::cell::RefCell<Vec<String>>>,
}

/// Replaces whitespace in a name so that it stays one token.
fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_whitespace() { '_' } else { c })
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// Makes free text single-line.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

impl Reporter {
    /// A reporter with no results yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reporter that keeps its lines (see [`Reporter::lines`]) instead of printing them.
    pub fn buffered() -> Self {
        Self {
            buffer: Some(Default::default()),
            ..Self::default()
        }
    }

    /// The lines collected by a [`Reporter::buffered`] reporter.
    pub fn lines(&self) -> Vec<String> {
        self.buffer
            .as_ref()
            .map(|b| b.borrow().clone())
            .unwrap_or_default()
    }

    fn emit(&self, line: String) {
        if let Some(b) = &self.buffer {
            b.borrow_mut().push(line);
            return;
        }
        let mut out = std::io::stdout().lock();
        // One write for the whole line; a failed console write cannot be reported anywhere.
        let _ = out.write_all(format!("{line}\n").as_bytes());
        let _ = out.flush();
    }

    /// `VFIOPM INFO key value`.
    pub fn info(&self, key: &str, value: impl Display) {
        self.emit(format!(
            "VFIOPM INFO {} {}",
            token(key),
            one_line(&value.to_string())
        ));
    }

    /// `VFIOPM BEGIN phase`.
    pub fn begin(&self, phase: &str) {
        self.emit(format!("VFIOPM BEGIN {}", token(phase)));
    }

    /// `VFIOPM END phase`.
    pub fn end(&self, phase: &str) {
        self.emit(format!("VFIOPM END {}", token(phase)));
    }

    /// `VFIOPM TRACE scenario line` (for scenario phases whose traces the host compares).
    pub fn trace(&self, scenario: &str, line: impl Display) {
        self.emit(format!(
            "VFIOPM TRACE {} {}",
            token(scenario),
            one_line(&line.to_string())
        ));
    }

    /// Records one check; returns `ok` so callers can chain on it.
    pub fn check(&mut self, name: &str, ok: bool, detail: impl Display) -> bool {
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        self.emit(format!(
            "VFIOPM CHECK {} {} {}",
            token(name),
            if ok { "PASS" } else { "FAIL" },
            one_line(&detail.to_string())
        ));
        ok
    }

    /// Checks `got == want`, with both in the detail.
    pub fn expect_eq<T: PartialEq + std::fmt::Debug>(
        &mut self,
        name: &str,
        got: T,
        want: T,
    ) -> bool {
        let ok = got == want;
        self.check(name, ok, format!("got {got:?}, want {want:?}"))
    }

    /// Number of passed checks so far.
    pub fn passed(&self) -> u32 {
        self.pass
    }

    /// Number of failed checks so far.
    pub fn failed(&self) -> u32 {
        self.fail
    }

    /// `VFIOPM DONE pass=N fail=M`.
    pub fn done(&self) {
        self.emit(format!("VFIOPM DONE pass={} fail={}", self.pass, self.fail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_tokens_and_details_single_lines() {
        assert_eq!(token("a b\tc"), "a_b_c");
        assert_eq!(token(""), "-");
        assert_eq!(one_line("x\ny\r\nz"), "x y  z");
    }

    #[test]
    fn counts_pass_and_fail() {
        let mut r = Reporter::buffered();
        assert!(r.check("ok", true, "fine"));
        assert!(!r.expect_eq("bad", 1, 2));
        r.trace("s 1", "a\nb");
        r.done();
        assert_eq!((r.passed(), r.failed()), (1, 1));
        assert_eq!(
            r.lines(),
            [
                "VFIOPM CHECK ok PASS fine",
                "VFIOPM CHECK bad FAIL got 1, want 2",
                "VFIOPM TRACE s_1 a b",
                "VFIOPM DONE pass=1 fail=1",
            ]
        );
    }
}
