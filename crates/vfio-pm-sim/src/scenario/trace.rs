//! The outcome trace of a scenario run and the side-by-side diff.

use std::fmt;

/// What one step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceLine {
    /// The step's line in the scenario.
    pub line: usize,
    /// The step text.
    pub step: String,
    /// `ok`, `ok=VALUE`, an errno name, or `no-device` (no open step yet).
    pub result: String,
    /// Every named eventfd's counter, read (and reset) after the step.
    pub eventfds: Vec<(String, u64)>,
    /// `power_state runtime_status` after settling; `unsettled` after a `nosettle` step;
    /// `-` when no device was ever opened.
    pub power: String,
}

impl TraceLine {
    /// Everything but the step: result, eventfds, power.
    pub fn outcome(&self) -> String {
        let efds: Vec<String> = self
            .eventfds
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let efds = if efds.is_empty() {
            "-".to_string()
        } else {
            efds.join(" ")
        };
        format!("{} {} | {}", self.result, efds, self.power)
    }
}

impl fmt::Display for TraceLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>3} {:<36} => {}",
            self.line,
            self.step,
            self.outcome()
        )
    }
}

/// A trace line that does not parse (see [`TraceLine::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed trace line {text:?}: {reason}")]
pub struct TraceParseError {
    /// The text that was given.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl TraceLine {
    /// Parses the [`Display`](fmt::Display) form back (`  3 feature SET|ENTRY  => ok A=0 | D0 active`),
    /// e.g. a line a guest printed on its console. Never panics.
    pub fn parse(text: &str) -> Result<TraceLine, TraceParseError> {
        let err = |reason| TraceParseError {
            text: text.to_string(),
            reason,
        };
        let t = text.trim();
        let (num, rest) = t.split_once(' ').ok_or_else(|| err("no step"))?;
        let line = num.parse().map_err(|_| err("no line number"))?;
        let (step, outcome) = rest.split_once(" => ").ok_or_else(|| err("no ` => `"))?;
        let (left, power) = outcome
            .rsplit_once(" | ")
            .ok_or_else(|| err("no ` | ` before the power state"))?;
        let mut words = left.split_whitespace();
        let result = words.next().ok_or_else(|| err("no result"))?.to_string();
        let mut eventfds = Vec::new();
        for w in words {
            if w == "-" && eventfds.is_empty() {
                continue;
            }
            let (name, value) = w.split_once('=').ok_or_else(|| err("eventfd not NAME=N"))?;
            let value = value
                .parse()
                .map_err(|_| err("eventfd count not a number"))?;
            eventfds.push((name.to_string(), value));
        }
        let power = power.trim();
        if power.is_empty() {
            return Err(err("empty power state"));
        }
        // A power state is words like `D3cold suspended`; a `|` in it would move the split point
        // when the line is printed and read again.
        if power.contains('|') {
            return Err(err("`|` in the power state"));
        }
        Ok(TraceLine {
            line,
            step: step.trim().to_string(),
            result,
            eventfds,
            power: power.to_string(),
        })
    }
}

/// The outcome of a scenario run: deterministic plain text, one line per step. Two backends
/// agree when their traces are equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// The scenario's name.
    pub scenario: String,
    /// One line per step.
    pub lines: Vec<TraceLine>,
}

impl Trace {
    /// The index of the first line that differs (or the length of the shorter trace when one
    /// is a prefix of the other); None when equal.
    pub fn first_mismatch(&self, other: &Trace) -> Option<usize> {
        let n = self.lines.len().max(other.lines.len());
        (0..n).find(|&i| self.lines.get(i) != other.lines.get(i))
    }
}

impl Trace {
    /// Rebuilds a trace from its printed lines (see [`TraceLine::parse`]).
    pub fn parse_lines<'a>(
        scenario: &str,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Trace, TraceParseError> {
        Ok(Trace {
            scenario: scenario.to_string(),
            lines: lines
                .into_iter()
                .map(TraceLine::parse)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl fmt::Display for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {}", self.scenario)?;
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// Prints two traces side by side, marking each differing line with `!` (equal lines with a
/// space), under the column titles `left` and `right` (e.g. `model`, `kernel`).
pub fn diff(left: &Trace, right: &Trace, left_title: &str, right_title: &str) -> String {
    let n = left.lines.len().max(right.lines.len());
    let outcome = |t: &Trace, i: usize| {
        t.lines
            .get(i)
            .map(TraceLine::outcome)
            .unwrap_or_else(|| "(missing)".into())
    };
    let rows: Vec<(bool, String, String, String)> = (0..n)
        .map(|i| {
            let step = left
                .lines
                .get(i)
                .or_else(|| right.lines.get(i))
                .map(|l| format!("{:>3} {}", l.line, l.step))
                .unwrap_or_default();
            let same = left.lines.get(i) == right.lines.get(i);
            (same, step, outcome(left, i), outcome(right, i))
        })
        .collect();
    let sw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    let lw = rows
        .iter()
        .map(|r| r.2.len())
        .max()
        .unwrap_or(0)
        .max(left_title.len());
    let mut out = format!("# {} vs {}\n", left.scenario, right.scenario);
    out += &format!("  {:<sw$}  {:<lw$}  {}\n", "step", left_title, right_title);
    for (same, step, l, r) in rows {
        let mark = if same { ' ' } else { '!' };
        out += &format!("{mark} {step:<sw$}  {l:<lw$}  {r}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: &str, result: &str, efds: &[(&str, u64)], power: &str) -> TraceLine {
        TraceLine {
            line: 7,
            step: step.into(),
            result: result.into(),
            eventfds: efds.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
            power: power.into(),
        }
    }

    #[test]
    fn printed_lines_parse_back() {
        for l in [
            line(
                "feature SET|WAKEUP efd=A nosettle",
                "ok",
                &[("A", 0)],
                "unsettled",
            ),
            line("open", "ok", &[], "D0 active"),
            line(
                "pmcsr read",
                "ok=D3hot",
                &[("A", 1), ("B", 0)],
                "D3cold suspended",
            ),
            line("ioctl", "no-device", &[], "-"),
            line(&"x".repeat(50), "EINVAL", &[], "EBADF"),
        ] {
            assert_eq!(TraceLine::parse(&l.to_string()), Ok(l.clone()), "{l}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "open => ok - | D0 active",
            "  3 open ok - | D0 active",
            "  3 open => ok - D0 active",
            "  3 open =>  | D0 active",
            "  3 open => ok A | D0 active",
            "  3 open => ok A=x | D0 active",
            "  3 open => ok - |  ",
            "\u{0} => | ",
        ] {
            assert!(TraceLine::parse(bad).is_err(), "{bad:?}");
        }
        let t = Trace::parse_lines("s", ["  1 open => ok - | D0 active"]).unwrap();
        assert_eq!(t.lines.len(), 1);
        assert!(Trace::parse_lines("s", ["  1 open => ok - | D0 active", "junk"]).is_err());
    }
}
