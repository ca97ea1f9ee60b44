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
