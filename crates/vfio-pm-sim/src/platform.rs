//! The host platforms and kernel versions the model can impersonate.

use nix::errno::Errno;
use std::fmt;
use std::str::FromStr;

/// Where a runtime-suspended device ends up, decided by platform firmware
/// (`acpi_pci_choose_state`, drivers/pci/pci-acpi.c; docs/kernel-behaviour.md, *D3hot or D3cold*).
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
/// this area are listed (docs/kernel-behaviour.md, *Later changes in this area*).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelVersion {
    /// 5.19: Part 1 only. Unused devices runtime-suspend, but there are no low-power features
    /// (indexes 3–5 answer ENOTTY) and device ioctls do not resume the device.
    V5_19,
    /// 6.1: the low-power features (the baseline of docs/kernel-behaviour.md and of its first real-kernel table).
    V6_1,
    /// 6.12: same observable behaviour as 6.1 for group-obtained fds.
    V6_12,
    /// 6.18+: a driver without a `device_feature` op answers ENOTTY instead of EINVAL.
    V6_18,
    /// 6.19+: vfio-pci has VFIO_DEVICE_FEATURE_DMA_BUF (index 11), a GET-only feature, so
    /// PROBE|GET answers 0 and SET EINVAL where older kernels answer ENOTTY.
    V6_19,
    /// 7.3 (the first 7.x read and run; Debian's newest kernel): the core handles
    /// VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 (index 12), EINVAL for a device without pre-copy
    /// migration (plain vfio-pci) where older kernels answer ENOTTY; and vfio-pci latches
    /// `disable_idle_d3` per device at bind time.
    V7_3,
}

impl KernelVersion {
    /// Every version, oldest first.
    pub const ALL: [KernelVersion; 6] = [
        KernelVersion::V5_19,
        KernelVersion::V6_1,
        KernelVersion::V6_12,
        KernelVersion::V6_18,
        KernelVersion::V6_19,
        KernelVersion::V7_3,
    ];

    /// `(major, minor)` of the version.
    pub fn number(self) -> (u32, u32) {
        match self {
            KernelVersion::V5_19 => (5, 19),
            KernelVersion::V6_1 => (6, 1),
            KernelVersion::V6_12 => (6, 12),
            KernelVersion::V6_18 => (6, 18),
            KernelVersion::V6_19 => (6, 19),
            KernelVersion::V7_3 => (7, 3),
        }
    }

    /// The model of kernel `major.minor`: the newest listed version not newer than it (a kernel
    /// behaves like the last version whose change it has). None before 5.19.
    pub fn for_release(major: u32, minor: u32) -> Option<KernelVersion> {
        Self::ALL
            .iter()
            .rev()
            .copied()
            .find(|v| v.number() <= (major, minor))
    }

    /// Whether vfio-pci answers VFIO_DEVICE_FEATURE_DMA_BUF (index 11).
    pub fn has_dma_buf_feature(self) -> bool {
        self >= KernelVersion::V6_19
    }

    /// Whether vfio-pci latches its `disable_idle_d3` parameter per device when the device
    /// is bound (`vfio_pci_init_dev` copies it into `vdev->disable_idle_d3`), so a runtime
    /// write to `/sys/module/vfio_pci/parameters/disable_idle_d3` takes effect for a device
    /// bound afterwards. Older kernels latch it once, at vfio-pci's module init
    /// (`vfio_pci_core_set_params`), and ignore later writes.
    pub fn latches_disable_idle_d3_per_device(self) -> bool {
        self >= KernelVersion::V7_3
    }

    /// Whether the VFIO core handles VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 (index 12).
    pub fn has_precopy_info_v2(self) -> bool {
        self >= KernelVersion::V7_3
    }

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
            KernelVersion::V6_19 => "6.19",
            KernelVersion::V7_3 => "7.3",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_maps_to_the_newest_version_not_newer_than_it() {
        assert_eq!(KernelVersion::for_release(5, 15), None);
        assert_eq!(KernelVersion::for_release(6, 1), Some(KernelVersion::V6_1));
        assert_eq!(
            KernelVersion::for_release(6, 12),
            Some(KernelVersion::V6_12)
        );
        assert_eq!(
            KernelVersion::for_release(6, 17),
            Some(KernelVersion::V6_12)
        );
        assert_eq!(KernelVersion::for_release(7, 2), Some(KernelVersion::V6_19));
        assert_eq!(KernelVersion::for_release(7, 3), Some(KernelVersion::V7_3));
        assert_eq!(KernelVersion::for_release(8, 0), Some(KernelVersion::V7_3));
        let mut sorted = KernelVersion::ALL;
        sorted.sort();
        assert_eq!(sorted, KernelVersion::ALL);
        for v in KernelVersion::ALL {
            let (a, b) = v.number();
            assert_eq!(v.to_string(), format!("{a}.{b}"));
        }
    }
}
