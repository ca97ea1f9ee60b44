//! Whether a device can reach D3cold when idle, check by check, and what to change if not.
//!
//! The diagnosis reads sysfs only, plus (optionally) a probe of the kernel's low-power features
//! through the device fd. Opening the fd wakes the device and is refused while a VMM holds the
//! group, so the caller chooses: [`KernelSupport::Probe`] opens the device when nobody holds it,
//! otherwise support is inferred from the kernel version and the check says so.

use crate::device::OpenError;
use crate::host::LowPower;
use crate::kernel::KernelDevice;
use crate::pci::PciAddress;
use crate::sysfs::{D3coldPower, DeviceReport, Sysfs, SysfsError};
use serde::Serialize;

/// How to find out whether the kernel offers the low-power features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSupport {
    /// Open the device and PROBE when no process holds it; infer from the version otherwise.
    Probe,
    /// Never open the device; infer from the kernel version.
    InferFromVersion,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Satisfied.
    Pass,
    /// Prevents D3cold.
    Fail,
    /// Does not prevent D3cold but is worth knowing.
    Warn,
    /// Could not be determined.
    Unknown,
}

/// One check of the diagnosis.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Short identifier, stable for scripts (e.g. `vfio_bound`).
    pub id: &'static str,
    /// The outcome.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to change, when the check does not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole diagnosis of one device.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnosis {
    /// The device.
    pub address: PciAddress,
    /// True when every blocking check passes: an idle device will reach D3cold.
    pub d3cold_reachable: bool,
    /// The deepest state an idle device is expected to reach (`D3cold`, `D3hot` or `D0`).
    pub expected_idle_state: &'static str,
    /// The checks, in the order they were made.
    pub checks: Vec<Check>,
}

/// The kernel release this process runs on (`/proc/sys/kernel/osrelease`).
pub fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

/// `(major, minor)` of a release string such as `6.1.0-56-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn check(id: &'static str, verdict: Verdict, detail: String, fix: Option<&str>) -> Check {
    Check {
        id,
        verdict,
        detail,
        fix: fix.filter(|_| verdict != Verdict::Pass).map(str::to_string),
    }
}

/// Diagnoses `address` under `sysfs`.
pub fn diagnose(
    sysfs: &Sysfs,
    address: PciAddress,
    support: KernelSupport,
) -> Result<Diagnosis, SysfsError> {
    let dev = sysfs.device(address)?;
    let r: DeviceReport = dev.report();
    let bdf = address.to_string();
    let vfio = r.is_vfio();
    let checks = vec![
        vfio_bound_check(&r, address),
        runtime_pm_check(&r, &bdf),
        d3cold_allowed_check(&r, &bdf),
        power_resources_check(&r),
        disable_idle_d3_check(sysfs),
        kernel_support_check(sysfs, address, support, vfio),
        vfio_interfaces_check(sysfs, &dev),
        parent_bridge_check(&r),
    ];
    let (d3cold_reachable, expected_idle_state) = expected_idle_state(&checks);
    Ok(Diagnosis {
        address,
        d3cold_reachable,
        expected_idle_state,
        checks,
    })
}

/// Bound to vfio-pci; the fix binds it.
fn vfio_bound_check(r: &DeviceReport, address: PciAddress) -> Check {
    let vfio = r.is_vfio();
    match r.driver.known() {
        Some(driver) => check(
            "vfio_bound",
            if vfio { Verdict::Pass } else { Verdict::Fail },
            format!("driver: {driver}"),
            Some(&bind_commands(address, driver)),
        ),
        None => check(
            "vfio_bound",
            Verdict::Unknown,
            format!("driver: {}", r.driver.describe()),
            Some("run as root, or check the device directory's permissions"),
        ),
    }
}

