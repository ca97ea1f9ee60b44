//! Phase `scenarios`: every conformance scenario of the workspace (`scenarios/*.scn`, embedded
//! in this binary through [`vfio_pm_sim::scenario::BUILTIN`]) that applies to the VM's
//! platform and to vfio-pci's loaded `disable_idle_d3` (a scenario's `module` header; a boot
//! with `disable_idle_d3=1` runs only those scenarios), run against the real kernel ([`KernelDevice`]) with the same runner the model
//! uses. The host compares the traces with the model's (`cargo xtask conformance`).
//!
//! Output per scenario: one `VFIOPM TRACE <scenario> <line>` per step, then the end marker
//! `VFIOPM INFO scenario-end <scenario> steps=<n> ms=<elapsed>`. Checks: the scenarios parse,
//! and every scenario started from the baseline (device closed, `power/control=auto`,
//! `d3cold_allowed=1`, runtime-suspended; with `disable_idle_d3=1`: D0 active, outcome 1 of
//! docs/kernel-behaviour.md).

use crate::context::Ctx;
use crate::report::Reporter;
use std::time::{Duration, Instant};
use vfio_pm::{ConformanceDevice, Errno, KernelDevice, OpenError, RuntimeStatus, SysfsDevice};
use vfio_pm_sim::scenario::{self, RunOptions};

/// The settle limit per step. A runtime suspend takes about 12 ms in the QEMU guest (the
/// `checks` phase reports it); an active device counts as settled after this much quiet.
pub const SETTLE_LIMIT: Duration = Duration::from_millis(150);

/// How long the baseline may take to suspend.
const BASELINE_LIMIT: Duration = Duration::from_secs(3);

/// The errno the runner records when the factory cannot open the device.
pub fn open_errno(e: &OpenError) -> Errno {
    match e {
        OpenError::Busy { .. } => Errno::EBUSY,
        OpenError::Permission { .. } => Errno::EACCES,
        OpenError::NoDevVfio { .. } => Errno::ENOENT,
        OpenError::Sysfs(_)
        | OpenError::NotVfio { .. }
        | OpenError::NoIommuGroup { .. }
        | OpenError::NotViable { .. } => Errno::ENODEV,
        OpenError::DeviceInfo { errno, .. } => *errno,
        OpenError::Vfio { .. } => Errno::EIO,
    }
}

/// Writes `value` to `rel` unless it already reads so (a `d3cold_allowed` write resumes the
/// device even when the value does not change).
fn ensure_knob(sys: &SysfsDevice, rel: &str, value: &str) -> Result<(), String> {
    let path = sys.dir().join(rel);
    let now = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if now.trim() == value {
        return Ok(());
    }
    sys.write(rel, value).map_err(|e| e.to_string())
}

/// Where vfio-pci shows its `disable_idle_d3` module parameter (`Y` or `N`).
pub const DISABLE_IDLE_D3_PARAM: &str = "/sys/module/vfio_pci/parameters/disable_idle_d3";

/// vfio-pci's `disable_idle_d3` as loaded (the harness's `/init` passes it to `insmod`).
pub fn disable_idle_d3() -> Result<bool, String> {
    let v = std::fs::read_to_string(DISABLE_IDLE_D3_PARAM)
        .map_err(|e| format!("{DISABLE_IDLE_D3_PARAM}: {e}"))?;
    match v.trim() {
        "Y" | "1" => Ok(true),
        "N" | "0" => Ok(false),
        other => Err(format!("{DISABLE_IDLE_D3_PARAM}: unexpected {other:?}")),
    }
}

