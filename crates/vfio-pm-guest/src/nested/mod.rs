//! The `nested` phase: runs in L1, a real host kernel inside QEMU, whose passed-through device
//! L1's own QEMU gives to a real guest (L2). For each run of the [`plan`] it starts the run's
//! command in the chroot of the machine's root, samples L1's device in sysfs and forwards L2's
//! console protocol lines, so that the harness on the machine (L0) sees, in console order:
//!
//! ```text
//! VFIOPM INFO run-begin <run>
//! VFIOPM SAMPLE <run> <ms> <power_state> <runtime_status>  on every change, and every sample
//!                                                          inside L2's idle window
//! VFIOPM GUEST <run> <record>        an L2 line without its `VFIOPM ` (e.g. `CHECK l2-... PASS ...`)
//! VFIOPM WINDOW <run> <ms> begin|end                       L2 announced its idle window
//! VFIOPM INFO trap-mark <run>.idle-begin|<run>.idle-end    L0 notes its trap capture's length
//!                                                          (also <run>.start and <run>.end)
//! VFIOPM CHECK <run>.adopt-... PASS|FAIL ...                with `adopt`: see [`adopt_check`]
//! VFIOPM CHECK <run>.l1-config-read|l1-resuspended|agent-killed|agent-restarted PASS|FAIL ...
//!                                                          the run's `actions` ([`actions`])
//! VFIOPM AGENT <run> <json>                                with `forward_json`: a JSON line
//! VFIOPM INFO <run>.agent-idle wakeups=N cpu_ticks=T window_ms=W   with `child_idle`
//! VFIOPM INFO <run>.exit <code>|killed
//! VFIOPM INFO <run>.l2-trap <hex bytes>
//! VFIOPM CHECK <run>.finished PASS|FAIL ...                 no timeout, no spawn error
//! VFIOPM INFO run-end <run>
//! ```
//!
//! `<ms>` counts from the run's start. The run's other output (L2's kernel, QEMU's stderr) is
//! kept in a bounded tail and printed (`<run>| ...`) at the end of the run.

pub mod actions;
pub mod flood;
pub mod l2;
pub mod plan;
pub mod reboot;

use crate::context::{cmdline_value, Ctx};
use crate::report::Reporter;
use actions::{Actions, ProcUsage};
use plan::{Plan, Run};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use vfio_pm::{PowerObservation, SysfsDevice};

/// The console protocol's marker (see [`crate::report`]).
const MARKER: &str = "VFIOPM ";

/// Lines of a run's other output kept for the failure report.
const TAIL_LINES: usize = 60;
/// The longest line kept or forwarded (a longer one is cut).
const MAX_LINE: usize = 1000;

/// One protocol line, written with a single `write` like [`Reporter`]'s.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("{line}\n").as_bytes());
    let _ = out.flush();
}

fn cut(s: &str) -> String {
    let s: String = s
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LINE)
        .collect();
    s.trim_end().to_string()
}

/// What the readers of the run's stdout and stderr send.
enum Line {
    Out(String),
    Err(String),
}

fn reader(
    r: impl std::io::Read + Send + 'static,
    tx: mpsc::Sender<Line>,
    wrap: fn(String) -> Line,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // Bounded: a line longer than this is delivered in pieces.
            match std::io::Read::take(&mut r, 64 * 1024).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx
                        .send(wrap(String::from_utf8_lossy(&buf).into_owned()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
}

/// Runs the phase: every run of the plan named by `vfiopm.plan=` (a path on the machine, under
/// the plan's root in L1).
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let Some(path) = cmdline_value(&cmdline, "vfiopm.plan") else {
        r.check(
            "nested-plan",
            false,
            "no vfiopm.plan= on the kernel command line",
        );
        return;
    };
    let text = ["/host", "/"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}{path}")).ok());
    let plan = match text
        .ok_or_else(|| format!("cannot read {path} under /host"))
        .and_then(|t| Plan::parse(&t))
    {
        Ok(p) => p,
        Err(e) => {
            r.check("nested-plan", false, e);
            return;
        }
    };
    let sys = match ctx.sysfs.device(ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("nested-device", false, e);
            return;
        }
    };
    r.info("l1-before", obs_text(sys.observe().ok()));
    for run in &plan.runs {
        one_run(ctx, r, &plan, run, &sys);
    }
    r.info("l1-after", obs_text(sys.observe().ok()));
}

fn obs_text(o: Option<PowerObservation>) -> String {
    o.map(|o| format!("{} {}", o.power_state, o.runtime_status))
        .unwrap_or_else(|| "unknown unknown".into())
}

/// The state of one run while it goes.
struct Driver<'a> {
    run: &'a Run,
    start: Instant,
    in_window: bool,
    last: Option<String>,
    last_at: Instant,
    tail: VecDeque<String>,
    adopted: bool,
    actions: Actions,
    /// With `child_idle`: the child's counters when L2's idle window began.
    idle_usage: Option<(Instant, Option<ProcUsage>)>,
}

