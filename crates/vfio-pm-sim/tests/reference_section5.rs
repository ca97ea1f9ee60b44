//! Expected outcomes (docs/kernel-behaviour.md, *Expected outcomes*) beyond the feature table: mmap, knobs, re-arm, reset, PMCSR, hot
//! reset, INTx, disable_idle_d3, resume failure, kernel versions.

use std::os::fd::AsRawFd;
use std::time::Duration;
use vfio_pm::feature::{wakeup_payload, FLAG_SET};
use vfio_pm::{
    ConformanceDevice, Errno, HostKnob, LowPower, PciAddress, PowerDevice, PowerObservation,
    PowerState, RuntimeStatus, BAR0_REGION, CONFIG_REGION,
};
use vfio_pm_sim::{
    DeviceConfig, KernelVersion, MmapAccess, Platform, SimDevice, SimHost, DEFAULT_ADDRESS,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const LIMIT: Duration = Duration::from_secs(1);

fn d0() -> PowerObservation {
    PowerObservation {
        power_state: PowerState::D0,
        runtime_status: RuntimeStatus::Active,
    }
}

fn suspended(dev: &SimDevice) -> bool {
    dev.settle(LIMIT).unwrap().runtime_status == RuntimeStatus::Suspended
}

fn efd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn count(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

fn wakeup(dev: &SimDevice, e: &EventFd) -> Result<(), Errno> {
    dev.device_feature(16, FLAG_SET | 4, &wakeup_payload(e.as_raw_fd()))
}

fn open(p: Platform) -> (SimHost, SimDevice) {
    let host = SimHost::new(p);
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    (host, dev)
}

#[test]
fn s10_12_14_mmap_sigbus_while_engaged_and_works_after_exit() {
    let (_h, dev) = open(Platform::D3cold);
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::Ok));
    dev.enter_low_power().unwrap();
    assert_eq!(
        dev.bar_mmap_access(BAR0_REGION),
        Ok(MmapAccess::SigBus),
        "even before suspend"
    );
    assert!(suspended(&dev));
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::SigBus));
    assert!(suspended(&dev), "a fault does not resume");
    dev.exit_low_power().unwrap();
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::Ok));
}

#[test]
fn s15_16_region_access_resumes_and_plain_entry_resuspends() {
    for region in [CONFIG_REGION, BAR0_REGION] {
        let (_h, dev) = open(Platform::D3hot);
        dev.enter_low_power().unwrap();
        assert!(suspended(&dev));
        let mut buf = [0u8; 4];
        assert_eq!(dev.region_read(region, 0, &mut buf), Ok(4));
        assert_eq!(
            dev.observe().unwrap(),
            d0(),
            "active during/after the access"
        );
        assert!(suspended(&dev), "plain ENTRY re-enters low power");
        assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::SigBus));
    }
    // Invalid index and zero count do not resume.
    let (_h, dev) = open(Platform::D3hot);
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev));
    assert_eq!(dev.region_read(9, 0, &mut [0u8; 4]), Err(Errno::EINVAL));
    assert_eq!(dev.region_read(CONFIG_REGION, 0, &mut []), Ok(0));
    assert!(dev.observe().unwrap().runtime_status == RuntimeStatus::Suspended);
}

#[test]
fn s21_s26_before_the_async_suspend() {
    let (_h, dev) = open(Platform::D3cold);
    let (a, b) = (efd(), efd());
    wakeup(&dev, &a).unwrap();
    assert_eq!(wakeup(&dev, &b), Err(Errno::EINVAL), "26: still engaged");
    dev.exit_low_power().unwrap();
    assert_eq!(
        (count(&a), count(&b)),
        (0, 0),
        "21: never suspended, no signal"
    );
    assert_eq!(dev.settle(LIMIT).unwrap(), d0());
}

