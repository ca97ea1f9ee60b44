//! The low-power controller over the simulated host (`vfio-pm-sim`): real eventfds, the
//! kernel's asynchronous suspend run explicitly with `SimHost::run_pending`.

use std::sync::mpsc;
use std::time::Duration;
use vfio_pm::{Errno, FeatureError, HostKnob, PciAddress, PowerDevice, PowerState, CONFIG_REGION};
use vfio_pm_sim::{DeviceConfig, KernelVersion, Platform, SimDevice, SimHost};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, ControllerError, DeviceSettings, EntryPolicy, Event, EventLog,
    FallbackReason, HostCall, HostPower, LowPowerVariant, ManualClock, RequestOutcome, Slot,
    SuppressReason,
};
use vfio_pm_vmm::pme::{RecordingNotifier, WakeRoute};

const NVIDIA_GPU: (u16, u32) = (0x10de, 0x030000);
const E1000E: (u16, u32) = (0x8086, 0x020000);

fn addr(i: usize) -> PciAddress {
    PciAddress::new(0, 1 + (i / 256) as u8, ((i % 256) / 8) as u8, (i % 8) as u8).unwrap()
}

fn route(i: usize) -> WakeRoute {
    WakeRoute::Ged { event: i as u32 }
}

struct Rig {
    host: SimHost,
    ctl: Controller,
    log: EventLog,
    pmes: RecordingNotifier,
    clock: ManualClock,
    slots: Vec<Slot>,
}

impl Rig {
    fn new(platform: Platform, kernel: KernelVersion, devs: &[(u16, u32)]) -> Self {
        Self::with(platform, kernel, devs, |_, _| {})
    }

    fn with(
        platform: Platform,
        kernel: KernelVersion,
        devs: &[(u16, u32)],
        tweak: impl Fn(usize, &mut DeviceSettings),
    ) -> Self {
        let mut b = SimHost::builder().platform(platform).kernel(kernel);
        for i in 0..devs.len() {
            b = b.device(DeviceConfig::new(addr(i)));
        }
        let host = b.build().unwrap();
        let log = EventLog::new();
        let pmes = RecordingNotifier::new();
        let clock = ManualClock::new();
        let mut ctl = Controller::new(
            ControllerConfig::default(),
            Box::new(pmes.clone()),
            Box::new(clock.clone()),
            Box::new(log.clone()),
        )
        .unwrap();
        let mut slots = Vec::new();
        for (i, &(vendor, class)) in devs.iter().enumerate() {
            let dev = host.open(addr(i)).unwrap();
            let mut s = DeviceSettings::new(vendor, Some(0x2204), class, Some(route(i)));
            s.min_residency = Duration::ZERO;
            tweak(i, &mut s);
            slots.push(ctl.add_device(Box::new(dev), s).unwrap());
        }
        Self {
            host,
            ctl,
            log,
            pmes,
            clock,
            slots,
        }
    }

    fn snap(&self, i: usize) -> vfio_pm_sim::DeviceSnapshot {
        self.host.snapshot(addr(i)).unwrap()
    }

    fn poll(&mut self) {
        while self.ctl.poll_once(Some(Duration::ZERO)).unwrap() > 0 {}
    }

    fn count(&self, i: usize, pred: impl Fn(&Event) -> bool) -> usize {
        self.log.count(self.slots[i], pred)
    }

    fn suppressed(&self, i: usize, reason: SuppressReason) -> usize {
        self.count(
            i,
            |e| matches!(e, Event::PmeSuppressed { reason: r, .. } if *r == reason),
        )
    }
}

#[test]
fn variant_follows_identity() {
    let r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU, E1000E]);
    assert_eq!(
        r.ctl.variant(r.slots[0]),
        Some(LowPowerVariant::EntryWithWakeup)
    );
    assert_eq!(r.ctl.variant(r.slots[1]), Some(LowPowerVariant::Entry));
}

