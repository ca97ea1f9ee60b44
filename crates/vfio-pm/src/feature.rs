//! `VFIO_DEVICE_FEATURE` low-power calls on any VFIO device fd (group- or cdev-obtained).
//!
//! The raw call ([`device_feature`]) passes argsz, flags and payload through unchanged so that
//! conformance tests can send malformed requests; the typed calls ([`probe`], [`enter`],
//! [`enter_with_wakeup`], [`exit`]) build correct requests and turn errno into [`FeatureError`].

use crate::error::FeatureError;
use nix::errno::Errno;
use serde::Serialize;
use std::os::fd::{AsFd, AsRawFd};
use vfio_bindings::bindings::vfio::{
    vfio_device_feature, vfio_device_low_power_entry_with_wakeup, VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
    VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, VFIO_DEVICE_FEATURE_MASK, VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
};
use vmm_sys_util::eventfd::EventFd;

use crate::ioctl_nr::VFIO_DEVICE_FEATURE_IOCTL;

/// Size of `struct vfio_device_feature` without payload.
pub const HEADER_SIZE: u32 = std::mem::size_of::<vfio_device_feature>() as u32;
/// Size of `struct vfio_device_low_power_entry_with_wakeup`.
pub const WAKEUP_PAYLOAD_SIZE: u32 =
    std::mem::size_of::<vfio_device_low_power_entry_with_wakeup>() as u32;
/// `VFIO_DEVICE_FEATURE_GET`.
pub const FLAG_GET: u32 = VFIO_DEVICE_FEATURE_GET;
/// `VFIO_DEVICE_FEATURE_SET`.
pub const FLAG_SET: u32 = VFIO_DEVICE_FEATURE_SET;
/// `VFIO_DEVICE_FEATURE_PROBE`.
pub const FLAG_PROBE: u32 = VFIO_DEVICE_FEATURE_PROBE;
/// Mask of the feature index in `flags`.
pub const FEATURE_MASK: u32 = VFIO_DEVICE_FEATURE_MASK;

/// The three low-power features of Linux 6.1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LowPowerFeature {
    /// `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY` (3): the host may re-enter low power after an access.
    Entry,
    /// `VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP` (4): one-shot, signals an eventfd on wake.
    EntryWithWakeup,
    /// `VFIO_DEVICE_FEATURE_LOW_POWER_EXIT` (5).
    Exit,
}

impl LowPowerFeature {
    /// All three, in index order.
    pub const ALL: [LowPowerFeature; 3] = [Self::Entry, Self::EntryWithWakeup, Self::Exit];

    /// The feature index carried in the low 16 bits of `flags`.
    pub fn index(self) -> u32 {
        match self {
            Self::Entry => VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
            Self::EntryWithWakeup => VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
            Self::Exit => VFIO_DEVICE_FEATURE_LOW_POWER_EXIT,
        }
    }

    /// The uAPI name without the common prefix.
    pub fn name(self) -> &'static str {
        match self {
            Self::Entry => "LOW_POWER_ENTRY",
            Self::EntryWithWakeup => "LOW_POWER_ENTRY_WITH_WAKEUP",
            Self::Exit => "LOW_POWER_EXIT",
        }
    }
}

/// Which low-power features a device's kernel driver offers (result of [`probe`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Support {
    /// ENTRY is available.
    pub entry: bool,
    /// ENTRY_WITH_WAKEUP is available.
    pub entry_with_wakeup: bool,
    /// EXIT is available.
    pub exit: bool,
}

impl Support {
    /// True when entry and exit (the minimum for low power) are both available.
    pub fn any_low_power(&self) -> bool {
        (self.entry || self.entry_with_wakeup) && self.exit
    }

    /// Whether `feature` is available.
    pub fn has(&self, feature: LowPowerFeature) -> bool {
        match feature {
            LowPowerFeature::Entry => self.entry,
            LowPowerFeature::EntryWithWakeup => self.entry_with_wakeup,
            LowPowerFeature::Exit => self.exit,
        }
    }
}

