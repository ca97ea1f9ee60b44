//! The guest's `timing` phase figures (`VFIOPM INFO timing <figure> key=value ...`, see the
//! `vfio-pm-guest` crate's `timing` module): parsed per boot, checked for presence and shape
//! (never for their values: they are informational), and tabled per kernel with D3hot and
//! D3cold side by side. QEMU TCG timings are not hardware timings.

use crate::console::{Check, GuestReport, Record};
use crate::harness::{Platform, Summary};
use std::fmt::Write as _;

/// The console INFO key of the figures.
pub const INFO_KEY: &str = "timing";

/// The distribution figures every `timing` phase prints, in table order (milliseconds).
pub const DISTRIBUTIONS: [&str; 5] = [
    "entry_ioctl_ms",
    "entry_to_suspended_ms",
    "exit_ioctl_ms",
    "exit_to_active_ms",
    "poll_ms",
];

/// The INFO keys of what the first poll after each ENTRY and EXIT read.
pub const FIRST_AFTER_ENTRY: &str = "timing-first-poll-after-entry";
/// See [`FIRST_AFTER_ENTRY`].
pub const FIRST_AFTER_EXIT: &str = "timing-first-poll-after-exit";

/// The kernel's suspended-time counter against the windows the guest saw.
pub const SUSPENDED_TOTAL: &str = "suspended_total_ms";

/// One figure line: its name and its `key=value` fields, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// The figure (`entry_to_suspended_ms`).
    pub name: String,
    /// `n`, `min`, `p50`, `max`, or `kernel`, `observed`.
    pub fields: Vec<(String, f64)>,
}

impl Figure {
    /// The value of field `key`.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

/// Parses the value of one `timing` INFO line: `<figure> key=value ...` with finite numbers.
pub fn parse_figure(value: &str) -> Result<Figure, String> {
    let mut words = value.split_whitespace();
    let name = words.next().ok_or("empty timing line")?;
    if name.contains('=') {
        return Err(format!("no figure name in {value:?}"));
    }
    let mut fields = Vec::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("{w:?} is not key=value in {value:?}"))?;
        let v: f64 = v
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| format!("{w:?}: not a finite number in {value:?}"))?;
        if k.is_empty() || fields.iter().any(|(seen, _)| seen == k) {
            return Err(format!("empty or repeated key {k:?} in {value:?}"));
        }
        fields.push((k.to_string(), v));
    }
    Ok(Figure {
        name: name.to_string(),
        fields,
    })
}

/// Every `timing` line of a boot, parsed (the errors of those that did not parse).
pub fn figures(report: &GuestReport) -> (Vec<Figure>, Vec<String>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for r in &report.records {
        if let Record::Info { key, value } = r {
            if key == INFO_KEY {
                match parse_figure(value) {
                    Ok(f) => ok.push(f),
                    Err(e) => bad.push(e),
                }
            }
        }
    }
    (ok, bad)
}

/// The cycles a boot's figures cover: the `n` of its suspended total.
pub fn cycles(figs: &[Figure]) -> Option<f64> {
    figs.iter().find(|f| f.name == SUSPENDED_TOTAL)?.get("n")
}

/// What is wrong with a boot's figures: a line that does not parse, a distribution missing or
/// without `n min p50 max`, the per-cycle ones not over the same cycles (at least one; the
/// poll count at least that), the suspended total missing its fields. Empty when complete.
pub fn problems(figs: &[Figure], bad: &[String]) -> Vec<String> {
    let mut out: Vec<String> = bad.to_vec();
    let n_cycles = cycles(figs).filter(|n| *n >= 1.0);
    for name in DISTRIBUTIONS {
        match figs.iter().find(|f| f.name == name) {
            None => out.push(format!("{name} missing")),
            Some(f) => {
                let has_all = ["n", "min", "p50", "max"]
                    .iter()
                    .all(|k| f.get(k).is_some());
                let n = f.get("n");
                let n_ok = match (n, n_cycles) {
                    (Some(n), Some(c)) if name == "poll_ms" => n >= c,
                    (Some(n), Some(c)) => n == c,
                    _ => false,
                };
                if !has_all || !n_ok {
                    out.push(format!(
                        "{name}: {:?} (want n min p50 max over {n_cycles:?} cycles)",
                        f.fields
                    ));
                }
            }
        }
    }
    match figs.iter().find(|f| f.name == SUSPENDED_TOTAL) {
        Some(f)
            if ["n", "kernel", "observed"]
                .iter()
                .all(|k| f.get(k).is_some()) => {}
        other => out.push(format!("{SUSPENDED_TOTAL}: {other:?}")),
    }
    out
}

