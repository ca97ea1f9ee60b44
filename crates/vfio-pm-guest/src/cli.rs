//! Phase `cli`: the `vfio-pm` command line tool (installed in the guest as `/bin/vfio-pm`) run as
//! a subprocess, its JSON output and exit codes checked against what the kernel shows in sysfs.
//!
//! Every step starts from, and returns to, the device's unused state (bound to vfio-pci, nobody
//! holding it, runtime-suspended in the platform's D3 state). On the `d3cold` platform the phase
//! also confirms that the state is the firmware's doing (`_PR3` power resources, the resource
//! off) and prints a trap window (`VFIOPM INFO trap-mark begin|end`): the host checks that the
//! last byte the AML wrote to the trap port before `begin` was a power-off and that none came
//! until `end`.

use crate::checks::{observe_held, observe_stable, wait_suspended};
use crate::context::{Ctx, Platform};
use crate::report::Reporter;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use vfio_pm::{KernelDevice, LowPower, PowerObservation, PowerState, RuntimeStatus, SysfsDevice};

/// Where the harness installs the CLI.
pub const CLI: &str = "/bin/vfio-pm";

/// A device address that QEMU's q35 machine does not have.
const MISSING: &str = "0000:00:1f.7";
/// The q35 host bridge: present, never bound to vfio-pci.
const HOST_BRIDGE: &str = "0000:00:00.0";

/// Hard limit of one CLI run (cycle waits up to 5 s per suspend).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// How long the device is watched while the host checks the trap window.
const TRAP_WINDOW: Duration = Duration::from_millis(600);

/// A finished CLI run.
#[derive(Debug, Default)]
struct Run {
    /// Exit code; `None` when killed by a signal or at the limit.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
    timed_out: bool,
}

impl Run {
    fn summary(&self) -> String {
        format!(
            "exit {:?}{} in {:.2?}; stderr {:?}",
            self.code,
            if self.timed_out {
                " (killed at limit)"
            } else {
                ""
            },
            self.took,
            self.stderr.trim()
        )
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn spawn(args: &[&str]) -> Result<Child, String> {
    Command::new(CLI)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {CLI} {args:?}: {e}"))
}

/// Waits for `child` until `limit` (from `start`), killing it then.
fn wait_child(child: &mut Child, start: Instant, limit: Duration) -> (Option<i32>, bool) {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return (st.code(), false),
            Ok(None) if start.elapsed() >= limit => {
                let _ = child.kill();
                let code = child.wait().ok().and_then(|s| s.code());
                return (code, true);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return (None, false),
        }
    }
}

/// Runs the CLI to completion (killed after [`RUN_LIMIT`]).
fn run_cli(args: &[&str]) -> Result<Run, String> {
    let start = Instant::now();
    let mut child = spawn(args)?;
    let out = child.stdout.take().map(read_all);
    let err = child.stderr.take().map(read_all);
    let (code, timed_out) = wait_child(&mut child, start, RUN_LIMIT);
    Ok(Run {
        code,
        stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
        stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
        took: start.elapsed(),
        timed_out,
    })
}

/// A running `hold`: its JSON lines as they come.
struct Streaming {
    child: Child,
    start: Instant,
    lines: Receiver<String>,
    seen: Vec<Value>,
    garbage: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Streaming {
    fn spawn(args: &[&str]) -> Result<Self, String> {
        let start = Instant::now();
        let mut child = spawn(args)?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = child.stderr.take().map(read_all);
        Ok(Self {
            child,
            start,
            lines,
            seen: Vec::new(),
            garbage: Vec::new(),
            stderr,
        })
    }

    fn take(&mut self, line: String) {
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => self.seen.push(v),
            Err(_) => self.garbage.push(line),
        }
    }

    /// Reads lines until one matches `want` or `limit` passes; true when one matched.
    fn wait_for(&mut self, limit: Duration, want: impl Fn(&Value) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.take(line);
                    if self.seen.last().is_some_and(&want) {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits for exit (killing at `limit` from the start) and collects the remaining lines.
    fn finish(mut self, limit: Duration) -> (Run, Vec<Value>, Vec<String>) {
        let (code, timed_out) = wait_child(&mut self.child, self.start, limit);
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.take(line);
        }
        let run = Run {
            code,
            stdout: String::new(),
            stderr: self
                .stderr
                .take()
                .and_then(|h| h.join().ok())
                .unwrap_or_default(),
            took: self.start.elapsed(),
            timed_out,
        };
        (run, self.seen, self.garbage)
    }
}

fn parse(stdout: &str) -> Result<Value, String> {
    serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e}): {:?}", stdout.trim()))
}

fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)?.as_str()
}

fn flag(v: &Value, ptr: &str) -> Option<bool> {
    v.pointer(ptr)?.as_bool()
}

/// A JSON number of milliseconds as text, `-` when absent.
fn millis(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .map_or("-".into(), |m| format!("{m:.1}"))
}

fn num(v: &Value, ptr: &str) -> Option<u64> {
    v.pointer(ptr)?.as_u64()
}

/// The observation a JSON object `{"power_state": .., "runtime_status": ..}` describes.
fn observation(v: &Value, ptr: &str) -> Option<PowerObservation> {
    Some(PowerObservation {
        power_state: PowerState::from_sysfs(text(v, &format!("{ptr}/power_state"))?),
        runtime_status: RuntimeStatus::from_sysfs(text(v, &format!("{ptr}/runtime_status"))?),
    })
}

fn event(v: &Value) -> &str {
    text(v, "/event").unwrap_or("?")
}

fn d0_active() -> PowerObservation {
    PowerObservation {
        power_state: PowerState::D0,
        runtime_status: RuntimeStatus::Active,
    }
}

fn suspended(p: Platform) -> PowerObservation {
    PowerObservation {
        power_state: p.suspended_state(),
        runtime_status: RuntimeStatus::Suspended,
    }
}

/// A `state` hold event showing the device suspended in the platform's D3 state.
fn is_suspended_state(p: Platform) -> impl Fn(&Value) -> bool {
    move |v| event(v) == "state" && observation(v, "/state") == Some(suspended(p))
}

/// After a CLI run that opened the device: it must be back in its unused state.
fn back_to_unused(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice, name: &str) -> bool {
    let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
    let want = suspended(ctx.platform);
    match o {
        Ok(o) => r.check(name, o == want, format!("{o} (want {want}) after {took:?}")),
        Err(e) => r.check(name, false, format!("observe failed: {e}")),
    }
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    if !r.check(
        "cli-installed",
        std::path::Path::new(CLI).is_file(),
        format!("{CLI} (the harness installs it unless --no-cli)"),
    ) {
        return;
    }
    let sys = match ctx.sysfs.device(ctx.device) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-device-present", false, e);
            return;
        }
    };
    firmware(ctx, r, &sys);
    probe(ctx, r, &sys);
    probe_iommufd(ctx, r, &sys);
    cycle(ctx, r, &sys);
    cycle_wakeup(ctx, r, &sys);
    hold(ctx, r, &sys);
    hold_wakeup(ctx, r, &sys);
    hold_sigint(ctx, r, &sys);
    hold_early_sigint(ctx, r, &sys);
    doctor(ctx, r, &sys);
    doctor_while_held(ctx, r, &sys);
    status(ctx, r, &sys);
    bad_input(r);
}

fn read_firmware(sys: &SysfsDevice, rel: &str) -> String {
    std::fs::read_to_string(sys.dir().join("firmware_node").join(rel))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{rel}: {e}>"))
}

