//! Judging one nested boot: L0's console (L1's protocol lines, with L2's forwarded) and L0's
//! trap capture of L1's own power resource, against each run's [`Expect`]ations.

use super::NestedRun;
use crate::console::{parse_line, Check, GuestReport, Parsed, Record};
use crate::kernels::KernelImage;
use crate::qemu::BootOutcome;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use vfio_pm_vmm::trap::TrapDecoder;

/// The fewest L1 samples an idle window must have (8 s at 0.25 s gives about 30).
pub const MIN_IDLE_SAMPLES: usize = 8;

/// The fewest checks L2's `nested-guest` phase reports when it runs to the end.
pub const L2_CHECKS: u32 = 3;

/// One observation a run must show.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// L2 finished (`DONE`) with every check passed: its device reached D3cold, held it
    /// through the idle window and re-suspended after a config read.
    L2Passed,
    /// L2's trap capture decodes and shows at least one `_OFF` of its power resource.
    L2TrapHasOff,
    /// The run's command exited with this status.
    Exit(i32),
    /// Every L1 sample inside L2's idle window reads this (`power_state runtime_status`,
    /// e.g. `D3hot active`), and there are at least [`MIN_IDLE_SAMPLES`].
    L1IdleAll(String),
    /// The share of L1 samples in `D3cold suspended` inside L2's idle window.
    L1IdleD3ColdShare {
        /// At least.
        min: f64,
        /// At most.
        max: f64,
    },
    /// The run's own process (the agent, with `child_idle`) was switched out at most this often
    /// over L2's idle window (each wakeup of a sleeping process is one switch).
    AgentIdleWakeups {
        /// At most.
        max: u64,
    },
    /// L2 rebooted (`INFO nested boot 2`) and used the device again after the reboot.
    L2Rebooted,
    /// An agent JSON line (`forward_json`) has a note containing this.
    AgentSaid(String),
    /// Under L2's flood (`INFO nested flood secs=S mailbox_writes=N ...`) the agent's host
    /// entries stay at least the anti-thrash residency apart and are far fewer than the writes.
    FloodBounded {
        /// The agent's anti-thrash residency, ms.
        min_residency_ms: u64,
    },
    /// L1's own `_OFF` calls in L0's trap capture inside `window`.
    L1Offs {
        /// Which part of the run.
        window: TrapWindow,
        /// At least.
        min: usize,
        /// At most.
        max: usize,
    },
}

/// A part of a run, as L0's trap capture marks it (L1 prints the marks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapWindow {
    /// L2's idle window (its device held in D3cold).
    Idle,
    /// From the run's start to the end of L2's idle window (covers L2's first suspend).
    UntilIdleEnd,
    /// The whole run.
    Run,
}

impl TrapWindow {
    /// The (begin, end) mark suffixes.
    fn marks(self) -> (&'static str, &'static str) {
        match self {
            Self::Idle => ("idle-begin", "idle-end"),
            Self::UntilIdleEnd => ("start", "idle-end"),
            Self::Run => ("start", "end"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::UntilIdleEnd => "until-idle-end",
            Self::Run => "run",
        }
    }
}

/// The plan file L1's `nested` phase reads (see `vfio-pm-guest`'s `nested::plan`).
pub fn plan_json(runs: &[NestedRun]) -> String {
    let runs: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name,
                "argv": r.argv,
                "timeout_s": r.timeout.as_secs().max(1),
                "adopt": r.adopt,
                "l2_trap": r.l2_trap,
                "actions": r.actions.iter().map(action_json).collect::<Vec<_>>(),
                "forward_json": r.forward_json,
                "child_idle": r.child_idle,
            })
        })
        .collect();
    serde_json::json!({"root": super::l1::HOST_ROOT, "sample_ms": 250, "runs": runs}).to_string()
}

fn action_json(a: &super::Action) -> serde_json::Value {
    let mut v = serde_json::json!({
        "after": a.after,
        "delay_ms": u64::try_from(a.delay.as_millis()).unwrap_or(u64::MAX),
    });
    match &a.what {
        super::ActionKind::ConfigRead => v["do"] = "config-read".into(),
        super::ActionKind::Kill(pidfile) => {
            v["do"] = "kill".into();
            v["pidfile"] = pidfile.as_str().into();
        }
    }
    v
}

