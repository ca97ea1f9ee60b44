//! Phase `timing`: informational figures of the real kernel's low-power transitions, as sysfs
//! reports them (BENCHMARKS.md, *Real kernels in QEMU*). Under QEMU TCG these are not hardware
//! timings: they show the kernel's own delays (`d3hot_delay`, the ACPI `_ON`/`_OFF` methods)
//! plus the emulator's cost, and nothing is asserted on them.
//!
//! [`CYCLES`] times, on an opened device held D0 active: LOW_POWER_ENTRY, then sysfs polled
//! every [`POLL_INTERVAL`] until `power/runtime_status` is `suspended` and `power_state` the
//! platform's D3 state; [`HOLD`] later LOW_POWER_EXIT, then polled until `active` and `D0`.
//! Output, one line per figure (milliseconds, `n` cycles):
//!
//! ```text
//! VFIOPM INFO timing entry_ioctl_ms n=10 min=0.05 p50=0.07 max=0.11
//! VFIOPM INFO timing entry_to_suspended_ms n=10 min=11.2 p50=12.0 max=14.9
//! VFIOPM INFO timing exit_ioctl_ms n=10 min=... p50=... max=...
//! VFIOPM INFO timing exit_to_active_ms n=10 min=... p50=... max=...
//! VFIOPM INFO timing poll_ms n=... min=... p50=... max=...
//! VFIOPM INFO timing suspended_total_ms n=10 kernel=231 observed=229.8
//! ```
//!
//! `poll_ms` is the cost of one poll (both files read): the resolution of the `_to_` figures.
//! `timing-first-poll-after-entry|exit` (not figures) count what the first poll read
//! (`status/state=cycles`): after EXIT it tells whether the ioctl returned with the resume done.
//! `suspended_total_ms` compares the kernel's `power/runtime_suspended_time` growth over all
//! cycles with the windows the poller saw (suspended seen → EXIT issued). One check,
//! `timing-cycles`, says every cycle reached both states.

use crate::checks::wait_suspended;
use crate::context::Ctx;
use crate::report::Reporter;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use vfio_pm::{ConformanceDevice, KernelDevice, LowPower, PowerState, RuntimeStatus, SysfsDevice};

/// Cycles measured per boot.
pub const CYCLES: usize = 10;

/// Sleep between two polls (the poller must yield: the guest has one vCPU and the suspend runs
/// in a kernel worker).
pub const POLL_INTERVAL: Duration = Duration::from_micros(200);

/// How long a cycle stays suspended before EXIT (gives the kernel's suspended-time counter,
/// kept in milliseconds, something to count).
pub const HOLD: Duration = Duration::from_millis(20);

/// Upper bound of one wait for a state.
const STATE_LIMIT: Duration = Duration::from_secs(3);

/// The INFO key of every figure.
pub const INFO_KEY: &str = "timing";

