//! Model-vs-kernel conformance: the traces the guest's `scenarios` phase printed for one
//! kernel × platform boot, compared scenario by scenario with the traces of the model
//! (`vfio-pm-sim`) on the same platform and kernel version; and the conformance table
//! (`docs/conformance.md`, written by `cargo xtask conformance`).
//!
//! A scenario agrees when the kernel's trace equals the model's. For a `timing-sensitive`
//! scenario the kernel may equal any outcome the model allows when the asynchronous suspend
//! wins the race after some of its `nosettle` steps ([`vfio_pm_sim::model_outcomes`]); which
//! one it took is reported on the console, not in the table (it may change between boots).

use crate::console::{Check, GuestReport, Record};
use crate::harness::Platform;
use crate::kernels::KernelSeries;
use std::fmt::{self, Write as _};
use vfio_pm_sim::scenario::{self, diff, Scenario, Trace};
use vfio_pm_sim::KernelVersion;

/// The model's kernel version for a kernel release (`uname -r`): the newest version the model
/// knows that is not newer than the release (`vfio_pm_sim::KernelVersion::for_release`), so
/// Debian's newest kernel is judged by what the model has learnt up to it.
pub fn model_kernel(release: &str) -> KernelVersion {
    crate::kernels::release_version(release)
        .and_then(|(major, minor)| KernelVersion::for_release(major, minor))
        .unwrap_or(KernelVersion::V6_1)
}

/// The console key (`VFIOPM INFO <key> ...`) of the `disable_idle_d3` latch the guest's phase
/// `idle-d3-rebind` observed: `per-device` or `module-init`.
pub const LATCH_INFO: &str = "disable-idle-d3-latch";

/// The model's platform for a harness platform.
pub fn model_platform(p: Platform) -> vfio_pm_sim::Platform {
    match p {
        Platform::D3Hot => vfio_pm_sim::Platform::D3hot,
        Platform::D3Cold => vfio_pm_sim::Platform::D3cold,
    }
}

/// How one scenario came out on one kernel × platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel's trace equals a model outcome: `alternative` 0 is the default schedule,
    /// others are race outcomes of a timing-sensitive scenario.
    Agrees {
        /// Which of the model's outcomes (see [`vfio_pm_sim::model_outcomes`]).
        alternative: usize,
        /// How many outcomes the model allows.
        of: usize,
    },
    /// The kernel's trace differs from every model outcome; the side-by-side diff against
    /// the default outcome.
    Differs(String),
    /// The guest did not finish the scenario, or its trace lines do not parse.
    Incomplete(String),
    /// The scenario does not apply to the platform.
    NotApplicable,
}

impl Verdict {
    /// The table cell: `agrees` / `differs` / `incomplete` / `n/a`.
    pub fn cell(&self) -> &'static str {
        match self {
            Verdict::Agrees { .. } => "agrees",
            Verdict::Differs(_) => "differs",
            Verdict::Incomplete(_) => "incomplete",
            Verdict::NotApplicable => "n/a",
        }
    }

    /// True unless the kernel disagreed or the scenario did not complete.
    pub fn ok(&self) -> bool {
        matches!(self, Verdict::Agrees { .. } | Verdict::NotApplicable)
    }
}

/// One scenario's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioVerdict {
    /// Scenario name.
    pub scenario: String,
    /// Whether it is marked `timing-sensitive`.
    pub timing_sensitive: bool,
    /// The verdict.
    pub verdict: Verdict,
}

/// Every scenario's verdict on one kernel × platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunConformance {
    /// Kernel series.
    pub kernel: KernelSeries,
    /// The model version the kernel was compared with.
    pub model: KernelVersion,
    /// Platform.
    pub platform: Platform,
    /// vfio-pci was loaded with `disable_idle_d3=1`: only the scenarios with the header
    /// `module disable_idle_d3=1` apply (and only they are n/a elsewhere).
    pub disable_idle_d3: bool,
    /// One per embedded scenario, in name order.
    pub scenarios: Vec<ScenarioVerdict>,
}

impl RunConformance {
    /// The column title: `6.1 d3cold`, or `6.1 d3cold disable_idle_d3=1`.
    pub fn title(&self) -> String {
        format!(
            "{} {}{}",
            self.kernel,
            self.platform,
            if self.disable_idle_d3 {
                " disable_idle_d3=1"
            } else {
                ""
            }
        )
    }

