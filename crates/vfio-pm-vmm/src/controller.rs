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

mod event;
#[cfg(any(test, feature = "test-utils"))]
mod manual_clock;

pub use event::{
    CallResult, Clock, Event, EventLog, EventSink, FallbackReason, HostCall, MonotonicClock,
    NullSink, RejectReason, SuppressReason, TimedEvent,
};
#[cfg(any(test, feature = "test-utils"))]
pub use manual_clock::ManualClock;

use crate::pme::{GuestNotifier, NotifyError, WakeRoute};
pub use crate::request::{GuestRequest, PowerAction, Slot};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_pm::{Errno, FeatureError, HostKnob, LowPower, PciAddress, PowerDevice, CONFIG_REGION};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Default minimum time between host low-power transitions of one device.
pub const DEFAULT_MIN_RESIDENCY: Duration = Duration::from_millis(100);
/// PCI vendor ID of NVIDIA.
pub const VENDOR_NVIDIA: u16 = 0x10de;
/// Epoll token of the request doorbell.
const REQUEST_TOKEN: u64 = u64::MAX;
/// Epoll token of the stop eventfd.
const STOP_TOKEN: u64 = u64::MAX - 1;
/// Epoll events taken per `epoll_wait`.
const EPOLL_BATCH: usize = 256;

/// Which entry call the controller makes on a guest `_OFF`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryPolicy {
    /// By device identity: `LOW_POWER_ENTRY_WITH_WAKEUP` for NVIDIA display/3D controllers and
    /// the configured list, plain `LOW_POWER_ENTRY` otherwise.
    #[default]
    Auto,
    /// Always `LOW_POWER_ENTRY_WITH_WAKEUP`.
    WithWakeup,
    /// Always plain `LOW_POWER_ENTRY` (no wake signal).
    Plain,
}

/// The low-power mechanism used for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LowPowerVariant {
    /// `LOW_POWER_ENTRY`: the host re-suspends after its own accesses; no wake signal.
    Entry,
    /// `LOW_POWER_ENTRY_WITH_WAKEUP`: one-shot; a host wake becomes a guest PME.
    EntryWithWakeup,
    /// No VFIO low-power features (old kernel): D3hot through PMCSR.
    D3HotFallback,
}

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
    /// Failed; see [`Event::DeviceFailed`].
    Failed,
}

impl HostPower {
    const COUNT: usize = 6;
    fn index(self) -> usize {
        self as usize
    }
}

/// A device identity match for the "needs wakeup" list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceMatch {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID, or any.
    pub device: Option<u16>,
}

/// Controller-wide settings.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Devices that need the guest driver before every entry, beyond the built-in rule
    /// (NVIDIA, base class 0x03): they get `ENTRY_WITH_WAKEUP` under [`EntryPolicy::Auto`].
    pub wakeup_devices: Vec<DeviceMatch>,
}

/// Per-device settings (filled by the VMM's configuration layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID, if known.
    pub device: Option<u16>,
    /// 24-bit class code (base class in bits 23:16).
    pub class: u32,
    /// Which entry call to make.
    pub entry: EntryPolicy,
    /// `Some(b)`: write the host's `d3cold_allowed` = b when adding the device (D3cold
    /// opt-in); `None`: leave it alone.
    pub d3cold: Option<bool>,
    /// Minimum time between host transitions (anti-thrash).
    pub min_residency: Duration,
    /// How a host wake reaches the guest; `None`: no route, so never the wakeup variant.
    pub route: Option<WakeRoute>,
    /// Offset of the PM capability in the *host* device's config space, for the ENOTTY
    /// fallback (the controller then writes PMCSR itself); `None`: the VMM passes the guest's
    /// PMCSR writes through.
    pub host_pm_cap: Option<u8>,
}

impl DeviceSettings {
    /// Settings with defaults: automatic entry policy, host D3cold untouched, default
    /// residency.
    pub fn new(vendor: u16, device: Option<u16>, class: u32, route: Option<WakeRoute>) -> Self {
        Self {
            vendor,
            device,
            class,
            entry: EntryPolicy::Auto,
            d3cold: None,
            min_residency: DEFAULT_MIN_RESIDENCY,
            route,
            host_pm_cap: None,
        }
    }
}

/// True for devices whose guest driver must run before every low-power entry (NVIDIA
/// display/3D controllers: vendor 0x10de, base class 0x03).
pub fn needs_guest_driver(vendor: u16, class: u32) -> bool {
    vendor == VENDOR_NVIDIA && (class >> 16) & 0xff == 0x03
}

