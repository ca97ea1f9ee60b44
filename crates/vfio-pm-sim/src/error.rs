//! Typed errors of the simulated host's own API (not of the simulated kernel calls, which
//! answer with an errno exactly like the kernel).

use nix::errno::Errno;
use vfio_pm::PciAddress;

/// Why a simulated-host operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No simulated device has this address.
    #[error("no simulated device at {address}")]
    NoSuchDevice {
        /// The address that was asked for.
        address: PciAddress,
    },
    /// Two devices were configured with the same address.
    #[error("two simulated devices at {address}")]
    DuplicateDevice {
        /// The duplicated address.
        address: PciAddress,
    },
    /// The device is already open (VFIO groups are exclusive).
    #[error("{address} is already open")]
    Busy {
        /// The device.
        address: PciAddress,
    },
    /// The simulated kernel refused the call.
    #[error("{address}: the simulated kernel answered {errno}")]
    Kernel {
        /// The device.
        address: PciAddress,
        /// The errno the kernel would return.
        errno: Errno,
    },
}

impl SimError {
    /// The errno a real host would have produced for this failure.
    pub fn errno(&self) -> Errno {
        match self {
            SimError::NoSuchDevice { .. } => Errno::ENODEV,
            SimError::DuplicateDevice { .. } => Errno::EEXIST,
            SimError::Busy { .. } => Errno::EBUSY,
            SimError::Kernel { errno, .. } => *errno,
        }
    }
}
