//! The `controller` phase: vfio-pm-vmm's low-power controller driving the REAL kernel, on a
//! device "the VMM" opened itself.
//!
//! As cloud-hypervisor does, the VMM opens the device with `vfio-ioctls` in a container of its
//! own (the VM's) and keeps its `Arc<VfioDevice>`; the controller adopts that device through
//! `KernelDevice::from_vfio_device` (a group is exclusive: a second open would be EBUSY).
//!
//! The controller is tested in depth over the simulated host; this phase proves it "works
//! unchanged over the kernel backend": a guest `_OFF` becomes a real LOW_POWER_ENTRY and the
//! device reaches the platform's D3 state; on D3cold a host-side sysfs config read wakes it and
//! exactly one PME is delivered; the controller's own ioctls (EXIT, any access through
//! `host_access`) signal the eventfd on a real kernel and must never become a PME; the plain
//! variant re-suspends by itself; shutdown leaves nothing engaged.

use crate::checks::{observe_stable, wait_suspended};
use crate::context::{Ctx, Platform};
use crate::report::Reporter;
use std::sync::Arc;
use std::time::Duration;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vfio_pm::{KernelDevice, PowerState, RuntimeStatus, SysfsDevice, CONFIG_REGION};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, DeviceSettings, EntryPolicy, Event, EventLog, HostPower,
    LowPowerVariant, MonotonicClock, RequestOutcome, Slot, SuppressReason,
};
use vfio_pm_vmm::pme::{RecordingNotifier, WakeRoute};

const ROUTE: WakeRoute = WakeRoute::Ged { event: 0 };

struct Rig {
    ctl: Controller,
    slot: Slot,
    pmes: RecordingNotifier,
    log: EventLog,
}

/// "The VMM": opens the device in a container of its own with `vfio-ioctls`, as
/// cloud-hypervisor does for a VM.
pub(crate) fn vmm_open(ctx: &Ctx) -> Result<Arc<VfioDevice>, String> {
    let dir = ctx.sysfs.device(ctx.device).map_err(|e| e.to_string())?;
    let container = VfioContainer::new(None).map_err(|e| format!("VfioContainer: {e}"))?;
    let ops: Arc<dyn VfioOps> = Arc::new(container);
    let device = VfioDevice::new(dir.dir(), ops, false).map_err(|e| format!("VfioDevice: {e}"))?;
    Ok(Arc::new(device))
}

/// The controller adopts the VMM's device; the VMM keeps its handle (returned).
fn rig(ctx: &Ctx, entry: EntryPolicy) -> Result<(Rig, Arc<VfioDevice>), String> {
    let vmm_device = vmm_open(ctx)?;
    let dev = KernelDevice::from_vfio_device(&ctx.sysfs, ctx.device, vmm_device.clone())
        .map_err(|e| e.to_string())?;
    let pmes = RecordingNotifier::new();
    let log = EventLog::new();
    let mut ctl = Controller::new(
        ControllerConfig::default(),
        Box::new(pmes.clone()),
        Box::new(MonotonicClock::new()),
        Box::new(log.clone()),
    )
    .map_err(|e| e.to_string())?;
    let mut s = DeviceSettings::new(0x8086, Some(0x10d3), 0x020000, Some(ROUTE));
    s.entry = entry;
    s.min_residency = Duration::ZERO;
    let slot = ctl
        .add_device(Box::new(dev), s)
        .map_err(|e| e.to_string())?;
    Ok((
        Rig {
            ctl,
            slot,
            pmes,
            log,
        },
        vmm_device,
    ))
}

/// The vendor ID as the VMM reads it through its own `VfioDevice` (config region).
fn vmm_vendor(device: &VfioDevice) -> u16 {
    let mut id = [0u8; 2];
    device.region_read(CONFIG_REGION, &mut id, 0);
    u16::from_le_bytes(id)
}

fn suppressed_own(log: &EventLog, slot: Slot) -> usize {
    log.count(slot, |e| {
        matches!(
            e,
            Event::PmeSuppressed {
                reason: SuppressReason::OwnIoctl,
                ..
            }
        )
    })
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let sysfs = match ctx.sysfs.device(ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("ctl-sysfs", false, e);
            return;
        }
    };
    if wakeup_variant(ctx, r, &sysfs) {
        plain_variant(ctx, r, &sysfs);
    }
}

/// A host-side sysfs config read (`lspci -xxx`).
fn config_read(sysfs: &SysfsDevice) -> Result<(), String> {
    sysfs.read_config().map(|_| ()).map_err(|e| e.to_string())
}