/// What one run showed.
#[derive(Clone, Debug, Default)]
pub struct RunOutcome {
    /// The run's name.
    pub name: String,
    /// Every check of the run (L1's own and the expectations).
    pub checks: Vec<Check>,
    /// L1 samples inside L2's idle window, counted by state.
    pub idle_states: BTreeMap<String, usize>,
    /// The share of those in `D3cold suspended` (None without samples).
    pub idle_d3cold_share: Option<f64>,
    /// L0's trap events inside the window (`+` on, `-` off, `!` undecodable).
    pub l0_idle_trap: String,
    /// L2's trap events over the whole run.
    pub l2_trap: String,
    /// L2's forwarded records.
    pub l2: GuestReport,
    /// Wall time of the run in L1, as L1 measured it.
    pub elapsed_ms: Option<u64>,
    /// L2's `_ON` round trips as L2 saw them (`nested resume-ms`), in order.
    pub resume_ms: Vec<u64>,
    /// The agent's JSON lines (`forward_json`).
    pub agent: Vec<serde_json::Value>,
    /// The agent's cost over L2's idle window (`child_idle`): wakeups, CPU ticks, window.
    pub agent_idle: Option<String>,
    /// L2's flood line (`secs=.. mailbox_writes=.. ...`).
    pub flood: Option<String>,
}

impl RunOutcome {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    /// The number of samples inside the idle window.
    pub fn idle_samples(&self) -> usize {
        self.idle_states.values().sum()
    }

    /// The agent's LOW_POWER_EXIT ioctl durations (ms), from its JSON lines.
    pub fn exit_ioctl_ms(&self) -> Vec<f64> {
        self.agent
            .iter()
            .filter(|v| v["call"] == "LOW_POWER_EXIT")
            .filter_map(|v| v["took_ms"].as_f64())
            .collect()
    }

    /// The host entries of the last agent's summary (the one serving the run's end).
    pub fn last_summary_entries(&self) -> Option<u64> {
        self.agent
            .iter()
            .rev()
            .find_map(|v| v["summary"]["entries"].as_u64())
    }
}

/// `key=value` of a space-separated line.
pub fn field(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

fn check(name: String, passed: bool, detail: String) -> Check {
    Check {
        name,
        passed,
        detail,
    }
}

fn others<'a>(
    report: &'a GuestReport,
    kind: &'a str,
    run: &'a str,
) -> impl Iterator<Item = &'a str> {
    report.records.iter().filter_map(move |r| match r {
        Record::Other { kind: k, rest } if k == kind => {
            let (name, rest) = rest.split_once(' ')?;
            (name == run).then_some(rest)
        }
        _ => None,
    })
}

fn sequence(decoder: &TrapDecoder, bytes: &[u8]) -> String {
    crate::trap::sequence(&decoder.decode_stream(bytes))
}