#[test]
fn host_wake_of_armed_device_is_exactly_one_pme() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    assert_eq!(
        r.ctl.power_off(s).unwrap(),
        RequestOutcome::Entered(LowPowerVariant::EntryWithWakeup)
    );
    r.host.run_pending();
    assert_eq!(r.snap(0).power_state, PowerState::D3Cold);
    r.poll();
    assert_eq!(r.pmes.count(), 0, "no wake yet");

    r.host.host_config_read(addr(0)).unwrap(); // lspci resumes a D3cold device
    r.poll();
    assert_eq!(r.pmes.routes(), vec![route(0)]);
    assert_eq!(r.ctl.power(s), Some(HostPower::WokenByHost));
    assert!(!r.snap(0).engaged, "kernel auto-exited (one-shot)");

    // More host activity: the device is no longer armed, nothing more reaches the guest.
    r.host.host_config_read(addr(0)).unwrap();
    r.host
        .set_host_knob(addr(0), HostKnob::RuntimePmAllowed(false))
        .unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 1);

    // The guest's _ON after the PME needs no ioctl.
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::AlreadyExited);
    assert_eq!(r.ctl.power(s), Some(HostPower::Active));
    assert_eq!(
        r.count(0, |e| matches!(
            e,
            Event::HostCall {
                call: HostCall::Exit,
                ..
            }
        )),
        0
    );
    let st = r.ctl.stats(s).unwrap();
    assert_eq!(
        (st.entries, st.exits, st.host_wakes, st.pme_delivered),
        (1, 1, 1, 1)
    );
}

#[test]
fn own_exit_signal_is_not_forwarded() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    assert!(r.snap(0).suspended);
    // EXIT on a suspended armed device: the kernel signals the eventfd inside the ioctl.
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::Exited);
    r.poll();
    assert_eq!(r.pmes.count(), 0);
    assert_eq!(r.suppressed(0, SuppressReason::GuestPoweringOn), 1);
    let snap = r.snap(0);
    assert!(!snap.engaged && !snap.suspended);
    assert_eq!(snap.power_state, PowerState::D0);
}

#[test]
fn own_ioctl_on_armed_device_is_suppressed_and_rearmed() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    // The hypervisor's own ioctl (e.g. GET_INFO) resumes the device and signals.
    let res = r
        .ctl
        .host_access(s, |d| {
            d.region_read(CONFIG_REGION, 0, &mut [0u8; 2]).map(|_| ())
        })
        .unwrap();
    assert_eq!(res, Ok(()));
    r.poll();
    assert_eq!(r.pmes.count(), 0);
    assert_eq!(r.suppressed(0, SuppressReason::OwnIoctl), 1);
    // Re-armed because the guest still wants it off.
    assert_eq!(r.ctl.power(s), Some(HostPower::Armed));
    assert!(r.snap(0).wakeup_armed);
    r.host.run_pending();
    assert!(r.snap(0).suspended);
    // A later genuine wake is still delivered once.
    r.host.host_config_read(addr(0)).unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 1);
    // Own ioctls on a non-armed device are plain.
    r.ctl
        .host_access(s, |d| {
            d.region_read(CONFIG_REGION, 0, &mut [0u8; 2]).map(|_| ())
        })
        .unwrap()
        .unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 1);
}

#[test]
fn guest_on_after_unpolled_host_wake_is_absorbed() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    r.host.host_config_read(addr(0)).unwrap(); // eventfd = 1, not yet polled
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::Exited);
    r.poll();
    assert_eq!(r.pmes.count(), 0, "the guest turned it on anyway");
    assert_eq!(r.suppressed(0, SuppressReason::GuestPoweringOn), 1);
    assert_eq!(r.ctl.power(s), Some(HostPower::Active));
    // Next cycle is clean: one wake, one PME.
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    r.host.host_config_read(addr(0)).unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 1);
}