/// The unused device's state and where it comes from: `_PR3` power resources that the kernel
/// turned off (d3cold), or none at all (d3hot).
fn firmware(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    if !back_to_unused(ctx, r, sys, "cli-unused-suspended") {
        return;
    }
    let report = sys.report();
    let pr3 = report.power_resources_d3hot.known().cloned();
    match ctx.platform {
        Platform::D3Hot => {
            r.check(
                "cli-firmware-no-pr3",
                pr3.as_ref().map_or(true, |v| v.is_empty()),
                format!("power_resources_D3hot: {pr3:?}"),
            );
        }
        Platform::D3Cold => {
            r.check(
                "cli-firmware-pr3",
                pr3.as_ref().is_some_and(|v| !v.is_empty()),
                format!(
                    "power_resources_D3hot: {pr3:?}; power_resources_D0: {:?}",
                    report.power_resources_d0.known()
                ),
            );
            let real = read_firmware(sys, "real_power_state");
            r.check(
                "cli-firmware-real-power-state-d3cold",
                real == "D3cold",
                format!(
                    "firmware_node/real_power_state {real:?} (the resource's _STA says off), \
                     firmware_node/power_state {:?}",
                    read_firmware(sys, "power_state")
                ),
            );
            // The trap window: the host reads the trap port's length at both marks.
            r.info("trap-mark", "begin");
            let held = observe_held(sys, TRAP_WINDOW);
            let real_after = read_firmware(sys, "real_power_state");
            r.info("trap-mark", "end");
            let want = suspended(ctx.platform);
            r.check(
                "cli-trap-window-d3cold",
                held.as_ref() == Ok(&want) && real_after == "D3cold",
                format!(
                    "{held:?} for {TRAP_WINDOW:?} (want {want}), real_power_state {real_after:?}"
                ),
            );
            // Let the console line reach the host before the next power-on.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn probe(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["probe", &bdf, "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-probe", false, e);
            return;
        }
    };
    let detail = format!("{}; {}", run.stdout.trim(), run.summary());
    let ok = run.code == Some(0)
        && parse(&run.stdout).is_ok_and(|v| {
            text(&v, "/address") == Some(&bdf)
                && ["/entry", "/entry_with_wakeup", "/exit"]
                    .iter()
                    .all(|p| flag(&v, p) == Some(true))
        });
    r.check("cli-probe-all-supported", ok, detail);
    back_to_unused(ctx, r, sys, "cli-probe-back-suspended");
}

/// `probe --iommufd`: where the kernel offers cdev + iommufd it probes like `probe`; where it
/// does not (Debian's kernels), it fails with status 2 and names the missing kernel option.
fn probe_iommufd(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let offered = vfio_pm::iommufd::interfaces(&ctx.sysfs, sys).cdev_iommufd();
    let run = match run_cli(&["probe", &bdf, "--iommufd", "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-probe-iommufd", false, e);
            return;
        }
    };
    let ok = if offered {
        run.code == Some(0)
            && parse(&run.stdout).is_ok_and(|v| flag(&v, "/entry_with_wakeup") == Some(true))
    } else {
        run.code == Some(2) && run.stderr.contains("CONFIG_VFIO_DEVICE_CDEV")
    };
    r.check(
        "cli-probe-iommufd",
        ok,
        format!("cdev+iommufd offered: {offered}; {}", run.summary()),
    );
    back_to_unused(ctx, r, sys, "cli-probe-iommufd-back-suspended");
}

/// Checks one element of `cycle --json`'s `cycles`.
fn cycle_problems(c: &Value, n: u64, wakeup: bool, p: Platform) -> Vec<String> {
    let mut bad = Vec::new();
    let want_variant = if wakeup { "entry_with_wakeup" } else { "entry" };
    if num(c, "/cycle") != Some(n) {
        bad.push(format!("cycle {:?} (want {n})", c.pointer("/cycle")));
    }
    if text(c, "/variant") != Some(want_variant) {
        bad.push(format!("variant {:?}", text(c, "/variant")));
    }
    if flag(c, "/ok") != Some(true) {
        bad.push(format!(
            "ok {:?}: {:?}",
            flag(c, "/ok"),
            c.pointer("/problems")
        ));
    }
    let reached = text(c, "/reached");
    if reached != Some(p.suspended_state().as_str())
        || text(c, "/runtime_status") != Some("suspended")
    {
        bad.push(format!(
            "reached {reached:?} {:?} (want {})",
            text(c, "/runtime_status"),
            suspended(p)
        ));
    }
    let wakeups = num(c, "/wakeups");
    if wakeup && wakeups != Some(1) || !wakeup && wakeups.is_some() {
        bad.push(format!("wakeups {wakeups:?}"));
    }
    if observation(c, "/after_exit") != Some(d0_active()) {
        bad.push(format!("after_exit {:?}", c.pointer("/after_exit")));
    }
    bad
}

