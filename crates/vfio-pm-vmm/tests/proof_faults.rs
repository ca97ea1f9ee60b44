//! Fault injection (issue 11): every host call the controller makes (PROBE, ENTRY,
//! ENTRY_WITH_WAKEUP, EXIT, the PMCSR fallback's region read and write, the `d3cold_allowed`
//! knob) fails once with each errno it can return. For each (call, errno) the manager reports
//! it (a typed error or a failed host call event carrying the errno), its state agrees with
//! the host's, and the device works again after the next guest requests.

mod proof_support;

use proof_support::{build, Call, Rig, RigOptions, ERRNOS, GPU, NIC};
use vfio_pm::{Errno, PowerState};
use vfio_pm_sim::KernelVersion;
use vfio_pm_vmm::controller::{
    CallResult, ControllerError, Event, HostCall, HostPower, LowPowerVariant, RequestOutcome,
};
use vfio_pm_vmm::vmm::VmmError;
use vfio_pm_vmm::{PowerAction, Slot};

/// The failed host call `errno` was reported as an event of `slot`.
fn reported(r: &Rig, slot: usize, errno: Errno) -> bool {
    r.log.count(Slot(slot as u32), |e| {
        matches!(e, Event::HostCall { result: CallResult::Err { errno: n, .. }, .. } if *n == errno as i32)
    }) > 0
}

fn off(r: &mut Rig, i: usize) -> Result<RequestOutcome, VmmError> {
    r.trap(i, PowerAction::PowerOff).map(|o| o.outcome)
}

fn on(r: &mut Rig, i: usize) -> Result<RequestOutcome, VmmError> {
    r.trap(i, PowerAction::PowerOn).map(|o| o.outcome)
}

/// Host and controller agree on device `i` (a failed device may be in any host state).
fn consistent(r: &Rig, i: usize) {
    let snap = r.snap(i);
    match r.vpm.power(Slot(i as u32)).unwrap() {
        HostPower::Active | HostPower::WokenByHost | HostPower::D3HotFallback => {
            assert!(!snap.engaged, "{snap:?}")
        }
        HostPower::LowPower => assert!(snap.engaged && !snap.wakeup_armed, "{snap:?}"),
        HostPower::Armed => assert!(snap.engaged && snap.wakeup_armed, "{snap:?}"),
        HostPower::Failed => {}
    }
}

/// The device goes through a whole guest cycle again: `_OFF` reaches low power (engaged, or
/// PMCSR D3hot in the fallback), `_ON` leaves it. The first request after the fault may be
/// the one that recovers a failed device.
fn recovers(r: &mut Rig, i: usize) {
    if r.vpm.controller().guest_on(Slot(i as u32)) == Some(false)
        || r.vpm.power(Slot(i as u32)) == Some(HostPower::Failed)
    {
        let o = on(r, i).expect("the next _ON is served");
        assert!(
            matches!(
                o,
                RequestOutcome::Unchanged | RequestOutcome::Exited | RequestOutcome::Recovered
            ),
            "{o:?}"
        );
    }
    assert_eq!(r.vpm.power(Slot(i as u32)), Some(HostPower::Active));
    assert!(!r.snap(i).engaged);
    let o = off(r, i).expect("the next _OFF is served");
    assert!(matches!(o, RequestOutcome::Entered(_)), "{o:?}");
    r.host.run_pending();
    let snap = r.snap(i);
    if o == RequestOutcome::Entered(LowPowerVariant::D3HotFallback) {
        assert_eq!(snap.power_state, PowerState::D3Hot, "{snap:?}");
    } else {
        assert!(snap.engaged && snap.suspended, "{snap:?}");
    }
    assert!(matches!(on(r, i), Ok(RequestOutcome::Exited)));
    assert!(!r.snap(i).engaged);
    assert_eq!(r.snap(i).power_state, PowerState::D0);
}