#[test]
fn guest_requests_and_wake_in_one_batch_through_the_handle() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    let h = r.ctl.handle();
    h.submit(vfio_pm_vmm::controller::GuestRequest::power_off(s))
        .unwrap();
    r.poll();
    assert_eq!(r.ctl.power(s), Some(HostPower::Armed));
    r.host.run_pending();
    // Host wake and guest _ON both pending when the controller next runs.
    r.host.host_config_read(addr(0)).unwrap();
    h.submit(vfio_pm_vmm::controller::GuestRequest::power_on(s))
        .unwrap();
    r.poll();
    // Either order is consistent: never more than one PME, device on, nothing engaged.
    assert!(r.pmes.count() <= 1);
    assert_eq!(r.ctl.power(s), Some(HostPower::Active));
    assert!(!r.snap(0).engaged);
}

#[test]
fn host_wake_while_guest_turns_off() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    // The host touches the device after ENTRY but before the asynchronous suspend: the
    // device never suspended, so the kernel does not signal; the arming stays valid.
    r.host.host_config_read(addr(0)).unwrap();
    r.ctl
        .host_access(s, |d| {
            d.region_read(CONFIG_REGION, 0, &mut [0u8; 2]).map(|_| ())
        })
        .unwrap()
        .unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 0);
    assert_eq!(r.ctl.power(s), Some(HostPower::Armed));
    assert_eq!(r.suppressed(0, SuppressReason::OwnIoctl), 0);
    r.host.run_pending();
    assert!(r.snap(0).suspended, "suspends once the accesses are done");
    r.host.host_config_read(addr(0)).unwrap();
    r.poll();
    assert_eq!(r.pmes.count(), 1);
    // A duplicate _OFF from the guest while the PME is in flight changes nothing.
    assert_eq!(r.ctl.power_off(s).unwrap(), RequestOutcome::Unchanged);
    assert_eq!(r.ctl.power(s), Some(HostPower::WokenByHost));
}

#[test]
fn plain_entry_device_resuspends_and_never_pmes() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[E1000E]);
    let s = r.slots[0];
    assert_eq!(
        r.ctl.power_off(s).unwrap(),
        RequestOutcome::Entered(LowPowerVariant::Entry)
    );
    r.host.run_pending();
    assert!(r.snap(0).suspended);
    r.host.host_config_read(addr(0)).unwrap();
    let mut b = [0u8; 4];
    r.ctl
        .host_access(s, |d| d.region_read(vfio_pm::CONFIG_REGION, 0, &mut b))
        .unwrap()
        .unwrap();
    r.host.run_pending();
    r.poll();
    assert!(
        r.snap(0).suspended && r.snap(0).engaged,
        "re-suspended, still engaged"
    );
    assert_eq!(r.pmes.count(), 0);
    assert_eq!(r.ctl.power(s), Some(HostPower::LowPower));
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::Exited);
    assert!(!r.snap(0).engaged);
}

#[test]
fn anti_thrash_bounds_host_transitions() {
    let mut r = Rig::with(
        Platform::D3cold,
        KernelVersion::V6_1,
        &[NVIDIA_GPU],
        |_, s| s.min_residency = Duration::from_millis(10),
    );
    let s = r.slots[0];
    // A guest toggling _OFF/_ON every microsecond for 2000 rounds (2 ms of clock time).
    for _ in 0..2000 {
        r.ctl.power_off(s).unwrap();
        r.ctl.power_on(s).unwrap();
        r.clock.advance(Duration::from_micros(1));
        r.poll();
    }
    let st = r.ctl.stats(s).unwrap();
    assert_eq!(st.entries, 1, "only the first _OFF reached the host");
    assert_eq!(st.exits, 1);
    assert_eq!(st.coalesced, 1999);
    assert_eq!(st.deferred, 1999);
    let calls = r.count(0, |e| matches!(e, Event::HostCall { .. }));
    assert_eq!(calls, 2);
    assert_eq!(r.pmes.count(), 0);

    // A deferred _OFF runs when the residency has passed.
    r.ctl.power_off(s).unwrap();
    assert!(r.ctl.next_deadline_ns().is_some());
    assert_eq!(r.ctl.power(s), Some(HostPower::Active));
    r.clock.advance(Duration::from_millis(10));
    r.poll();
    assert_eq!(r.ctl.power(s), Some(HostPower::Armed));
    assert_eq!(r.count(0, |e| matches!(e, Event::DeferredRun)), 1);
    assert!(r.snap(0).wakeup_armed);
    // _ON is never delayed.
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::Exited);
}