/// The host check of a boot whose guest ran the `timing` phase (`None` when it did not): the
/// figures are complete and parse.
pub fn host_check(report: &GuestReport) -> Option<Check> {
    if !report.records.contains(&Record::Begin(INFO_KEY.into())) {
        return None;
    }
    let (figs, bad) = figures(report);
    let problems = problems(&figs, &bad);
    Some(Check {
        name: "host-timing-figures".into(),
        passed: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("{} timing figures parse", figs.len())
        } else {
            format!("{problems:?}")
        },
    })
}

fn cell(figs: Option<&Vec<Figure>>, name: &str, keys: [&str; 2]) -> [String; 2] {
    let f = figs.and_then(|v| v.iter().find(|f| f.name == name));
    keys.map(|k| {
        f.and_then(|f| f.get(k))
            .map_or("-".to_string(), |v| format!("{v:.2}"))
    })
}

/// The figures of a whole run as a Markdown table: one row per kernel and figure, D3hot and
/// D3cold side by side (p50 and max over the cycles; for the suspended total, the kernel's
/// counter and the guest's observed windows). Empty when no boot ran the `timing` phase.
pub fn table(summary: &Summary) -> String {
    let mut kernels: Vec<&str> = Vec::new();
    for r in &summary.runs {
        if !r.disable_idle_d3 && !kernels.contains(&r.kernel.release.as_str()) {
            kernels.push(&r.kernel.release);
        }
    }
    let per = |kernel: &str, p: Platform| -> Option<Vec<Figure>> {
        summary
            .runs
            .iter()
            .find(|r| !r.disable_idle_d3 && r.kernel.release == kernel && r.platform == p)
            .map(|r| figures(&r.report).0)
            .filter(|f| !f.is_empty())
    };
    let mut out = String::new();
    let mut rows = 0;
    for k in &kernels {
        let hot = per(k, Platform::D3Hot);
        let cold = per(k, Platform::D3Cold);
        if hot.is_none() && cold.is_none() {
            continue;
        }
        for name in DISTRIBUTIONS.iter().copied().chain([SUSPENDED_TOTAL]) {
            let keys = if name == SUSPENDED_TOTAL {
                ["kernel", "observed"]
            } else {
                ["p50", "max"]
            };
            let [h1, h2] = cell(hot.as_ref(), name, keys);
            let [c1, c2] = cell(cold.as_ref(), name, keys);
            let label = if name == SUSPENDED_TOTAL {
                format!("{name} (kernel / observed)")
            } else {
                name.to_string()
            };
            let _ = writeln!(out, "| {k} | {label} | {h1} | {h2} | {c1} | {c2} |");
            rows += 1;
        }
    }
    if rows == 0 {
        return String::new();
    }
    format!(
        "Real-kernel low-power timings, milliseconds over the ENTRY/EXIT cycles of each boot \
         (informational: QEMU TCG timings are not hardware timings)\n\n\
         | kernel | figure | D3hot p50 | D3hot max | D3cold p50 | D3cold max |\n\
         |---|---|---:|---:|---:|---:|\n{out}{}",
        first_polls(summary)
    )
}