/// Runtime PM allowed (`power/control` = auto).
fn runtime_pm_check(r: &DeviceReport, bdf: &str) -> Check {
    let control = r.power_control.known().map(String::as_str);
    check(
        "runtime_pm_allowed",
        match control {
            Some("auto") => Verdict::Pass,
            Some(_) => Verdict::Fail,
            None => Verdict::Unknown,
        },
        format!("power/control: {}", r.power_control.describe()),
        Some(&format!(
            "echo auto > /sys/bus/pci/devices/{bdf}/power/control"
        )),
    )
}

/// The host lets the device go to D3cold (`d3cold_allowed` = 1).
fn d3cold_allowed_check(r: &DeviceReport, bdf: &str) -> Check {
    let d3c = r.d3cold_allowed.known().copied();
    check(
        "d3cold_allowed",
        match d3c {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Fail,
            None => Verdict::Unknown,
        },
        format!("d3cold_allowed: {}", r.d3cold_allowed.describe()),
        Some(&format!(
            "echo 1 > /sys/bus/pci/devices/{bdf}/d3cold_allowed (if it reads back 0, the device has no PCI PM capability)"
        )),
    )
}

/// vfio-pci's `disable_idle_d3`: a warning only (low power still works on request).
fn disable_idle_d3_check(sysfs: &Sysfs) -> Check {
    let idle = sysfs.vfio_disable_idle_d3();
    check(
        "disable_idle_d3",
        match idle.known() {
            Some(false) => Verdict::Pass,
            Some(true) => Verdict::Warn,
            None => Verdict::Unknown,
        },
        format!("vfio_pci disable_idle_d3: {}", idle.describe()),
        Some("unused devices stay in D0 (low power still works while a VMM requests it); set vfio_pci.disable_idle_d3=0 unless the device fails to resume"),
    )
}

/// How a VMM can open the device: informational, it does not decide D3cold.
fn vfio_interfaces_check(sysfs: &Sysfs, dev: &crate::SysfsDevice) -> Check {
    let offered = crate::iommufd::interfaces(sysfs, dev);
    check(
        "vfio_interfaces",
        if offered.group || offered.cdev_iommufd() {
            Verdict::Pass
        } else {
            Verdict::Warn
        },
        offered.to_string(),
        Some("neither /dev/vfio/vfio with an IOMMU group nor a device cdev with /dev/iommu: load vfio (and iommufd where the kernel has CONFIG_IOMMUFD)"),
    )
}

/// The upstream bridge, if any, must allow runtime PM too.
fn parent_bridge_check(r: &DeviceReport) -> Check {
    match &r.parent_bridge {
        Some(b) => {
            let ok = b.power_control.known().map(String::as_str) == Some("auto");
            check(
                "parent_bridge",
                if ok { Verdict::Pass } else { Verdict::Fail },
                format!(
                    "upstream bridge {}: power/control {}, {} {}",
                    b.address,
                    b.power_control.describe(),
                    b.power_state.describe(),
                    b.runtime_status.describe()
                ),
                Some(&format!(
                    "echo auto > /sys/bus/pci/devices/{}/power/control",
                    b.address
                )),
            )
        }
        None => check(
            "parent_bridge",
            Verdict::Pass,
            "on a root bus (no upstream bridge to keep powered)".into(),
            None,
        ),
    }
}

/// Whether D3cold is reachable (every blocking check passes), and the state an unused device
/// should reach: D3cold, else D3hot when runtime PM works at all, else D0.
fn expected_idle_state(checks: &[Check]) -> (bool, &'static str) {
    let blocking = |id: &str| {
        checks
            .iter()
            .find(|c| c.id == id)
            .is_some_and(|c| c.verdict == Verdict::Pass)
    };
    let d3cold_reachable = [
        "vfio_bound",
        "runtime_pm_allowed",
        "d3cold_allowed",
        "firmware_power_resources",
        "kernel_support",
        "parent_bridge",
    ]
    .iter()
    .all(|id| blocking(id));
    let state = if d3cold_reachable {
        "D3cold"
    } else if blocking("vfio_bound") && blocking("runtime_pm_allowed") && blocking("kernel_support")
    {
        "D3hot"
    } else {
        "D0"
    };
    (d3cold_reachable, state)
}