#[test]
fn vm_reset_and_shutdown_leave_nothing_engaged() {
    let devs = [NVIDIA_GPU, NVIDIA_GPU, E1000E, E1000E];
    let mut r = Rig::with(Platform::D3cold, KernelVersion::V6_1, &devs, |i, s| {
        if i == 3 {
            s.min_residency = Duration::from_secs(1)
        }
    });
    for &s in &r.slots {
        r.ctl.power_off(s).unwrap();
    }
    r.host.run_pending();
    r.host.host_config_read(addr(1)).unwrap(); // device 1 woken by the host
    r.poll();
    assert_eq!(r.pmes.count(), 1);
    r.ctl.power_on(r.slots[3]).unwrap();
    r.ctl.power_off(r.slots[3]).unwrap(); // deferred
    let report = r.ctl.reset_vm();
    assert_eq!(report.exited, vec![r.slots[0], r.slots[1], r.slots[2]]);
    assert!(report.failed.is_empty());
    r.poll();
    assert_eq!(r.pmes.count(), 1, "reset's own EXITs never become PMEs");
    for (i, &s) in r.slots.iter().enumerate() {
        assert!(!r.snap(i).engaged, "device {i}");
        assert_eq!(r.ctl.power(s), Some(HostPower::Active));
        assert_eq!(r.ctl.guest_on(s), Some(true));
    }
    r.clock.advance(Duration::from_secs(2));
    r.poll();
    assert!(
        !r.snap(3).engaged,
        "the deferred entry was dropped by the reset"
    );

    // Shutdown in low power.
    for &s in &r.slots {
        r.ctl.power_off(s).unwrap();
    }
    r.host.run_pending();
    let report = r.ctl.shutdown();
    assert_eq!(report.exited.len(), 4);
    assert!(report.failed.is_empty());
    assert!(r.ctl.is_empty());
    for i in 0..devs.len() {
        let snap = r.snap(i);
        assert!(!snap.engaged && !snap.open, "device {i}");
    }
    assert_eq!(r.pmes.count(), 1);
}

#[test]
fn old_kernel_falls_back_to_d3hot_through_pmcsr() {
    let mut r = Rig::with(
        Platform::D3cold,
        KernelVersion::V5_19,
        &[NVIDIA_GPU, E1000E],
        |i, s| {
            if i == 0 {
                s.host_pm_cap = Some(0xc8);
            }
        },
    );
    for i in 0..2 {
        let s = r.slots[i];
        assert_eq!(r.ctl.variant(s), Some(LowPowerVariant::D3HotFallback));
        assert_eq!(
            r.count(i, |e| matches!(
                e,
                Event::Fallback { reason: FallbackReason::ProbeUnsupported, controller_writes_pmcsr }
                    if *controller_writes_pmcsr == (i == 0)
            )),
            1
        );
        assert_eq!(
            r.ctl.power_off(s).unwrap(),
            RequestOutcome::Entered(LowPowerVariant::D3HotFallback)
        );
        assert_eq!(r.ctl.power(s), Some(HostPower::D3HotFallback));
    }
    assert_eq!(
        r.snap(0).power_state,
        PowerState::D3Hot,
        "controller wrote PMCSR"
    );
    assert_eq!(
        r.snap(1).power_state,
        PowerState::D0,
        "left to the guest's PMCSR path"
    );
    assert_eq!(r.ctl.power_on(r.slots[0]).unwrap(), RequestOutcome::Exited);
    assert_eq!(r.snap(0).power_state, PowerState::D0);
    assert_eq!(r.ctl.power_on(r.slots[1]).unwrap(), RequestOutcome::Exited);
}

/// A SimDevice with chosen answers on top of the simulated kernel (everything else goes to the
/// model): low-power entries fail with `entry_errno`, and `host_knob_is` reads `d3cold_allowed`
/// as already set when `knob_set`.
struct Injected {
    dev: SimDevice,
    entry_errno: Option<Errno>,
    knob_set: bool,
}