/// Faults at build time (PROBE, the knob): what the build did.
fn build_fault(call: Call, errno: Errno) -> String {
    let opts = RigOptions {
        build_fault: Some((GPU, call, errno)),
        ..RigOptions::default()
    };
    match build(opts) {
        Ok(mut r) => {
            if call == Call::Probe {
                // ENOTTY / EINVAL from PROBE mean "not supported" (kernel ABI): the device is
                // added with what the other probes found.
                assert!(matches!(errno, Errno::ENOTTY | Errno::EINVAL), "{errno}");
            } else {
                assert!(reported(&r, GPU, errno), "knob failure reported");
                assert_eq!(r.vpm.stats(Slot(GPU as u32)).unwrap().errors, 1);
            }
            consistent(&r, GPU);
            recovers(&mut r, GPU);
            format!("built; {:?}", r.vpm.variant(Slot(GPU as u32)).unwrap())
        }
        Err((e, host)) => {
            assert_eq!(call, Call::Probe, "only PROBE fails the build: {e}");
            assert!(
                matches!(
                    e,
                    VmmError::AddDevice {
                        source: ControllerError::Probe { .. },
                        ..
                    }
                ),
                "{e}"
            );
            for a in host.addresses() {
                assert!(!host.snapshot(a).unwrap().engaged);
            }
            // The VMM retries: a new build over a healthy host works.
            let mut r = build(RigOptions::default()).unwrap();
            recovers(&mut r, GPU);
            "build error AddDevice(Probe); rebuilt".into()
        }
    }
}

/// Faults of a guest request's host call: what the request returned.
fn request_fault(call: Call, errno: Errno) -> String {
    let fallback = matches!(call, Call::RegionRead | Call::RegionWrite);
    let mut r = build(RigOptions {
        kernel: if fallback {
            KernelVersion::V5_19
        } else {
            KernelVersion::V6_1
        },
        ..RigOptions::default()
    })
    .unwrap();
    let i = if call == Call::Entry { NIC } else { GPU };
    let faults = r.faults[i].clone();
    let result = if call == Call::Exit {
        assert!(matches!(off(&mut r, i), Ok(RequestOutcome::Entered(_))));
        r.host.run_pending();
        faults.arm(call, errno);
        on(&mut r, i)
    } else {
        faults.arm(call, errno);
        off(&mut r, i)
    };
    assert!(!faults.pending(), "the fault fired");
    assert!(
        reported(&r, i, errno),
        "{call:?} {errno}: reported as an event"
    );
    consistent(&r, i);
    if r.vpm.power(Slot(i as u32)) == Some(HostPower::Failed) {
        assert!(result.is_err(), "a failed device is a typed error");
    }
    let what = match &result {
        Ok(o) => format!("{o:?}"),
        Err(VmmError::Controller(ControllerError::Host { source, .. })) => {
            format!("Err(Host: {source:?})")
        }
        Err(e) => format!("Err({e})"),
    };
    let power = r.vpm.power(Slot(i as u32)).unwrap();
    recovers(&mut r, i);
    let calls = r.log.count(Slot(i as u32), |e| {
        matches!(
            e,
            Event::HostCall {
                call: HostCall::Exit,
                ..
            }
        )
    });
    format!("{what}; then {power:?}; recovered ({calls} EXIT calls)")
}

#[test]
fn every_host_call_fails_once_with_every_errno_and_the_device_recovers() {
    let mut rows = Vec::new();
    for call in Call::ALL {
        for errno in ERRNOS {
            eprintln!("case {call:?} {errno}");
            let row = match call {
                Call::Probe | Call::D3ColdKnob => build_fault(call, errno),
                _ => request_fault(call, errno),
            };
            rows.push(format!("| {call:?} | {errno} | {row} |"));
        }
    }
    assert_eq!(rows.len(), Call::ALL.len() * ERRNOS.len());
    println!("| call | errno | what the manager did |\n|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

/// Shutdown with a failing EXIT: the device is reported failed, and closing its fd still
/// leaves nothing engaged (the kernel exits low power on close).
#[test]
fn shutdown_with_a_failing_exit_reports_it_and_leaves_nothing_engaged() {
    for errno in ERRNOS {
        let mut r = build(RigOptions::default()).unwrap();
        off(&mut r, GPU).unwrap();
        r.host.run_pending();
        r.faults[GPU].arm(Call::Exit, errno);
        let report = r.vpm.shutdown();
        assert_eq!(report.failed, vec![Slot(GPU as u32)], "{errno}");
        assert!(reported(&r, GPU, errno));
        let snap = r.snap(GPU);
        assert!(!snap.open && !snap.engaged, "{errno}: {snap:?}");
    }
}