/// The variant for `settings` under `config`, before probing the kernel. A device without a
/// wake route always gets plain entry: a wake could never reach its guest.
pub fn choose_variant(config: &ControllerConfig, settings: &DeviceSettings) -> LowPowerVariant {
    if settings.route.is_none() {
        return LowPowerVariant::Entry;
    }
    let wakeup = match settings.entry {
        EntryPolicy::WithWakeup => true,
        EntryPolicy::Plain => false,
        EntryPolicy::Auto => {
            needs_guest_driver(settings.vendor, settings.class)
                || config.wakeup_devices.iter().any(|m| {
                    m.vendor == settings.vendor
                        && m.device.map_or(true, |d| Some(d) == settings.device)
                })
        }
    };
    if wakeup {
        LowPowerVariant::EntryWithWakeup
    } else {
        LowPowerVariant::Entry
    }
}

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

/// What [`Controller::reset_vm`] / [`Controller::shutdown`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TeardownReport {
    /// Devices taken out of low power.
    pub exited: Vec<Slot>,
    /// Devices whose exit (or close) failed; they are marked failed.
    pub failed: Vec<Slot>,
}

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

    fn drain(&self) -> u64 {
        self.wake.read().unwrap_or(0)
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
        let mut variant = choose_variant(&self.config, &settings);
        let mut fallback = None;
        match dev.probe_low_power() {
            Ok(s) if !s.entry && !s.entry_with_wakeup => {
                variant = LowPowerVariant::D3HotFallback;
                fallback = Some(FallbackReason::ProbeUnsupported);
            }
            Ok(s) => {
                if variant == LowPowerVariant::EntryWithWakeup && !s.entry_with_wakeup {
                    variant = LowPowerVariant::Entry;
                } else if variant == LowPowerVariant::Entry && !s.entry {
                    variant = LowPowerVariant::EntryWithWakeup;
                }
            }
            Err(source) => {
                return Err(ControllerError::Probe {
                    address: dev.address(),
                    source,
                })
            }
        }
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.devices.len())
                    .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "too many devices"))?;
                if i >= STOP_TOKEN as u32 {
                    return Err(
                        io::Error::new(io::ErrorKind::OutOfMemory, "too many devices").into(),
                    );
                }
                self.devices.push(None);
                i
            }
        };
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
            let r = self
                .entry_mut(slot)?
                .dev
                .set_host_knob(HostKnob::D3ColdAllowed(allowed));
            self.host_call(slot, HostCall::D3ColdAllowed(allowed), r);
        }
        Ok(slot)
    }

    /// Handles one guest request. Errors are also reported as events; a request for an
    /// unknown slot is an error, never a panic.
    pub fn handle_request(&mut self, req: GuestRequest) -> Result<RequestOutcome, ControllerError> {
        match req.action {
            PowerAction::PowerOff => self.power_off(req.slot),
            PowerAction::PowerOn => self.power_on(req.slot),
        }
    }

    /// Guest `_OFF`.
    pub fn power_off(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        let failed = e.power == HostPower::Failed;
        let duplicate = !e.guest_on;
        let min_res = u64::try_from(e.settings.min_residency.as_nanos()).unwrap_or(u64::MAX);
        let due = e.last_transition_ns.map(|t| t.saturating_add(min_res));
        self.emit(
            slot,
            Event::Guest {
                action: PowerAction::PowerOff,
            },
        );
        if failed {
            self.emit(
                slot,
                Event::GuestRejected {
                    action: PowerAction::PowerOff,
                    reason: RejectReason::DeviceFailed,
                },
            );
            return Err(ControllerError::DeviceFailed(slot));
        }
        let e = self.entry_mut(slot)?;
        if duplicate {
            e.stats.duplicates += 1;
            return Ok(RequestOutcome::Unchanged);
        }
        e.guest_on = false;
        if let Some(until) = due.filter(|&d| d > now) {
            self.timer_seq += 1;
            let seq = self.timer_seq;
            let e = self.entry_mut(slot)?;
            e.deferred = Some(seq);
            e.stats.deferred += 1;
            self.timers.push(Reverse((until, slot.0, seq)));
            self.emit(slot, Event::Deferred { until_ns: until });
            return Ok(RequestOutcome::Deferred { until_ns: until });
        }
        self.enter(slot)
    }

    /// Bookkeeping after the host accepted an entry.
    fn entered(
        &mut self,
        slot: Slot,
        variant: LowPowerVariant,
        now: u64,
    ) -> Result<RequestOutcome, ControllerError> {
        let e = self.entry_mut(slot)?;
        e.stats.entries += 1;
        e.last_transition_ns = Some(now);
        let to = if variant == LowPowerVariant::EntryWithWakeup {
            HostPower::Armed
        } else {
            HostPower::LowPower
        };
        self.set_power(slot, to);
        Ok(RequestOutcome::Entered(variant))
    }

    fn enter(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        // Signals left from an earlier arming are not this arming's business.
        let stale = e.drain();
        e.epoch += 1;
        let epoch = e.epoch;
        let variant = e.variant;
        if stale > 0 {
            e.stats.pme_suppressed += 1;
            self.emit(
                slot,
                Event::PmeSuppressed {
                    reason: SuppressReason::Stale,
                    count: stale,
                    epoch,
                },
            );
        }
        let e = self.entry_mut(slot)?;
        let (call, result) = match variant {
            LowPowerVariant::EntryWithWakeup => (
                HostCall::EntryWithWakeup,
                e.dev.enter_low_power_with_wakeup(&e.wake),
            ),
            LowPowerVariant::Entry => (HostCall::Entry, e.dev.enter_low_power()),
            LowPowerVariant::D3HotFallback => return self.fallback_write(slot, true),
        };
        self.host_call(
            slot,
            call,
            result.as_ref().map(|_| ()).map_err(|e| e.errno()),
        );
        match result {
            Ok(()) => self.entered(slot, variant, now),
            Err(FeatureError::Unsupported { .. }) => {
                let writes = self.entry_mut(slot)?.settings.host_pm_cap.is_some();
                self.entry_mut(slot)?.variant = LowPowerVariant::D3HotFallback;
                self.emit(
                    slot,
                    Event::Fallback {
                        reason: FallbackReason::Enotty,
                        controller_writes_pmcsr: writes,
                    },
                );
                self.fallback_write(slot, true)
            }
            Err(FeatureError::AlreadyEngaged { .. }) => {
                // Someone engaged the device behind our back: exit, then retry once.
                let r = self.entry_mut(slot)?.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                self.absorb(slot, SuppressReason::OwnIoctl);
                let e = self.entry_mut(slot)?;
                let retry = match variant {
                    LowPowerVariant::EntryWithWakeup => e.dev.enter_low_power_with_wakeup(&e.wake),
                    _ => e.dev.enter_low_power(),
                };
                self.host_call(slot, call, retry.as_ref().map_err(|e| e.errno()).copied());
                match retry {
                    Ok(()) => self.entered(slot, variant, now),
                    Err(source) => self.fail(slot, call, source),
                }
            }
            Err(source @ FeatureError::ResumeFailed { .. }) => self.fail(slot, call, source),
            Err(source) => {
                // Nothing was engaged (the kernel validates before engaging): the device stays
                // on, consistent; report.
                Err(ControllerError::Host { slot, source })
            }
        }
    }

    fn fail<T>(
        &mut self,
        slot: Slot,
        call: HostCall,
        source: FeatureError,
    ) -> Result<T, ControllerError> {
        self.set_power(slot, HostPower::Failed);
        self.emit(
            slot,
            Event::DeviceFailed {
                call,
                errno: source.errno() as i32,
            },
        );
        Err(ControllerError::Host { slot, source })
    }

    fn fallback_write(&mut self, slot: Slot, d3: bool) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        let call = if d3 {
            HostCall::PmcsrD3Hot
        } else {
            HostCall::PmcsrD0
        };
        if let Some(cap) = e.settings.host_pm_cap {
            let off = u64::from(cap) + crate::pme::PMCSR_OFFSET as u64;
            let mut b = [0u8; 1];
            let r = e
                .dev
                .region_read(CONFIG_REGION, off, &mut b)
                .and_then(|_| {
                    let v = (b[0] & !0x3) | if d3 { 0x3 } else { 0 };
                    e.dev.region_write(CONFIG_REGION, off, &[v])
                })
                .map(|_| ());
            self.host_call(slot, call, r);
            if let Err(errno) = r {
                self.set_power(slot, HostPower::Failed);
                self.emit(
                    slot,
                    Event::DeviceFailed {
                        call,
                        errno: errno as i32,
                    },
                );
                return Err(ControllerError::HostOther { slot, call, errno });
            }
        }
        let e = self.entry_mut(slot)?;
        e.last_transition_ns = Some(now);
        if d3 {
            e.stats.entries += 1;
            self.set_power(slot, HostPower::D3HotFallback);
            Ok(RequestOutcome::Entered(LowPowerVariant::D3HotFallback))
        } else {
            e.stats.exits += 1;
            self.set_power(slot, HostPower::Active);
            Ok(RequestOutcome::Exited)
        }
    }

    /// Drains the wakeup eventfd after one of our own calls and accounts what it held.
    fn absorb(&mut self, slot: Slot, reason: SuppressReason) -> u64 {
        let Ok(e) = self.entry_mut(slot) else {
            return 0;
        };
        let count = e.drain();
        if count > 0 {
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
        count
    }

    /// Guest `_ON`. Never delayed.
    pub fn power_on(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        self.entry_mut(slot)?;
        self.emit(
            slot,
            Event::Guest {
                action: PowerAction::PowerOn,
            },
        );
        let e = self.entry_mut(slot)?;
        let was_on = e.guest_on;
        e.guest_on = true;
        if e.deferred.take().is_some() {
            e.stats.coalesced += 1;
            self.emit(slot, Event::Coalesced);
            return Ok(RequestOutcome::Coalesced);
        }
        match e.power {
            HostPower::Active => {
                if was_on {
                    e.stats.duplicates += 1;
                }
                Ok(RequestOutcome::Unchanged)
            }
            HostPower::WokenByHost => {
                // The kernel auto-exited when it signalled; nothing to undo.
                self.absorb(slot, SuppressReason::GuestPoweringOn);
                self.set_power(slot, HostPower::Active);
                Ok(RequestOutcome::AlreadyExited)
            }
            HostPower::D3HotFallback => self.fallback_write(slot, false),
            HostPower::Failed if e.variant == LowPowerVariant::D3HotFallback => {
                // No EXIT to retry (the kernel lacks the features): PMCSR D0 again recovers.
                self.fallback_write(slot, false)?;
                self.emit(slot, Event::DeviceRecovered);
                Ok(RequestOutcome::Recovered)
            }
            HostPower::LowPower | HostPower::Armed | HostPower::Failed => {
                let failed = e.power == HostPower::Failed;
                let r = e.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                // The EXIT's own resume signalled the eventfd if the device was suspended; a
                // genuine wake that raced with this `_ON` is absorbed too: the guest is
                // turning the device on anyway.
                self.absorb(slot, SuppressReason::GuestPoweringOn);
                match r {
                    Ok(()) => {
                        let e = self.entry_mut(slot)?;
                        e.last_transition_ns = Some(now);
                        if !failed {
                            e.stats.exits += 1;
                        }
                        self.set_power(slot, HostPower::Active);
                        if failed {
                            self.emit(slot, Event::DeviceRecovered);
                            Ok(RequestOutcome::Recovered)
                        } else {
                            Ok(RequestOutcome::Exited)
                        }
                    }
                    Err(source) => {
                        if failed {
                            self.emit(
                                slot,
                                Event::GuestRejected {
                                    action: PowerAction::PowerOn,
                                    reason: RejectReason::DeviceFailed,
                                },
                            );
                            return Err(ControllerError::DeviceFailed(slot));
                        }
                        self.fail(slot, HostCall::Exit, source)
                    }
                }
            }
        }
    }

    /// Runs `f` on the device as one of the hypervisor's own accesses (any ioctl or region
    /// access). Afterwards the wakeup eventfd is drained: a signal caused by this access is
    /// never forwarded to the guest. If it took an armed device out of low power while the
    /// guest still wants it off, the device is re-armed.
    pub fn host_access<R>(
        &mut self,
        slot: Slot,
        f: impl FnOnce(&dyn PowerDevice) -> R,
    ) -> Result<R, ControllerError> {
        let e = self.entry_mut(slot)?;
        if e.power == HostPower::Armed {
            // A signal already there is a genuine host wake that came before this access
            // (found by the property tests): deliver it rather than absorb it as ours. A
            // notification failure is reported through the events (`PmeFailed`).
            let pending = e.drain();
            if pending > 0 {
                let now = self.clock.now_ns();
                let _ = self.wake_count(slot, pending, now);
            }
        }
        let e = self.entry_mut(slot)?;
        let out = f(&*e.dev);
        let armed = e.power == HostPower::Armed;
        let guest_off = !e.guest_on;
        let count = self.absorb(slot, SuppressReason::OwnIoctl);
        if armed && count > 0 {
            // The kernel auto-exited; the guest does not know and must not: put it back.
            self.set_power(slot, HostPower::Active);
            self.entry_mut(slot)?.stats.exits += 1;
            if guest_off {
                // A failure is reported through events and the device state.
                let _ = self.enter(slot);
            }
        }
        Ok(out)
    }

    /// Handles a readable wakeup eventfd of `slot`.
    pub fn handle_wake(&mut self, slot: Slot) -> Result<(), ControllerError> {
        let generation = self.entry_mut(slot)?.generation;
        self.wake_token(slot.0, generation)
    }

    fn wake_token(&mut self, index: u32, generation: u32) -> Result<(), ControllerError> {
        let slot = Slot(index);
        let now = self.clock.now_ns();
        let e = match self
            .devices
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        {
            Some(e) if e.generation == generation => e,
            _ => return Ok(()), // event for a removed device, from an older batch
        };
        let count = match e.wake.read() {
            Ok(c) => c,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                e.stats.spurious += 1;
                self.emit(slot, Event::SpuriousWake);
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        self.wake_count(slot, count, now)
    }

    /// The wakeup eventfd of `slot` held `count`: a guest notification if the device is armed.
    fn wake_count(&mut self, slot: Slot, count: u64, now: u64) -> Result<(), ControllerError> {
        let e = self.entry_mut(slot)?;
        let epoch = e.epoch;
        if e.power != HostPower::Armed {
            e.stats.pme_suppressed += 1;
            self.emit(
                slot,
                Event::PmeSuppressed {
                    reason: SuppressReason::Stale,
                    count,
                    epoch,
                },
            );
            return Ok(());
        }
        e.stats.host_wakes += 1;
        e.stats.exits += 1;
        e.last_transition_ns = Some(now);
        let Some(route) = e.settings.route else {
            // Never armed without a route (choose_variant); a signal here is nobody's wake.
            e.stats.pme_suppressed += 1;
            self.emit(
                slot,
                Event::PmeSuppressed {
                    reason: SuppressReason::Stale,
                    count,
                    epoch,
                },
            );
            return Ok(());
        };
        self.emit(slot, Event::HostWake { epoch, count });
        self.set_power(slot, HostPower::WokenByHost);
        match self.notifier.notify(route) {
            Ok(delivery) => {
                self.entry_mut(slot)?.stats.pme_delivered += 1;
                self.emit(slot, Event::PmeDelivered { route, delivery });
                Ok(())
            }
            Err(source) => {
                self.emit(slot, Event::PmeFailed { route });
                Err(ControllerError::Notify { slot, source })
            }
        }
    }

    /// Makes postponed entries whose time has come. Returns how many ran.
    pub fn tick(&mut self) -> usize {
        let now = self.clock.now_ns();
        let mut ran = 0;
        while let Some(&Reverse((due, index, seq))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let slot = Slot(index);
            let Ok(e) = self.entry_mut(slot) else {
                continue;
            };
            if e.deferred != Some(seq) {
                continue; // cancelled by `_ON` or superseded
            }
            e.deferred = None;
            if e.guest_on || e.power != HostPower::Active {
                continue;
            }
            self.emit(slot, Event::DeferredRun);
            // Failures are reported through events and the device state.
            let _ = self.enter(slot);
            ran += 1;
        }
        ran
    }

    /// The earliest postponed-entry deadline (clock ns), if any.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Waits up to `timeout` (`None`: until something happens) for wakes and queued
    /// requests, handles them, then runs due timers. Returns the number of epoll events.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> Result<usize, ControllerError> {
        let now = self.clock.now_ns();
        let timer = self
            .next_deadline_ns()
            .map(|d| Duration::from_nanos(d.saturating_sub(now)));
        let wait = match (timeout, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ms = match wait {
            None => -1,
            Some(d) => i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let n = match self.epoll.wait(ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e.into()),
        };
        let mut first_err = None;
        for i in 0..n {
            let data = self.events[i].data();
            let r = match data {
                REQUEST_TOKEN => {
                    self.process_queue();
                    Ok(())
                }
                STOP_TOKEN => {
                    let _ = self.shared.stop_fd.read();
                    Ok(())
                }
                t => self.wake_token(t as u32, (t >> 32) as u32),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        self.tick();
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn process_queue(&mut self) {
        let _ = self.shared.doorbell.read();
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, &mut self.pending);
        }
        while let Some(req) = self.pending.pop_front() {
            // Outcomes and failures are reported through events.
            let _ = self.handle_request(req);
        }
    }

    /// Serves wakes, queued requests and timers until [`ControllerHandle::stop`].
    pub fn run(&mut self) -> Result<(), ControllerError> {
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.poll_once(Some(Duration::from_secs(1))) {
                Ok(_) | Err(ControllerError::Notify { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.shared.stop.store(false, Ordering::Release);
        Ok(())
    }

    fn teardown_one(&mut self, slot: Slot, report: &mut TeardownReport) {
        let Ok(e) = self.entry_mut(slot) else { return };
        e.deferred = None;
        let power = e.power;
        let fallback = e.variant == LowPowerVariant::D3HotFallback;
        let r = match power {
            HostPower::Active => Ok(()),
            HostPower::WokenByHost => {
                self.set_power(slot, HostPower::Active);
                Ok(())
            }
            HostPower::D3HotFallback => self.fallback_write(slot, false).map(|_| ()),
            HostPower::Failed if fallback => self.fallback_write(slot, false).map(|_| ()),
            HostPower::LowPower | HostPower::Armed | HostPower::Failed => {
                let r = e.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                match r {
                    Ok(()) => {
                        if power == HostPower::Failed {
                            self.emit(slot, Event::DeviceRecovered);
                        } else if let Ok(e) = self.entry_mut(slot) {
                            e.stats.exits += 1;
                        }
                        self.set_power(slot, HostPower::Active);
                        Ok(())
                    }
                    Err(source) => {
                        if power == HostPower::Failed {
                            Err(ControllerError::DeviceFailed(slot))
                        } else {
                            self.fail::<()>(slot, HostCall::Exit, source)
                        }
                    }
                }
            }
        };
        self.absorb(slot, SuppressReason::Teardown);
        if let Ok(e) = self.entry_mut(slot) {
            e.guest_on = true;
            e.last_transition_ns = None;
        }
        match r {
            Ok(()) if power != HostPower::Active => report.exited.push(slot),
            Ok(()) => {}
            Err(_) => report.failed.push(slot),
        }
    }

    /// VM reset: every device leaves low power (nothing stays engaged), postponed entries are
    /// dropped and the guest sees every device on, as after power-up.
    pub fn reset_vm(&mut self) -> TeardownReport {
        let mut report = TeardownReport::default();
        self.timers.clear();
        for i in 0..self.devices.len() {
            let slot = Slot(i as u32);
            if self.entry(slot).is_some() {
                self.teardown_one(slot, &mut report);
                self.emit(slot, Event::VmReset);
            }
        }
        report
    }

    /// Removes a device: leaves low power first, unregisters its eventfd, returns it (still
    /// open: dropping a device the controller owned closes its fd, a borrowed one stays open).
    pub fn remove_device(&mut self, slot: Slot) -> Result<Box<dyn PowerDevice>, ControllerError> {
        self.entry_mut(slot)?;
        let mut report = TeardownReport::default();
        self.teardown_one(slot, &mut report);
        if report.failed.contains(&slot) {
            // Still returned so the caller can close it; the failure is in the events.
            tracing::warn!(?slot, "device removed while failed");
        }
        self.unregister(slot)
    }

    /// Takes a torn-down device out of the slot table and the epoll set.
    fn unregister(&mut self, slot: Slot) -> Result<Box<dyn PowerDevice>, ControllerError> {
        let e = self
            .devices
            .get_mut(slot.0 as usize)
            .and_then(Option::take)
            .ok_or(ControllerError::UnknownSlot(slot))?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            e.wake.as_raw_fd(),
            EpollEvent::default(),
        );
        self.free.push(slot.0);
        self.emit(slot, Event::DeviceRemoved);
        Ok(e.dev)
    }

    /// VM shutdown: every device leaves low power (once), then is removed and dropped, so that
    /// nothing stays engaged.
    pub fn shutdown(&mut self) -> TeardownReport {
        let mut report = TeardownReport::default();
        self.timers.clear();
        let slots: Vec<Slot> = self.slots().collect();
        for slot in slots {
            self.teardown_one(slot, &mut report);
            drop(self.unregister(slot));
        }
        report
    }
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