/// The wakeup variant (what a GPU gets), forced on the e1000e. False when the controller could
/// not adopt the device (the phase stops there).
fn wakeup_variant(ctx: &Ctx, r: &mut Reporter, sysfs: &SysfsDevice) -> bool {
    let d3 = ctx.platform.suspended_state();
    let (mut w, vmm_device) = match rig(ctx, EntryPolicy::WithWakeup) {
        Ok(w) => w,
        Err(e) => {
            r.check("ctl-open", false, e);
            return false;
        }
    };
    let slot = w.slot;
    let out = w.ctl.power_off(slot).map_err(|e| e.to_string());
    r.expect_eq(
        "ctl-off-enters-with-wakeup",
        out,
        Ok(RequestOutcome::Entered(LowPowerVariant::EntryWithWakeup)),
    );
    let (o, _) = wait_suspended(sysfs, ctx.suspend_timeout);
    r.expect_eq(
        "ctl-off-reaches-platform-d3",
        o.map(|o| (o.power_state, o.runtime_status)),
        Ok((d3.clone(), RuntimeStatus::Suspended)),
    );

    own_access_no_pme(ctx, r, &mut w, sysfs);
    host_wake_one_pme(ctx, r, &mut w, sysfs);
    own_exit_no_pme(ctx, r, &mut w, sysfs);
    shutdown_exits_first(ctx, r, w, vmm_device, sysfs);
    true
}

/// The VMM's own access wakes the armed device: suppressed, never a PME, re-armed.
fn own_access_no_pme(ctx: &Ctx, r: &mut Reporter, w: &mut Rig, sysfs: &SysfsDevice) {
    let slot = w.slot;
    // The VMM's own access (a config region read through host_access) wakes the device on a
    // real kernel and signals the eventfd: suppressed, never a PME, and the device is re-armed.
    let before = suppressed_own(&w.log, slot);
    let _ = w.ctl.host_access(slot, |dev| {
        let mut b = [0u8; 2];
        dev.region_read(CONFIG_REGION, 0, &mut b)
    });
    let _ = w.ctl.poll_once(Some(Duration::from_millis(200)));
    r.expect_eq("ctl-own-ioctl-no-pme", w.pmes.count(), 0);
    r.check(
        "ctl-own-ioctl-suppressed",
        suppressed_own(&w.log, slot) > before,
        "the eventfd signal of the controller's own ioctl was recorded as suppressed",
    );
    r.expect_eq(
        "ctl-own-ioctl-rearmed",
        w.ctl.power(slot),
        Some(HostPower::Armed),
    );
    let (o, _) = wait_suspended(sysfs, ctx.suspend_timeout);
    r.expect_eq(
        "ctl-rearmed-suspends-again",
        o.map(|o| o.runtime_status),
        Ok(RuntimeStatus::Suspended),
    );
}

/// A host-side config read: on D3cold exactly one PME and an `_ON` without ioctl.
fn host_wake_one_pme(ctx: &Ctx, r: &mut Reporter, w: &mut Rig, sysfs: &SysfsDevice) {
    let slot = w.slot;
    // A host-side sysfs config read: wakes from D3cold only. Exactly one PME, then the
    // guest's _ON needs no ioctl (the kernel already left low power).
    if let Err(e) = config_read(sysfs) {
        r.check("ctl-config-read", false, e);
    }
    let _ = w.ctl.poll_once(Some(Duration::from_millis(500)));
    let _ = w.ctl.poll_once(Some(Duration::from_millis(100)));
    match ctx.platform {
        Platform::D3Cold => {
            r.expect_eq("ctl-host-wake-one-pme", w.pmes.routes(), vec![ROUTE]);
            r.expect_eq(
                "ctl-host-wake-state",
                w.ctl.power(slot),
                Some(HostPower::WokenByHost),
            );
            let on = w.ctl.power_on(slot).map_err(|e| e.to_string());
            r.expect_eq("ctl-on-after-wake", on, Ok(RequestOutcome::AlreadyExited));
        }
        Platform::D3Hot => {
            r.expect_eq("ctl-d3hot-config-read-no-pme", w.pmes.count(), 0);
            r.expect_eq(
                "ctl-d3hot-still-armed",
                w.ctl.power(slot),
                Some(HostPower::Armed),
            );
            let on = w.ctl.power_on(slot).map_err(|e| e.to_string());
            r.expect_eq("ctl-on-exits", on, Ok(RequestOutcome::Exited));
        }
    }
    let o = observe_stable(sysfs);
    r.expect_eq(
        "ctl-on-d0-active",
        o.map(|o| (o.power_state, o.runtime_status)),
        Ok((PowerState::D0, RuntimeStatus::Active)),
    );
}

