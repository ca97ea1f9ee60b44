//! The `nested-guest` phase: runs in L2, the guest that L1's QEMU starts, with the passed-through
//! device bound to vfio-pci (which runtime-suspends it) and an SSDT giving it `_PR0`/`_PR3`.
//!
//! Steps, each a check, with the idle window announced on the console so that L1 (which
//! forwards these lines) and L0 (which marks its trap capture there) can measure what the host
//! did meanwhile:
//! 1. the idle device reaches D3cold suspended (`l2-idle-d3cold`);
//! 2. `VFIOPM INFO nested idle-begin`, the device stays D3cold for the window
//!    (`vfiopm.idle=SECS`, default [`DEFAULT_IDLE`]), `VFIOPM INFO nested idle-end`
//!    (`l2-idle-held`);
//! 3. a config space read (as `lspci -xxx` does) resumes it and it suspends to D3cold again
//!    (`l2-config-read-resuspends`);
//! 4. the device is resumed for use (`power/control` = `on`: the kernel runs `_ON` and then
//!    writes PMCSR D0) and its BAR0 is read through a mapping of `resource0`, as a driver's
//!    first register access would (`l2-bar-read-after-resume`). Under `vfio-pm qemu` that access
//!    reaches L1's device through QEMU's mapping of the BAR: if `_ON` returned before the host's
//!    LOW_POWER_EXIT, the kernel would answer SIGBUS and QEMU would die. The time from the
//!    write of `on` to `active` is the guest's view of the `_ON` round trip
//!    (`nested resume-ms`).
//!
//! Two optional steps: `vfiopm.flood=SECS` floods the mailbox and doorbell between steps 3 and
//! 4 ([`super::flood`]); `vfiopm.reboot=1` reboots L2 after every step passed and checks the
//! device again in the second boot ([`super::reboot`]).

use super::{flood, reboot};
use crate::checks::{observe_stable, wait_suspended};
use crate::context::{cmdline_value, Ctx};
use crate::report::Reporter;
use std::time::{Duration, Instant};
use vfio_pm::{PowerState, RuntimeStatus};

/// The idle window when the kernel command line names none.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(8);

/// The longest idle window accepted (the harness's timeouts assume short windows).
pub const MAX_IDLE: Duration = Duration::from_secs(120);

/// How long a suspend may take in L2 (nested TCG is slow: a second is common).
const SUSPEND_LIMIT: Duration = Duration::from_secs(30);

/// The console value of the `nested` INFO key at the start of the idle window.
pub const IDLE_BEGIN: &str = "idle-begin";
/// ... and at its end.
pub const IDLE_END: &str = "idle-end";

fn idle_window() -> Duration {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    cmdline_value(&cmdline, "vfiopm.idle")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_IDLE)
        .min(MAX_IDLE)
}

fn d3cold(o: &vfio_pm::PowerObservation) -> bool {
    o.power_state == PowerState::D3Cold && o.runtime_status == RuntimeStatus::Suspended
}

/// Runs the phase.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    // First of all: a second boot clears its marker before anything can fail.
    let (plan, cmos) = reboot::this_boot(r);
    let sys = match ctx.sysfs.device(ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("l2-device", false, e);
            return;
        }
    };
    if let reboot::Plan::SecondBoot { .. } = plan {
        after_reboot(&sys, r);
        return;
    }
    if idle_steps(&sys, r) {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let secs = flood::flood_secs(&cmdline);
        if !secs.is_zero() {
            flood::run(&sys, r, secs);
        }
    }
    bar_after_resume(&sys, r, "l2-");
    if let (reboot::Plan::RebootAfter, Some(cmos)) = (plan, &cmos) {
        if r.failed() == 0 {
            reboot::reboot_now(r, cmos);
        } else {
            r.info("nested", "reboot-skipped (a check failed)");
        }
    }
}

/// The boot after L2's own reboot: the device, bound fresh, runtime-suspends to D3cold again
/// (the new boot's `_OFF` works) and resumes for a BAR access.
fn after_reboot(sys: &vfio_pm::SysfsDevice, r: &mut Reporter) {
    let (first, took) = wait_suspended(sys, SUSPEND_LIMIT);
    r.check(
        "l2-reboot-idle-d3cold",
        first.as_ref().is_ok_and(d3cold),
        format!("{first:?} after {took:.1?} (want D3cold suspended)"),
    );
    bar_after_resume(sys, r, "l2-reboot-");
}