/// Issues `VFIO_DEVICE_FEATURE` with exactly the given header and payload.
///
/// `argsz` is sent as given (it may disagree with `payload.len()` on purpose); the buffer passed
/// to the kernel always holds the header plus `payload`, so the kernel never reads past it as long
/// as `argsz <= 8 + payload.len()`; a larger `argsz` is clamped to the buffer so that a malformed
/// request cannot make the kernel read our memory out of bounds.
pub fn device_feature(fd: impl AsFd, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
    let total = HEADER_SIZE as usize + payload.len();
    let argsz = argsz.min(total as u32);
    let mut bytes = vec![0u8; total.div_ceil(4) * 4];
    bytes[0..4].copy_from_slice(&argsz.to_ne_bytes());
    bytes[4..8].copy_from_slice(&flags.to_ne_bytes());
    bytes[8..total].copy_from_slice(payload);
    // u32 words keep the header 4-byte aligned as the kernel struct requires.
    let mut buf: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // SAFETY: `buf` is a live, 4-byte aligned allocation of at least `argsz` bytes that starts
    // with a `vfio_device_feature` header; the kernel reads at most `argsz` bytes from it and
    // writes only within `argsz` (GET); the fd is borrowed for the duration of the call.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ptr(
            &fd.as_fd(),
            VFIO_DEVICE_FEATURE_IOCTL(),
            buf.as_mut_ptr(),
        )
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// The payload bytes of ENTRY_WITH_WAKEUP for an eventfd number.
pub fn wakeup_payload(eventfd: i32) -> [u8; 8] {
    let mut p = [0u8; 8];
    p[0..4].copy_from_slice(&eventfd.to_ne_bytes());
    p
}

/// PROBE|SET of each low-power feature through `call`.
///
/// ENOTTY (older kernel, or a driver without the feature) and EINVAL (≤6.17 kernels with no
/// `device_feature` op) both mean "not supported"; other errors are returned.
pub(crate) fn probe_with(
    call: impl Fn(u32, u32, &[u8]) -> Result<(), Errno>,
) -> Result<Support, FeatureError> {
    let mut support = Support::default();
    for feature in LowPowerFeature::ALL {
        let flags = FLAG_PROBE | FLAG_SET | feature.index();
        let ok = match call(HEADER_SIZE, flags, &[]) {
            Ok(()) => true,
            Err(Errno::ENOTTY) | Err(Errno::EINVAL) => false,
            Err(e) => return Err(FeatureError::from_errno(feature, e)),
        };
        match feature {
            LowPowerFeature::Entry => support.entry = ok,
            LowPowerFeature::EntryWithWakeup => support.entry_with_wakeup = ok,
            LowPowerFeature::Exit => support.exit = ok,
        }
    }
    Ok(support)
}

/// SET of a payload-less feature through `call`, errno typed.
fn set_with(
    feature: LowPowerFeature,
    call: impl Fn(u32, u32, &[u8]) -> Result<(), Errno>,
) -> Result<(), FeatureError> {
    call(HEADER_SIZE, FLAG_SET | feature.index(), &[])
        .map_err(|e| FeatureError::from_errno(feature, e))
}

/// LOW_POWER_ENTRY through `call`.
pub(crate) fn enter_with(
    call: impl Fn(u32, u32, &[u8]) -> Result<(), Errno>,
) -> Result<(), FeatureError> {
    set_with(LowPowerFeature::Entry, call)
}

/// LOW_POWER_ENTRY_WITH_WAKEUP with `wakeup` through `call`.
pub(crate) fn enter_with_wakeup_with(
    wakeup: &EventFd,
    call: impl Fn(u32, u32, &[u8]) -> Result<(), Errno>,
) -> Result<(), FeatureError> {
    let f = LowPowerFeature::EntryWithWakeup;
    call(
        HEADER_SIZE + WAKEUP_PAYLOAD_SIZE,
        FLAG_SET | f.index(),
        &wakeup_payload(wakeup.as_raw_fd()),
    )
    .map_err(|e| FeatureError::from_errno(f, e))
}

