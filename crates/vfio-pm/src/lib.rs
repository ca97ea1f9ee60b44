//! # vfio-pm
//!
//! Runtime power management for VFIO passthrough PCI devices (Linux 6.1+): the safe face of the
//! kernel's `VFIO_DEVICE_FEATURE` low-power calls, opening vfio-pci devices by PCI address, and
//! host power introspection from sysfs.
//!
//! - [`feature`]: PROBE / ENTRY / ENTRY_WITH_WAKEUP / EXIT on any VFIO device fd (`AsFd`), whether
//!   it came from a group (`VFIO_GROUP_GET_DEVICE_FD`) or an iommufd cdev (`/dev/vfio/devices/vfioN`).
//! - [`PowerDevice`]: the narrow, `Send` seam the hypervisor side drives (feature calls, region
//!   access, the `d3cold_allowed` knob), with two backends: the real kernel ([`KernelDevice`]:
//!   open by address, or wrap a device or fd the VMM already has) and the simulated host (crate
//!   `vfio-pm-sim`). [`LowPower`] gives every backend the typed calls; [`ConformanceDevice`]
//!   adds what conformance scenarios and diagnostics need.
//! - [`sysfs`]: power state, runtime status, residency counters, firmware power resources and more,
//!   with a configurable root.
//! - [`iommufd`]: opening a device through `/dev/vfio/devices/vfioN` and an iommufd where the
//!   kernel has them, and which interfaces it offers; [`fdinfo`]: the PCI device a VFIO fd
//!   belongs to, as the kernel's fdinfo names it.
//!
//! ```no_run
//! use vfio_pm::{ConformanceDevice, KernelDevice, LowPower, Sysfs};
//! use vmm_sys_util::eventfd::EventFd;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Diagnostics open the device by address; a VMM wraps its own device instead
//! // (`KernelDevice::from_vfio_device` or `KernelDevice::from_device_fd`).
//! let dev = KernelDevice::open(&Sysfs::from_env(), "0000:00:05.0".parse()?)?;
//! if dev.probe_low_power()?.entry_with_wakeup {
//!     let wake = EventFd::new(0)?;
//!     dev.enter_low_power_with_wakeup(&wake)?;
//!     let now = dev.settle(Duration::from_secs(2))?; // e.g. "D3cold suspended"
//!     println!("{now}");
//!     dev.exit_low_power()?;
//! }
//! # Ok(()) }
//! ```
//!
//! And the part that runs anywhere, reading a sysfs tree:
//!
//! ```
//! let sysfs = vfio_pm::Sysfs::new("/nonexistent");
//! assert!(sysfs.devices().is_err()); // a clear error, not a panic
//! let addr: vfio_pm::PciAddress = "0000:00:05.0".parse().unwrap();
//! assert_eq!(addr.devfn(), 0x28);
//! ```
#![deny(missing_docs)]

pub mod adopt;
pub mod device;
pub mod doctor;
pub mod error;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake_sysfs;
pub mod fdinfo;
pub mod feature;
pub mod host;
mod ioctl_nr;
pub mod iommufd;
pub mod kernel;
pub mod pci;
pub mod power;
pub mod residency;
pub mod sysfs;

pub use device::{OpenError, VfioPciDevice};
pub use error::FeatureError;
pub use feature::{LowPowerFeature, Support};
pub use host::{
    ConformanceDevice, HostKnob, LowPower, MmapAccess, PowerDevice, BAR0_REGION, CONFIG_REGION,
};
pub use kernel::KernelDevice;
pub use nix::errno::Errno;
pub use pci::{PciAddress, PciAddressError};
pub use power::{PowerObservation, PowerState, RuntimeStatus};
pub use sysfs::{DeviceReport, Field, Sysfs, SysfsDevice, SysfsError};
pub use vmm_sys_util::eventfd::EventFd;
