//! Typed, timestamped controller events, the clock they are stamped with, and sinks.

use super::{HostPower, LowPowerVariant, PowerAction, Slot};
use crate::pme::{Delivery, WakeRoute};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vfio_pm::{Errno, PciAddress};

/// A monotonic time source, in nanoseconds since an arbitrary origin. Injectable so that
/// tests and the anti-thrash logic never sleep.
pub trait Clock: Send {
    /// Now, in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// The real clock: nanoseconds since the controller was created.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    start: Instant,
}

impl MonotonicClock {
    /// Origin = now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A host call the controller made on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostCall {
    /// `LOW_POWER_ENTRY`.
    Entry,
    /// `LOW_POWER_ENTRY_WITH_WAKEUP`.
    EntryWithWakeup,
    /// `LOW_POWER_EXIT`.
    Exit,
    /// Writing `d3cold_allowed`.
    #[serde(rename = "d3cold_allowed")]
    D3ColdAllowed(bool),
    /// Fallback: PMCSR PowerState = D3hot through the config region.
    PmcsrD3Hot,
    /// Fallback: PMCSR PowerState = D0 through the config region.
    PmcsrD0,
}

/// The result of a host call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum CallResult {
    /// Success.
    Ok,
    /// Failure with the kernel's errno.
    Err {
        /// Raw errno value.
        errno: i32,
        /// Its description.
        desc: &'static str,
    },
}

impl CallResult {
    /// From an errno.
    pub fn err(e: Errno) -> Self {
        Self::Err {
            errno: e as i32,
            desc: e.desc(),
        }
    }
    /// True for [`CallResult::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok)
    }
}

/// Why a host wake signal did not become a guest PME.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressReason {
    /// The hypervisor's own ioctl (EXIT, or any other) resumed the device and the kernel
    /// signalled the wakeup eventfd for it.
    OwnIoctl,
    /// The guest is powering the device on anyway (`_ON`); a wake that raced with it (host
    /// wake before the EXIT, or the EXIT's own signal) is absorbed.
    GuestPoweringOn,
    /// A signal left over from an earlier arming (epoch), or for a device not armed.
    Stale,
    /// Reset or shutdown exited low power.
    Teardown,
}

/// Why the controller uses the guest's PMCSR path (D3hot) instead of the VFIO features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// PROBE said the kernel has none of the low-power features (pre-6.1 kernel).
    ProbeUnsupported,
    /// An entry returned ENOTTY.
    Enotty,
}

/// Why a guest request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The device failed earlier (EIO) and could not be recovered.
    DeviceFailed,
}

/// One controller event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Event {
    /// A device was put under control.
    DeviceAdded {
        /// Its PCI address.
        address: PciAddress,
        /// The low-power variant chosen.
        variant: LowPowerVariant,
    },
    /// A device was removed (after leaving low power).
    DeviceRemoved,
    /// The guest's `_ON`/`_OFF` trap.
    Guest {
        /// What the guest asked for.
        action: PowerAction,
    },
    /// A guest request was refused.
    GuestRejected {
        /// What the guest asked for.
        action: PowerAction,
        /// Why.
        reason: RejectReason,
    },
    /// A host call and its result.
    HostCall {
        /// The call.
        call: HostCall,
        /// Arming epoch of the device at the time of the call.
        epoch: u64,
        /// Its result.
        result: CallResult,
    },
    /// The controller's view of the host power state changed.
    Power {
        /// Old state.
        from: HostPower,
        /// New state.
        to: HostPower,
    },
    /// The wakeup eventfd fired for an armed device: a genuine host wake.
    HostWake {
        /// The arming epoch it belongs to.
        epoch: u64,
        /// The eventfd counter read.
        count: u64,
    },
    /// A wake notification went to the guest.
    PmeDelivered {
        /// Through which route.
        route: WakeRoute,
        /// What it did.
        delivery: Delivery,
    },
    /// A wake notification could not be delivered (notifier error).
    PmeFailed {
        /// The route that failed.
        route: WakeRoute,
    },
    /// A wakeup eventfd signal that was not forwarded to the guest.
    PmeSuppressed {
        /// Why.
        reason: SuppressReason,
        /// The eventfd counter read.
        count: u64,
        /// Arming epoch at the time.
        epoch: u64,
    },
    /// The eventfd was readable in epoll but empty (already drained).
    SpuriousWake,
    /// Anti-thrash: a guest `_OFF` came within the minimum residency; entry postponed.
    Deferred {
        /// When the entry will be made (clock ns), unless the guest turns it on first.
        until_ns: u64,
    },
    /// A postponed entry is being made now.
    DeferredRun,
    /// Anti-thrash: a postponed `_OFF` was cancelled by `_ON`; the host saw neither.
    Coalesced,
    /// The device uses D3hot through PMCSR instead of the VFIO low-power features.
    Fallback {
        /// Why.
        reason: FallbackReason,
        /// True when the controller writes PMCSR itself (host PM capability offset known);
        /// false when the VMM must pass the guest's own PMCSR writes through.
        controller_writes_pmcsr: bool,
    },
    /// The device failed (EIO or an unexpected error): marked failed; the VMM should tell
    /// the guest (e.g. surprise removal) and the device is not left in low power silently.
    DeviceFailed {
        /// The call that failed.
        call: HostCall,
        /// Its errno.
        errno: i32,
    },
    /// A failed device answered an EXIT again and is usable.
    DeviceRecovered,
    /// VM reset: the device left low power and the guest sees it on.
    VmReset,
    /// A device already in plain low power, engaged through another fd of the same open device
    /// before this controller had it, was taken over without a host call
    /// ([`Controller::adopt_low_power`](super::Controller::adopt_low_power)).
    AdoptedLowPower,
}

/// An event with its time and device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimedEvent {
    /// Clock time in nanoseconds.
    pub at_ns: u64,
    /// The device slot.
    pub slot: Slot,
    /// What happened.
    pub event: Event,
}

/// Where events go.
pub trait EventSink: Send {
    /// Records one event.
    fn record(&mut self, event: &TimedEvent);
}

/// Discards events.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn record(&mut self, _: &TimedEvent) {}
}

impl<F: FnMut(&TimedEvent) + Send> EventSink for F {
    fn record(&mut self, event: &TimedEvent) {
        self(event)
    }
}

/// Keeps every event in memory; clones share the log (the VMM/CLI keeps one clone to read).
#[derive(Debug, Default, Clone)]
pub struct EventLog(Arc<Mutex<Vec<TimedEvent>>>);

impl EventLog {
    /// Empty log.
    pub fn new() -> Self {
        Self::default()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TimedEvent>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Removes and returns all events so far.
    pub fn take(&self) -> Vec<TimedEvent> {
        std::mem::take(&mut *self.lock())
    }
    /// A copy of all events so far.
    pub fn snapshot(&self) -> Vec<TimedEvent> {
        self.lock().clone()
    }
    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Events of one slot matching `pred`, counted.
    pub fn count(&self, slot: Slot, pred: impl Fn(&Event) -> bool) -> usize {
        self.lock()
            .iter()
            .filter(|e| e.slot == slot && pred(&e.event))
            .count()
    }
}

impl EventSink for EventLog {
    fn record(&mut self, event: &TimedEvent) {
        self.lock().push(*event);
    }
}
