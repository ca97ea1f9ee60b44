//! The low-power controller: guest `_OFF`/`_ON` traps in, VFIO low-power calls out, host
//! wakes back to the guest as exactly one PME.
//!
//! One [`Controller`] serves every device from one thread: an epoll set over the per-device
//! wakeup eventfds (token = slot index and slot generation, O(1) per event, no allocation on
//! the wake path). A VMM either integrates [`Controller::epoll_fd`] into its own loop and calls
//! [`Controller::poll_once`] (or [`Controller::handle_wake`]), or runs [`Controller::run`] on a
//! thread of its own and feeds it through a [`ControllerHandle`].
//!
//! Devices are held as `Box<dyn PowerDevice>` (`Send`): a VMM's own devices on the real kernel
//! (`vfio_pm::KernelDevice`) and the simulated host are driven by the same code, through
//! [`vfio_pm::LowPower`]. The controller, and so everything that holds it, is `Send`.
//!
//! ## Per-device state machine ([`HostPower`])
//! ```text
//!            _OFF (plain)               host access: kernel resumes, re-suspends
//!   Active ───────────────► LowPower ─┐ (no signal; stays LowPower)
//!     ▲  ▲ ◄──── _ON: EXIT ───────────┘
//!     │  │      _OFF (wakeup)
//!     │  └──────────────────► Armed ── wakeup eventfd ──► WokenByHost ── _ON ──► Active
//!     │          _ON: EXIT ◄──┘  (PME to the guest, once)   (no ioctl: kernel auto-exited)
//!     └── _ON ── D3HotFallback ◄── _OFF when the kernel lacks the features (ENOTTY)
//!   any ── EIO ──► Failed ── _ON: EXIT succeeds ──► Active
//! ```
//!
//! ## Self-caused wakes
//! The kernel signals the wakeup eventfd whenever any ioctl resumes a suspended armed device,
//! the controller's own EXIT included, and it does so *inside* that ioctl. The controller is
//! single-threaded (`&mut self`), so after each of its own calls it drains the eventfd and
//! accounts the count as suppressed ([`SuppressReason::OwnIoctl`] /
//! [`SuppressReason::GuestPoweringOn`]) before any wake can be dispatched. Each arming gets a
//! new epoch; a signal read while the device is not armed (an older epoch) is
//! [`SuppressReason::Stale`]. Only a signal read while `Armed` becomes a guest PME, and the
//! device then leaves `Armed`, so one arming yields at most one PME.
//!
//! ## Anti-thrash
//! An entry is made at most once per `min_residency` after the previous host transition: a
//! guest `_OFF` that comes sooner is deferred (timer on the controller's clock) and a `_ON`
//! before the deadline cancels it (coalesced: the host sees neither). `_ON` is never delayed.

mod error;
mod event;
#[cfg(any(test, feature = "test-utils"))]
mod manual_clock;
mod settings;
mod state;
mod teardown;
mod transitions;
mod wake;

pub use error::ControllerError;
pub use event::{
    CallResult, Clock, Event, EventLog, EventSink, FallbackReason, HostCall, MonotonicClock,
    NullSink, RejectReason, SuppressReason, TimedEvent,
};
#[cfg(any(test, feature = "test-utils"))]
pub use manual_clock::ManualClock;
pub use settings::{
    choose_variant, needs_guest_driver, ControllerConfig, DeviceMatch, DeviceSettings, EntryPolicy,
    LowPowerVariant, DEFAULT_MIN_RESIDENCY, VENDOR_NVIDIA,
};
pub use state::{DeviceStats, HostPower, RequestOutcome, TeardownReport};

use crate::pme::GuestNotifier;
pub use crate::request::{GuestRequest, PowerAction, Slot};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_pm::{Errno, FeatureError, HostKnob, LowPower, PowerDevice, CONFIG_REGION};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Epoll token of the request doorbell.
const REQUEST_TOKEN: u64 = u64::MAX;
/// Epoll token of the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX - 1;
/// Epoll events taken per `epoll_wait`.
const EPOLL_BATCH: usize = 256;

struct DeviceEntry {
    dev: Box<dyn PowerDevice>,
    wake: EventFd,
    generation: u32,
    settings: DeviceSettings,
    variant: LowPowerVariant,
    power: HostPower,
    since_ns: u64,
    guest_on: bool,
    epoch: u64,
    last_transition_ns: Option<u64>,
    deferred: Option<u64>,
    stats: DeviceStats,
}

impl DeviceEntry {
    fn token(&self, slot: u32) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(slot)
    }

    /// Reads and resets the wakeup eventfd: 0 when nothing was signalled (it is non-blocking).
    /// Another read error cannot happen on an eventfd the controller owns; it is logged, not
    /// taken for silence.
    fn drain(&self) -> u64 {
        match self.wake.read() {
            Ok(count) => count,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                tracing::warn!(error = %e, "vfio-pm controller: reading a wakeup eventfd");
                0
            }
        }
    }
}

