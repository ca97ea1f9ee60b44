//! Parser of the guest's console protocol (see the `vfio-pm-guest` crate):
//! `VFIOPM <KIND> <rest>` lines, found anywhere in a console line so that kernel messages
//! printed before them on the same line do not hide them. Never panics: anything that starts
//! like a record but does not parse is kept as garbled.

use std::fmt;

/// The marker that starts every record.
pub const MARKER: &str = "VFIOPM ";

/// One check result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Check name (one token).
    pub name: String,
    /// PASS or FAIL.
    pub passed: bool,
    /// Free text.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {} {}", self.name, self.detail)
    }
}

/// One parsed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `INFO key value`.
    Info {
        /// Key.
        key: String,
        /// Value (may be empty).
        value: String,
    },
    /// `BEGIN phase`.
    Begin(String),
    /// `END phase`.
    End(String),
    /// `CHECK name PASS|FAIL detail`.
    Check(Check),
    /// `TRACE scenario line`.
    Trace {
        /// Scenario name.
        scenario: String,
        /// The trace line.
        line: String,
    },
    /// `DONE pass=N fail=M`.
    Done {
        /// Passed checks the guest counted.
        pass: u32,
        /// Failed checks the guest counted.
        fail: u32,
    },
    /// A well-formed record of a kind this parser does not know (kept for later consumers).
    Other {
        /// The kind word.
        kind: String,
        /// The rest of the line.
        rest: String,
    },
}

fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(' ') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    }
}

fn parse_done(rest: &str) -> Option<Record> {
    let mut pass = None;
    let mut fail = None;
    for w in rest.split_whitespace() {
        if let Some(v) = w.strip_prefix("pass=") {
            pass = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("fail=") {
            fail = v.parse().ok();
        } else {
            return None;
        }
    }
    Some(Record::Done {
        pass: pass?,
        fail: fail?,
    })
}

/// Outcome of looking at one console line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No marker: not ours.
    NotOurs,
    /// A record.
    Record(Record),
    /// The marker, but not a valid record (the text from the marker on).
    Garbled(String),
}

/// Parses one console line (without its newline; `\r` and control characters are ignored).
pub fn parse_line(raw: &str) -> Parsed {
    let clean: String = raw.chars().filter(|c| !c.is_control()).collect();
    let Some(at) = clean.find(MARKER) else {
        return Parsed::NotOurs;
    };
    let text = clean[at + MARKER.len()..].trim_end();
    let garbled = || Parsed::Garbled(clean[at..].to_string());
    let (kind, rest) = split_word(text);
    let one_token = |s: &str| !s.is_empty() && !s.contains(' ');
    let rec = match kind {
        "INFO" => {
            let (key, value) = split_word(rest);
            if key.is_empty() {
                return garbled();
            }
            Record::Info {
                key: key.into(),
                value: value.into(),
            }
        }
        "BEGIN" if one_token(rest) => Record::Begin(rest.into()),
        "END" if one_token(rest) => Record::End(rest.into()),
        "CHECK" => {
            let (name, rest) = split_word(rest);
            let (verdict, detail) = split_word(rest);
            let passed = match verdict {
                "PASS" => true,
                "FAIL" => false,
                _ => return garbled(),
            };
            if name.is_empty() {
                return garbled();
            }
            Record::Check(Check {
                name: name.into(),
                passed,
                detail: detail.into(),
            })
        }
        "TRACE" => {
            let (scenario, line) = split_word(rest);
            if scenario.is_empty() {
                return garbled();
            }
            Record::Trace {
                scenario: scenario.into(),
                line: line.into(),
            }
        }
        "DONE" => match parse_done(rest) {
            Some(r) => r,
            None => return garbled(),
        },
        k if !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
            if matches!(k, "BEGIN" | "END") {
                return garbled();
            }
            Record::Other {
                kind: k.into(),
                rest: rest.into(),
            }
        }
        _ => return garbled(),
    };
    Parsed::Record(rec)
}