    /// Counts of (agrees, differs or incomplete, n/a).
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |f: fn(&Verdict) -> bool| self.scenarios.iter().filter(|s| f(&s.verdict)).count();
        (
            n(|v| matches!(v, Verdict::Agrees { .. })),
            n(|v| !v.ok()),
            n(|v| matches!(v, Verdict::NotApplicable)),
        )
    }

    /// One host check per applicable scenario (`host-scenario-<name>`), with the diff in
    /// the detail of a mismatch.
    pub fn host_checks(&self) -> Vec<Check> {
        self.scenarios
            .iter()
            .filter(|s| s.verdict != Verdict::NotApplicable)
            .map(|s| Check {
                name: format!("host-scenario-{}", s.scenario),
                passed: s.verdict.ok(),
                detail: match &s.verdict {
                    Verdict::Agrees { alternative: 0, .. } => "kernel trace = model trace".into(),
                    Verdict::Agrees { alternative, of } => format!(
                        "kernel trace = model race outcome {alternative} of {of} (timing-sensitive)"
                    ),
                    Verdict::Differs(d) => {
                        format!("kernel differs from the model:\n{}", indent(d, "        "))
                    }
                    Verdict::Incomplete(why) => format!("incomplete: {why}"),
                    Verdict::NotApplicable => String::new(),
                },
            })
            .collect()
    }
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the guest printed the end marker of `scenario` (`INFO scenario-end <name> ...`).
fn finished(report: &GuestReport, scenario: &str) -> bool {
    report.records.iter().any(|r| match r {
        Record::Info { key, value } if key == "scenario-end" => {
            value.split_whitespace().next() == Some(scenario)
        }
        _ => false,
    })
}

/// Judges one scenario against the kernel's trace lines of a boot whose vfio-pci had
/// `disable_idle_d3` as given (a scenario applies when its platform and its `module` header
/// match).
pub fn judge(
    sc: &Scenario,
    model: KernelVersion,
    platform: Platform,
    disable_idle_d3: bool,
    report: &GuestReport,
) -> Verdict {
    let mp = model_platform(platform);
    if !sc.applies_to(mp) || sc.disable_idle_d3 != disable_idle_d3 {
        return Verdict::NotApplicable;
    }
    if !finished(report, &sc.name) {
        return Verdict::Incomplete(format!(
            "no end marker (`VFIOPM INFO scenario-end {}`): the guest did not run or finish it",
            sc.name
        ));
    }
    let got = match Trace::parse_lines(&sc.name, report.trace(&sc.name)) {
        Ok(t) => t,
        Err(e) => return Verdict::Incomplete(e.to_string()),
    };
    let outcomes = vfio_pm_sim::model_outcomes(sc, mp, model);
    match outcomes.iter().position(|m| *m == got) {
        Some(alternative) => Verdict::Agrees {
            alternative,
            of: outcomes.len(),
        },
        None => {
            let mut d = match outcomes.first() {
                Some(m) => diff(m, &got, "model", "kernel"),
                None => format!("the model produced no trace\n{got}"),
            };
            if outcomes.len() > 1 {
                let _ = write!(
                    d,
                    "(nor any of the model's {} race outcomes)",
                    outcomes.len() - 1
                );
            }
            Verdict::Differs(d)
        }
    }
}

/// Judges every embedded scenario for one boot. Err when the embedded scenarios do not parse.
pub fn compare(
    kernel: KernelSeries,
    model: KernelVersion,
    platform: Platform,
    disable_idle_d3: bool,
    report: &GuestReport,
) -> Result<RunConformance, scenario::ParseError> {
    let scenarios = scenario::builtin()?
        .iter()
        .map(|sc| ScenarioVerdict {
            scenario: sc.name.clone(),
            timing_sensitive: sc.timing_sensitive,
            verdict: judge(sc, model, platform, disable_idle_d3, report),
        })
        .collect();
    Ok(RunConformance {
        kernel,
        model,
        platform,
        disable_idle_d3,
        scenarios,
    })
}