fn check_cycle(r: &mut Reporter, name: &str, args: &[&str], count: u64, wakeup: bool, p: Platform) {
    let run = match run_cli(args) {
        Ok(run) => run,
        Err(e) => {
            r.check(name, false, e);
            return;
        }
    };
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    match parse(&run.stdout) {
        Ok(v) => {
            if flag(&v, "/ok") != Some(true) {
                bad.push(format!("ok {:?}", flag(&v, "/ok")));
            }
            let cycles = v
                .pointer("/cycles")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if cycles.len() as u64 != count {
                bad.push(format!("{} cycles (want {count})", cycles.len()));
            }
            for (i, c) in cycles.iter().enumerate() {
                for b in cycle_problems(c, i as u64 + 1, wakeup, p) {
                    bad.push(format!("cycle {}: {b}", i + 1));
                }
                r.info(
                    &format!("{name}-{}", i + 1),
                    format!(
                        "{} {} entry {} ms wake {} ms exit {} ms",
                        text(c, "/reached").unwrap_or("?"),
                        text(c, "/runtime_status").unwrap_or("?"),
                        millis(c, "/entry_ms"),
                        millis(c, "/wake_ms"),
                        millis(c, "/exit_ms"),
                    ),
                );
            }
        }
        Err(e) => bad.push(e),
    }
    r.check(
        name,
        bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{count} cycle(s) to {} and back; {}",
                suspended(p),
                run.summary()
            )
        } else {
            bad.join("; ")
        },
    );
}

fn cycle(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    check_cycle(
        r,
        "cli-cycle",
        &["cycle", &bdf, "--json"],
        1,
        false,
        ctx.platform,
    );
    back_to_unused(ctx, r, sys, "cli-cycle-back-suspended");
}

fn cycle_wakeup(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    check_cycle(
        r,
        "cli-cycle-wakeup",
        &["cycle", &bdf, "--wakeup", "--count", "2", "--json"],
        2,
        true,
        ctx.platform,
    );
    back_to_unused(ctx, r, sys, "cli-cycle-wakeup-back-suspended");
}

/// What a finished `hold` printed, judged: entered first, exited last (in D0 active).
fn hold_shape(
    run: &Run,
    events: &[Value],
    garbage: &[String],
    variant: &str,
    p: Platform,
) -> Vec<String> {
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    if !garbage.is_empty() {
        bad.push(format!("non-JSON lines {garbage:?}"));
    }
    match events.first() {
        Some(e) if event(e) == "entered" && text(e, "/variant") == Some(variant) => {}
        other => bad.push(format!("first line {other:?}, want entered ({variant})")),
    }
    if !events.iter().any(is_suspended_state(p)) {
        bad.push(format!("no state line with {}", suspended(p)));
    }
    match events.last() {
        Some(e) if event(e) == "exited" && observation(e, "/state") == Some(d0_active()) => {}
        other => bad.push(format!("last line {other:?}, want exited in D0 active")),
    }
    bad
}