/// `80008000` → bytes; `-` (L1's word for an empty capture) → none; anything else → None.
fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s == "-" {
        return Some(Vec::new());
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok().filter(|t| t.len() == 2)?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

/// Parses and judges one run's part of the console.
pub fn judge_run(
    run: &NestedRun,
    report: &GuestReport,
    outcome: &BootOutcome,
    decoder: &TrapDecoder,
) -> RunOutcome {
    let name = run.name.as_str();
    let mut out = RunOutcome {
        name: name.into(),
        ..Default::default()
    };
    let info = |k: &str| report.info(&format!("{name}.{k}"));
    let has = |key: &str| {
        report
            .records
            .iter()
            .any(|r| matches!(r, Record::Info { key: k, value } if k == key && value == name))
    };
    out.checks.push(check(
        format!("{name}.ran"),
        has("run-begin") && has("run-end"),
        format!("run-begin {} run-end {}", has("run-begin"), has("run-end")),
    ));
    // L1's own checks of the run (finished, adopt-...).
    out.checks.extend(
        report
            .checks()
            .filter(|c| c.name.starts_with(&format!("{name}.")))
            .cloned(),
    );
    // L2's records.
    for rest in others(report, "GUEST", name) {
        match parse_line(&format!("VFIOPM {rest}")) {
            Parsed::Record(r) => out.l2.records.push(r),
            Parsed::Garbled(g) => out.l2.garbled.push(g),
            Parsed::NotOurs => {}
        }
    }
    for rest in others(report, "AGENT", name) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(rest) {
            out.agent.push(v);
        }
    }
    for r in &out.l2.records {
        if let Record::Info { key, value } = r {
            if key != "nested" {
                continue;
            }
            if let Some(ms) = value.strip_prefix("resume-ms ") {
                out.resume_ms.extend(ms.trim().parse::<u64>().ok());
            } else if let Some(f) = value.strip_prefix("flood ") {
                out.flood = Some(f.trim().to_string());
            }
        }
    }
    out.agent_idle = info("agent-idle").map(str::to_string);
    // The idle window and the samples inside it.
    let window = |edge: &str| {
        others(report, "WINDOW", name).find_map(|w| {
            let (ms, e) = w.split_once(' ')?;
            (e == edge).then(|| ms.parse::<u64>().ok()).flatten()
        })
    };
    let (begin, end) = (window("begin"), window("end"));
    if let (Some(b), Some(e)) = (begin, end) {
        for s in others(report, "SAMPLE", name) {
            let Some((ms, state)) = s.split_once(' ') else {
                continue;
            };
            if ms.parse::<u64>().is_ok_and(|ms| (b..=e).contains(&ms)) {
                *out.idle_states.entry(state.to_string()).or_default() += 1;
            }
        }
    }
    let n = out.idle_samples();
    let d3cold = out
        .idle_states
        .get("D3cold suspended")
        .copied()
        .unwrap_or(0);
    out.idle_d3cold_share = (n > 0).then(|| d3cold as f64 / n as f64);
    // L0's trap bytes inside the window.
    let idle_trap = trap_slice(outcome, name, TrapWindow::Idle);
    out.l0_idle_trap = idle_trap
        .as_deref()
        .map(|t| sequence(decoder, t))
        .unwrap_or_default();
    let l2_trap = info("l2-trap").and_then(hex_bytes);
    out.l2_trap = l2_trap
        .as_deref()
        .map(|t| sequence(decoder, t))
        .unwrap_or_default();
    out.elapsed_ms = info("elapsed-ms").and_then(|v| v.parse().ok());
    out.checks.push(check(
        format!("{name}.idle-window"),
        begin.is_some() && end.is_some() && idle_trap.is_some(),
        format!("L2 idle window {begin:?}..{end:?} ms, L0 trap marks {idle_trap:02x?}"),
    ));
    let exit = info("exit");
    let judged: Vec<Check> = run
        .expect
        .iter()
        .map(|e| match e {
            Expect::L1Offs { window, min, max } => {
                offs_check(name, *window, *min, *max, outcome, decoder)
            }
            e => expect_check(name, e, &out, exit),
        })
        .collect();
    out.checks.extend(judged);
    out
}

/// L0's trap bytes between the two marks of `window` in run `name`.
fn trap_slice(outcome: &BootOutcome, name: &str, window: TrapWindow) -> Option<Vec<u8>> {
    let mark = |m: &str| {
        outcome
            .trap_marks
            .iter()
            .find(|t| t.name == format!("{name}.{m}"))
            .map(|t| t.trap_len)
    };
    let (b, e) = window.marks();
    outcome.trap.get(mark(b)?..mark(e)?).map(<[u8]>::to_vec)
}

fn offs_check(
    name: &str,
    window: TrapWindow,
    min: usize,
    max: usize,
    outcome: &BootOutcome,
    decoder: &TrapDecoder,
) -> Check {
    let seq = trap_slice(outcome, name, window).map(|t| sequence(decoder, &t));
    let offs = seq.as_deref().map(|s| s.matches('-').count());
    check(
        format!("{name}.l1-offs-{}", window.name()),
        offs.is_some_and(|o| (min..=max).contains(&o)) && !seq.as_deref().unwrap_or("!").contains('!'),
        format!(
            "L0 trap of L1's power resource, {} window: {seq:?}, {offs:?} _OFF (want {min}..={max})",
            window.name()
        ),
    )
}