/// Everything the guest reported in one boot.
#[derive(Clone, Debug, Default)]
pub struct GuestReport {
    /// Records in console order.
    pub records: Vec<Record>,
    /// Lines with the marker that did not parse (console interleaving, truncation).
    pub garbled: Vec<String>,
}

impl GuestReport {
    /// Parses a whole console capture.
    pub fn parse(console: &str) -> Self {
        let mut r = Self::default();
        for line in console.lines() {
            match parse_line(line) {
                Parsed::NotOurs => {}
                Parsed::Record(rec) => r.records.push(rec),
                Parsed::Garbled(g) => r.garbled.push(g),
            }
        }
        r
    }

    /// All checks, in order.
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.records.iter().filter_map(|r| match r {
            Record::Check(c) => Some(c),
            _ => None,
        })
    }

    /// The `DONE` counts, if the guest got that far.
    pub fn done(&self) -> Option<(u32, u32)> {
        self.records.iter().rev().find_map(|r| match r {
            Record::Done { pass, fail } => Some((*pass, *fail)),
            _ => None,
        })
    }

    /// The first `INFO` value for `key`.
    pub fn info(&self, key: &str) -> Option<&str> {
        self.records.iter().find_map(|r| match r {
            Record::Info { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// The trace lines of one scenario, in order.
    pub fn trace(&self, scenario: &str) -> Vec<&str> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Trace { scenario: s, line } if s == scenario => Some(line.as_str()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_ignores_other_lines() {
        let console = "SeaBIOS (version 1.16)\r\n\
            [    1.234] vfio-pci 0000:00:05.0: enabling device\r\n\
            VFIOPM INFO kernel 6.1.0-56-amd64\r\n\
            VFIOPM BEGIN checks\r\n\
            VFIOPM CHECK open-d0-active PASS D0 active (want D0 active)\r\n\
            [    2.000] random: crng init doneVFIOPM CHECK entry-ok FAIL Err(EINVAL)\r\n\
            VFIOPM TRACE s1 step 1 enter\r\n\
            VFIOPM TRACE s1 step 2 exit\r\n\
            VFIOPM FUTURE_KIND something\r\n\
            VFIOPM END checks\r\n\
            VFIOPM DONE pass=1 fail=1\r\n";
        let r = GuestReport::parse(console);
        assert!(r.garbled.is_empty(), "{:?}", r.garbled);
        assert_eq!(r.info("kernel"), Some("6.1.0-56-amd64"));
        let checks: Vec<_> = r.checks().collect();
        assert_eq!(checks.len(), 2);
        assert!(checks[0].passed && !checks[1].passed);
        assert_eq!(checks[1].name, "entry-ok");
        assert_eq!(r.trace("s1"), ["step 1 enter", "step 2 exit"]);
        assert_eq!(r.done(), Some((1, 1)));
        assert!(r.records.contains(&Record::Other {
            kind: "FUTURE_KIND".into(),
            rest: "something".into()
        }));
    }

    #[test]
    fn malformed_records_are_garbled_not_panics() {
        for bad in [
            "VFIOPM ",
            "VFIOPM CHECK",
            "VFIOPM CHECK name PA[  3.1] ss",
            "VFIOPM DONE pass=x fail=0",
            "VFIOPM DONE pass=1",
            "VFIOPM BEGIN",
            "VFIOPM INFO",
            "VFIOPM lower case",
            "xxVFIOPM \u{0}\u{1b}[0m",
            "VFIOPM CHECK \u{fffd}\u{fffd} PASS",
        ] {
            match parse_line(bad) {
                Parsed::Garbled(_) => {}
                Parsed::Record(Record::Check(c)) if bad.contains('\u{fffd}') => assert!(c.passed),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
        assert_eq!(parse_line("no marker here"), Parsed::NotOurs);
        assert_eq!(GuestReport::parse("").done(), None);
    }
}