#[test]
fn s22_power_control_on_prevents_suspend_and_signals() {
    let (_h, dev) = open(Platform::D3cold);
    dev.set_host_knob(HostKnob::RuntimePmAllowed(false))
        .unwrap();
    let e = efd();
    wakeup(&dev, &e).unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::SigBus));
    dev.device_ioctl().unwrap();
    dev.exit_low_power().unwrap();
    assert_eq!(count(&e), 0);
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::Ok));
}

#[test]
fn s24_entry_then_wakeup_is_einval_and_never_signals() {
    let (_h, dev) = open(Platform::D3hot);
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev));
    let e = efd();
    assert_eq!(wakeup(&dev, &e), Err(Errno::EINVAL));
    assert!(suspended(&dev));
    dev.device_ioctl().unwrap();
    assert_eq!(count(&e), 0);
}

#[test]
fn s25_rearm_with_a_second_eventfd() {
    let (_h, dev) = open(Platform::D3hot);
    let (a, b) = (efd(), efd());
    wakeup(&dev, &a).unwrap();
    assert!(suspended(&dev));
    assert_eq!(wakeup(&dev, &b), Ok(()));
    assert_eq!((count(&a), count(&b)), (1, 0));
    assert!(suspended(&dev));
    dev.device_ioctl().unwrap();
    assert_eq!((count(&a), count(&b)), (0, 1));
}

#[test]
fn s28_reset_keeps_engaged_and_einval_without_reset() {
    let (_h, dev) = open(Platform::D3cold);
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev));
    assert_eq!(dev.reset(), Ok(()));
    assert!(suspended(&dev), "still engaged: re-suspends");
    assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::SigBus));

    let host = SimHost::builder()
        .device(DeviceConfig::default().reset_works(false))
        .build()
        .unwrap();
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    assert_eq!(dev.reset(), Err(Errno::EINVAL));
}

fn pmcsr(dev: &SimDevice) -> u16 {
    let mut b = [0u8; 2];
    dev.region_read(CONFIG_REGION, 0xcc, &mut b).unwrap();
    u16::from_le_bytes(b)
}

#[test]
fn s29_guest_pmcsr_d3hot() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        dev.region_write(CONFIG_REGION, 0xcc, &[3, 0]).unwrap();
        assert_eq!(
            dev.settle(LIMIT).unwrap(),
            PowerObservation {
                power_state: PowerState::D3Hot,
                runtime_status: RuntimeStatus::Active
            }
        );
        assert_eq!(dev.bar_mmap_access(BAR0_REGION), Ok(MmapAccess::SigBus));
        assert_eq!(
            dev.region_read(BAR0_REGION, 0, &mut [0u8; 4]),
            Err(Errno::EIO)
        );
        assert_eq!(pmcsr(&dev) & 3, 3);
        dev.enter_low_power().unwrap();
        assert!(suspended(&dev));
        dev.exit_low_power().unwrap();
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
        assert_eq!(pmcsr(&dev) & 3, 0);
        // Writing D0 instead restores access.
        dev.region_write(CONFIG_REGION, 0xcc, &[3, 0]).unwrap();
        dev.region_write(CONFIG_REGION, 0xcc, &[0, 0]).unwrap();
        assert_eq!(dev.region_read(BAR0_REGION, 0, &mut [0u8; 4]), Ok(4));
    }
}

#[test]
fn s31_s32_knobs_wake_a_wakeup_armed_device() {
    let (_h, dev) = open(Platform::D3cold);
    let e = efd();
    wakeup(&dev, &e).unwrap();
    assert!(suspended(&dev));
    dev.set_host_knob(HostKnob::RuntimePmAllowed(false))
        .unwrap();
    assert_eq!(count(&e), 1);
    dev.set_host_knob(HostKnob::RuntimePmAllowed(true)).unwrap();
    assert_eq!(
        dev.settle(LIMIT).unwrap(),
        d0(),
        "engaged cleared; open ref held"
    );

    let (_h, dev) = open(Platform::D3hot);
    wakeup(&dev, &e).unwrap();
    assert!(suspended(&dev));
    dev.set_host_knob(HostKnob::D3ColdAllowed(true)).unwrap();
    assert_eq!(count(&e), 1);
}