fn expect_check(name: &str, e: &Expect, o: &RunOutcome, exit: Option<&str>) -> Check {
    let n = o.idle_samples();
    match e {
        Expect::L2Passed => {
            let done = o.l2.done();
            let failed: Vec<String> =
                o.l2.checks()
                    .filter(|c| !c.passed)
                    .map(|c| c.to_string())
                    .collect();
            check(
                format!("{name}.l2-passed"),
                done.is_some_and(|(p, f)| f == 0 && p >= L2_CHECKS) && failed.is_empty(),
                format!("L2 DONE {done:?} (want pass >= {L2_CHECKS}, fail 0); failed {failed:?}"),
            )
        }
        Expect::L2TrapHasOff => check(
            format!("{name}.l2-trap-off"),
            o.l2_trap.contains('-') && !o.l2_trap.contains('!'),
            format!("L2 trap {:?} (want its _OFF, all decodable)", o.l2_trap),
        ),
        Expect::Exit(code) => check(
            format!("{name}.exit-{code}"),
            exit == Some(code.to_string().as_str()),
            format!("exit {exit:?}"),
        ),
        Expect::L1IdleAll(state) => check(
            format!("{name}.l1-idle-all-{}", state.replace(' ', "-")),
            n >= MIN_IDLE_SAMPLES && o.idle_states.keys().all(|k| k == state),
            format!(
                "L1 idle samples {:?} (want {n} >= {MIN_IDLE_SAMPLES}, all {state})",
                o.idle_states
            ),
        ),
        Expect::L1IdleD3ColdShare { min, max } => check(
            format!("{name}.l1-idle-d3cold-share"),
            o.idle_d3cold_share.is_some_and(|s| s >= *min && s <= *max),
            format!(
                "share {:?} of {n} samples (want {min}..={max})",
                o.idle_d3cold_share
            ),
        ),
        Expect::AgentIdleWakeups { max } => {
            let w = o.agent_idle.as_deref().and_then(|l| field(l, "wakeups"));
            check(
                format!("{name}.agent-idle-wakeups"),
                w.is_some_and(|w| w <= *max),
                format!(
                    "agent over L2's idle window: {:?} (want wakeups <= {max})",
                    o.agent_idle
                ),
            )
        }
        Expect::L2Rebooted => {
            let boot2 = o.l2.records.iter().any(
                |r| matches!(r, Record::Info { key, value } if key == "nested" && value == "boot 2"),
            );
            let used =
                o.l2.checks()
                    .find(|c| c.name == "l2-reboot-bar-read-after-resume");
            check(
                format!("{name}.l2-rebooted"),
                boot2 && used.is_some_and(|c| c.passed),
                format!("L2 boot 2 seen {boot2}; after it {used:?}"),
            )
        }
        Expect::AgentSaid(text) => {
            let said = o
                .agent
                .iter()
                .filter_map(|v| v["note"].as_str())
                .find(|n| n.contains(text.as_str()));
            check(
                format!("{name}.agent-said"),
                said.is_some(),
                format!("agent note containing {text:?}: {said:?}"),
            )
        }
        Expect::FloodBounded { min_residency_ms } => flood_check(name, o, *min_residency_ms),
        // Needs the boot's trap capture: judged by `offs_check`.
        Expect::L1Offs { window, .. } => offs_check_missing(name, *window),
    }
}

/// Seconds between consecutive host entries, per agent (`t` restarts with each agent).
pub fn entry_gaps(agent: &[serde_json::Value]) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut last: Option<f64> = None;
    for v in agent {
        if v["note"]
            .as_str()
            .is_some_and(|n| n.starts_with("managed:"))
        {
            last = None; // a new agent
        }
        if v["call"] != "LOW_POWER_ENTRY" {
            continue;
        }
        let Some(t) = v["t"].as_f64() else { continue };
        if let Some(l) = last.filter(|l| t >= *l) {
            gaps.push(t - l);
        }
        last = Some(t);
    }
    gaps
}

/// The flood: the agent's host entries stay at least the anti-thrash residency apart (20%
/// tolerance for when each line was printed), and they are far fewer than the guest's writes.
fn flood_check(name: &str, o: &RunOutcome, min_residency_ms: u64) -> Check {
    let flood = o.flood.as_deref().unwrap_or("");
    let writes = field(flood, "mailbox_writes");
    let gaps = entry_gaps(&o.agent);
    let min_gap = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let floor = 0.8 * min_residency_ms as f64 / 1000.0;
    let entries = gaps.len() as u64 + 1;
    let ok = writes.is_some_and(|w| w > 10 * entries) && !gaps.is_empty() && min_gap >= floor;
    check(
        format!("{name}.flood-bounded"),
        ok,
        format!(
            "L2 flood {flood:?}: {entries} host entries, closest two {min_gap:.3}s apart (want >= \
             {floor:.3}s), writes {writes:?} (want > 10x the entries)"
        ),
    )
}

fn offs_check_missing(name: &str, window: TrapWindow) -> Check {
    check(
        format!("{name}.l1-offs-{}", window.name()),
        false,
        "no trap capture to judge".into(),
    )
}

/// One L1 boot with all its runs.
#[derive(Debug)]
pub struct NestedBoot {
    /// The kernel (L1 and L2).
    pub kernel: KernelImage,
    /// L0's boot of L1.
    pub outcome: BootOutcome,
    /// L1's records.
    pub report: GuestReport,
    /// The runs, in plan order.
    pub runs: Vec<RunOutcome>,
    /// Boot-level checks (no timeout, L1 finished, its other checks, L0's trap decodes).
    pub host_checks: Vec<Check>,
    /// The saved console.
    pub console_log: PathBuf,
}