impl Injected {
    fn new(dev: SimDevice) -> Self {
        Self {
            dev,
            entry_errno: None,
            knob_set: false,
        }
    }
}

impl PowerDevice for Injected {
    fn address(&self) -> PciAddress {
        self.dev.address()
    }
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        let index = flags & vfio_pm::feature::FEATURE_MASK;
        if let Some(errno) = self.entry_errno {
            if flags & vfio_pm::feature::FLAG_PROBE == 0 && (index == 3 || index == 4) {
                return Err(errno);
            }
        }
        self.dev.device_feature(argsz, flags, payload)
    }
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.dev.region_read(region, offset, buf)
    }
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        self.dev.region_write(region, offset, data)
    }
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        self.dev.set_host_knob(knob)
    }
    fn host_knob_is(&self, knob: HostKnob) -> Option<bool> {
        self.knob_set
            .then_some(knob == HostKnob::D3ColdAllowed(true))
    }
}

fn injected(errno: Errno) -> (SimHost, Controller, EventLog, Slot) {
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .build()
        .unwrap();
    let a = host.addresses()[0];
    let dev = Injected {
        entry_errno: Some(errno),
        ..Injected::new(host.open(a).unwrap())
    };
    let log = EventLog::new();
    let mut ctl = Controller::new(
        ControllerConfig::default(),
        Box::new(RecordingNotifier::new()),
        Box::new(ManualClock::new()),
        Box::new(log.clone()),
    )
    .unwrap();
    let mut s = DeviceSettings::new(NVIDIA_GPU.0, None, NVIDIA_GPU.1, Some(route(0)));
    s.min_residency = Duration::ZERO;
    s.host_pm_cap = Some(0xc8);
    let slot = ctl.add_device(Box::new(dev), s).unwrap();
    (host, ctl, log, slot)
}

#[test]
fn enotty_at_entry_falls_back_and_says_so() {
    let (host, mut ctl, log, s) = injected(Errno::ENOTTY);
    assert_eq!(
        ctl.power_off(s).unwrap(),
        RequestOutcome::Entered(LowPowerVariant::D3HotFallback)
    );
    assert_eq!(
        log.count(s, |e| matches!(
            e,
            Event::Fallback {
                reason: FallbackReason::Enotty,
                ..
            }
        )),
        1
    );
    let a = host.addresses()[0];
    assert_eq!(host.snapshot(a).unwrap().power_state, PowerState::D3Hot);
    assert_eq!(ctl.power_on(s).unwrap(), RequestOutcome::Exited);
    assert_eq!(host.snapshot(a).unwrap().power_state, PowerState::D0);
    // Later entries go straight to the fallback.
    ctl.power_off(s).unwrap();
    assert_eq!(
        log.count(s, |e| matches!(
            e,
            Event::HostCall {
                call: HostCall::EntryWithWakeup,
                ..
            }
        )),
        1
    );
}

#[test]
fn eio_on_entry_marks_failed_and_reports() {
    let (host, mut ctl, log, s) = injected(Errno::EIO);
    let err = ctl.power_off(s).unwrap_err();
    assert!(matches!(
        err,
        ControllerError::Host {
            source: FeatureError::ResumeFailed { .. },
            ..
        }
    ));
    assert_eq!(ctl.power(s), Some(HostPower::Failed));
    assert_eq!(
        log.count(
            s,
            |e| matches!(e, Event::DeviceFailed { errno, .. } if *errno == Errno::EIO as i32)
        ),
        1
    );
    assert!(!host.snapshot(host.addresses()[0]).unwrap().engaged);
    // The guest's _ON: EXIT works, the device is usable again.
    assert_eq!(ctl.power_on(s).unwrap(), RequestOutcome::Recovered);
    assert_eq!(ctl.power(s), Some(HostPower::Active));
}