/// The conformance table: one column per kernel × platform, in the given order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table<'a> {
    /// The columns.
    pub runs: &'a [RunConformance],
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# Conformance: model (vfio-pm-sim) vs real kernels in QEMU"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "Generated by `cargo xtask conformance` (the QEMU test regenerates it into \
             `target/qemu/conformance.md` and fails when it differs from this file): do not edit."
        )?;
        writeln!(
            f,
            "Each scenario of `scenarios/` ran in the guest against Debian's kernel on the \
             platform (d3hot: no firmware power resources; d3cold: the harness's SSDT), and its \
             trace was compared with the model's trace for the same platform and kernel version."
        )?;
        writeln!(
            f,
            "`agrees`: equal traces; `differs`: not equal (the QEMU test fails); `n/a`: the \
             scenario does not apply to the platform or module parameters; `incomplete`: the \
             guest did not finish it."
        )?;
        writeln!(
            f,
            "Scenarios marked * are timing-sensitive: the kernel's trace may equal any outcome \
             the model allows when the asynchronous suspend wins the race after a `nosettle` \
             step (`vfio_pm_sim::model_outcomes`)."
        )?;
        writeln!(
            f,
            "Columns marked `disable_idle_d3=1` run only the scenarios headed `module \
             disable_idle_d3=1` (the model's device is built with \
             `DeviceConfig::disable_idle_d3(true)` for them), which are n/a elsewhere: an extra \
             boot with vfio-pci loaded with that parameter where the kernel latches it at module \
             init (6.1, 6.12), the D3cold boot's phase `idle-d3-rebind` (parameter written, \
             device rebound) where it latches it per device (7.3)."
        )?;
        writeln!(
            f,
            "`newest` is Debian's newest kernel, resolved by name on every run (trixie-backports \
             or sid; docs/kernel-behaviour.md names the release last compared); it is judged by \
             the newest model version not newer than it."
        )?;
        writeln!(f)?;
        let mut header = String::from("| scenario |");
        let mut rule = String::from("|---|");
        for r in self.runs {
            let _ = write!(header, " {} |", r.title());
            rule.push_str("---|");
        }
        writeln!(f, "{header}\n{rule}")?;
        let names: Vec<(&str, bool)> = self
            .runs
            .first()
            .map(|r| {
                r.scenarios
                    .iter()
                    .map(|s| (s.scenario.as_str(), s.timing_sensitive))
                    .collect()
            })
            .unwrap_or_default();
        for (name, racy) in names {
            let mut row = format!("| {name}{} |", if racy { " *" } else { "" });
            for r in self.runs {
                let cell = r
                    .scenarios
                    .iter()
                    .find(|s| s.scenario == name)
                    .map(|s| s.verdict.cell())
                    .unwrap_or("missing");
                let _ = write!(row, " {cell} |");
            }
            writeln!(f, "{row}")?;
        }
        let mut totals = String::from("| **agrees / differs / n/a** |");
        for r in self.runs {
            let (a, d, n) = r.counts();
            let _ = write!(totals, " {a} / {d} / {n} |");
        }
        writeln!(f, "{totals}")
    }
}

/// Renders the table for `runs`.
pub fn table(runs: &[RunConformance]) -> String {
    Table { runs }.to_string()
}

/// The committed table, `docs/conformance.md`.
pub fn doc_path() -> std::path::PathBuf {
    crate::workspace_root().join("docs").join("conformance.md")
}

/// Where the QEMU test writes the table it produced (`target/qemu/conformance.md`).
pub fn generated_path() -> std::path::PathBuf {
    crate::qemu_dir().join("conformance.md")
}

/// The verdicts of every run of `summary` that ran the `scenarios` phase, in run order.
pub fn runs(summary: &crate::Summary) -> Vec<RunConformance> {
    summary
        .runs
        .iter()
        .flat_map(|r| r.conformance.iter().cloned())
        .collect()
}

