//! What the controller reports about its devices: host power, request outcomes, counters and
//! teardown results.

use super::LowPowerVariant;
use crate::request::Slot;
use serde::Serialize;

/// The controller's view of a device's host power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostPower {
    /// Not in low power.
    Active,
    /// Engaged with plain entry.
    LowPower,
    /// Engaged with wakeup; not yet woken.
    Armed,
    /// Woken by the host (kernel auto-exited), guest notified, waiting for `_ON`.
    WokenByHost,
    /// D3hot through PMCSR (fallback).
    D3HotFallback,
    /// Failed; see [`Event::DeviceFailed`](super::Event::DeviceFailed).
    Failed,
}

impl HostPower {
    const COUNT: usize = 6;
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// What a guest request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// Entered low power with this variant.
    Entered(LowPowerVariant),
    /// Left low power (EXIT or PMCSR D0).
    Exited,
    /// Guest `_ON` after a host wake: the kernel had already exited; no ioctl needed.
    AlreadyExited,
    /// Entry postponed (anti-thrash) until this clock time.
    Deferred {
        /// Deadline, clock ns.
        until_ns: u64,
    },
    /// `_ON` cancelled a postponed entry.
    Coalesced,
    /// The guest repeated its last request; nothing to do.
    Unchanged,
    /// A failed device came back with this `_ON`.
    Recovered,
}

/// Residency and counters of one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStats {
    /// Host low-power entries made (any variant, re-arms included).
    pub entries: u64,
    /// Host low-power exits (EXIT calls, PMCSR D0, and kernel auto-exits on wake).
    pub exits: u64,
    /// Genuine host wakes of an armed device.
    pub host_wakes: u64,
    /// Wake notifications delivered to the guest.
    pub pme_delivered: u64,
    /// Eventfd signals not forwarded (self-caused, stale, absorbed).
    pub pme_suppressed: u64,
    /// Guest `_OFF`s postponed by anti-thrash.
    pub deferred: u64,
    /// `_OFF`/`_ON` pairs that never reached the host.
    pub coalesced: u64,
    /// Repeated guest requests ignored.
    pub duplicates: u64,
    /// Epoll readiness with an empty eventfd.
    pub spurious: u64,
    /// Host call failures.
    pub errors: u64,
    /// Nanoseconds spent in each [`HostPower`] state, indexed in declaration order
    /// (active, low_power, armed, woken_by_host, d3hot_fallback, failed).
    pub residency_ns: [u64; HostPower::COUNT],
}

impl DeviceStats {
    /// Nanoseconds spent in `state`.
    pub fn residency(&self, state: HostPower) -> u64 {
        self.residency_ns[state.index()]
    }
}

/// What [`Controller::reset_vm`](super::Controller::reset_vm) /
/// [`Controller::shutdown`](super::Controller::shutdown) did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TeardownReport {
    /// Devices taken out of low power.
    pub exited: Vec<Slot>,
    /// Devices whose exit (or close) failed; they are marked failed.
    pub failed: Vec<Slot>,
}