/// The shell commands that bind `address` to vfio-pci: a device held by another driver must be
/// unbound first, since `drivers_probe` does nothing for a bound device.
pub fn bind_commands(address: PciAddress, driver: &str) -> String {
    let unbind = match driver {
        "none" | "vfio-pci" => String::new(),
        d => format!("echo {address} > /sys/bus/pci/drivers/{d}/unbind; "),
    };
    format!(
        "echo vfio-pci > /sys/bus/pci/devices/{address}/driver_override; {unbind}echo {address} > /sys/bus/pci/drivers_probe"
    )
}

/// `_PR3` on the device's ACPI node or on an upstream bridge's.
fn power_resources_check(r: &DeviceReport) -> Check {
    let id = "firmware_power_resources";
    match r.d3cold_power() {
        D3coldPower::Own(v) => check(id, Verdict::Pass, format!("_PR3: {}", v.join(", ")), None),
        D3coldPower::Upstream {
            bridge,
            resources,
            power_control,
        } => {
            let can_suspend = power_control.known().map(String::as_str) == Some("auto");
            check(
                id,
                if can_suspend { Verdict::Pass } else { Verdict::Fail },
                format!(
                    "no _PR3 of its own; upstream bridge {bridge} has _PR3 ({}): the kernel cuts the device's power by suspending {bridge} to D3cold (its power/control: {})",
                    resources.join(", "),
                    power_control.describe()
                ),
                Some(&format!(
                    "echo auto > /sys/bus/pci/devices/{bridge}/power/control"
                )),
            )
        }
        D3coldPower::None(why) => check(
            id,
            Verdict::Fail,
            why,
            Some("the platform firmware gives this slot no power resources: D3cold is impossible here, the kernel will use D3hot"),
        ),
        D3coldPower::Unknown(why) => check(
            id,
            Verdict::Unknown,
            format!("unknown: {why}"),
            Some("run as root, or check the firmware_node links' permissions"),
        ),
    }
}

fn kernel_support_check(
    sysfs: &Sysfs,
    address: PciAddress,
    support: KernelSupport,
    vfio: bool,
) -> Check {
    let fix = Some("upgrade the host to Linux 6.1 or later (VFIO low-power features)");
    let release = kernel_release();
    let by_version = |why: &str| {
        let verdict = match release.as_deref().and_then(parse_release) {
            Some(v) if v >= (6, 1) => Verdict::Pass,
            Some(_) => Verdict::Fail,
            None => Verdict::Unknown,
        };
        check(
            "kernel_support",
            verdict,
            format!(
                "inferred from kernel {} ({why}; the device was not touched)",
                release.as_deref().unwrap_or("?")
            ),
            fix,
        )
    };
    if support == KernelSupport::InferFromVersion || !vfio {
        return by_version(if vfio {
            "--no-open"
        } else {
            "not bound to vfio-pci"
        });
    }
    match KernelDevice::open(sysfs, address) {
        Ok(dev) => match dev.probe_low_power() {
            Ok(s) if s.any_low_power() => check(
                "kernel_support",
                Verdict::Pass,
                format!(
                    "probed: ENTRY {} ENTRY_WITH_WAKEUP {} EXIT {}",
                    s.entry, s.entry_with_wakeup, s.exit
                ),
                fix,
            ),
            Ok(_) => check(
                "kernel_support",
                Verdict::Fail,
                "probed: the kernel offers no low-power features for this device".into(),
                fix,
            ),
            Err(e) => check(
                "kernel_support",
                Verdict::Unknown,
                format!("probe failed: {e}"),
                fix,
            ),
        },
        Err(OpenError::Busy { .. }) => by_version("held by another process, probably a VMM"),
        Err(e) => by_version(&format!("could not open: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_release("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(parse_release("6.12.117+deb12-amd64"), Some((6, 12)));
        assert_eq!(parse_release("5.10.0"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
    }
}