impl Driver<'_> {
    fn ms(&self) -> u128 {
        self.start.elapsed().as_millis()
    }

    fn sample(&mut self, sys: &SysfsDevice) {
        let now = obs_text(crate::checks::observe_stable(sys).ok());
        if self.in_window || self.last.as_deref() != Some(now.as_str()) {
            emit(&format!(
                "VFIOPM SAMPLE {} {} {now}",
                self.run.name,
                self.ms()
            ));
        }
        self.last = Some(now);
        self.last_at = Instant::now();
    }

    fn keep(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// One line of the run's stderr: kept; with `forward_json`, a JSON line is forwarded (a
    /// run gives the agent its own pipe, since QEMU's console on stdout is written in pieces
    /// and would interleave with the agent's lines within a line).
    fn err_line(&mut self, raw: &str) {
        let clean = cut(raw);
        if self.run.forward_json && clean.starts_with('{') {
            emit(&format!("VFIOPM AGENT {} {clean}", self.run.name));
        }
        self.keep(format!("stderr: {clean}"));
    }

    /// One line of the run's stdout: L2's protocol lines are forwarded, the rest kept.
    fn line(&mut self, ctx: &Ctx, r: &mut Reporter, raw: &str, child: &mut Child) {
        let clean = cut(raw);
        let Some(at) = clean.find(MARKER) else {
            if self.run.forward_json && clean.starts_with('{') {
                emit(&format!("VFIOPM AGENT {} {clean}", self.run.name));
            }
            self.keep(clean);
            return;
        };
        let rest = &clean[at + MARKER.len()..];
        let name = &self.run.name;
        emit(&format!("VFIOPM GUEST {name} {rest}"));
        let nested = rest.strip_prefix("INFO nested ").map(str::trim);
        if let Some(what) = nested {
            self.actions.announced(what);
        }
        if nested == Some(l2::IDLE_BEGIN) {
            if self.run.child_idle {
                self.idle_usage = Some((Instant::now(), ProcUsage::of(child.id())));
            }
            self.in_window = true;
            emit(&format!("VFIOPM WINDOW {name} {} begin", self.ms()));
            emit(&format!("VFIOPM INFO trap-mark {name}.idle-begin"));
        } else if nested == Some(l2::IDLE_END) {
            self.in_window = false;
            emit(&format!("VFIOPM WINDOW {name} {} end", self.ms()));
            emit(&format!("VFIOPM INFO trap-mark {name}.idle-end"));
            if let Some((since, before)) = self.idle_usage.take() {
                idle_cost(r, name, since, before, ProcUsage::of(child.id()));
            }
            if self.run.adopt && !self.adopted {
                self.adopted = true;
                adopt_check(ctx, r, name, child);
            }
        }
    }
}

fn spawn(plan: &Plan, run: &Run) -> std::io::Result<Child> {
    Command::new("chroot")
        .arg(&plan.root)
        .args(&run.argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
}

fn one_run(ctx: &Ctx, r: &mut Reporter, plan: &Plan, run: &Run, sys: &SysfsDevice) {
    let name = &run.name;
    r.info("run-begin", name);
    r.info(&format!("{name}.argv"), run.argv.join(" "));
    let mut child = match spawn(plan, run) {
        Ok(c) => c,
        Err(e) => {
            r.check(
                &format!("{name}.finished"),
                false,
                format!("cannot start chroot {}: {e}", plan.root),
            );
            r.info("run-end", name);
            return;
        }
    };
    let (tx, rx) = mpsc::channel();
    if let Some(o) = child.stdout.take() {
        reader(o, tx.clone(), Line::Out);
    }
    if let Some(e) = child.stderr.take() {
        reader(e, tx, Line::Err);
    }
    emit(&format!("VFIOPM INFO trap-mark {name}.start"));
    let mut d = Driver {
        run,
        start: Instant::now(),
        in_window: false,
        last: None,
        last_at: Instant::now(),
        tail: VecDeque::new(),
        adopted: false,
        actions: Actions::new(name, &plan.root, &run.actions),
        idle_usage: None,
    };
    let status = drive(ctx, r, plan, &mut d, &mut child, &rx, sys);
    let timed_out = status.is_none();
    d.actions.finish(r);
    // Drain what the readers still have (the pipes close when the child has exited).
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        match l {
            Line::Out(s) => d.line(ctx, r, &s, &mut child),
            Line::Err(s) => d.err_line(&s),
        }
    }
    d.sample(sys);
    emit(&format!("VFIOPM INFO trap-mark {name}.end"));
    let code = status
        .and_then(|s| s.code())
        .map_or("killed".to_string(), |c| c.to_string());
    r.info(&format!("{name}.exit"), &code);
    r.info(&format!("{name}.elapsed-ms"), d.start.elapsed().as_millis());
    if let Some(t) = &run.l2_trap {
        let bytes = std::fs::read(format!("{}{t}", plan.root)).unwrap_or_default();
        let hex: String = bytes
            .iter()
            .take(4096)
            .map(|b| format!("{b:02x}"))
            .collect();
        r.info(
            &format!("{name}.l2-trap"),
            if hex.is_empty() { "-".into() } else { hex },
        );
    }
    let ok = r.check(
        &format!("{name}.finished"),
        !timed_out,
        if timed_out {
            format!("killed after {:?} (timeout)", run.timeout)
        } else {
            format!("exited with {code} after {:.1?}", d.start.elapsed())
        },
    );
    // The tail always: it is what a reader of the console needs when a later check fails.
    let _ = ok;
    for l in &d.tail {
        emit(&format!("{name}| {l}"));
    }
    r.info("run-end", name);
}