struct Shared {
    queue: Mutex<VecDeque<GuestRequest>>,
    doorbell: EventFd,
    stop_fd: EventFd,
    stop: AtomicBool,
}

/// A thread-safe handle to a controller running [`Controller::run`] (or polled with
/// [`Controller::poll_once`]): submits guest requests and stops the loop.
#[derive(Clone)]
pub struct ControllerHandle {
    shared: Arc<Shared>,
}

impl ControllerHandle {
    /// Queues a guest request; the controller thread processes it on its next poll.
    pub fn submit(&self, req: GuestRequest) -> Result<(), ControllerError> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(req);
        self.shared.doorbell.write(1)?;
        Ok(())
    }

    /// Asks [`Controller::run`] to return.
    pub fn stop(&self) -> Result<(), ControllerError> {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.stop_fd.write(1)?;
        Ok(())
    }
}

/// The low-power controller for all passthrough devices of a VM.
pub struct Controller {
    epoll: Epoll,
    devices: Vec<Option<DeviceEntry>>,
    free: Vec<u32>,
    next_generation: u32,
    config: ControllerConfig,
    notifier: Box<dyn GuestNotifier>,
    clock: Box<dyn Clock>,
    sink: Box<dyn EventSink>,
    timers: BinaryHeap<Reverse<(u64, u32, u64)>>,
    timer_seq: u64,
    events: Vec<EpollEvent>,
    shared: Arc<Shared>,
    pending: VecDeque<GuestRequest>,
}