impl NestedBoot {
    /// Judges a finished boot.
    pub fn judge(
        kernel: KernelImage,
        runs: &[NestedRun],
        outcome: BootOutcome,
        console_log: PathBuf,
    ) -> Self {
        let report = GuestReport::parse(&outcome.console);
        let mut hc = vec![check(
            "nested-no-timeout".into(),
            !outcome.timed_out,
            format!(
                "L0 QEMU ran {:.1?} (status {:?})",
                outcome.elapsed, outcome.status
            ),
        )];
        hc.push(match report.done() {
            Some((p, f)) => check(
                "nested-l1-done".into(),
                f == 0 && p > 0,
                format!("L1 DONE pass={p} fail={f}"),
            ),
            None => check(
                "nested-l1-done".into(),
                false,
                "no VFIOPM DONE line from L1".into(),
            ),
        });
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        let stray: Vec<String> = report
            .checks()
            .filter(|c| !c.passed && !names.iter().any(|n| c.name.starts_with(&format!("{n}."))))
            .map(|c| c.to_string())
            .collect();
        hc.push(check(
            "nested-l1-checks".into(),
            stray.is_empty(),
            format!("failed L1 checks {stray:?}"),
        ));
        let got = report.info("kernel").unwrap_or("?");
        hc.push(check(
            "nested-l1-kernel".into(),
            got == kernel.release,
            format!("L1 runs {got}, want {}", kernel.release),
        ));
        let decoder = crate::ssdt::decoder();
        let judged = match &decoder {
            Ok(d) => {
                let seq = sequence(d, &outcome.trap);
                hc.push(check(
                    "nested-l0-trap-decodes".into(),
                    !seq.contains('!') && seq.starts_with('+'),
                    format!("L0 trap of L1's power resource: {seq}"),
                ));
                runs.iter()
                    .map(|r| judge_run(r, &report, &outcome, d))
                    .collect()
            }
            Err(e) => {
                hc.push(check("nested-trap-decoder".into(), false, format!("{e:#}")));
                Vec::new()
            }
        };
        Self {
            kernel,
            outcome,
            report,
            runs: judged,
            host_checks: hc,
            console_log,
        }
    }

    /// True when every boot and run check passed.
    pub fn passed(&self) -> bool {
        self.host_checks.iter().all(|c| c.passed)
            && !self.runs.is_empty()
            && self.runs.iter().all(RunOutcome::passed)
    }

    /// Every check.
    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.host_checks
            .iter()
            .chain(self.runs.iter().flat_map(|r| r.checks.iter()))
    }

    /// A run by name.
    pub fn run(&self, name: &str) -> Option<&RunOutcome> {
        self.runs.iter().find(|r| r.name == name)
    }
}

impl fmt::Display for NestedBoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<26} {:>6.1?}  {} ({} checks)",
            self.kernel.release,
            self.outcome.elapsed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.all_checks().count()
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "    run {:<10} {:>7}  L1 while L2 idles: D3cold share {} of {} samples {:?}; \
                 L0 trap {:?}; L2 trap {:?}",
                r.name,
                r.elapsed_ms
                    .map_or("?".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
                r.idle_d3cold_share
                    .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
                r.idle_samples(),
                r.idle_states,
                r.l0_idle_trap,
                r.l2_trap,
            )?;
            let exits = r.exit_ioctl_ms();
            if !r.resume_ms.is_empty() || !exits.is_empty() {
                writeln!(
                    f,
                    "      _ON round trip as L2 saw it {:?} ms; bare LOW_POWER_EXIT ioctl in L1 {:.1?} ms",
                    r.resume_ms, exits
                )?;
            }
            if let Some(a) = &r.agent_idle {
                writeln!(f, "      agent while L2 idles: {a}")?;
            }
            if let Some(fl) = &r.flood {
                writeln!(
                    f,
                    "      L2 flood {fl}: {:?} host entries by the last agent",
                    r.last_summary_entries()
                )?;
            }
        }
        for c in self.all_checks().filter(|c| !c.passed) {
            writeln!(f, "      {c}")?;
        }
        if !self.passed() {
            writeln!(f, "      console: {}", self.console_log.display())?;
            writeln!(f, "      --- console tail ---")?;
            for l in self.outcome.console_tail(40).lines() {
                writeln!(f, "      | {l}")?;
            }
            if !self.outcome.stderr.trim().is_empty() {
                writeln!(
                    f,
                    "      --- qemu stderr ---\n      | {}",
                    self.outcome.stderr.trim()
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "judge_tests.rs"]
mod tests;