/// One line per run: agree / differ / n/a counts, the guest's time for the phase, and which
/// race outcome each timing-sensitive scenario took.
pub fn report(summary: &crate::Summary) -> String {
    let mut out = String::new();
    for r in summary.runs.iter().filter(|r| r.conformance.is_empty()) {
        let _ = writeln!(
            out,
            "  {} {}: no scenarios phase",
            r.kernel.release,
            r.label()
        );
    }
    for (r, c) in summary
        .runs
        .iter()
        .flat_map(|r| r.conformance.iter().map(move |c| (r, c)))
    {
        let (a, d, n) = c.counts();
        // The disable_idle_d3=1 set of a normal boot ran in phase idle-d3-rebind.
        let rebound = c.disable_idle_d3 && !r.disable_idle_d3;
        let (label, baseline) = if rebound {
            (
                format!("{}+disable_idle_d3 (rebound)", r.platform),
                "rebind-scenarios-baseline",
            )
        } else {
            (r.label(), "scenarios-baseline")
        };
        let took = r
            .report
            .checks()
            .find(|c| c.name == baseline)
            .and_then(|c| c.detail.rsplit("all took ").next())
            .unwrap_or("?");
        let races: Vec<String> = c
            .scenarios
            .iter()
            .filter_map(|s| match s.verdict {
                Verdict::Agrees { alternative, of } if s.timing_sensitive => {
                    Some(format!("{} outcome {alternative}/{of}", s.scenario))
                }
                _ => None,
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} {} (model {}): {a} agree, {d} differ, {n} n/a; scenarios took {took}; races: {}",
            r.kernel.release,
            label,
            c.model,
            if races.is_empty() {
                "-".to_string()
            } else {
                races.join(", ")
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_pm_sim::{model_outcomes, Platform as SimPlatform};

    /// A console as the guest would print it for `traces` (scenario name, lines).
    fn console(traces: &[(&str, Vec<String>)]) -> String {
        let mut c = String::from("VFIOPM BEGIN scenarios\n");
        for (name, lines) in traces {
            for l in lines {
                c += &format!("VFIOPM TRACE {name} {l}\n");
            }
            c += &format!(
                "VFIOPM INFO scenario-end {name} steps={} ms=1\n",
                lines.len()
            );
        }
        c
    }

    fn model_lines(name: &str, p: SimPlatform, alt: usize) -> Vec<String> {
        let sc = scenario::builtin()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        model_outcomes(&sc, p, KernelVersion::V6_1)[alt]
            .lines
            .iter()
            .map(|l| l.to_string())
            .collect()
    }

    #[test]
    fn equal_traces_agree_and_a_changed_line_differs_with_a_diff() {
        let good = model_lines("10-entry-suspends", SimPlatform::D3hot, 0);
        let mut bad = good.clone();
        bad[1] = bad[1].replace("D3hot suspended", "D0 active");
        let all = console(&[("10-entry-suspends", good), ("12-entry-exit", bad.clone())]);
        let r = compare(
            KernelSeries::V6_1,
            KernelVersion::V6_1,
            Platform::D3Hot,
            false,
            &GuestReport::parse(&all),
        )
        .unwrap();
        let v = |n: &str| {
            r.scenarios
                .iter()
                .find(|s| s.scenario == n)
                .unwrap()
                .verdict
                .clone()
        };
        assert_eq!(
            v("10-entry-suspends"),
            Verdict::Agrees {
                alternative: 0,
                of: 1
            }
        );
        match v("12-entry-exit") {
            Verdict::Differs(d) => assert!(d.contains("model") && d.contains('!'), "{d}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(v("02-open-resumes"), Verdict::Incomplete(_)));
        assert_eq!(v("32b-d3cold-disallowed"), Verdict::NotApplicable);
        // The disable_idle_d3=1 scenarios do not apply to a normal boot.
        assert_eq!(v("50-disable-idle-d3"), Verdict::NotApplicable);
        let idle_d3 = scenario::builtin()
            .unwrap()
            .iter()
            .filter(|s| s.disable_idle_d3)
            .count();
        assert!(idle_d3 >= 2);
        let (a, d, n) = r.counts();
        assert_eq!((a, n), (1, 1 + idle_d3));
        assert_eq!(a + d + n, r.scenarios.len());
        let checks = r.host_checks();
        assert_eq!(checks.len(), r.scenarios.len() - 1 - idle_d3);
        assert!(checks
            .iter()
            .any(|c| c.name == "host-scenario-10-entry-suspends" && c.passed));
        assert!(checks
            .iter()
            .any(|c| c.name == "host-scenario-12-entry-exit" && !c.passed));
    }

    #[test]
    fn a_disable_idle_d3_boot_judges_only_its_scenarios() {
        let name = "50-disable-idle-d3";
        let sc = scenario::builtin()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        let lines: Vec<String> = vfio_pm_sim::run_on_model(&sc, SimPlatform::D3cold)
            .lines
            .iter()
            .map(|l| l.to_string())
            .collect();
        let all = console(&[(name, lines)]);
        let r = compare(
            KernelSeries::V6_1,
            KernelVersion::V6_1,
            Platform::D3Cold,
            true,
            &GuestReport::parse(&all),
        )
        .unwrap();
        let v = |n: &str| {
            r.scenarios
                .iter()
                .find(|s| s.scenario == n)
                .unwrap()
                .verdict
                .clone()
        };
        assert!(matches!(v(name), Verdict::Agrees { .. }), "{:?}", v(name));
        assert_eq!(v("10-entry-suspends"), Verdict::NotApplicable);
        assert!(matches!(
            v("51-disable-idle-d3-wakeup"),
            Verdict::Incomplete(_)
        ));
        assert!(r.title().ends_with("disable_idle_d3=1"));
        assert!(table(std::slice::from_ref(&r)).contains("| 6.1 d3cold disable_idle_d3=1 |"));
    }

    #[test]
    fn a_race_outcome_of_a_timing_sensitive_scenario_agrees() {
        let name = "21-wakeup-exit-before-suspend";
        let alt = model_lines(name, SimPlatform::D3cold, 1);
        assert_ne!(alt, model_lines(name, SimPlatform::D3cold, 0));
        let all = console(&[(name, alt)]);
        let r = compare(
            KernelSeries::V6_12,
            KernelVersion::V6_12,
            Platform::D3Cold,
            false,
            &GuestReport::parse(&all),
        )
        .unwrap();
        let s = r.scenarios.iter().find(|s| s.scenario == name).unwrap();
        assert!(s.timing_sensitive);
        assert!(
            matches!(s.verdict, Verdict::Agrees { alternative: 1, .. }),
            "{:?}",
            s.verdict
        );
    }

    #[test]
    fn garbled_trace_lines_are_incomplete_not_panics() {
        let all = console(&[("10-entry-suspends", vec!["garbage".into()])]);
        let r = compare(
            KernelSeries::V6_1,
            KernelVersion::V6_1,
            Platform::D3Hot,
            false,
            &GuestReport::parse(&all),
        )
        .unwrap();
        let s = r
            .scenarios
            .iter()
            .find(|s| s.scenario == "10-entry-suspends")
            .unwrap();
        assert!(matches!(s.verdict, Verdict::Incomplete(_)));
    }

    #[test]
    fn table_has_a_row_per_scenario_and_totals() {
        let all = console(&[(
            "10-entry-suspends",
            model_lines("10-entry-suspends", SimPlatform::D3hot, 0),
        )]);
        let r = compare(
            KernelSeries::V6_1,
            KernelVersion::V6_1,
            Platform::D3Hot,
            false,
            &GuestReport::parse(&all),
        )
        .unwrap();
        let t = table(std::slice::from_ref(&r));
        assert!(t.contains("| scenario | 6.1 d3hot |"));
        assert!(t.contains("| 10-entry-suspends | agrees |"));
        assert!(t.contains("| 21-wakeup-exit-before-suspend * | incomplete |"));
        assert!(t.contains("| 32b-d3cold-disallowed | n/a |"));
        assert_eq!(
            t.lines().filter(|l| l.starts_with("| ")).count(),
            r.scenarios.len() + 2
        );
    }

    #[test]
    fn the_newest_kernel_is_judged_by_the_model_version_it_reached() {
        assert_eq!(model_kernel("6.1.0-56-amd64"), KernelVersion::V6_1);
        assert_eq!(model_kernel("6.12.117+deb12-amd64"), KernelVersion::V6_12);
        assert_eq!(model_kernel("7.3.4+deb13-amd64"), KernelVersion::V7_3);
        // The later feature indexes tell 6.12 from 7.3: 6.12's trace does not agree on 7.3.
        let name = "09b-later-feature-indexes";
        let sc = scenario::builtin()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap();
        let lines = |v| -> Vec<String> {
            model_outcomes(&sc, SimPlatform::D3hot, v)[0]
                .lines
                .iter()
                .map(|l| l.to_string())
                .collect()
        };
        let old = console(&[(name, lines(KernelVersion::V6_12))]);
        let new = console(&[(name, lines(KernelVersion::V7_3))]);
        assert_ne!(old, new);
        let verdict = |model, c: &str| {
            compare(
                KernelSeries::Newest,
                model,
                Platform::D3Hot,
                false,
                &GuestReport::parse(c),
            )
            .unwrap()
            .scenarios
            .into_iter()
            .find(|s| s.scenario == name)
            .unwrap()
            .verdict
        };
        assert!(matches!(
            verdict(KernelVersion::V7_3, &new),
            Verdict::Agrees { .. }
        ));
        assert!(matches!(
            verdict(KernelVersion::V7_3, &old),
            Verdict::Differs(_)
        ));
    }
}