impl Controller {
    /// A controller with no devices yet.
    pub fn new(
        config: ControllerConfig,
        notifier: Box<dyn GuestNotifier>,
        clock: Box<dyn Clock>,
        sink: Box<dyn EventSink>,
    ) -> Result<Self, ControllerError> {
        let epoll = Epoll::new()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            doorbell: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            stop_fd: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            stop: AtomicBool::new(false),
        });
        epoll.ctl(
            ControlOperation::Add,
            shared.doorbell.as_raw_fd(),
            EpollEvent::new(EventSet::IN, REQUEST_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            shared.stop_fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        Ok(Self {
            epoll,
            devices: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            config,
            notifier,
            clock,
            sink,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            events: vec![EpollEvent::default(); EPOLL_BATCH],
            shared,
            pending: VecDeque::new(),
        })
    }

    /// A handle for other threads (vCPU trap handlers) to submit requests and stop the loop.
    pub fn handle(&self) -> ControllerHandle {
        ControllerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The epoll fd: readable when a wake, a queued request or a stop is pending. A VMM can
    /// add it to its own event loop and call [`Controller::poll_once`] with a zero timeout.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The wakeup eventfd of a device (for VMMs that watch the eventfds themselves and call
    /// [`Controller::handle_wake`]).
    pub fn wake_fd(&self, slot: Slot) -> Option<RawFd> {
        self.entry(slot).map(|e| e.wake.as_raw_fd())
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.devices.len() - self.free.len()
    }

    /// True without devices.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The current clock time in ns.
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn entry(&self, slot: Slot) -> Option<&DeviceEntry> {
        self.devices.get(slot.0 as usize)?.as_ref()
    }

    fn entry_mut(&mut self, slot: Slot) -> Result<&mut DeviceEntry, ControllerError> {
        self.devices
            .get_mut(slot.0 as usize)
            .and_then(Option::as_mut)
            .ok_or(ControllerError::UnknownSlot(slot))
    }

    fn emit(&mut self, slot: Slot, event: Event) {
        let ev = TimedEvent {
            at_ns: self.clock.now_ns(),
            slot,
            event,
        };
        tracing::trace!(?ev, "vfio-pm controller");
        self.sink.record(&ev);
    }

    fn set_power(&mut self, slot: Slot, to: HostPower) {
        let now = self.clock.now_ns();
        let Ok(e) = self.entry_mut(slot) else { return };
        let from = e.power;
        if from == to {
            return;
        }
        e.stats.residency_ns[from.index()] += now.saturating_sub(e.since_ns);
        e.since_ns = now;
        e.power = to;
        self.emit(slot, Event::Power { from, to });
    }

    /// Counts and reports `count` wakeup-eventfd signals that are not forwarded to the guest,
    /// under the device's current arming epoch.
    fn suppressed(&mut self, slot: Slot, reason: SuppressReason, count: u64) {
        let Ok(e) = self.entry_mut(slot) else { return };
        e.stats.pme_suppressed += 1;
        let epoch = e.epoch;
        self.emit(
            slot,
            Event::PmeSuppressed {
                reason,
                count,
                epoch,
            },
        );
    }

    fn host_call(&mut self, slot: Slot, call: HostCall, result: Result<(), Errno>) {
        let Ok(e) = self.entry_mut(slot) else { return };
        let epoch = e.epoch;
        let result = match result {
            Ok(()) => CallResult::Ok,
            Err(errno) => {
                e.stats.errors += 1;
                CallResult::err(errno)
            }
        };
        self.emit(
            slot,
            Event::HostCall {
                call,
                epoch,
                result,
            },
        );
    }

    /// Current host power state of a device.
    pub fn power(&self, slot: Slot) -> Option<HostPower> {
        self.entry(slot).map(|e| e.power)
    }

    /// The variant in use for a device.
    pub fn variant(&self, slot: Slot) -> Option<LowPowerVariant> {
        self.entry(slot).map(|e| e.variant)
    }

    /// Whether the guest last asked for the device to be on.
    pub fn guest_on(&self, slot: Slot) -> Option<bool> {
        self.entry(slot).map(|e| e.guest_on)
    }

    /// Counters and residency (including time in the current state up to now).
    pub fn stats(&self, slot: Slot) -> Option<DeviceStats> {
        let e = self.entry(slot)?;
        let mut s = e.stats;
        s.residency_ns[e.power.index()] += self.clock.now_ns().saturating_sub(e.since_ns);
        Some(s)
    }

    /// Slots in use, ascending.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .map(|(i, _)| Slot(i as u32))
    }

    /// Puts a device under control. The device must be open and in D0 (not engaged).
    /// Probes the low-power features: a kernel without them gets the D3hot fallback.
    pub fn add_device(
        &mut self,
        dev: Box<dyn PowerDevice>,
        settings: DeviceSettings,
    ) -> Result<Slot, ControllerError> {
        let wake = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?;
        let (variant, fallback) = probed_variant(&*dev, choose_variant(&self.config, &settings))?;
        let index = self.free_index()?;
        self.next_generation = self.next_generation.wrapping_add(1);
        let address = dev.address();
        let entry = DeviceEntry {
            dev,
            wake,
            generation: self.next_generation,
            settings,
            variant,
            power: HostPower::Active,
            since_ns: self.clock.now_ns(),
            guest_on: true,
            epoch: 0,
            last_transition_ns: None,
            deferred: None,
            stats: DeviceStats::default(),
        };
        let token = entry.token(index);
        if let Err(e) = self.epoll.ctl(
            ControlOperation::Add,
            entry.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        ) {
            self.free.push(index);
            return Err(e.into());
        }
        self.devices[index as usize] = Some(entry);
        let slot = Slot(index);
        self.emit(slot, Event::DeviceAdded { address, variant });
        if let Some(reason) = fallback {
            let writes = settings.host_pm_cap.is_some();
            self.emit(
                slot,
                Event::Fallback {
                    reason,
                    controller_writes_pmcsr: writes,
                },
            );
        }
        if let Some(allowed) = settings.d3cold {
            let knob = HostKnob::D3ColdAllowed(allowed);
            let dev = &self.entry_mut(slot)?.dev;
            // Not written again when already set: the write resumes the device, and a VMM side
            // that restarts while low power is engaged would wake it (docs/kernel-behaviour.md).
            if dev.host_knob_is(knob) != Some(true) {
                let r = dev.set_host_knob(knob);
                self.host_call(slot, HostCall::D3ColdAllowed(allowed), r);
            }
        }
        Ok(slot)
    }

    /// A free slot index: a removed device's, or a new one below the epoll control tokens.
    fn free_index(&mut self) -> Result<u32, ControllerError> {
        if let Some(i) = self.free.pop() {
            return Ok(i);
        }
        let too_many = || io::Error::new(io::ErrorKind::OutOfMemory, "too many devices");
        let i = u32::try_from(self.devices.len()).map_err(|_| too_many())?;
        if i >= STOP_TOKEN as u32 {
            return Err(too_many().into());
        }
        self.devices.push(None);
        Ok(i)
    }
}

/// The variant `chosen` by the settings, adjusted to what the kernel supports: a kernel with
/// neither entry feature gets the D3hot fallback (and the reason to report), one with only the
/// other entry feature gets that one.
fn probed_variant(
    dev: &dyn PowerDevice,
    chosen: LowPowerVariant,
) -> Result<(LowPowerVariant, Option<FallbackReason>), ControllerError> {
    let support = dev
        .probe_low_power()
        .map_err(|source| ControllerError::Probe {
            address: dev.address(),
            source,
        })?;
    Ok(match chosen {
        _ if !support.entry && !support.entry_with_wakeup => (
            LowPowerVariant::D3HotFallback,
            Some(FallbackReason::ProbeUnsupported),
        ),
        LowPowerVariant::EntryWithWakeup if !support.entry_with_wakeup => {
            (LowPowerVariant::Entry, None)
        }
        LowPowerVariant::Entry if !support.entry => (LowPowerVariant::EntryWithWakeup, None),
        v => (v, None),
    })
}

#[cfg(test)]
mod tests;

/// Compile-time proof that the controller and its handle can move to (and the handle be
/// shared with) other threads.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Controller>();
    send_sync::<ControllerHandle>();
};