/// Brings the (closed) device back to the baseline: `power/control=auto`, `d3cold_allowed=1`,
/// runtime-suspended (two readings 10 ms apart agree). With `idle_d3_disabled` the baseline
/// is D0 active instead (an unused device is not suspended; outcome 1 of docs/kernel-behaviour.md), held for
/// [`SETTLE_LIMIT`].
pub fn baseline(sys: &SysfsDevice, idle_d3_disabled: bool) -> Result<String, String> {
    ensure_knob(sys, "power/control", "auto")?;
    ensure_knob(sys, "d3cold_allowed", "1")?;
    let start = Instant::now();
    if idle_d3_disabled {
        let mut since = Instant::now();
        let mut last = sys.observe().map_err(|e| e.to_string())?;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            let now = sys.observe().map_err(|e| e.to_string())?;
            if now != last {
                since = Instant::now();
            }
            last = now;
            let d0_active = last.runtime_status == RuntimeStatus::Active
                && last.power_state == vfio_pm::PowerState::D0;
            if d0_active && since.elapsed() >= SETTLE_LIMIT {
                return Ok(last.to_string());
            }
            if start.elapsed() >= BASELINE_LIMIT {
                return Err(format!(
                    "disable_idle_d3=1: not D0 active for {SETTLE_LIMIT:?} within \
                     {BASELINE_LIMIT:?}: {last}"
                ));
            }
        }
    }
    loop {
        let a = sys.observe().map_err(|e| e.to_string())?;
        if a.runtime_status == RuntimeStatus::Suspended {
            std::thread::sleep(Duration::from_millis(10));
            let b = sys.observe().map_err(|e| e.to_string())?;
            if a == b {
                return Ok(b.to_string());
            }
        }
        if start.elapsed() >= BASELINE_LIMIT {
            return Err(format!("not suspended after {BASELINE_LIMIT:?}: {a}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let idle_d3_disabled = match disable_idle_d3() {
        Ok(v) => v,
        Err(e) => {
            r.check("scenarios-disable-idle-d3", false, e);
            return;
        }
    };
    r.info("disable_idle_d3", idle_d3_disabled);
    run_set(ctx, r, idle_d3_disabled, "scenarios");
}

/// Runs the scenarios that apply to the platform and to a device bound with
/// `disable_idle_d3` = `idle_d3_disabled`; the checks are named `<checks>-parse`,
/// `<checks>-baseline`, ... (phase `idle-d3-rebind` runs its set under its own names).
pub fn run_set(ctx: &Ctx, r: &mut Reporter, idle_d3_disabled: bool, checks: &str) {
    let all = match scenario::builtin() {
        Ok(all) => all,
        Err(e) => {
            r.check(&format!("{checks}-parse"), false, e);
            return;
        }
    };
    let platform = match ctx.platform {
        crate::context::Platform::D3Hot => vfio_pm_sim::Platform::D3hot,
        crate::context::Platform::D3Cold => vfio_pm_sim::Platform::D3cold,
    };
    let applicable: Vec<_> = all
        .iter()
        .filter(|s| s.applies_to(platform) && s.disable_idle_d3 == idle_d3_disabled)
        .collect();
    r.check(
        &format!("{checks}-parse"),
        !applicable.is_empty(),
        format!(
            "{} scenarios embedded, {} apply to {platform} with disable_idle_d3={}",
            all.len(),
            applicable.len(),
            u8::from(idle_d3_disabled)
        ),
    );
    let sys = match ctx.sysfs.device(ctx.device) {
        Ok(s) => s,
        Err(e) => {
            r.check(&format!("{checks}-device-present"), false, e);
            return;
        }
    };
    let options = RunOptions {
        settle_limit: SETTLE_LIMIT,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let mut off_baseline = Vec::new();
    for sc in applicable {
        if let Err(e) = baseline(&sys, idle_d3_disabled) {
            r.check(&format!("scenario-baseline-{}", sc.name), false, e);
            off_baseline.push(sc.name.clone());
        }
        let t0 = Instant::now();
        let mut open = || -> Result<Box<dyn ConformanceDevice>, Errno> {
            KernelDevice::open(&ctx.sysfs, ctx.device)
                .map(|d| Box::new(d) as Box<dyn ConformanceDevice>)
                .map_err(|e| {
                    r.info("scenario-open-error", format!("{}: {e}", sc.name));
                    open_errno(&e)
                })
        };
        let trace = scenario::run_with(sc, &mut open, &options);
        for line in &trace.lines {
            r.trace(&sc.name, line);
        }
        r.info(
            "scenario-end",
            format!(
                "{} steps={} ms={}",
                sc.name,
                trace.lines.len(),
                t0.elapsed().as_millis()
            ),
        );
    }
    if let Err(e) = baseline(&sys, idle_d3_disabled) {
        r.check(&format!("{checks}-baseline-after"), false, e);
    }
    r.check(
        &format!("{checks}-baseline"),
        off_baseline.is_empty(),
        format!(
            "every scenario started closed, auto, d3cold_allowed=1, {} (failed: {off_baseline:?}); all took {:.1?}",
            if idle_d3_disabled { "D0 active" } else { "suspended" },
            started.elapsed()
        ),
    );
}