#[test]
fn eio_on_exit_marks_failed_and_recovers_when_the_device_does() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    r.host.set_resume_failure(addr(0), true).unwrap();
    let err = r.ctl.power_on(s).unwrap_err();
    assert!(matches!(
        err,
        ControllerError::Host {
            source: FeatureError::ResumeFailed { .. },
            ..
        }
    ));
    assert_eq!(r.ctl.power(s), Some(HostPower::Failed));
    assert_eq!(
        r.count(0, |e| matches!(
            e,
            Event::DeviceFailed {
                call: HostCall::Exit,
                ..
            }
        )),
        1
    );
    // The guest sees the failure (events) and further requests are refused, not ignored.
    assert!(matches!(
        r.ctl.power_off(s),
        Err(ControllerError::DeviceFailed(_))
    ));
    assert!(matches!(
        r.ctl.power_on(s),
        Err(ControllerError::DeviceFailed(_))
    ));
    assert_eq!(r.count(0, |e| matches!(e, Event::GuestRejected { .. })), 2);
    r.poll();
    assert_eq!(r.pmes.count(), 0);
    // The device recovers: the next _ON exits for real.
    r.host.set_resume_failure(addr(0), false).unwrap();
    assert_eq!(r.ctl.power_on(s).unwrap(), RequestOutcome::Recovered);
    r.poll();
    assert_eq!(r.pmes.count(), 0, "recovery EXIT's own signal suppressed");
    assert!(!r.snap(0).engaged);
    assert_eq!(r.ctl.power(s), Some(HostPower::Active));
}

#[test]
fn d3cold_opt_in_writes_the_host_knob() {
    let r = Rig::with(
        Platform::D3cold,
        KernelVersion::V6_1,
        &[NVIDIA_GPU, NVIDIA_GPU],
        |i, s| {
            s.d3cold = Some(i == 0);
        },
    );
    let mut r = r;
    for &s in &r.slots.clone() {
        r.ctl.power_off(s).unwrap();
    }
    r.host.run_pending();
    assert_eq!(r.snap(0).power_state, PowerState::D3Cold);
    assert_eq!(r.snap(1).power_state, PowerState::D3Hot);
    assert_eq!(
        r.count(1, |e| matches!(
            e,
            Event::HostCall {
                call: HostCall::D3ColdAllowed(false),
                ..
            }
        )),
        1
    );
}

#[test]
fn wakeup_policy_never_on_nvidia_uses_plain_entry() {
    let r = Rig::with(
        Platform::D3cold,
        KernelVersion::V6_1,
        &[NVIDIA_GPU],
        |_, s| s.entry = EntryPolicy::Plain,
    );
    assert_eq!(r.ctl.variant(r.slots[0]), Some(LowPowerVariant::Entry));
}

#[test]
fn events_serialize_with_timestamps() {
    let mut r = Rig::new(Platform::D3cold, KernelVersion::V6_1, &[NVIDIA_GPU]);
    r.clock.advance(Duration::from_millis(5));
    r.ctl.power_off(r.slots[0]).unwrap();
    r.host.run_pending();
    r.clock.advance(Duration::from_millis(7));
    r.host.host_config_read(addr(0)).unwrap();
    r.poll();
    let events = r.log.snapshot();
    let json = serde_json::to_string(&events).unwrap();
    for needle in [
        "\"kind\":\"device_added\"",
        "\"kind\":\"guest\"",
        "\"action\":\"power_off\"",
        "\"call\":\"entry_with_wakeup\"",
        "\"kind\":\"host_wake\"",
        "\"kind\":\"pme_delivered\"",
        "\"at_ns\":12000000",
    ] {
        assert!(json.contains(needle), "{needle} missing in {json}");
    }
    let st = r.ctl.stats(r.slots[0]).unwrap();
    assert_eq!(st.residency(HostPower::Armed), 7_000_000);
    assert_eq!(st.residency(HostPower::Active), 5_000_000);
}

