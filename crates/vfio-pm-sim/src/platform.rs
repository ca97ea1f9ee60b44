//! The host platforms and kernel versions the model can impersonate.

use nix::errno::Errno;
use std::fmt;
use std::str::FromStr;

/// Where a runtime-suspended device ends up, decided by platform firmware (reference §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    /// No firmware power resources for the device: runtime suspend stops at D3hot.
    D3hot,
    /// The device has ACPI power resources (`_PR0`/`_PR3` with `_ON`/`_OFF`): runtime suspend
    /// reaches D3cold while `d3cold_allowed` is 1.
    D3cold,
}

impl Platform {
    /// Both platforms, D3hot first.
    pub const ALL: [Platform; 2] = [Platform::D3hot, Platform::D3cold];

    /// The name used in scenario files (`d3hot`, `d3cold`).
    pub fn name(self) -> &'static str {
        match self {
            Platform::D3hot => "d3hot",
            Platform::D3cold => "d3cold",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A platform name that is not `d3hot` or `d3cold`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown platform {0:?} (expected d3hot or d3cold)")]
pub struct UnknownPlatform(pub String);

impl FromStr for Platform {
    type Err = UnknownPlatform;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "d3hot" => Ok(Platform::D3hot),
            "d3cold" => Ok(Platform::D3cold),
            other => Err(UnknownPlatform(other.to_string())),
        }
    }
}

/// The kernel whose behaviour the model reproduces. Only versions whose behaviour differs in
/// this area are listed (reference §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelVersion {
    /// 5.19: Part 1 only. Unused devices runtime-suspend, but there are no low-power features
    /// (indexes 3–5 answer ENOTTY) and device ioctls do not resume the device.
    V5_19,
    /// 6.1: the low-power features (the baseline of the reference and of the QEMU table).
    V6_1,
    /// 6.12: same observable behaviour as 6.1 for group-obtained fds.
    V6_12,
    /// 6.18+: a driver without a `device_feature` op answers ENOTTY instead of EINVAL.
    V6_18,
}

impl KernelVersion {
    /// Whether VFIO_DEVICE_FEATURE indexes 3, 4 and 5 exist.
    pub fn has_low_power_features(self) -> bool {
        self >= KernelVersion::V6_1
    }

    /// Whether the device-fd ioctl wrapper and region read/write take a runtime-PM reference
    /// (resuming the device) around every call.
    pub fn calls_resume_device(self) -> bool {
        self >= KernelVersion::V6_1
    }

    /// The errno of VFIO_DEVICE_FEATURE on a driver with no `device_feature` op.
    pub fn missing_feature_op_errno(self) -> Errno {
        if self >= KernelVersion::V6_18 {
            Errno::ENOTTY
        } else {
            Errno::EINVAL
        }
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelVersion::V5_19 => "5.19",
            KernelVersion::V6_1 => "6.1",
            KernelVersion::V6_12 => "6.12",
            KernelVersion::V6_18 => "6.18",
        })
    }
}