/// LOW_POWER_EXIT through `call`.
pub(crate) fn exit_with(
    call: impl Fn(u32, u32, &[u8]) -> Result<(), Errno>,
) -> Result<(), FeatureError> {
    set_with(LowPowerFeature::Exit, call)
}

/// Asks whether the device supports each low-power feature (PROBE|SET; no state change).
/// ENOTTY and EINVAL (≤6.17 kernels with no `device_feature` op) both mean "not supported".
pub fn probe(fd: impl AsFd) -> Result<Support, FeatureError> {
    let fd = fd.as_fd();
    probe_with(|argsz, flags, payload| device_feature(fd, argsz, flags, payload))
}

/// Requests low power; the host re-enters it after every host-side access until [`exit`].
pub fn enter(fd: impl AsFd) -> Result<(), FeatureError> {
    let fd = fd.as_fd();
    enter_with(|argsz, flags, payload| device_feature(fd, argsz, flags, payload))
}

/// Requests low power; the first host-side wake signals `wakeup` once and leaves low power.
pub fn enter_with_wakeup(fd: impl AsFd, wakeup: &EventFd) -> Result<(), FeatureError> {
    let fd = fd.as_fd();
    enter_with_wakeup_with(wakeup, |argsz, flags, payload| {
        device_feature(fd, argsz, flags, payload)
    })
}

/// Leaves low power. Idempotent: succeeds when not in low power.
pub fn exit(fd: impl AsFd) -> Result<(), FeatureError> {
    let fd = fd.as_fd();
    exit_with(|argsz, flags, payload| device_feature(fd, argsz, flags, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn uapi_layout_matches_the_kernel() {
        assert_eq!(size_of::<vfio_device_feature>(), 8);
        assert_eq!(align_of::<vfio_device_feature>(), 4);
        assert_eq!(offset_of!(vfio_device_feature, argsz), 0);
        assert_eq!(offset_of!(vfio_device_feature, flags), 4);
        assert_eq!(size_of::<vfio_device_low_power_entry_with_wakeup>(), 8);
        assert_eq!(
            offset_of!(vfio_device_low_power_entry_with_wakeup, wakeup_eventfd),
            0
        );
        assert_eq!(
            offset_of!(vfio_device_low_power_entry_with_wakeup, reserved),
            4
        );
        assert_eq!(VFIO_DEVICE_FEATURE_IOCTL(), 0x3B75);
        assert_eq!(
            (FLAG_GET, FLAG_SET, FLAG_PROBE),
            (1 << 16, 1 << 17, 1 << 18)
        );
        let idx: Vec<u32> = LowPowerFeature::ALL.iter().map(|f| f.index()).collect();
        assert_eq!(idx, [3, 4, 5]);
    }

    #[test]
    fn feature_call_on_a_non_vfio_fd_reports_the_kernel_errno() {
        // A regular file has no ioctl handler for this command: ENOTTY, which probe reads as
        // "not supported" and the typed calls as FeatureError::Unsupported.
        let f = tempfile::tempfile().unwrap();
        assert_eq!(device_feature(&f, 8, FLAG_SET | 3, &[]), Err(Errno::ENOTTY));
        assert_eq!(probe(&f).unwrap(), Support::default());
        assert!(matches!(enter(&f), Err(FeatureError::Unsupported { .. })));
        let efd = EventFd::new(0).unwrap();
        assert!(matches!(
            enter_with_wakeup(&f, &efd),
            Err(FeatureError::Unsupported { .. })
        ));
    }

    #[test]
    fn wakeup_payload_is_eventfd_then_zero_reserved() {
        assert_eq!(wakeup_payload(7), [7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(wakeup_payload(-1)[..4], [0xff; 4]);
    }
}