/// Steps 1-3; false when the device never reached D3cold (the rest of them is skipped).
fn idle_steps(sys: &vfio_pm::SysfsDevice, r: &mut Reporter) -> bool {
    let (first, took) = wait_suspended(sys, SUSPEND_LIMIT);
    let ok = first.as_ref().is_ok_and(d3cold);
    r.check(
        "l2-idle-d3cold",
        ok,
        format!("{first:?} after {took:.1?} (want D3cold suspended)"),
    );
    if !ok {
        return false;
    }
    let window = idle_window();
    r.info("nested", IDLE_BEGIN);
    let start = Instant::now();
    let mut samples = 0u32;
    let mut other = Vec::new();
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(250));
        samples += 1;
        match observe_stable(sys) {
            Ok(o) if d3cold(&o) => {}
            o => other.push(format!("{:.1?}: {o:?}", start.elapsed())),
        }
    }
    r.info("nested", IDLE_END);
    r.check(
        "l2-idle-held",
        other.is_empty(),
        format!(
            "{samples} samples over {window:?}, {} not D3cold suspended {:?}",
            other.len(),
            &other[..other.len().min(3)]
        ),
    );
    let read = sys.read_config().map(|c| c.len());
    let (after, took) = wait_suspended(sys, SUSPEND_LIMIT);
    r.check(
        "l2-config-read-resuspends",
        read.as_ref().is_ok_and(|n| *n >= 64) && after.as_ref().is_ok_and(d3cold),
        format!("config read {read:?}, then {after:?} after {took:.1?}"),
    )
}

/// Reads the first register of BAR0 through an mmap of the sysfs `resource0` file.
fn read_bar0(sys: &vfio_pm::SysfsDevice) -> Result<u32, String> {
    use std::num::NonZeroUsize;
    let path = sys.dir().join("resource0");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let len = NonZeroUsize::new(4096).ok_or("page size")?;
    // SAFETY: FFI. A new shared mapping of the device's BAR0 at an address the kernel chooses;
    // read once with read_volatile below and unmapped before returning.
    let ptr = unsafe {
        nix::sys::mman::mmap(
            None,
            len,
            nix::sys::mman::ProtFlags::PROT_READ,
            nix::sys::mman::MapFlags::MAP_SHARED,
            &file,
            0,
        )
    }
    .map_err(|e| format!("mmap {}: {e}", path.display()))?;
    // SAFETY: `ptr` is the start of a readable 4096-byte mapping (page-aligned, so 4-byte
    // aligned) made just above.
    let value = unsafe { std::ptr::read_volatile(ptr.as_ptr() as *const u32) };
    // SAFETY: FFI; the mapping made above, unmapped once and not used afterwards.
    let _ = unsafe { nix::sys::mman::munmap(ptr, 4096) };
    Ok(value)
}

/// Step 4: resume for use, then a BAR access; then back to automatic runtime PM. Check names
/// start with `prefix` (`l2-`, or `l2-reboot-` in the second boot, whose INFO is
/// `nested reboot-resume-ms`).
fn bar_after_resume(sys: &vfio_pm::SysfsDevice, r: &mut Reporter, prefix: &str) {
    let read_check = format!("{prefix}bar-read-after-resume");
    let info = format!("{}resume-ms", prefix.strip_prefix("l2-").unwrap_or(prefix));
    let start = Instant::now();
    if let Err(e) = sys.write("power/control", "on") {
        r.check(&read_check, false, format!("power/control = on: {e}"));
        return;
    }
    let active = loop {
        match sys.observe() {
            Ok(o)
                if o.runtime_status == RuntimeStatus::Active && o.power_state == PowerState::D0 =>
            {
                break true
            }
            _ if start.elapsed() > SUSPEND_LIMIT => break false,
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let resume = start.elapsed();
    r.info("nested", format!("{info} {}", resume.as_millis()));
    let value = read_bar0(sys);
    r.check(
        &read_check,
        active && value.as_ref().is_ok_and(|v| *v != u32::MAX),
        format!("D0 active after {resume:.1?}: {active}; BAR0[0] = {value:x?}"),
    );
    let _ = sys.write("power/control", "auto");
    let (after, took) = wait_suspended(sys, SUSPEND_LIMIT);
    r.check(
        &format!("{prefix}suspends-after-use"),
        after
            .as_ref()
            .is_ok_and(|o| o.runtime_status == RuntimeStatus::Suspended),
        format!("{after:?} after {took:.1?}"),
    );
}