/// The eventfd signal of the controller's own EXIT is never a PME.
fn own_exit_no_pme(ctx: &Ctx, r: &mut Reporter, w: &mut Rig, sysfs: &SysfsDevice) {
    let slot = w.slot;
    // _OFF, suspend, then _ON: the kernel signals the eventfd inside our own EXIT (seen on
    // 6.1 and 6.12); the guest must not get a PME for it.
    let pmes_before = w.pmes.count();
    let _ = w.ctl.power_off(slot);
    let _ = wait_suspended(sysfs, ctx.suspend_timeout);
    let on = w.ctl.power_on(slot).map_err(|e| e.to_string());
    r.expect_eq("ctl-on-exits-suspended", on, Ok(RequestOutcome::Exited));
    let _ = w.ctl.poll_once(Some(Duration::from_millis(200)));
    r.expect_eq("ctl-own-exit-no-pme", w.pmes.count(), pmes_before);
}

/// Shutdown in low power exits first; the VMM's device stays open and usable.
fn shutdown_exits_first(
    ctx: &Ctx,
    r: &mut Reporter,
    mut w: Rig,
    vmm_device: Arc<VfioDevice>,
    sysfs: &SysfsDevice,
) {
    let slot = w.slot;
    // Shutdown while in low power: exit first, nothing engaged, device back to unused.
    let _ = w.ctl.power_off(slot);
    let _ = wait_suspended(sysfs, ctx.suspend_timeout);
    let report = w.ctl.shutdown();
    r.check(
        "ctl-shutdown-exits-first",
        report.exited == vec![slot] && report.failed.is_empty(),
        format!("{report:?}"),
    );
    drop(w);
    // The VMM still holds its device, in D0 and usable: the controller never closed it.
    r.expect_eq(
        "ctl-after-shutdown-vmm-device-usable",
        (
            observe_stable(sysfs).map(|o| (o.power_state, o.runtime_status)),
            vmm_vendor(&vmm_device),
        ),
        (Ok((PowerState::D0, RuntimeStatus::Active)), 0x8086),
    );
    drop(vmm_device);
    let (o, _) = wait_suspended(sysfs, ctx.suspend_timeout);
    r.expect_eq(
        "ctl-after-shutdown-unused-suspended",
        o.map(|o| o.runtime_status),
        Ok(RuntimeStatus::Suspended),
    );
}

/// The plain variant (NIC, audio, NVMe): a host access wakes it, the kernel puts it back, and
/// the guest hears nothing.
fn plain_variant(ctx: &Ctx, r: &mut Reporter, sysfs: &SysfsDevice) {
    let d3 = ctx.platform.suspended_state();
    let (mut p, _vmm_device) = match rig(ctx, EntryPolicy::Plain) {
        Ok(p) => p,
        Err(e) => {
            r.check("ctl-open-plain", false, e);
            return;
        }
    };
    let out = p.ctl.power_off(p.slot).map_err(|e| e.to_string());
    r.expect_eq(
        "ctl-plain-off-enters",
        out,
        Ok(RequestOutcome::Entered(LowPowerVariant::Entry)),
    );
    let _ = wait_suspended(sysfs, ctx.suspend_timeout);
    if let Err(e) = config_read(sysfs) {
        r.check("ctl-plain-config-read", false, e);
    }
    let _ = p.ctl.poll_once(Some(Duration::from_millis(200)));
    let (o, _) = wait_suspended(sysfs, ctx.suspend_timeout);
    r.expect_eq(
        "ctl-plain-resuspends",
        o.map(|o| (o.power_state, o.runtime_status)),
        Ok((d3, RuntimeStatus::Suspended)),
    );
    r.expect_eq("ctl-plain-no-pme", p.pmes.count(), 0);
    r.expect_eq(
        "ctl-plain-still-low-power",
        p.ctl.power(p.slot),
        Some(HostPower::LowPower),
    );
    let on = p.ctl.power_on(p.slot).map_err(|e| e.to_string());
    r.expect_eq("ctl-plain-on-exits", on, Ok(RequestOutcome::Exited));
    let _ = p.ctl.shutdown();
}