fn hold_events(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| match event(e) {
            "state" => format!(
                "state {}",
                observation(e, "/state").map_or("?".into(), |o| o.to_string())
            ),
            "wake" => format!(
                "wake x{} rearmed {}",
                num(e, "/count").unwrap_or(0),
                flag(e, "/rearmed").unwrap_or(false)
            ),
            "exited" => format!("exited wakes {}", num(e, "/wakes").unwrap_or(0)),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn hold(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = Streaming::spawn(&["hold", &bdf, "--for", "2s", "--json"]);
    let (run, events, garbage) = match run {
        Ok(s) => s.finish(RUN_LIMIT),
        Err(e) => {
            r.check("cli-hold", false, e);
            return;
        }
    };
    let mut bad = hold_shape(&run, &events, &garbage, "entry", ctx.platform);
    if events.iter().any(|e| event(e) == "wake") {
        bad.push("a wake line without --wakeup".into());
    }
    if run.took < Duration::from_secs(2) {
        bad.push(format!("ended after {:.2?}, before --for 2s", run.took));
    }
    r.check(
        "cli-hold",
        bad.is_empty(),
        format!("[{}] {}", hold_events(&events), bad.join("; ")),
    );
    back_to_unused(ctx, r, sys, "cli-hold-back-suspended");
}

/// `hold --wakeup` while this program reads the device's config space through sysfs: that wakes
/// a D3cold device (the CLI sees the eventfd and re-arms) but not a D3hot one. A second process
/// cannot open the group that `hold` holds, so sysfs is the only host-side access available.
fn hold_wakeup(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let mut s = match Streaming::spawn(&["hold", &bdf, "--wakeup", "--for", "4s", "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-wakeup", false, e);
            return;
        }
    };
    let settled = s.wait_for(Duration::from_millis(3500), is_suspended_state(p));
    let mut bad = Vec::new();
    if settled {
        match sys.read_config() {
            Ok(c) if c.len() >= 2 && c[..2] == [0x86, 0x80] => {}
            Ok(c) => bad.push(format!(
                "sysfs config read gave {:02x?}",
                &c[..c.len().min(4)]
            )),
            Err(e) => bad.push(format!("sysfs config read: {e}")),
        }
        match p {
            Platform::D3Hot => {
                // The read must not have resumed the device.
                let held = observe_held(sys, Duration::from_millis(300));
                if held.as_ref() != Ok(&suspended(p)) {
                    bad.push(format!("after the config read: {held:?}"));
                }
            }
            Platform::D3Cold => {
                // hold samples every 100 ms, so its state lines may miss the short D0 between
                // the wake and the re-arm: sysfs shows the re-arm while hold still runs.
                if !s.wait_for(Duration::from_secs(2), |v| event(v) == "wake") {
                    bad.push("no wake line within 2 s of the sysfs config read".into());
                }
                let (o, took) = wait_suspended(sys, Duration::from_secs(2));
                let running = matches!(s.child.try_wait(), Ok(None));
                r.info(
                    "cli-hold-wakeup-rearmed",
                    format!("{o:?} {took:?} after the wake line, hold running {running}"),
                );
                if o.as_ref() != Ok(&suspended(p)) || !running {
                    bad.push(format!(
                        "not suspended again while hold runs: {o:?} after {took:?}, running {running}"
                    ));
                }
            }
        }
    } else {
        bad.push(format!(
            "no suspended state line within 3.5 s: {:?}",
            s.seen
        ));
    }
    let (run, events, garbage) = s.finish(RUN_LIMIT);
    bad.extend(hold_shape(&run, &events, &garbage, "entry_with_wakeup", p));
    let wakes: Vec<&Value> = events.iter().filter(|e| event(e) == "wake").collect();
    let total: u64 = wakes.iter().filter_map(|w| num(w, "/count")).sum();
    let exited_wakes = events.last().and_then(|e| num(e, "/wakes"));
    match p {
        Platform::D3Cold => {
            if wakes.is_empty() {
                bad.push("no wake line after the sysfs config read".into());
            }
            if !wakes.iter().all(|w| flag(w, "/rearmed") == Some(true)) {
                bad.push("a wake that was not re-armed".into());
            }
            if exited_wakes != Some(total) {
                bad.push(format!("exited wakes {exited_wakes:?}, wake lines {total}"));
            }
        }
        Platform::D3Hot => {
            if !wakes.is_empty() || exited_wakes != Some(0) {
                bad.push(format!(
                    "D3hot woke on a sysfs config read: {} wake lines, exited wakes {exited_wakes:?}",
                    wakes.len()
                ));
            }
        }
    }
    r.check(
        "cli-hold-wakeup-config-read",
        bad.is_empty(),
        format!("[{}] {}", hold_events(&events), bad.join("; ")),
    );
    back_to_unused(ctx, r, sys, "cli-hold-wakeup-back-suspended");
}

fn hold_sigint(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let mut s = match Streaming::spawn(&["hold", &bdf, "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-sigint", false, e);
            return;
        }
    };
    let settled = s.wait_for(Duration::from_secs(3), is_suspended_state(p));
    let mut bad = Vec::new();
    if !settled {
        bad.push(format!("no suspended state line within 3 s: {:?}", s.seen));
    }
    let wait = Duration::from_millis(1500).saturating_sub(s.start.elapsed());
    std::thread::sleep(wait);
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
        bad.push(format!("kill SIGINT: {}", std::io::Error::last_os_error()));
    }
    let (run, events, garbage) = s.finish(Duration::from_secs(10));
    bad.extend(hold_shape(&run, &events, &garbage, "entry", p));
    r.check(
        "cli-hold-sigint-clean-exit",
        bad.is_empty(),
        format!(
            "[{}] {} {}",
            hold_events(&events),
            run.summary(),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-hold-sigint-back-suspended");
}

/// True once `pid` blocks SIGINT (`SigBlk` in `/proc/PID/status` has bit 1 set).
fn blocks_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
}

