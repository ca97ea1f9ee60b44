//! The model against every row of the first real-kernel table (docs/kernel-behaviour.md, *The
//! first real-kernel table*: 6.1, e1000e, group fd), on both platforms, plus the expected
//! outcomes (same file, *Expected outcomes*) the table does not cover.

use std::os::fd::AsRawFd;
use std::time::Duration;
use vfio_pm::feature::{wakeup_payload, FLAG_GET, FLAG_PROBE, FLAG_SET};
use vfio_pm::{
    ConformanceDevice, Errno, LowPower, PowerDevice, PowerObservation, PowerState, RuntimeStatus,
};
use vfio_pm_sim::{Platform, SimDevice, SimHost, DEFAULT_ADDRESS};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const LIMIT: Duration = Duration::from_secs(1);

fn obs(state: PowerState, status: RuntimeStatus) -> PowerObservation {
    PowerObservation {
        power_state: state,
        runtime_status: status,
    }
}

fn d0() -> PowerObservation {
    obs(PowerState::D0, RuntimeStatus::Active)
}

fn low(p: Platform) -> PowerObservation {
    let state = match p {
        Platform::D3hot => PowerState::D3Hot,
        Platform::D3cold => PowerState::D3Cold,
    };
    obs(state, RuntimeStatus::Suspended)
}

fn open(p: Platform) -> (SimHost, SimDevice) {
    let host = SimHost::new(p);
    let dev = host.open(DEFAULT_ADDRESS).unwrap();
    (host, dev)
}

fn efd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

/// Reads and resets the counter (0 when nothing was signalled).
fn count(e: &EventFd) -> u64 {
    e.read().unwrap_or(0)
}

fn wakeup(dev: &SimDevice, e: &EventFd) -> Result<(), Errno> {
    dev.device_feature(16, FLAG_SET | 4, &wakeup_payload(e.as_raw_fd()))
}

#[test]
fn bound_not_opened_is_suspended_and_open_resumes() {
    for p in Platform::ALL {
        let host = SimHost::new(p);
        assert_eq!(host.observe(DEFAULT_ADDRESS).unwrap(), low(p), "{p}");
        let dev = host.open(DEFAULT_ADDRESS).unwrap();
        assert_eq!(dev.observe().unwrap(), d0(), "{p}");
        assert_eq!(
            dev.settle(LIMIT).unwrap(),
            d0(),
            "{p}: the open reference holds it"
        );
    }
}

#[test]
fn probe_answers_zero_and_changes_nothing() {
    for p in Platform::ALL {
        let (host, dev) = open(p);
        for f in [3, 4, 5] {
            assert_eq!(
                dev.device_feature(8, FLAG_PROBE | FLAG_SET | f, &[]),
                Ok(())
            );
            assert_eq!(dev.device_feature(8, FLAG_PROBE | f, &[]), Ok(()));
        }
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
        assert!(!host.snapshot(DEFAULT_ADDRESS).unwrap().engaged);
        let s = dev.probe_low_power().unwrap();
        assert!(s.entry && s.entry_with_wakeup && s.exit);
    }
}

#[test]
fn probe_get_and_get_are_einval() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        for f in [3, 4, 5] {
            assert_eq!(
                dev.device_feature(8, FLAG_PROBE | FLAG_GET | f, &[]),
                Err(Errno::EINVAL)
            );
        }
        assert_eq!(dev.device_feature(8, FLAG_GET | 3, &[]), Err(Errno::EINVAL));
    }
}

#[test]
fn entry_suspends_and_entry_while_engaged_is_einval() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        assert_eq!(dev.device_feature(8, FLAG_SET | 3, &[]), Ok(()));
        assert_eq!(dev.observe().unwrap(), d0(), "suspend is asynchronous");
        assert_eq!(dev.settle(LIMIT).unwrap(), low(p));
        assert_eq!(dev.device_feature(8, FLAG_SET | 3, &[]), Err(Errno::EINVAL));
        assert_eq!(dev.observe().unwrap(), d0(), "the ioctl resumed it");
        assert_eq!(
            dev.settle(LIMIT).unwrap(),
            low(p),
            "still engaged: re-suspends"
        );
    }
}

#[test]
fn exit_is_zero_and_idempotent() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        dev.enter_low_power().unwrap();
        dev.settle(LIMIT).unwrap();
        assert_eq!(dev.device_feature(8, FLAG_SET | 5, &[]), Ok(()));
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
        assert_eq!(dev.device_feature(8, FLAG_SET | 5, &[]), Ok(()));
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    }
}

#[test]
fn malformed_headers_and_unknown_index() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        assert_eq!(dev.device_feature(4, FLAG_SET | 3, &[]), Err(Errno::EINVAL));
        assert_eq!(
            dev.device_feature(8, FLAG_SET | 3 | 1 << 20, &[]),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            dev.device_feature(8, FLAG_SET | 200, &[]),
            Err(Errno::ENOTTY)
        );
        // Even the failing calls left the device usable and idle-able.
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    }
}

