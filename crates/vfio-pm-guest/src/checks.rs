//! Phase `checks`: the kernel's runtime-PM behaviour for an opened vfio-pci device, asserted
//! through the vfio-pm library (docs/kernel-behaviour.md, *The first real-kernel table*).
//!
//! The sequence runs on one device in order; every step first restores a known state (EXIT is
//! idempotent), so one failing check does not cascade into unrelated failures.

use crate::context::{Ctx, Platform};
use crate::report::Reporter;
use std::fs::File;
use std::time::{Duration, Instant};
use vfio_pm::feature::{self, FLAG_GET, FLAG_PROBE, FLAG_SET, HEADER_SIZE, WAKEUP_PAYLOAD_SIZE};
use vfio_pm::{
    ConformanceDevice, Errno, FeatureError, KernelDevice, LowPower, LowPowerFeature, PowerDevice,
    PowerObservation, PowerState, RuntimeStatus, Support, SysfsDevice, CONFIG_REGION,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// How long a state must hold to count as "stays".
const HOLD: Duration = Duration::from_millis(300);

const ENTRY: u32 = 3;
const WAKEUP: u32 = 4;
const EXIT: u32 = 5;

fn obs(state: PowerState, status: RuntimeStatus) -> PowerObservation {
    PowerObservation {
        power_state: state,
        runtime_status: status,
    }
}

fn d0_active() -> PowerObservation {
    obs(PowerState::D0, RuntimeStatus::Active)
}

fn suspended(p: Platform) -> PowerObservation {
    obs(p.suspended_state(), RuntimeStatus::Suspended)
}

/// One observation that two reads in a row agree on: `power_state` and `runtime_status` are
/// separate files, and a transition between the two reads gives a mix of old and new (seen on
/// 6.1: `D0 suspended` just before `D3hot suspended`).
pub(crate) fn observe_stable(dev: &SysfsDevice) -> Result<PowerObservation, String> {
    let mut last = dev.observe().map_err(|e| e.to_string())?;
    for _ in 0..50 {
        let now = dev.observe().map_err(|e| e.to_string())?;
        if now == last {
            return Ok(now);
        }
        last = now;
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(last)
}

/// Polls sysfs until the device is runtime-suspended (stably) or `limit` passes; returns the
/// last observation and how long it took.
pub(crate) fn wait_suspended(
    dev: &SysfsDevice,
    limit: Duration,
) -> (Result<PowerObservation, String>, Duration) {
    let start = Instant::now();
    loop {
        match observe_stable(dev) {
            Ok(o) if o.runtime_status == RuntimeStatus::Suspended => {
                return (Ok(o), start.elapsed())
            }
            Ok(o) if start.elapsed() >= limit => return (Ok(o), start.elapsed()),
            Ok(_) => {}
            Err(e) => return (Err(e), start.elapsed()),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Observes the device repeatedly for `hold`; returns the first observation that differs from
/// the first one, or the first one if it held.
pub(crate) fn observe_held(dev: &SysfsDevice, hold: Duration) -> Result<PowerObservation, String> {
    let first = observe_stable(dev)?;
    let start = Instant::now();
    while start.elapsed() < hold {
        std::thread::sleep(Duration::from_millis(20));
        let now = observe_stable(dev)?;
        if now != first {
            return Ok(now);
        }
    }
    Ok(first)
}

/// The eventfd counter (read resets it); EAGAIN means 0.
fn efd_count(efd: &EventFd) -> Result<u64, String> {
    match efd.read() {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e.to_string()),
    }
}

fn new_efd(r: &mut Reporter, name: &str) -> Option<EventFd> {
    match EventFd::new(EFD_NONBLOCK) {
        Ok(e) => Some(e),
        Err(e) => {
            r.check(name, false, format!("eventfd: {e}"));
            None
        }
    }
}

/// A file descriptor number that is not open in this process.
fn unused_fd() -> i32 {
    (900..4000)
        .find(|n| !std::path::Path::new(&format!("/proc/self/fd/{n}")).exists())
        .unwrap_or(4000)
}

/// Checks an observation and a raw errno-style result together.
fn expect_obs(
    r: &mut Reporter,
    name: &str,
    got: Result<PowerObservation, String>,
    want: PowerObservation,
    extra: &str,
) -> bool {
    match got {
        Ok(o) => r.check(name, o == want, format!("{o} (want {want}){extra}")),
        Err(e) => r.check(name, false, format!("observe failed: {e}")),
    }
}

fn expect_errno(r: &mut Reporter, name: &str, got: Result<(), Errno>, want: Errno) -> bool {
    r.check(
        name,
        got == Err(want),
        format!(
            "got {}, want {want}",
            match got {
                Ok(()) => "0".to_string(),
                Err(e) => e.to_string(),
            }
        ),
    )
}

/// Makes sure the device is not engaged before a step (EXIT is idempotent).
fn reset_state(dev: &KernelDevice) {
    let _ = dev.exit_low_power();
}

/// Enters low power (plain or with `efd`) and waits for the runtime suspend.
fn enter_and_settle(
    ctx: &Ctx,
    r: &mut Reporter,
    dev: &KernelDevice,
    sys: &SysfsDevice,
    efd: Option<&EventFd>,
    name: &str,
) -> bool {
    let res = match efd {
        Some(e) => dev.enter_low_power_with_wakeup(e),
        None => dev.enter_low_power(),
    };
    if let Err(e) = res {
        return r.check(name, false, format!("entry failed: {e}"));
    }
    let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
    expect_obs(
        r,
        name,
        o,
        suspended(ctx.platform),
        &format!(" after {took:?}"),
    )
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let p = ctx.platform;
    let sys = match ctx.sysfs.device(ctx.device) {
        Ok(s) => s,
        Err(e) => {
            r.check("device-present", false, e);
            return;
        }
    };
    r.info("driver", sys.driver().display());

    // Part 1: a bound but unused device runtime-suspends.
    let (o, took) = wait_suspended(&sys, ctx.suspend_timeout);
    expect_obs(
        r,
        "unused-bound-suspended",
        o,
        suspended(p),
        &format!(" after {took:?}"),
    );

    crate::interfaces::before_group_open(ctx, r);
    let mut dev = match KernelDevice::open(&ctx.sysfs, ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("open", false, e);
            return;
        }
    };
    expect_obs(r, "open-d0-active", observe_stable(&sys), d0_active(), "");
    crate::interfaces::fdinfo_names_device(ctx, r, &dev);

    probe_and_get(r, &dev);
    entry_and_exit(ctx, r, &dev, &sys);
    malformed(r, &dev, &sys);
    malformed_wakeup(r, &dev, &sys);
    wakeup_host_config_read(ctx, r, &dev, &sys);
    wakeup_config_pread(ctx, r, &dev, &sys);
    wakeup_missing_region_pread(ctx, r, &dev, &sys);
    wakeup_exit(ctx, r, &dev, &sys);
    entry_host_config_read(ctx, r, &dev, &sys);

    close_while_engaged(ctx, r, &mut dev, &sys);
    drop(dev);
    close_while_armed(ctx, r, &sys);
}

/// Probing every low-power feature, and GET (which none of them supports).
fn probe_and_get(r: &mut Reporter, dev: &KernelDevice) {
    // Probing and GET.
    let all = Support {
        entry: true,
        entry_with_wakeup: true,
        exit: true,
    };
    match dev.probe_low_power() {
        Ok(s) => r.expect_eq("probe-all-supported", s, all),
        Err(e) => r.check("probe-all-supported", false, e),
    };
    for idx in [ENTRY, WAKEUP, EXIT] {
        let got = dev.device_feature(HEADER_SIZE, FLAG_PROBE | FLAG_GET | idx, &[]);
        expect_errno(r, &format!("probe-get-{idx}-einval"), got, Errno::EINVAL);
    }
    let got = dev.device_feature(HEADER_SIZE, FLAG_GET | ENTRY, &[]);
    expect_errno(r, "get-3-einval", got, Errno::EINVAL);
}

/// Plain ENTRY, ENTRY again (already engaged), EXIT, EXIT again; EXIT first is a no-op.
fn entry_and_exit(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    let p = ctx.platform;
    // EXIT without entry is a no-op.
    let got = dev.exit_low_power();
    r.check("exit-without-entry-ok", got.is_ok(), format!("{got:?}"));

    // Plain ENTRY / again / EXIT / again.
    let got = dev.enter_low_power();
    r.check("entry-ok", got.is_ok(), format!("{got:?}"));
    let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
    expect_obs(
        r,
        "entry-suspends",
        o,
        suspended(p),
        &format!(" after {took:?}"),
    );
    let got = dev.enter_low_power();
    r.check(
        "entry-again-already-engaged",
        matches!(
            got,
            Err(FeatureError::AlreadyEngaged {
                feature: LowPowerFeature::Entry
            })
        ),
        format!("{got:?}"),
    );
    let got = dev.exit_low_power();
    r.check("exit-ok", got.is_ok(), format!("{got:?}"));
    expect_obs(
        r,
        "exit-d0-active",
        observe_held(sys, HOLD),
        d0_active(),
        " (held)",
    );
    let got = dev.exit_low_power();
    r.check("exit-again-ok", got.is_ok(), format!("{got:?}"));
}

/// Malformed requests are refused and change nothing.
fn malformed(r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    // Malformed requests.
    reset_state(dev);
    let got = dev.device_feature(4, FLAG_SET | ENTRY, &[]);
    expect_errno(r, "argsz-4-einval", got, Errno::EINVAL);
    let got = dev.device_feature(HEADER_SIZE, FLAG_SET | ENTRY | (1 << 20), &[]);
    expect_errno(r, "flag-bit-20-einval", got, Errno::EINVAL);
    let got = dev.device_feature(HEADER_SIZE, FLAG_SET | 200, &[]);
    expect_errno(r, "feature-200-enotty", got, Errno::ENOTTY);
    expect_obs(
        r,
        "malformed-no-state-change",
        observe_held(sys, HOLD),
        d0_active(),
        " (held)",
    );
}

/// Malformed WITH_WAKEUP requests (bad fds, short payload) are refused and change nothing.
fn malformed_wakeup(r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    // Malformed WITH_WAKEUP requests.
    let wz = HEADER_SIZE + WAKEUP_PAYLOAD_SIZE;
    let got = dev.device_feature(wz, FLAG_SET | WAKEUP, &feature::wakeup_payload(-1));
    expect_errno(r, "wakeup-fd-minus-1-einval", got, Errno::EINVAL);
    match File::open("/proc/cmdline") {
        Ok(f) => {
            use std::os::fd::AsRawFd;
            let got = dev.device_feature(
                wz,
                FLAG_SET | WAKEUP,
                &feature::wakeup_payload(f.as_raw_fd()),
            );
            expect_errno(r, "wakeup-non-eventfd-einval", got, Errno::EINVAL);
        }
        Err(e) => {
            r.check(
                "wakeup-non-eventfd-einval",
                false,
                format!("open /proc/cmdline: {e}"),
            );
        }
    }
    let got = dev.device_feature(HEADER_SIZE, FLAG_SET | WAKEUP, &[]);
    expect_errno(r, "wakeup-argsz-8-einval", got, Errno::EINVAL);
    let fd = unused_fd();
    let got = dev.device_feature(wz, FLAG_SET | WAKEUP, &feature::wakeup_payload(fd));
    expect_errno(r, "wakeup-unused-fd-ebadf", got, Errno::EBADF);
    expect_obs(
        r,
        "wakeup-malformed-no-state-change",
        observe_held(sys, HOLD),
        d0_active(),
        " (held)",
    );
}

/// Close while engaged with plain ENTRY: the closed device suspends again.
fn close_while_engaged(ctx: &Ctx, r: &mut Reporter, dev: &mut KernelDevice, sys: &SysfsDevice) {
    let p = ctx.platform;
    // Close while engaged (plain ENTRY).
    reset_state(dev);
    if enter_and_settle(ctx, r, dev, sys, None, "close-entry-suspends") {
        let got = dev.close();
        r.check("close-ok", got.is_ok(), format!("{got:?}"));
        let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
        expect_obs(
            r,
            "close-while-engaged-suspended",
            o,
            suspended(p),
            &format!(" after {took:?}"),
        );
    }
}

/// Close while engaged with a wakeup eventfd, on a fresh open: close never signals.
fn close_while_armed(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let Some(efd) = new_efd(r, "close-wakeup") else {
        return;
    };
    let mut dev = match KernelDevice::open(&ctx.sysfs, ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("reopen", false, e);
            return;
        }
    };
    expect_obs(r, "reopen-d0-active", observe_stable(sys), d0_active(), "");
    if enter_and_settle(ctx, r, &dev, sys, Some(&efd), "close-wakeup-suspends") {
        let got = dev.close();
        r.check("close-wakeup-ok", got.is_ok(), format!("{got:?}"));
        let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
        let n = efd_count(&efd);
        expect_obs(
            r,
            "close-wakeup-suspended",
            o,
            suspended(p),
            &format!(" after {took:?}"),
        );
        r.expect_eq("close-wakeup-no-signal", n, Ok(0));
    }
}

/// WITH_WAKEUP, then a host-side sysfs config read, then any device ioctl.
fn wakeup_host_config_read(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    reset_state(dev);
    let Some(efd) = new_efd(r, "wakeup-config-read") else {
        return;
    };
    if !enter_and_settle(ctx, r, dev, sys, Some(&efd), "wakeup-suspends") {
        return;
    }
    r.expect_eq("wakeup-suspended-no-signal", efd_count(&efd), Ok(0));
    let got = dev.host_config_read();
    r.check(
        "wakeup-host-config-read-ok",
        got.is_ok(),
        format!("{got:?}"),
    );
    let n = efd_count(&efd);
    let now = observe_held(sys, HOLD);
    match ctx.platform {
        Platform::D3Cold => {
            r.expect_eq("wakeup-host-config-read-signals", n, Ok(1));
            expect_obs(
                r,
                "wakeup-host-config-read-d0-active",
                now,
                d0_active(),
                " (held)",
            );
        }
        Platform::D3Hot => {
            r.expect_eq("wakeup-host-config-read-no-signal", n, Ok(0));
            expect_obs(
                r,
                "wakeup-host-config-read-stays-suspended",
                now,
                suspended(ctx.platform),
                " (held)",
            );
        }
    }
    // Any device ioctl resumes; it signals only if the wakeup was still armed (D3hot).
    let got = dev.device_ioctl();
    r.check("wakeup-ioctl-ok", got.is_ok(), format!("{got:?}"));
    let want = if ctx.platform == Platform::D3Hot {
        1
    } else {
        0
    };
    r.expect_eq("wakeup-ioctl-signals-if-armed", efd_count(&efd), Ok(want));
    expect_obs(
        r,
        "wakeup-ioctl-d0-active",
        observe_held(sys, HOLD),
        d0_active(),
        " (held: one-shot)",
    );
    let got = dev.exit_low_power();
    r.check("wakeup-exit-after-wake-ok", got.is_ok(), format!("{got:?}"));
    r.expect_eq("wakeup-exit-after-wake-no-signal", efd_count(&efd), Ok(0));
}

/// WITH_WAKEUP, then a pread of the config region through the device fd.
fn wakeup_config_pread(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    reset_state(dev);
    let Some(efd) = new_efd(r, "wakeup-pread") else {
        return;
    };
    if !enter_and_settle(ctx, r, dev, sys, Some(&efd), "wakeup-pread-suspends") {
        return;
    }
    let mut buf = [0u8; 4];
    let got = dev.region_read(CONFIG_REGION, 0, &mut buf);
    r.check(
        "wakeup-pread-config",
        got == Ok(4) && buf[..2] == 0x8086u16.to_le_bytes(),
        format!("{got:?} bytes {buf:02x?} (want vendor 8086)"),
    );
    r.expect_eq("wakeup-pread-signals", efd_count(&efd), Ok(1));
    expect_obs(
        r,
        "wakeup-pread-d0-active",
        observe_held(sys, HOLD),
        d0_active(),
        " (held)",
    );
    let got = dev.exit_low_power();
    r.check("wakeup-pread-exit-ok", got.is_ok(), format!("{got:?}"));
    r.expect_eq("wakeup-pread-exit-no-signal", efd_count(&efd), Ok(0));
}

/// WITH_WAKEUP, then a pread and a pwrite of region index 9 straight on the device fd
/// (vfio-pci's fixed layout: index << 40, `VFIO_PCI_OFFSET_SHIFT`), a region the e1000e does not
/// have. `vfio_pci_rw` (drivers/vfio/pci/vfio_pci_core.c) checks the index before it resumes
/// the device: EINVAL, no signal, still suspended. `KernelDevice` answers such an index itself
/// without asking the kernel (scenarios 16b/44b), so this is the kernel's own answer.
fn wakeup_missing_region_pread(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    use std::os::unix::fs::FileExt;
    reset_state(dev);
    let Some(efd) = new_efd(r, "kernel-missing-region") else {
        return;
    };
    if !enter_and_settle(
        ctx,
        r,
        dev,
        sys,
        Some(&efd),
        "kernel-missing-region-suspends",
    ) {
        return;
    }
    // The same open file as the device fd, as a `File` for read_at/write_at.
    let file = match dev
        .fd()
        .map_err(|e| e.to_string())
        .and_then(|fd| fd.try_clone_to_owned().map_err(|e| e.to_string()))
    {
        Ok(fd) => File::from(fd),
        Err(e) => {
            r.check("kernel-missing-region-fd", false, e);
            return;
        }
    };
    let offset = 9u64 << 40;
    let mut buf = [0u8; 4];
    let read = file.read_at(&mut buf, offset).map_err(|e| e.raw_os_error());
    let write = file.write_at(&[0; 4], offset).map_err(|e| e.raw_os_error());
    r.check(
        "kernel-missing-region-einval",
        read == Err(Some(libc::EINVAL)) && write == Err(Some(libc::EINVAL)),
        format!("pread {read:?}, pwrite {write:?} (want EINVAL both)"),
    );
    r.expect_eq("kernel-missing-region-no-signal", efd_count(&efd), Ok(0));
    expect_obs(
        r,
        "kernel-missing-region-still-suspended",
        observe_held(sys, HOLD),
        suspended(ctx.platform),
        " (held)",
    );
    // EXIT on the suspended device signals the eventfd itself (see wakeup_exit): drained.
    let got = dev.exit_low_power();
    r.check(
        "kernel-missing-region-exit-ok",
        got.is_ok(),
        format!("{got:?}"),
    );
    let _ = efd_count(&efd);
}

/// WITH_WAKEUP, then EXIT on the suspended device: the EXIT ioctl's own resume signals.
fn wakeup_exit(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    reset_state(dev);
    let Some(efd) = new_efd(r, "wakeup-exit") else {
        return;
    };
    if !enter_and_settle(ctx, r, dev, sys, Some(&efd), "wakeup-exit-suspends") {
        return;
    }
    let got = dev.exit_low_power();
    r.check("wakeup-exit-ok", got.is_ok(), format!("{got:?}"));
    r.expect_eq("wakeup-exit-signals", efd_count(&efd), Ok(1));
    expect_obs(
        r,
        "wakeup-exit-d0-active",
        observe_held(sys, HOLD),
        d0_active(),
        " (held)",
    );
}

/// Plain ENTRY, then a host-side sysfs config read: the device is suspended again afterwards.
fn entry_host_config_read(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice, sys: &SysfsDevice) {
    reset_state(dev);
    if !enter_and_settle(ctx, r, dev, sys, None, "entry-config-read-suspends") {
        return;
    }
    let before = sys.report().runtime_active_ms.known().copied();
    let got = dev.host_config_read();
    r.check("entry-host-config-read-ok", got.is_ok(), format!("{got:?}"));
    let (o, took) = wait_suspended(sys, ctx.suspend_timeout);
    expect_obs(
        r,
        "entry-host-config-read-resuspends",
        o,
        suspended(ctx.platform),
        &format!(" after {took:?}"),
    );
    let after = sys.report().runtime_active_ms.known().copied();
    r.info(
        "entry-host-config-read-active-ms",
        format!("{before:?} -> {after:?}"),
    );
    let got = dev.exit_low_power();
    r.check("entry-config-read-exit-ok", got.is_ok(), format!("{got:?}"));
}