/// SIGINT as soon as `hold` blocks it, i.e. while it is still opening the device: the signal must
/// stay pending and end the hold cleanly (entered, exited, exit 0), not kill the process.
fn hold_early_sigint(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let s = match Streaming::spawn(&["hold", &bdf, "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-early-sigint", false, e);
            return;
        }
    };
    let pid = s.child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !blocks_sigint(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let blocked_after = s.start.elapsed();
    let mut bad = Vec::new();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) } != 0 {
        bad.push(format!("kill SIGINT: {}", std::io::Error::last_os_error()));
    }
    let (run, events, garbage) = s.finish(Duration::from_secs(10));
    if run.code != Some(0) || !garbage.is_empty() {
        bad.push(format!("{} {garbage:?}", run.summary()));
    }
    if events.first().map(event) != Some("entered") {
        bad.push(format!("first line {:?}", events.first()));
    }
    match events.last() {
        Some(e) if event(e) == "exited" && observation(e, "/state") == Some(d0_active()) => {}
        other => bad.push(format!("last line {other:?}, want exited in D0 active")),
    }
    r.check(
        "cli-hold-early-sigint-clean-exit",
        bad.is_empty(),
        format!(
            "SIGINT {blocked_after:.2?} after start (signals blocked); [{}] {}",
            hold_events(&events),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-hold-early-sigint-back-suspended");
}

fn doctor_check<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v.pointer("/checks")?
        .as_array()?
        .iter()
        .find(|c| text(c, "/id") == Some(id))
}

/// Doctor's per-platform verdict: exit code, reachability, expected idle state, `_PR3` check.
fn doctor_verdict(run: &Run, v: &Value, p: Platform) -> Vec<String> {
    let mut bad = Vec::new();
    let (code, reachable, idle, pr3) = match p {
        Platform::D3Cold => (0, true, "D3cold", "pass"),
        Platform::D3Hot => (1, false, "D3hot", "fail"),
    };
    if run.code != Some(code) {
        bad.push(format!("exit {:?} (want {code})", run.code));
    }
    if flag(v, "/d3cold_reachable") != Some(reachable) {
        bad.push(format!(
            "d3cold_reachable {:?}",
            flag(v, "/d3cold_reachable")
        ));
    }
    if text(v, "/expected_idle_state") != Some(idle) {
        bad.push(format!(
            "expected_idle_state {:?} (want {idle})",
            text(v, "/expected_idle_state")
        ));
    }
    let fpr = doctor_check(v, "firmware_power_resources");
    if fpr.and_then(|c| text(c, "/verdict")) != Some(pr3) {
        bad.push(format!("firmware_power_resources {fpr:?} (want {pr3})"));
    }
    bad
}