#[test]
fn with_wakeup_rejects_bad_eventfds() {
    for p in Platform::ALL {
        let (h, dev) = open(p);
        assert_eq!(
            dev.device_feature(16, FLAG_SET | 4, &wakeup_payload(-1)),
            Err(Errno::EINVAL)
        );
        let dir = std::fs::File::open("/").unwrap();
        assert_eq!(
            dev.device_feature(16, FLAG_SET | 4, &wakeup_payload(dir.as_raw_fd())),
            Err(Errno::EINVAL)
        );
        assert_eq!(dev.device_feature(8, FLAG_SET | 4, &[]), Err(Errno::EINVAL));
        assert_eq!(
            dev.device_feature(16, FLAG_SET | 4, &wakeup_payload(0x3fff_fff0)),
            Err(Errno::EBADF)
        );
        assert!(!h.snapshot(DEFAULT_ADDRESS).unwrap().engaged);
    }
}

#[test]
fn with_wakeup_then_host_config_read_depends_on_the_platform() {
    for p in Platform::ALL {
        let (h, dev) = open(p);
        let e = efd();
        wakeup(&dev, &e).unwrap();
        assert_eq!(dev.settle(LIMIT).unwrap(), low(p));
        dev.host_config_read().unwrap();
        let after = dev.settle(LIMIT).unwrap();
        match p {
            Platform::D3hot => {
                assert_eq!(count(&e), 0);
                assert_eq!(after, low(p));
                assert!(h.snapshot(DEFAULT_ADDRESS).unwrap().engaged);
            }
            Platform::D3cold => {
                assert_eq!(count(&e), 1);
                assert_eq!(after, d0());
                assert!(!h.snapshot(DEFAULT_ADDRESS).unwrap().engaged);
            }
        }
    }
}

#[test]
fn with_wakeup_then_any_ioctl_signals_once() {
    for p in Platform::ALL {
        for call in 0..3 {
            let (_h, dev) = open(p);
            let e = efd();
            wakeup(&dev, &e).unwrap();
            dev.settle(LIMIT).unwrap();
            let (r, expected) = match call {
                0 => (dev.device_ioctl(), Ok(())),
                1 => (dev.device_feature(8, FLAG_SET | 5, &[]), Ok(())),
                _ => (
                    dev.device_feature(8, FLAG_SET | 999, &[]),
                    Err(Errno::ENOTTY),
                ),
            };
            assert_eq!(r, expected);
            assert_eq!(count(&e), 1, "{p} call {call}");
            assert_eq!(dev.settle(LIMIT).unwrap(), d0());
            dev.device_ioctl().unwrap();
            assert_eq!(count(&e), 0, "one-shot");
        }
    }
}

#[test]
fn with_wakeup_then_config_region_pread_signals() {
    for p in Platform::ALL {
        let (_h, dev) = open(p);
        let e = efd();
        wakeup(&dev, &e).unwrap();
        dev.settle(LIMIT).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(dev.region_read(vfio_pm::CONFIG_REGION, 0, &mut buf), Ok(4));
        assert_eq!(u32::from_le_bytes(buf), 0x10d3_8086);
        assert_eq!(count(&e), 1);
        assert_eq!(dev.settle(LIMIT).unwrap(), d0());
    }
}

#[test]
fn plain_entry_then_host_config_read_stays_or_goes_back_to_suspended() {
    for p in Platform::ALL {
        let (h, dev) = open(p);
        dev.enter_low_power().unwrap();
        dev.settle(LIMIT).unwrap();
        h.take_events();
        dev.host_config_read().unwrap();
        let resumed = h
            .take_events()
            .iter()
            .any(|e| matches!(e, vfio_pm_sim::Event::Resumed { .. }));
        assert_eq!(resumed, p == Platform::D3cold, "{p}");
        assert_eq!(dev.settle(LIMIT).unwrap(), low(p));
    }
}

#[test]
fn close_while_engaged_never_signals_and_the_device_suspends_again() {
    for p in Platform::ALL {
        let (h, mut dev) = open(p);
        let e = efd();
        wakeup(&dev, &e).unwrap();
        dev.settle(LIMIT).unwrap();
        dev.close().unwrap();
        assert_eq!(count(&e), 0);
        assert_eq!(dev.settle(LIMIT).unwrap(), low(p));
        assert_eq!(dev.device_ioctl(), Err(Errno::EBADF));
        assert_eq!(dev.device_feature(8, FLAG_SET | 5, &[]), Err(Errno::EBADF));
        assert_eq!(dev.close(), Err(Errno::EBADF));
        assert_eq!(count(&e), 0);
        // The device can be opened again.
        let again = h.open(DEFAULT_ADDRESS).unwrap();
        assert_eq!(again.observe().unwrap(), d0());
    }
}
