//! The seam between "a host device with VFIO low-power support" and its backends.
//!
//! [`PowerDevice`] is the narrow part a hypervisor needs for one open vfio-pci device: the
//! feature ioctl, region access (for the PMCSR fallback) and the host's `d3cold_allowed` knob.
//! [`ConformanceDevice`] adds what conformance scenarios and diagnostics need (other ioctls, BAR
//! mappings, host sysfs config reads, reset, close, observation). The real kernel
//! ([`crate::KernelDevice`]) and the simulated host (`vfio-pm-sim`) implement both; the
//! hypervisor side, the CLI and the conformance scenarios are written once against them.
//! [`LowPower`] adds the typed feature calls on top of any [`PowerDevice`].

use crate::error::FeatureError;
use crate::feature::{self, Support};
use crate::pci::PciAddress;
use crate::power::PowerObservation;
use nix::errno::Errno;
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

/// One open VFIO PCI device, as the low-power controller drives it.
///
/// This is all a hypervisor hands the controller: the device a VMM already owns (its fd in the
/// VM's own container, or an fd obtained another way), real or simulated. Every failure is the
/// errno the kernel would return. `Send`, so that a controller holding devices can live behind
/// the lock a VMM shares between its vCPU threads and its event loop.
pub trait PowerDevice: Send {
    /// The PCI address of the device.
    fn address(&self) -> PciAddress;

    /// `VFIO_DEVICE_FEATURE` with the header and payload exactly as given (see
    /// [`feature::device_feature`]). In a payload, an eventfd is a file descriptor number of this
    /// process.
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno>;

    /// `pread` on a VFIO region of the device fd. Returns the number of bytes read. A region
    /// index the device does not have fails with EINVAL, as `VFIO_DEVICE_GET_REGION_INFO` does.
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno>;

    /// `pwrite` on a VFIO region of the device fd. Returns the number of bytes written. A
    /// region index the device does not have fails with EINVAL.
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno>;

    /// Writes a host-side sysfs knob.
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno>;

    /// Whether the knob already has this value, where the backend can read it (`None`: unknown,
    /// write it). Lets a caller skip a write that changes nothing, since some writes have side
    /// effects: a `d3cold_allowed` write resumes the device (`d3cold_allowed_store` calls
    /// `pm_runtime_resume`, drivers/pci/pci-sysfs.c; docs/kernel-behaviour.md).
    fn host_knob_is(&self, knob: HostKnob) -> Option<bool> {
        let _ = knob;
        None
    }
}

/// The operations beyond [`PowerDevice`] that conformance scenarios, the CLI's diagnostics and
/// the simulated host need: other ioctls, BAR mappings, host sysfs config reads, reset, close,
/// observation. A VMM never needs to implement it.
///
/// After [`ConformanceDevice::close`], every device call fails with `EBADF` (the fd is gone),
/// like a real closed fd.
pub trait ConformanceDevice: PowerDevice {
    /// Any other device ioctl (`VFIO_DEVICE_GET_INFO`): the kernel resumes the device around it.
    fn device_ioctl(&self) -> Result<(), Errno>;

    /// Touches (reads 4 bytes at the start of) an `mmap` of VFIO region `region` of the device
    /// fd. The kernel's fault handler never resumes the device: it answers SIGBUS while low
    /// power is engaged or the device's memory is disabled (PMCSR D3hot), which is reported as
    /// [`MmapAccess::SigBus`]. A region that cannot be mapped (config space, an index without
    /// an mmap-capable BAR) fails with EINVAL, like `mmap(2)` on it.
    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno>;

    /// A host-side read of the device's config space through sysfs (what `lspci -xxx` does).
    fn host_config_read(&self) -> Result<(), Errno>;

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

/// The typed low-power calls, available on every [`PowerDevice`].
pub trait LowPower: PowerDevice {
    /// Which low-power features the device offers (PROBE; no state change).
    fn probe_low_power(&self) -> Result<Support, FeatureError> {
        feature::probe_with(|argsz, flags, payload| self.device_feature(argsz, flags, payload))
    }

    /// LOW_POWER_ENTRY.
    fn enter_low_power(&self) -> Result<(), FeatureError> {
        feature::enter_with(|argsz, flags, payload| self.device_feature(argsz, flags, payload))
    }

    /// LOW_POWER_ENTRY_WITH_WAKEUP with `wakeup` as the eventfd.
    fn enter_low_power_with_wakeup(&self, wakeup: &EventFd) -> Result<(), FeatureError> {
        feature::enter_with_wakeup_with(wakeup, |argsz, flags, payload| {
            self.device_feature(argsz, flags, payload)
        })
    }

    /// LOW_POWER_EXIT.
    fn exit_low_power(&self) -> Result<(), FeatureError> {
        feature::exit_with(|argsz, flags, payload| self.device_feature(argsz, flags, payload))
    }
}

impl<T: PowerDevice + ?Sized> LowPower for T {}

impl<T: PowerDevice + ?Sized> PowerDevice for Box<T> {
    fn address(&self) -> PciAddress {
        (**self).address()
    }
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        (**self).device_feature(argsz, flags, payload)
    }
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        (**self).region_read(region, offset, buf)
    }
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        (**self).region_write(region, offset, data)
    }
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        (**self).set_host_knob(knob)
    }
    fn host_knob_is(&self, knob: HostKnob) -> Option<bool> {
        (**self).host_knob_is(knob)
    }
}

impl<T: ConformanceDevice + ?Sized> ConformanceDevice for Box<T> {
    fn device_ioctl(&self) -> Result<(), Errno> {
        (**self).device_ioctl()
    }
    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno> {
        (**self).bar_mmap_access(region)
    }
    fn host_config_read(&self) -> Result<(), Errno> {
        (**self).host_config_read()
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