fn doctor(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["doctor", &bdf, "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-doctor", false, e);
            return;
        }
    };
    let mut bad = Vec::new();
    let mut ks = String::new();
    match parse(&run.stdout) {
        Ok(v) => {
            bad.extend(doctor_verdict(&run, &v, ctx.platform));
            let k = doctor_check(&v, "kernel_support");
            ks = k
                .and_then(|c| text(c, "/detail"))
                .unwrap_or("?")
                .to_string();
            if k.and_then(|c| text(c, "/verdict")) != Some("pass") || !ks.starts_with("probed") {
                bad.push(format!("kernel_support {k:?} (want pass, probed)"));
            }
            // The interfaces the doctor reports are the ones the library finds in sysfs.
            let i = doctor_check(&v, "vfio_interfaces");
            let want = ctx
                .sysfs
                .device(ctx.device)
                .map(|d| vfio_pm::iommufd::interfaces(&ctx.sysfs, &d).to_string());
            if i.and_then(|c| text(c, "/detail")) != want.as_deref().ok() {
                bad.push(format!("vfio_interfaces {i:?} (want {want:?})"));
            }
        }
        Err(e) => bad.push(e),
    }
    r.check(
        "cli-doctor",
        bad.is_empty(),
        format!(
            "{}; kernel_support: {ks}; {}",
            run.summary(),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-doctor-back-suspended");
}

/// `doctor` while this program holds the device open in low power: it must infer kernel support
/// from the version (the group is busy) and leave the device exactly as it was.
fn doctor_while_held(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let dev = match KernelDevice::open(&ctx.sysfs, ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("cli-doctor-held-open", false, e);
            return;
        }
    };
    if let Err(e) = dev.enter_low_power() {
        r.check("cli-doctor-held-entry", false, e);
        return;
    }
    let (before, took) = wait_suspended(sys, ctx.suspend_timeout);
    if !r.check(
        "cli-doctor-held-suspended",
        before.as_ref() == Ok(&suspended(p)),
        format!("{before:?} after {took:?} (held by this program, ENTRY)"),
    ) {
        let _ = dev.exit_low_power();
        return;
    }
    let active_before = sys.report().runtime_active_ms.known().copied();
    let run = run_cli(&["doctor", &bdf, "--json"]);
    let after = observe_stable(sys);
    let held_after = observe_held(sys, Duration::from_millis(300));
    let active_after = sys.report().runtime_active_ms.known().copied();
    let mut bad = Vec::new();
    match &run {
        Ok(run) => match parse(&run.stdout) {
            Ok(v) => {
                bad.extend(doctor_verdict(run, &v, p));
                let k = doctor_check(&v, "kernel_support");
                let detail = k.and_then(|c| text(c, "/detail")).unwrap_or("?");
                r.info("cli-doctor-held-kernel-support", detail);
                if k.and_then(|c| text(c, "/verdict")) != Some("pass")
                    || !detail.contains("inferred from kernel")
                    || !detail.contains("held")
                {
                    bad.push(format!("kernel_support {k:?} (want pass, inferred, held)"));
                }
            }
            Err(e) => bad.push(e),
        },
        Err(e) => bad.push(e.clone()),
    }
    r.check(
        "cli-doctor-held-infers",
        bad.is_empty(),
        format!(
            "{}; {}",
            run.as_ref().map(Run::summary).unwrap_or_default(),
            bad.join("; ")
        ),
    );
    let want = suspended(p);
    r.check(
        "cli-doctor-held-undisturbed",
        after.as_ref() == Ok(&want)
            && held_after.as_ref() == Ok(&want)
            && active_before.is_some()
            && active_before == active_after,
        format!(
            "before {before:?}, after {after:?} then {held_after:?} (want {want}); \
             runtime_active_time {active_before:?} -> {active_after:?} ms (must not grow)"
        ),
    );
    let got = dev.exit_low_power();
    r.check("cli-doctor-held-exit", got.is_ok(), format!("{got:?}"));
    drop(dev);
    back_to_unused(ctx, r, sys, "cli-doctor-held-back-suspended");
}

fn status(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["status", "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-status", false, e);
            return;
        }
    };
    let now = observe_stable(sys);
    let driver = sys.driver().display();
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    let entry = parse(&run.stdout).map(|v| {
        v.as_array()
            .and_then(|a| a.iter().find(|e| text(e, "/address") == Some(&bdf)))
            .cloned()
    });
    match (&entry, &now) {
        (Ok(Some(e)), Ok(o)) => {
            let got = observation(e, "");
            if text(e, "/driver") != Some("vfio-pci") || driver != "vfio-pci" {
                bad.push(format!("driver {:?}, sysfs {driver}", text(e, "/driver")));
            }
            if got.as_ref() != Some(o) {
                bad.push(format!("status says {got:?}, sysfs {o}"));
            }
            if *o != suspended(ctx.platform) {
                bad.push(format!("sysfs {o}, want {}", suspended(ctx.platform)));
            }
        }
        (Ok(None), _) => bad.push(format!("no entry for {bdf}")),
        (Err(e), _) => bad.push(e.clone()),
        (_, Err(e)) => bad.push(format!("observe: {e}")),
    }
    r.check(
        "cli-status-agrees-with-sysfs",
        bad.is_empty(),
        format!(
            "{bdf}: {:?} {:?}; {}",
            entry
                .as_ref()
                .ok()
                .and_then(|e| e.as_ref())
                .and_then(|e| text(e, "/driver")),
            now,
            bad.join("; ")
        ),
    );
}

fn bad_input(r: &mut Reporter) {
    for (name, bdf, want) in [
        (
            "cli-probe-missing-device",
            MISSING,
            format!("no PCI device {MISSING}"),
        ),
        (
            "cli-probe-not-vfio",
            HOST_BRIDGE,
            "not vfio-pci".to_string(),
        ),
    ] {
        match run_cli(&["probe", bdf, "--json"]) {
            Ok(run) => {
                r.check(
                    name,
                    run.code == Some(2)
                        && run.stderr.contains(&want)
                        && run.stdout.trim().is_empty(),
                    format!("{} (want exit 2 and {want:?})", run.summary()),
                );
            }
            Err(e) => {
                r.check(name, false, e);
            }
        }
    }
}
