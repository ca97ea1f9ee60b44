//! Phase `idle-d3-rebind`: vfio-pci's `disable_idle_d3` written at run time, then the device
//! unbound and probed again.
//!
//! Kernels that latch the parameter per device when it is bound (`vfio_pci_init_dev` copying it
//! into `vdev->disable_idle_d3`, 7.3) give the rebound device the new value: the unused device
//! stays D0 active, and this phase runs the `module disable_idle_d3=1` scenarios on it (so such
//! a kernel needs no extra boot for them). Older kernels latch it at vfio-pci's module init
//! (`vfio_pci_core_set_params`) and ignore the write: the rebound device suspends as before.
//! The phase prints which it saw (`VFIOPM INFO disable-idle-d3-latch per-device|module-init`),
//! the host compares it with the model's version, then restores the parameter and the binding.

use crate::checks::observe_stable;
use crate::context::Ctx;
use crate::report::Reporter;
use crate::scenarios::{baseline, disable_idle_d3, DISABLE_IDLE_D3_PARAM};
use std::time::Duration;
use vfio_pm::{PowerState, RuntimeStatus};

/// The console key of the latch this phase observed.
pub const LATCH_INFO: &str = "disable-idle-d3-latch";

/// How long after the probe an unused device must still be D0 active to count as latched
/// (an unlatched one suspends about 12 ms after the probe's put).
const LATCH_HOLD: Duration = Duration::from_millis(300);

fn write(path: &std::path::Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Unbinds the device from vfio-pci and probes it again (its `driver_override` keeps it on
/// vfio-pci).
fn rebind(ctx: &Ctx) -> Result<(), String> {
    let bus = ctx.sysfs.root().join("bus/pci");
    let bdf = ctx.device.to_string();
    write(&bus.join("drivers/vfio-pci/unbind"), &bdf)?;
    write(&bus.join("drivers_probe"), &bdf)?;
    match ctx.sysfs.device(ctx.device).map(|d| d.report().is_vfio()) {
        Ok(true) => Ok(()),
        other => Err(format!(
            "after the rebind the device is not on vfio-pci: {other:?}"
        )),
    }
}

/// Writes the parameter and rebinds.
fn set(ctx: &Ctx, on: bool) -> Result<(), String> {
    write(
        std::path::Path::new(DISABLE_IDLE_D3_PARAM),
        if on { "Y" } else { "N" },
    )?;
    rebind(ctx)
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let Ok(sys) = ctx.sysfs.device(ctx.device) else {
        r.check("rebind-device-present", false, "no device");
        return;
    };
    if disable_idle_d3() != Ok(false) {
        r.check(
            "rebind-starts-with-idle-d3",
            false,
            format!(
                "needs vfio-pci loaded with disable_idle_d3=0: {:?}",
                disable_idle_d3()
            ),
        );
        return;
    }
    let latched = set(ctx, true).map(|()| {
        std::thread::sleep(LATCH_HOLD);
        observe_stable(&sys)
    });
    match latched {
        Ok(Ok(o)) => {
            let per_device =
                o.power_state == PowerState::D0 && o.runtime_status == RuntimeStatus::Active;
            let suspended = o.runtime_status == RuntimeStatus::Suspended;
            r.check(
                "rebind-latch-observed",
                per_device || suspended,
                format!("unused rebound device {LATCH_HOLD:?} after the probe: {o}"),
            );
            r.info(
                LATCH_INFO,
                if per_device {
                    "per-device"
                } else {
                    "module-init"
                },
            );
            if per_device {
                crate::scenarios::run_set(ctx, r, true, "rebind-scenarios");
            }
        }
        Ok(Err(e)) | Err(e) => {
            r.check("rebind-latch-observed", false, e);
        }
    }
    let restored = set(ctx, false).and_then(|()| baseline(&sys, false));
    r.check(
        "rebind-restored",
        restored.is_ok(),
        format!("disable_idle_d3=N, rebound, unused device: {restored:?}"),
    );
}
