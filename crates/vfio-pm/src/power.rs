//! Power states and runtime-PM status as the kernel names them in sysfs.

use serde::{Serialize, Serializer};
use std::fmt;

/// A PCI device power state (`/sys/bus/pci/devices/BDF/power_state`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Light sleep (rare).
    D1,
    /// Deeper sleep (rare).
    D2,
    /// Device in D3 with main power still applied; config space readable.
    D3Hot,
    /// Main power removed by platform firmware; nothing readable until powered on.
    D3Cold,
    /// The kernel's own "unknown" (e.g. before the first transition).
    Unknown,
    /// A value this program does not know, kept verbatim.
    Other(String),
}

impl PowerState {
    /// Parses the sysfs text; never fails (odd values are kept as [`PowerState::Other`]).
    pub fn from_sysfs(text: &str) -> Self {
        match text.trim() {
            "D0" => Self::D0,
            "D1" => Self::D1,
            "D2" => Self::D2,
            "D3hot" => Self::D3Hot,
            "D3cold" => Self::D3Cold,
            "unknown" => Self::Unknown,
            other => Self::Other(other.to_string()),
        }
    }

    /// The sysfs spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::D0 => "D0",
            Self::D1 => "D1",
            Self::D2 => "D2",
            Self::D3Hot => "D3hot",
            Self::D3Cold => "D3cold",
            Self::Unknown => "unknown",
            Self::Other(s) => s,
        }
    }

    /// True for D3hot and D3cold.
    pub fn is_d3(&self) -> bool {
        matches!(self, Self::D3Hot | Self::D3Cold)
    }
}

/// Runtime-PM status (`power/runtime_status`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuntimeStatus {
    /// In use, powered.
    Active,
    /// Runtime-suspended.
    Suspended,
    /// Suspend in progress.
    Suspending,
    /// Resume in progress.
    Resuming,
    /// The last transition failed; runtime PM is stuck until cleared.
    Error,
    /// Runtime PM is disabled for this device.
    Unsupported,
    /// A value this program does not know, kept verbatim.
    Other(String),
}

impl RuntimeStatus {
    /// Parses the sysfs text; never fails.
    pub fn from_sysfs(text: &str) -> Self {
        match text.trim() {
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "suspending" => Self::Suspending,
            "resuming" => Self::Resuming,
            "error" => Self::Error,
            "unsupported" => Self::Unsupported,
            other => Self::Other(other.to_string()),
        }
    }

    /// The sysfs spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Suspending => "suspending",
            Self::Resuming => "resuming",
            Self::Error => "error",
            Self::Unsupported => "unsupported",
            Self::Other(s) => s,
        }
    }

    /// True while a transition is under way.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Suspending | Self::Resuming)
    }
}

macro_rules! display_and_serialize_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    )*};
}
display_and_serialize_as_str!(PowerState, RuntimeStatus);

/// What can be observed of a device's power at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PowerObservation {
    /// `power_state`.
    pub power_state: PowerState,
    /// `power/runtime_status`.
    pub runtime_status: RuntimeStatus,
}

impl fmt::Display for PowerObservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.power_state, self.runtime_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_known_spelling() {
        for s in ["D0", "D1", "D2", "D3hot", "D3cold", "unknown"] {
            assert_eq!(PowerState::from_sysfs(&format!("{s}\n")).as_str(), s);
        }
        for s in [
            "active",
            "suspended",
            "suspending",
            "resuming",
            "error",
            "unsupported",
        ] {
            assert_eq!(RuntimeStatus::from_sysfs(s).as_str(), s);
        }
        assert_eq!(PowerState::from_sysfs("D9"), PowerState::Other("D9".into()));
        assert!(RuntimeStatus::from_sysfs("resuming").is_transient());
    }
}