#[test]
fn removed_slot_events_are_ignored_and_slots_reused() {
    let mut r = Rig::new(
        Platform::D3cold,
        KernelVersion::V6_1,
        &[NVIDIA_GPU, NVIDIA_GPU],
    );
    let s = r.slots[0];
    r.ctl.power_off(s).unwrap();
    r.host.run_pending();
    let dev = r.ctl.remove_device(s).unwrap();
    assert!(!r.snap(0).engaged, "removal exits low power first");
    assert!(matches!(
        r.ctl.power_on(s),
        Err(ControllerError::UnknownSlot(_))
    ));
    let mut st = DeviceSettings::new(NVIDIA_GPU.0, None, NVIDIA_GPU.1, Some(route(9)));
    st.min_residency = Duration::ZERO;
    let s2 = r.ctl.add_device(dev, st).unwrap();
    assert_eq!(s2, s, "slot reused");
    r.ctl.power_off(s2).unwrap();
    r.host.run_pending();
    r.host.host_config_read(addr(0)).unwrap();
    r.poll();
    assert_eq!(r.pmes.routes(), vec![route(9)]);
}

#[test]
fn thousands_of_devices_on_one_epoll_thread() {
    const N: usize = 1024;
    let host = {
        let mut b = SimHost::builder().platform(Platform::D3cold);
        for i in 0..N {
            b = b.device(DeviceConfig::new(addr(i)));
        }
        b.build().unwrap()
    };
    let pmes = RecordingNotifier::new();
    let (tx, rx) = mpsc::channel();
    let thread_host = host.clone();
    let thread_pmes = pmes.clone();
    let worker = std::thread::spawn(move || {
        let mut ctl = Controller::new(
            ControllerConfig::default(),
            Box::new(thread_pmes),
            Box::new(ManualClock::new()),
            Box::new(vfio_pm_vmm::controller::NullSink),
        )
        .unwrap();
        let mut slots = Vec::new();
        for i in 0..N {
            let dev = thread_host.open(addr(i)).unwrap();
            let mut s = DeviceSettings::new(NVIDIA_GPU.0, None, NVIDIA_GPU.1, Some(route(i)));
            s.min_residency = Duration::ZERO;
            slots.push(ctl.add_device(Box::new(dev), s).unwrap());
        }
        tx.send((ctl.handle(), slots)).unwrap();
        ctl.run().unwrap();
        let stats: Vec<_> = ctl.slots().map(|s| ctl.stats(s).unwrap()).collect();
        (ctl.shutdown(), stats)
    });
    let (handle, slots) = rx.recv().unwrap();
    for &s in &slots {
        handle
            .submit(vfio_pm_vmm::controller::GuestRequest::power_off(s))
            .unwrap();
    }
    // Wait (bounded) until the controller thread has armed every device.
    let armed = |host: &SimHost| {
        (0..N)
            .filter(|&i| host.snapshot(addr(i)).unwrap().wakeup_armed)
            .count()
    };
    let mut tries = 0;
    while armed(&host) < N && tries < 2000 {
        std::thread::sleep(Duration::from_millis(5));
        tries += 1;
    }
    assert_eq!(armed(&host), N);
    host.run_pending();
    // Wake every odd device from the host side.
    for i in (1..N).step_by(2) {
        host.host_config_read(addr(i)).unwrap();
    }
    let mut tries = 0;
    while pmes.count() < N / 2 && tries < 2000 {
        std::thread::sleep(Duration::from_millis(5));
        tries += 1;
    }
    handle.stop().unwrap();
    let (report, stats) = worker.join().unwrap();
    assert_eq!(pmes.count(), N / 2);
    for (i, st) in stats.iter().enumerate() {
        assert_eq!(pmes.count_for(route(i)), i % 2, "device {i}");
        assert_eq!(st.host_wakes, (i % 2) as u64);
    }
    assert_eq!(report.exited.len(), N);
    assert!(report.failed.is_empty());
    assert!((0..N).all(|i| !host.snapshot(addr(i)).unwrap().engaged));
}

