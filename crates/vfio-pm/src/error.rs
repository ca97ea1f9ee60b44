//! Typed errors of the feature calls, derived from errno plus what was being attempted.

use crate::feature::LowPowerFeature;
use nix::errno::Errno;

/// Why a low-power feature call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// ENOTTY: the kernel (older than 6.1) or the device's driver has no such feature.
    #[error("{} is not supported by this kernel or driver (ENOTTY; needs Linux 6.1+ and vfio-pci)", feature.name())]
    Unsupported {
        /// The feature that was asked for.
        feature: LowPowerFeature,
    },
    /// EINVAL on an entry built by this library: the device is already in low power.
    #[error("{}: the device is already in low power (EINVAL); exit first", feature.name())]
    AlreadyEngaged {
        /// The entry that was refused.
        feature: LowPowerFeature,
    },
    /// EBADF: the wakeup eventfd is not an open file descriptor.
    #[error("{}: the wakeup eventfd is not valid (EBADF)", feature.name())]
    InvalidEventFd {
        /// The feature that was asked for.
        feature: LowPowerFeature,
    },
    /// EIO: the kernel could not resume the device for the call (stuck in D3cold?).
    #[error("{}: the kernel could not resume the device (EIO); it may be stuck in D3cold", feature.name())]
    ResumeFailed {
        /// The feature that was asked for.
        feature: LowPowerFeature,
    },
    /// EACCES/EPERM.
    #[error("{}: permission denied ({errno})", feature.name())]
    Permission {
        /// The feature that was asked for.
        feature: LowPowerFeature,
        /// EACCES or EPERM.
        errno: Errno,
    },
    /// Anything else, with the raw errno kept.
    #[error("{}: {errno} ({})", feature.name(), errno.desc())]
    Os {
        /// The feature that was asked for.
        feature: LowPowerFeature,
        /// The raw errno.
        errno: Errno,
    },
}

impl FeatureError {
    /// Interprets `errno` from a well-formed request for `feature`.
    pub fn from_errno(feature: LowPowerFeature, errno: Errno) -> Self {
        match errno {
            Errno::ENOTTY => Self::Unsupported { feature },
            Errno::EINVAL if feature != LowPowerFeature::Exit => Self::AlreadyEngaged { feature },
            Errno::EBADF => Self::InvalidEventFd { feature },
            Errno::EIO => Self::ResumeFailed { feature },
            Errno::EACCES | Errno::EPERM => Self::Permission { feature, errno },
            errno => Self::Os { feature, errno },
        }
    }

    /// The errno this error came from.
    pub fn errno(&self) -> Errno {
        match self {
            Self::Unsupported { .. } => Errno::ENOTTY,
            Self::AlreadyEngaged { .. } => Errno::EINVAL,
            Self::InvalidEventFd { .. } => Errno::EBADF,
            Self::ResumeFailed { .. } => Errno::EIO,
            Self::Permission { errno, .. } | Self::Os { errno, .. } => *errno,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_a_meaningful_variant_and_back() {
        let e = LowPowerFeature::Entry;
        for errno in [
            Errno::ENOTTY,
            Errno::EINVAL,
            Errno::EBADF,
            Errno::EIO,
            Errno::EACCES,
            Errno::EPERM,
            Errno::EBUSY,
        ] {
            assert_eq!(FeatureError::from_errno(e, errno).errno(), errno);
        }
        assert!(matches!(
            FeatureError::from_errno(e, Errno::EINVAL),
            FeatureError::AlreadyEngaged { .. }
        ));
        // EINVAL on EXIT is not "already engaged" (EXIT never fails that way).
        assert!(matches!(
            FeatureError::from_errno(LowPowerFeature::Exit, Errno::EINVAL),
            FeatureError::Os { .. }
        ));
        let msg = FeatureError::from_errno(e, Errno::ENOTTY).to_string();
        assert!(msg.contains("6.1"), "{msg}");
    }
}