/// The guest's `timing-first-poll-after-*` notes, one line per boot (what sysfs read right
/// after each ioctl returned: whether the transition was still under way).
fn first_polls(summary: &Summary) -> String {
    let mut out = String::new();
    for r in summary.runs.iter().filter(|r| !r.disable_idle_d3) {
        let entry = r.report.info(FIRST_AFTER_ENTRY);
        let exit = r.report.info(FIRST_AFTER_EXIT);
        if entry.is_some() || exit.is_some() {
            let _ = writeln!(
                out,
                "- {} {}: first poll after ENTRY read {}; after EXIT {}",
                r.kernel.release,
                r.platform,
                entry.unwrap_or("-"),
                exit.unwrap_or("-")
            );
        }
    }
    if out.is_empty() {
        out
    } else {
        format!("\nFirst sysfs poll after each ioctl returned (`status/state=cycles`):\n{out}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::RunResult;
    use crate::kernels::{KernelImage, KernelSeries};
    use crate::qemu::BootOutcome;
    use std::path::PathBuf;
    use std::time::Duration;

    fn console(d3: &str) -> String {
        format!(
            "VFIOPM BEGIN timing\n\
             VFIOPM INFO timing entry_ioctl_ms n=10 min=0.050 p50=0.070 max=0.110\n\
             VFIOPM INFO timing entry_to_suspended_ms n=10 min=11.2 p50={d3} max=14.9\n\
             VFIOPM INFO timing exit_ioctl_ms n=10 min=10.1 p50=10.5 max=12.0\n\
             VFIOPM INFO timing exit_to_active_ms n=10 min=0.1 p50=0.2 max=0.4\n\
             VFIOPM INFO timing poll_ms n=812 min=0.01 p50=0.02 max=1.5\n\
             VFIOPM INFO timing suspended_total_ms n=10 kernel=231 observed=229.8\n\
             VFIOPM INFO timing-first-poll-after-exit active/D0=10\n\
             VFIOPM CHECK timing-cycles PASS 10 of 10\n\
             VFIOPM END timing\n"
        )
    }

    #[test]
    fn parses_the_guest_lines_and_checks_them_complete() {
        let report = GuestReport::parse(&console("12.0"));
        let (figs, bad) = figures(&report);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(figs.len(), 6);
        assert_eq!(figs[1].name, "entry_to_suspended_ms");
        assert_eq!(figs[1].get("p50"), Some(12.0));
        assert_eq!(figs[5].get("kernel"), Some(231.0));
        let c = host_check(&report).unwrap();
        assert!(c.passed, "{c}");
        // No timing phase: no check.
        assert!(host_check(&GuestReport::parse("VFIOPM BEGIN checks\n")).is_none());
    }

    #[test]
    fn malformed_or_incomplete_figures_fail_the_check() {
        for bad in [
            "",
            "n=3",
            "x_ms n=",
            "x_ms n=1 n=2",
            "x_ms p50=inf",
            "x_ms p50",
        ] {
            assert!(parse_figure(bad).is_err(), "{bad:?} parsed");
        }
        // A cycle short, a figure missing, a garbled value.
        let short = console("12.0").replace("exit_ioctl_ms n=10", "exit_ioctl_ms n=9");
        let missing = console("12.0").replace("VFIOPM INFO timing poll_ms", "VFIOPM INFO x");
        let garbled = console("1a.0");
        for text in [short, missing, garbled] {
            let c = host_check(&GuestReport::parse(&text)).unwrap();
            assert!(!c.passed, "{text}");
        }
        let (figs, _) = figures(&GuestReport::parse(&console("12.0")));
        let no_total: Vec<Figure> = figs
            .into_iter()
            .filter(|f| f.name != SUSPENDED_TOTAL)
            .collect();
        // Without the total the cycle count is unknown: every per-cycle figure is suspect too.
        let p = problems(&no_total, &[]);
        assert_eq!(p.len(), DISTRIBUTIONS.len() + 1, "{p:?}");
        assert!(p.last().unwrap().starts_with(SUSPENDED_TOTAL), "{p:?}");
    }

    fn run(release: &str, platform: Platform, idle_d3: bool, console: String) -> RunResult {
        RunResult {
            kernel: KernelImage {
                series: KernelSeries::V6_12,
                package: format!("linux-image-{release}"),
                release: release.into(),
                vmlinuz: PathBuf::new(),
                modules: Vec::new(),
                config: PathBuf::new(),
            },
            platform,
            disable_idle_d3: idle_d3,
            report: GuestReport::parse(&console),
            outcome: BootOutcome {
                console,
                stderr: String::new(),
                timed_out: false,
                status: None,
                elapsed: Duration::ZERO,
                trap: Vec::new(),
                trap_marks: Vec::new(),
            },
            host_checks: Vec::new(),
            console_log: PathBuf::new(),
            conformance: Vec::new(),
        }
    }

    #[test]
    fn table_puts_d3hot_and_d3cold_side_by_side_per_kernel() {
        let summary = Summary {
            runs: vec![
                run("6.12.1", Platform::D3Hot, false, console("12.0")),
                run("6.12.1", Platform::D3Cold, false, console("40.5")),
                run("6.12.1", Platform::D3Cold, true, String::new()),
                run("6.1.0", Platform::D3Cold, false, console("33.0")),
            ],
            ..Summary::default()
        };
        let t = table(&summary);
        assert!(t.contains("not hardware timings"), "{t}");
        assert!(
            t.contains("| 6.12.1 | entry_to_suspended_ms | 12.00 | 14.90 | 40.50 | 14.90 |"),
            "{t}"
        );
        assert!(
            t.contains("| 6.1.0 | entry_to_suspended_ms | - | - | 33.00 | 14.90 |"),
            "{t}"
        );
        assert!(
            t.contains("| 6.12.1 | suspended_total_ms (kernel / observed) | 231.00 | 229.80 |"),
            "{t}"
        );
        assert!(
            t.contains("- 6.12.1 d3cold: first poll after ENTRY read -; after EXIT active/D0=10"),
            "{t}"
        );
        // 2 kernels x 6 figures, header and separator.
        assert_eq!(t.lines().filter(|l| l.starts_with('|')).count(), 14, "{t}");
        let none = Summary {
            runs: vec![run("6.1.0", Platform::D3Hot, false, String::new())],
            ..Summary::default()
        };
        assert_eq!(table(&none), "");
    }
}