/// Samples and forwards until the child exits (its status) or the run's timeout (None: killed).
fn drive(
    ctx: &Ctx,
    r: &mut Reporter,
    plan: &Plan,
    d: &mut Driver<'_>,
    child: &mut Child,
    rx: &Receiver<Line>,
    sys: &SysfsDevice,
) -> Option<std::process::ExitStatus> {
    let mut next_sample = Instant::now();
    loop {
        if Instant::now() >= next_sample {
            d.sample(sys);
            next_sample += plan.sample;
        }
        let sample = d.last.as_deref().map(|s| (s, d.last_at));
        d.actions.step(r, sys, sample);
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if d.start.elapsed() >= d.run.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        let wait = next_sample.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(Line::Out(s)) => d.line(ctx, r, &s, child),
            Ok(Line::Err(s)) => d.err_line(&s),
            Err(RecvTimeoutError::Timeout) => {}
            // Both pipes closed: only the exit status is left to wait for.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
        }
    }
}

/// The run's own process (the agent) over L2's idle window: how often it woke, its CPU time.
fn idle_cost(
    r: &mut Reporter,
    name: &str,
    since: Instant,
    before: Option<ProcUsage>,
    after: Option<ProcUsage>,
) {
    let window = since.elapsed().as_millis();
    match (before, after) {
        (Some(b), Some(a)) => r.info(
            &format!("{name}.agent-idle"),
            format!(
                "wakeups={} cpu_ticks={} window_ms={window}",
                a.switches.saturating_sub(b.switches),
                a.cpu_ticks.saturating_sub(b.cpu_ticks)
            ),
        ),
        _ => r.info(
            &format!("{name}.agent-idle"),
            format!("unreadable window_ms={window}"),
        ),
    }
}

/// Takes a second device fd from the process that holds the device's VFIO group (found by the
/// group node in `/proc/*/fd`, not assumed to be the run's child), probes the low-power
/// features on it, closes it, and checks that the run's process is still alive afterwards.
fn adopt_check(ctx: &Ctx, r: &mut Reporter, name: &str, child: &mut Child) {
    let holders = vfio_pm::adopt::group_holders(&ctx.sysfs, ctx.device);
    let pid = match &holders {
        Ok(h) if !h.is_empty() => h[0],
        other => {
            r.check(
                &format!("{name}.adopt-holder"),
                false,
                format!("no holder of the group: {other:?}"),
            );
            return;
        }
    };
    r.check(
        &format!("{name}.adopt-holder"),
        true,
        format!(
            "group held by pids {holders:?} (the run's child is {})",
            child.id()
        ),
    );
    let before = ctx
        .sysfs
        .device(ctx.device)
        .ok()
        .and_then(|s| s.observe().ok());
    match vfio_pm::adopt::adopt_device(&ctx.sysfs, pid, ctx.device) {
        Ok(fd) => {
            let probe = vfio_pm::feature::probe(&fd);
            let ok = probe
                .as_ref()
                .is_ok_and(|s| s.entry && s.entry_with_wakeup && s.exit);
            r.check(
                &format!("{name}.adopt-probe"),
                ok,
                format!(
                    "second device fd from pid {pid}: probe {probe:?} (L1 device {} before)",
                    obs_text(before)
                ),
            );
            drop(fd);
        }
        Err(e) => {
            r.check(
                &format!("{name}.adopt-probe"),
                false,
                format!("adopt from pid {pid}: {e}"),
            );
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let alive = matches!(child.try_wait(), Ok(None));
    let still = vfio_pm::adopt::group_holders(&ctx.sysfs, ctx.device);
    r.check(
        &format!("{name}.adopt-qemu-keeps-running"),
        alive && still.as_ref().is_ok_and(|h| h.contains(&pid)),
        format!("after closing the second fd: child alive {alive}, group holders {still:?}"),
    );
}