#[test]
fn d3cold_allowed_caps_the_target_state() {
    let (_h, dev) = open(Platform::D3cold);
    dev.set_host_knob(HostKnob::D3ColdAllowed(false)).unwrap();
    dev.enter_low_power().unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap().power_state, PowerState::D3Hot);
    dev.set_host_knob(HostKnob::D3ColdAllowed(true)).unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap().power_state, PowerState::D3Cold);
}

#[test]
fn s33_hot_reset_wakes_wakeup_armed_siblings() {
    let a_addr: PciAddress = "0000:01:00.0".parse().unwrap();
    let b_addr: PciAddress = "0000:01:00.1".parse().unwrap();
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(a_addr).dev_set(1))
        .device(DeviceConfig::new(b_addr).dev_set(1))
        .build()
        .unwrap();
    let a = host.open(a_addr).unwrap();
    let b = host.open(b_addr).unwrap();
    let e = efd();
    wakeup(&b, &e).unwrap();
    assert!(suspended(&b));
    assert_eq!(a.hot_reset(), Ok(()));
    assert_eq!(count(&e), 1);
    assert_eq!(b.settle(LIMIT).unwrap(), d0());
    assert!(!b.snapshot().unwrap().engaged);
}

#[test]
fn s35_intx_masked_by_suspend_unless_user_masked() {
    let host = SimHost::builder()
        .device(DeviceConfig::default().intx(true))
        .build()
        .unwrap();
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev));
    let x = dev.snapshot().unwrap().intx.unwrap();
    assert!(x.masked && x.masked_by_pm);
    dev.raise_intx().unwrap(); // arrives while masked: pending
    dev.device_ioctl().unwrap(); // resume unmasks and re-signals the pending interrupt
    let x = dev.snapshot().unwrap().intx.unwrap();
    assert!(!x.masked_by_pm);
    assert_eq!(x.triggers, 1);
    dev.exit_low_power().unwrap();

    // User-masked INTx stays user-owned across suspend/resume.
    let host = SimHost::builder()
        .device(DeviceConfig::default().intx(true))
        .build()
        .unwrap();
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    dev.set_intx_masked(true).unwrap();
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev));
    assert!(!dev.snapshot().unwrap().intx.unwrap().masked_by_pm);
    dev.exit_low_power().unwrap();
    assert!(dev.snapshot().unwrap().intx.unwrap().masked);
}

#[test]
fn s36_disable_idle_d3() {
    let host = SimHost::builder()
        .device(DeviceConfig::default().disable_idle_d3(true))
        .build()
        .unwrap();
    assert_eq!(
        host.observe(DEFAULT_ADDRESS).unwrap(),
        d0(),
        "unused stays D0"
    );
    let mut dev = host.open(DEFAULT_ADDRESS).unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    dev.enter_low_power().unwrap();
    assert!(suspended(&dev), "ENTRY drops the last reference");
    dev.exit_low_power().unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    dev.close().unwrap();
    assert_eq!(dev.settle(LIMIT).unwrap(), d0());
}

#[test]
fn s37_resume_failure_is_eio_everywhere() {
    let (host, dev) = open(Platform::D3cold);
    let e = efd();
    wakeup(&dev, &e).unwrap();
    assert!(suspended(&dev));
    host.set_resume_failure(DEFAULT_ADDRESS, true).unwrap();
    assert_eq!(dev.device_ioctl(), Err(Errno::EIO));
    assert_eq!(dev.device_feature(8, FLAG_SET | 5, &[]), Err(Errno::EIO));
    assert_eq!(dev.device_feature(4, 0xffff_ffff, &[]), Err(Errno::EIO));
    assert_eq!(
        dev.region_read(CONFIG_REGION, 0, &mut [0u8; 4]),
        Err(Errno::EIO)
    );
    assert_eq!(dev.reset(), Err(Errno::EIO));
    assert_eq!(count(&e), 0);
    host.set_resume_failure(DEFAULT_ADDRESS, false).unwrap();
    dev.device_ioctl().unwrap();
    assert_eq!(count(&e), 1);

    // Opening a stuck device fails with the resume error.
    let host = SimHost::builder()
        .device(DeviceConfig::default().resume_fails(true))
        .build()
        .unwrap();
    assert_eq!(host.open(DEFAULT_ADDRESS).unwrap_err().errno(), Errno::EIO);
}

