//! The seam between "a host device with VFIO low-power support" and its backends.
//!
//! [`HostDevice`] is what the kernel exposes for one opened vfio-pci device: the feature ioctl,
//! other device ioctls, region access, host-side sysfs access, reset, close, and observation of
//! the power state. The real kernel ([`crate::KernelDevice`]) and the simulated host
//! (`vfio-pm-sim`) implement it; the hypervisor side, the CLI and the conformance scenarios are
//! written once against it. [`LowPower`] adds the typed feature calls on top of any backend.

use crate::error::FeatureError;
use crate::feature::{self, LowPowerFeature, Support, FLAG_PROBE, FLAG_SET, HEADER_SIZE};
use crate::pci::PciAddress;
use crate::power::PowerObservation;
use nix::errno::Errno;
use std::os::fd::AsRawFd;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// Index of the PCI config space region (`VFIO_PCI_CONFIG_REGION_INDEX`).
pub const CONFIG_REGION: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;
/// Index of BAR0 (`VFIO_PCI_BAR0_REGION_INDEX`).
pub const BAR0_REGION: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX;

/// What touching a BAR through an `mmap` of the device fd did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmapAccess {
    /// The page fault was served: the access worked.
    Ok,
    /// The fault handler refused (low power engaged, or memory disabled / device in D3hot):
    /// the access raised SIGBUS.
    SigBus,
}

impl std::fmt::Display for MmapAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MmapAccess::Ok => "ok",
            MmapAccess::SigBus => "SIGBUS",
        })
    }
}

/// Host-side sysfs knobs that change runtime PM behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKnob {
    /// `power/control`: `true` writes `auto` (runtime PM allowed), `false` writes `on`.
    RuntimePmAllowed(bool),
    /// `d3cold_allowed`: 1 or 0.
    D3ColdAllowed(bool),
}

/// One opened VFIO PCI device on a host, real or simulated.
///
/// Every method reports failures as the errno the kernel would return, so that the same scenario
/// can be run on both backends and the outcomes compared exactly. After [`HostDevice::close`],
/// every device call fails with `EBADF` (the fd is gone), like a real closed fd.
pub trait HostDevice {
    /// The PCI address of the device.
    fn address(&self) -> PciAddress;

    /// `VFIO_DEVICE_FEATURE` with the header and payload exactly as given (see
    /// [`feature::device_feature`]). In a payload, an eventfd is a file descriptor number of this
    /// process.
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno>;

    /// Any other device ioctl (`VFIO_DEVICE_GET_INFO`): the kernel resumes the device around it.
    fn device_ioctl(&self) -> Result<(), Errno>;

    /// `pread` on a VFIO region of the device fd. Returns the number of bytes read.
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `pwrite` on a VFIO region of the device fd. Returns the number of bytes written.
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno>;

    /// Touches (reads 4 bytes at the start of) an `mmap` of VFIO region `region` of the device
    /// fd. The kernel's fault handler never resumes the device: it answers SIGBUS while low
    /// power is engaged or the device's memory is disabled (PMCSR D3hot), which is reported as
    /// [`MmapAccess::SigBus`]. A region that cannot be mapped (config space, an index without
    /// an mmap-capable BAR) fails with EINVAL, like `mmap(2)` on it.
    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno>;

    /// A host-side read of the device's config space through sysfs (what `lspci -xxx` does).
    fn host_config_read(&self) -> Result<(), Errno>;

    /// Writes a host-side sysfs knob.
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> Result<(), Errno>;

    /// Closes the device fd. Closing never signals a wakeup eventfd.
    fn close(&mut self) -> Result<(), Errno>;

    /// The power state and runtime status right now.
    fn observe(&self) -> Result<PowerObservation, Errno>;

    /// Lets the host's asynchronous runtime-PM work finish (suspend after the last reference
    /// is dropped), waiting at most `limit` on a real kernel, then observes.
    fn settle(&self, limit: Duration) -> Result<PowerObservation, Errno>;
}

/// The typed low-power calls, available on every [`HostDevice`].
pub trait LowPower: HostDevice {
    /// Which low-power features the device offers (PROBE; no state change).
    fn probe_low_power(&self) -> Result<Support, FeatureError> {
        let mut support = Support::default();
        for f in LowPowerFeature::ALL {
            let ok = match self.device_feature(HEADER_SIZE, FLAG_PROBE | FLAG_SET | f.index(), &[])
            {
                Ok(()) => true,
                Err(Errno::ENOTTY) | Err(Errno::EINVAL) => false,
                Err(e) => return Err(FeatureError::from_errno(f, e)),
            };
            match f {
                LowPowerFeature::Entry => support.entry = ok,
                LowPowerFeature::EntryWithWakeup => support.entry_with_wakeup = ok,
                LowPowerFeature::Exit => support.exit = ok,
            }
        }
        Ok(support)
    }

    /// LOW_POWER_ENTRY.
    fn enter_low_power(&self) -> Result<(), FeatureError> {
        let f = LowPowerFeature::Entry;
        self.device_feature(HEADER_SIZE, FLAG_SET | f.index(), &[])
            .map_err(|e| FeatureError::from_errno(f, e))
    }

    /// LOW_POWER_ENTRY_WITH_WAKEUP with `wakeup` as the eventfd.
    fn enter_low_power_with_wakeup(&self, wakeup: &EventFd) -> Result<(), FeatureError> {
        let f = LowPowerFeature::EntryWithWakeup;
        self.device_feature(
            HEADER_SIZE + feature::WAKEUP_PAYLOAD_SIZE,
            FLAG_SET | f.index(),
            &feature::wakeup_payload(wakeup.as_raw_fd()),
        )
        .map_err(|e| FeatureError::from_errno(f, e))
    }

    /// LOW_POWER_EXIT.
    fn exit_low_power(&self) -> Result<(), FeatureError> {
        let f = LowPowerFeature::Exit;
        self.device_feature(HEADER_SIZE, FLAG_SET | f.index(), &[])
            .map_err(|e| FeatureError::from_errno(f, e))
    }
}

impl<T: HostDevice + ?Sized> LowPower for T {}

impl<T: HostDevice + ?Sized> HostDevice for Box<T> {
    fn address(&self) -> PciAddress {
        (**self).address()
    }
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        (**self).device_feature(argsz, flags, payload)
    }
    fn device_ioctl(&self) -> Result<(), Errno> {
        (**self).device_ioctl()
    }
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        (**self).region_read(region, offset, buf)
    }
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        (**self).region_write(region, offset, data)
    }
    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno> {
        (**self).bar_mmap_access(region)
    }
    fn host_config_read(&self) -> Result<(), Errno> {
        (**self).host_config_read()
    }
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        (**self).set_host_knob(knob)
    }
    fn reset(&self) -> Result<(), Errno> {
        (**self).reset()
    }
    fn close(&mut self) -> Result<(), Errno> {
        (**self).close()
    }
    fn observe(&self) -> Result<PowerObservation, Errno> {
        (**self).observe()
    }
    fn settle(&self, limit: Duration) -> Result<PowerObservation, Errno> {
        (**self).settle(limit)
    }
}
