//! The controller's typed errors.

use crate::request::Slot;
use std::io;
use vfio_pm::{Errno, FeatureError, PciAddress};

use super::HostCall;
use crate::pme::NotifyError;

/// Controller errors.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// No device in that slot.
    #[error("no device in {0}")]
    UnknownSlot(Slot),
    /// Probing a device's low-power features failed (the device was not added).
    #[error("probing {address}")]
    Probe {
        /// The device.
        address: PciAddress,
        /// The typed error.
        #[source]
        source: FeatureError,
    },
    /// The device failed earlier and could not be recovered.
    #[error("device in {0} has failed")]
    DeviceFailed(Slot),
    /// [`Controller::adopt_low_power`](super::Controller::adopt_low_power) on a device that
    /// does not use plain entry or that this controller has already moved.
    #[error("{slot}: cannot take over low power ({why})")]
    NotAdoptable {
        /// The device.
        slot: Slot,
        /// Why.
        why: &'static str,
    },
    /// A host call failed.
    #[error("{slot}")]
    Host {
        /// The device.
        slot: Slot,
        /// The typed error.
        #[source]
        source: FeatureError,
    },
    /// Another host call (knob, region access, close) failed.
    #[error("{slot}: {call:?} failed: {errno}")]
    HostOther {
        /// The device.
        slot: Slot,
        /// The call.
        call: HostCall,
        /// The errno.
        errno: Errno,
    },
    /// The guest could not be notified.
    #[error("{slot}: notifying the guest")]
    Notify {
        /// The device.
        slot: Slot,
        /// The notifier error.
        #[source]
        source: NotifyError,
    },
    /// epoll / eventfd failure.
    #[error("controller epoll/eventfd I/O")]
    Io(#[from] io::Error),
}
