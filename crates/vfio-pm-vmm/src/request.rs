//! What the guest asks for, and which device it names: the one slot type and the one on/off
//! type shared by the configuration, the trap decoder, the controller and the VMM glue.

use serde::Serialize;
use std::fmt;

/// A managed device's slot: its index in the configuration's `devices`, which is also the
/// number the generated AML writes to the trap register and the controller's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Slot(pub u32);

impl Slot {
    /// The index.
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {}", self.0)
    }
}

/// What the guest asked for through its power resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    /// `_ON`: restore power (the VMM brings the device out of low power).
    PowerOn,
    /// `_OFF`: remove power (the VMM may put the device into D3cold).
    PowerOff,
}

/// One guest request: an `_ON` or `_OFF` for a slot, as the trap decoder produces it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct GuestRequest {
    /// Which device.
    pub slot: Slot,
    /// On or off.
    pub action: PowerAction,
}

impl GuestRequest {
    /// `_ON` of `slot`.
    pub fn power_on(slot: Slot) -> Self {
        Self {
            slot,
            action: PowerAction::PowerOn,
        }
    }

    /// `_OFF` of `slot`.
    pub fn power_off(slot: Slot) -> Self {
        Self {
            slot,
            action: PowerAction::PowerOff,
        }
    }
}