/// min, p50 (nearest rank) and max of `samples`, or `None` when empty.
pub fn summarize(samples: &[f64]) -> Option<(f64, f64, f64)> {
    let mut s: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let p50 = s[s.len().div_ceil(2) - 1];
    Some((s[0], p50, s[s.len() - 1]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The distribution line of one figure.
pub fn distribution_line(name: &str, samples: &[f64]) -> String {
    match summarize(samples) {
        Some((min, p50, max)) => format!(
            "{name} n={} min={min:.3} p50={p50:.3} max={max:.3}",
            samples.len()
        ),
        None => format!("{name} n=0"),
    }
}

fn read(dir: &Path, rel: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(rel))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Polls until `runtime_status` and `power_state` read `status` and `state`; returns when that
/// was first seen, or `None` at [`STATE_LIMIT`]. Each poll's cost goes to `polls`; the first
/// poll's reading (`status/state`) to `first`.
fn poll_until(
    dir: &Path,
    status: &RuntimeStatus,
    state: &PowerState,
    polls: &mut Vec<f64>,
    mut first: Option<&mut String>,
) -> Option<Instant> {
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let st = read(dir, "power/runtime_status").map(|s| RuntimeStatus::from_sysfs(&s));
        let ps = read(dir, "power_state").map(|s| PowerState::from_sysfs(&s));
        let now = Instant::now();
        if let Some(f) = first.take() {
            *f = format!(
                "{}/{}",
                st.as_ref().map_or("?".into(), ToString::to_string),
                ps.as_ref().map_or("?".into(), ToString::to_string)
            );
        }
        if polls.len() < 10_000 {
            polls.push(ms(now - t));
        }
        if st.as_ref() == Some(status) && ps.as_ref() == Some(state) {
            return Some(now);
        }
        if start.elapsed() >= STATE_LIMIT {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn suspended_time_ms(dir: &Path) -> Option<u64> {
    read(dir, "power/runtime_suspended_time")?.parse().ok()
}

/// The figures of all cycles.
#[derive(Default)]
struct Samples {
    entry_ioctl: Vec<f64>,
    entry_to_suspended: Vec<f64>,
    exit_ioctl: Vec<f64>,
    exit_to_active: Vec<f64>,
    polls: Vec<f64>,
    observed_suspended: f64,
    /// What the first poll after ENTRY and after EXIT read, with how many cycles read it.
    first_after_entry: BTreeMap<String, u32>,
    first_after_exit: BTreeMap<String, u32>,
}

/// One cycle; `Err` says which step did not happen.
fn cycle(ctx: &Ctx, dev: &KernelDevice, dir: &Path, s: &mut Samples) -> Result<(), String> {
    let d3 = ctx.platform.suspended_state();
    let t0 = Instant::now();
    dev.enter_low_power().map_err(|e| format!("ENTRY: {e}"))?;
    let t1 = Instant::now();
    let mut first = String::new();
    let t2 = poll_until(
        dir,
        &RuntimeStatus::Suspended,
        &d3,
        &mut s.polls,
        Some(&mut first),
    )
    .ok_or_else(|| format!("not suspended in {d3} within {STATE_LIMIT:?} of ENTRY"))?;
    *s.first_after_entry
        .entry(std::mem::take(&mut first))
        .or_default() += 1;
    std::thread::sleep(HOLD);
    let t3 = Instant::now();
    dev.exit_low_power().map_err(|e| format!("EXIT: {e}"))?;
    let t4 = Instant::now();
    let t5 = poll_until(
        dir,
        &RuntimeStatus::Active,
        &PowerState::D0,
        &mut s.polls,
        Some(&mut first),
    )
    .ok_or_else(|| format!("not D0 active within {STATE_LIMIT:?} of EXIT"))?;
    *s.first_after_exit.entry(first).or_default() += 1;
    s.entry_ioctl.push(ms(t1 - t0));
    s.entry_to_suspended.push(ms(t2 - t1));
    s.exit_ioctl.push(ms(t4 - t3));
    s.exit_to_active.push(ms(t5 - t4));
    s.observed_suspended += ms(t3 - t2);
    Ok(())
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let sys: SysfsDevice = match ctx.sysfs.device(ctx.device) {
        Ok(s) => s,
        Err(e) => {
            r.check("timing-cycles", false, e);
            return;
        }
    };
    let dir = sys.dir().to_path_buf();
    let mut dev = match KernelDevice::open(&ctx.sysfs, ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("timing-cycles", false, format!("open: {e}"));
            return;
        }
    };
    let mut s = Samples::default();
    // The open resumed the device; the first cycle starts from D0 active like the others.
    let mut failure = poll_until(
        &dir,
        &RuntimeStatus::Active,
        &PowerState::D0,
        &mut Vec::new(),
        None,
    )
    .is_none()
    .then(|| "not D0 active after open".to_string());
    let before = suspended_time_ms(&dir);
    let started = Instant::now();
    if failure.is_none() {
        for i in 0..CYCLES {
            if let Err(e) = cycle(ctx, &dev, &dir, &mut s) {
                failure = Some(format!("cycle {i}: {e}"));
                let _ = dev.exit_low_power();
                break;
            }
        }
    }
    let after = suspended_time_ms(&dir);
    let took = started.elapsed();
    for (name, v) in [
        ("entry_ioctl_ms", &s.entry_ioctl),
        ("entry_to_suspended_ms", &s.entry_to_suspended),
        ("exit_ioctl_ms", &s.exit_ioctl),
        ("exit_to_active_ms", &s.exit_to_active),
        ("poll_ms", &s.polls),
    ] {
        r.info(INFO_KEY, distribution_line(name, v));
    }
    for (key, seen) in [
        ("timing-first-poll-after-entry", &s.first_after_entry),
        ("timing-first-poll-after-exit", &s.first_after_exit),
    ] {
        let text: Vec<String> = seen.iter().map(|(k, n)| format!("{k}={n}")).collect();
        r.info(key, text.join(" "));
    }
    if let (Some(b), Some(a)) = (before, after) {
        r.info(
            INFO_KEY,
            format!(
                "suspended_total_ms n={} kernel={} observed={:.3}",
                s.entry_ioctl.len(),
                a.saturating_sub(b),
                s.observed_suspended
            ),
        );
    }
    r.check(
        "timing-cycles",
        failure.is_none() && s.exit_to_active.len() == CYCLES,
        format!(
            "{} of {CYCLES} ENTRY/EXIT cycles reached {} suspended and D0 active in {took:.1?}{}",
            s.exit_to_active.len(),
            ctx.platform.suspended_state(),
            failure.map(|f| format!("; {f}")).unwrap_or_default()
        ),
    );
    let _ = dev.close();
    drop(dev);
    let (o, waited) = wait_suspended(&sys, ctx.suspend_timeout);
    let want = ctx.platform.suspended_state();
    r.check(
        "timing-closed-suspended",
        o.as_ref()
            .is_ok_and(|o| o.runtime_status == RuntimeStatus::Suspended && o.power_state == want),
        format!("{o:?} after {waited:?} (want {want} suspended)"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_min_nearest_rank_median_and_max() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(summarize(&[4.0, 1.0, 3.0, 2.0]), Some((1.0, 2.0, 4.0)));
        assert_eq!(summarize(&[5.0, 1.0, 9.0]), Some((1.0, 5.0, 9.0)));
        assert_eq!(summarize(&[f64::NAN, 2.0]), Some((2.0, 2.0, 2.0)));
        assert_eq!(
            distribution_line("x_ms", &[1.0, 2.5]),
            "x_ms n=2 min=1.000 p50=1.000 max=2.500"
        );
        assert_eq!(distribution_line("x_ms", &[]), "x_ms n=0");
    }
}