/// A restarted VMM side takes over a device that the previous one left in plain low power
/// (the VMM kept the device open): no ENTRY (it would be EINVAL) and no EXIT, the guest's next
/// `_ON` exits as usual; refused for the wakeup variant and once the controller moved it.
#[test]
fn adopting_a_device_already_in_plain_low_power() {
    use vfio_pm::LowPower;
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(addr(0)))
        .device(DeviceConfig::new(addr(1)))
        .build()
        .unwrap();
    let (e1000e, gpu) = (host.open(addr(0)).unwrap(), host.open(addr(1)).unwrap());
    // The previous holder's entry.
    e1000e.enter_low_power().unwrap();
    host.run_pending();
    assert!(host.snapshot(addr(0)).unwrap().engaged);
    let log = EventLog::new();
    let mut ctl = Controller::new(
        ControllerConfig::default(),
        Box::new(RecordingNotifier::new()),
        Box::new(ManualClock::new()),
        Box::new(log.clone()),
    )
    .unwrap();
    let settings = |(vendor, class): (u16, u32), i| {
        let mut s = DeviceSettings::new(vendor, Some(0x2204), class, Some(route(i)));
        s.min_residency = Duration::ZERO;
        s
    };
    let s0 = ctl
        .add_device(Box::new(e1000e), settings(E1000E, 0))
        .unwrap();
    let s1 = ctl
        .add_device(Box::new(gpu), settings(NVIDIA_GPU, 1))
        .unwrap();
    host.run_pending();
    let calls = |log: &EventLog| log.count(s0, |e| matches!(e, Event::HostCall { .. }));
    let before = calls(&log);
    ctl.adopt_low_power(s0).unwrap();
    assert_eq!(calls(&log), before, "no host call");
    assert_eq!(ctl.power(s0), Some(HostPower::LowPower));
    assert_eq!(log.count(s0, |e| matches!(e, Event::AdoptedLowPower)), 1);
    assert!(host.snapshot(addr(0)).unwrap().engaged);
    assert!(matches!(
        ctl.adopt_low_power(s0),
        Err(ControllerError::NotAdoptable { .. })
    ));
    assert!(matches!(
        ctl.adopt_low_power(s1),
        Err(ControllerError::NotAdoptable { .. })
    ));
    // The guest's _OFF again is its duplicate; its _ON exits.
    assert_eq!(ctl.power_off(s0).unwrap(), RequestOutcome::Unchanged);
    assert_eq!(ctl.power_on(s0).unwrap(), RequestOutcome::Exited);
    let snap = host.snapshot(addr(0)).unwrap();
    assert!(!snap.engaged && !snap.suspended, "{snap:?}");
    assert_eq!(ctl.power(s0), Some(HostPower::Active));
    assert_eq!(
        ctl.power_off(s0).unwrap(),
        RequestOutcome::Entered(LowPowerVariant::Entry),
        "and the next _OFF enters as usual"
    );
}

/// `d3cold_allowed` is written when the device cannot say, and not when it reads as set (the
/// write resumes the device: a restarted VMM side must not wake an engaged device with it).
#[test]
fn d3cold_allowed_is_not_written_again_when_already_set() {
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(addr(0)))
        .device(DeviceConfig::new(addr(1)))
        .build()
        .unwrap();
    let log = EventLog::new();
    let mut ctl = Controller::new(
        ControllerConfig::default(),
        Box::new(RecordingNotifier::new()),
        Box::new(ManualClock::new()),
        Box::new(log.clone()),
    )
    .unwrap();
    let settings = |i| {
        let mut s = DeviceSettings::new(E1000E.0, Some(0x10d3), E1000E.1, Some(route(i)));
        s.d3cold = Some(true);
        s
    };
    let plain = ctl
        .add_device(Box::new(host.open(addr(0)).unwrap()), settings(0))
        .unwrap();
    let set = ctl
        .add_device(
            Box::new(Injected {
                knob_set: true,
                ..Injected::new(host.open(addr(1)).unwrap())
            }),
            settings(1),
        )
        .unwrap();
    let knob_calls = |slot| {
        log.count(slot, |e| {
            matches!(
                e,
                Event::HostCall {
                    call: HostCall::D3ColdAllowed(true),
                    ..
                }
            )
        })
    };
    assert_eq!(knob_calls(plain), 1);
    assert_eq!(knob_calls(set), 0);
}
