//! Part of phase `checks`: which VFIO interfaces the kernel offers for the device (the doctor's
//! `vfio_interfaces`), the cdev + iommufd open where the kernel has it (a clear error where it
//! does not), and the device a VFIO fd belongs to as the kernel's fdinfo names it.

use crate::context::Ctx;
use crate::report::Reporter;
use vfio_pm::iommufd::{self, IommufdOpenError};
use vfio_pm::{ConformanceDevice, KernelDevice, LowPower, Support};

/// The first release whose vfio.ko prints `vfio-device-syspath` in a device fd's fdinfo.
pub const FDINFO_SYSPATH_SINCE: (u32, u32) = (6, 18);

/// Before the group open: the interfaces the kernel offers, and the iommufd open (which must
/// work where the kernel offers cdev + iommufd, and fail with [`IommufdOpenError::NoCdev`]
/// where it has no device cdev).
pub fn before_group_open(ctx: &Ctx, r: &mut Reporter) {
    let Ok(sys) = ctx.sysfs.device(ctx.device) else {
        return;
    };
    let offered = iommufd::interfaces(&ctx.sysfs, &sys);
    r.info("vfio-interfaces", &offered);
    r.check(
        "interfaces-group",
        offered.group,
        format!("the group interface must exist for this harness: {offered}"),
    );
    match (
        offered.cdev_iommufd(),
        KernelDevice::open_iommufd(&ctx.sysfs, ctx.device),
    ) {
        (true, Ok(mut dev)) => {
            let probe = dev.probe_low_power();
            let all = Support {
                entry: true,
                entry_with_wakeup: true,
                exit: true,
            };
            r.check(
                "iommufd-open-probe",
                probe.as_ref().is_ok_and(|s| *s == all),
                format!("cdev+iommufd open, probe {probe:?}"),
            );
            let named = dev.fd().map(vfio_pm::fdinfo::pci_address_of_fd);
            r.check(
                "iommufd-fdinfo-names-device",
                matches!(named, Ok(Ok(Some(a))) if a == ctx.device),
                format!("{named:?}"),
            );
            let closed = dev.close();
            r.check("iommufd-close", closed.is_ok(), format!("{closed:?}"));
        }
        (true, Err(e)) => {
            r.check("iommufd-open-probe", false, format!("offered but: {e}"));
        }
        (false, Err(e @ IommufdOpenError::NoCdev { .. })) => {
            r.check("iommufd-open-refused-clearly", true, e);
        }
        (false, other) => {
            r.check(
                "iommufd-open-refused-clearly",
                false,
                format!(
                    "no cdev+iommufd offered, yet: {:?}",
                    other.map(|_| "opened")
                ),
            );
        }
    }
}

/// After the group open: fdinfo names the device on kernels that print the syspath, and
/// nothing on older ones.
pub fn fdinfo_names_device(ctx: &Ctx, r: &mut Reporter, dev: &KernelDevice) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = vfio_pm::doctor::parse_release(release.trim());
    let want = version
        .is_some_and(|v| v >= FDINFO_SYSPATH_SINCE)
        .then_some(ctx.device);
    match dev.fd().map(vfio_pm::fdinfo::pci_address_of_fd) {
        Ok(Ok(got)) => r.check(
            "fdinfo-names-device",
            got == want,
            format!("fdinfo names {got:?}, want {want:?} on {}", release.trim()),
        ),
        other => r.check("fdinfo-names-device", false, format!("{other:?}")),
    };
}
