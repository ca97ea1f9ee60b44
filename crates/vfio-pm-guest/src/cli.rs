//! Phase `cli`: the `vfio-pm` command line tool (installed in the guest as `/bin/vfio-pm`) run as
//! a subprocess, its JSON output and exit codes checked against what the kernel shows in sysfs.
//!
//! Every step starts from, and returns to, the device's unused state (bound to vfio-pci, nobody
//! holding it, runtime-suspended in the platform's D3 state). On the `d3cold` platform the phase
//! also confirms that the state is the firmware's doing (`_PR3` power resources, the resource
//! off) and prints a trap window (`VFIOPM INFO trap-mark begin|end`): the host checks that the
//! last byte the AML wrote to the trap port before `begin` was a power-off and that none came
//! until `end`.

mod cycle;
mod doctor;
mod hold;
mod inspect;
mod json;

use cycle::{cycle, cycle_wakeup};
use doctor::{doctor, doctor_while_held};
use hold::{hold, hold_early_sigint, hold_sigint, hold_wakeup};
use inspect::{bad_input, firmware, probe, probe_iommufd, status};
use json::*;

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