#[test]
fn kernel_versions_differ_where_the_reference_says() {
    for (kernel, errno) in [
        (KernelVersion::V6_1, Errno::EINVAL),
        (KernelVersion::V6_12, Errno::EINVAL),
        (KernelVersion::V6_18, Errno::ENOTTY),
    ] {
        let host = SimHost::builder()
            .kernel(kernel)
            .device(DeviceConfig::default().device_feature_op(false))
            .build()
            .unwrap();
        let dev = host.open(DEFAULT_ADDRESS).unwrap();
        assert_eq!(
            dev.device_feature(8, FLAG_SET | 3, &[]),
            Err(errno),
            "{kernel}"
        );
        // Core features answer before the driver op.
        assert_eq!(dev.device_feature(8, FLAG_SET | 1, &[]), Err(Errno::ENOTTY));
    }
    let host = SimHost::builder()
        .kernel(KernelVersion::V5_19)
        .build()
        .unwrap();
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    assert!(!dev.probe_low_power().unwrap().any_low_power());
    assert_eq!(dev.device_feature(8, FLAG_SET | 3, &[]), Err(Errno::ENOTTY));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let host = SimHost::new(Platform::D3hot);
    let nowhere: PciAddress = "0000:09:00.0".parse().unwrap();
    assert_eq!(host.open(nowhere).unwrap_err().errno(), Errno::ENODEV);
    let _dev = host.open(DEFAULT_ADDRESS).unwrap();
    assert_eq!(
        host.open(DEFAULT_ADDRESS).unwrap_err().errno(),
        Errno::EBUSY
    );
    let dup = SimHost::builder()
        .device(DeviceConfig::default())
        .device(DeviceConfig::default())
        .build();
    assert_eq!(dup.unwrap_err().errno(), Errno::EEXIST);
}

#[test]
fn the_event_trace_tells_the_wakeup_story_in_order() {
    use vfio_pm_sim::Event;
    let (host, dev) = open(Platform::D3cold);
    let e = efd();
    host.take_events();
    wakeup(&dev, &e).unwrap();
    dev.settle(LIMIT).unwrap();
    dev.device_ioctl().unwrap();
    let events = host.take_events();
    let pos = |f: &dyn Fn(&Event) -> bool| events.iter().position(f);
    let armed = pos(&|e| {
        matches!(
            e,
            Event::Engaged {
                engaged: true,
                wakeup: true,
                ..
            }
        )
    });
    let suspended =
        pos(&|e| matches!(e, Event::Suspended { state, .. } if *state == PowerState::D3Cold));
    let resumed = pos(&|e| {
        matches!(
            e,
            Event::Resumed {
                reason: "ioctl get",
                ..
            }
        )
    });
    let signalled = pos(&|e| matches!(e, Event::Signalled { .. }));
    let exited = pos(&|e| matches!(e, Event::Engaged { engaged: false, .. }));
    let order = [armed, suspended, resumed, signalled, exited];
    assert!(order.iter().all(Option::is_some), "{events:#?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{events:#?}");
    // Usage: 1 (open) +1 (ioctl) -1 (entry noidle) -1 (put) = 0 before the suspend.
    let before_suspend = events[..suspended.unwrap()]
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Usage { count, .. } => Some(*count),
            _ => None,
        });
    assert_eq!(before_suspend, Some(0));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Signalled { .. }))
            .count(),
        1
    );
    assert!(events.iter().all(|e| !e.to_string().is_empty()));
}
