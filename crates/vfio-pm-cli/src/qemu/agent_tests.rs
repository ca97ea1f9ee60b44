//! Tests of the parent module.
use super::*;
use std::os::unix::fs::FileExt;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig, WakeupMode};

const DEVICES: usize = 64;

/// The agent's loop over 64 simulated devices with the acknowledged mailbox.
fn idle_loop<'a>(dir: &Path, sysfs: &'a Sysfs) -> Loop<'a> {
    let mut trap = TrapFile::io(0x440);
    trap.mailbox = Some(r"\_SB.PCI0.SF0".into());
    let files = (0..DEVICES)
        .map(|i| DeviceFile {
            d3cold: true,
            wakeup: WakeupMode::Never,
            ..DeviceFile::new(
                &format!(r"\_SB.PCI0.D{i:03}"),
                PciAddress::new(0, 1, (i / 8) as u8, (i % 8) as u8).unwrap(),
                0x8086,
                0x020000,
            )
        })
        .collect();
    let config = VmmConfig::validate(&ConfigFile::new(trap, files)).unwrap();
    let mut b = SimHost::builder().platform(Platform::D3cold);
    let hosts: Vec<PciAddress> = (0..DEVICES)
        .map(|i| PciAddress::new(0, 0x40, (i / 8) as u8, (i % 8) as u8).unwrap())
        .collect();
    for h in &hosts {
        b = b.device(DeviceConfig::new(*h));
    }
    let host = b.build().unwrap();
    let devices: Vec<Box<dyn PowerDevice>> = hosts
        .iter()
        .map(|h| Box::new(host.open(*h).unwrap()) as Box<dyn PowerDevice>)
        .collect();
    let log = EventLog::new();
    let vpm = VmmPowerManager::builder(config)
        .events(log.clone())
        .build(devices)
        .unwrap();
    Loop {
        sysfs,
        vpm,
        mailbox: Mailbox::create(&dir.join("mailbox"), DEVICES).unwrap(),
        log,
        out: Printer::new(true, Instant::now(), hosts.clone()),
        hosts,
        listener: bind_doorbell(&dir.join("doorbell.sock")).unwrap(),
        conn: None,
        epoll: Epoll::new().unwrap(),
        checks: Vec::new(),
        d3cold_seen: vec![false; DEVICES],
        doorbell_bytes: 0,
        malformed: 0,
        test_ack_delay: None,
        times: CallTimes::default(),
    }
}

/// The goal of issue 11 for the QEMU path: an idle agent, 64 devices in low power, has no
/// timer at all (epoll waits with no timeout), so it wakes only for a doorbell, QEMU's exit
/// or a signal. After the guest's _OFFs only the one-shot kernel checks are due, and once
/// they ran nothing is left.
#[test]
fn an_idle_agent_has_no_periodic_wakeup() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = Sysfs::new(dir.path().join("sys"));
    let mut l = idle_loop(dir.path(), &sysfs);
    assert_eq!(l.timeout_ms(), -1, "idle, every device on: no timer");
    // The guest idles every device: REQ = sequence 1, _OFF of the slot.
    let shm = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("mailbox"))
        .unwrap();
    for i in 0..DEVICES {
        let word = (1u32 << 8) | i as u32;
        shm.write_all_at(&word.to_le_bytes(), (i * 8) as u64)
            .unwrap();
    }
    l.serve().unwrap();
    for i in 0..DEVICES {
        assert_eq!(
            l.vpm.power(Slot(i as u32)),
            Some(vfio_pm_vmm::controller::HostPower::LowPower)
        );
    }
    let t = l.timeout_ms();
    assert!(
        t > 0 && t <= KERNEL_CHECK_AFTER.as_millis() as i32 + 1,
        "only the one-shot kernel checks are due: {t} ms"
    );
    for c in &mut l.checks {
        c.0 = Instant::now();
    }
    l.kernel_checks();
    assert_eq!(
        l.timeout_ms(),
        -1,
        "64 devices in low power: no timer at all"
    );
}

/// A restarted agent takes a device the kernel has runtime-suspended as still engaged (no
/// host call); one that was awake is entered again.
#[test]
fn restoring_off_takes_over_a_suspended_device_and_enters_an_awake_one() {
    use vfio_pm_vmm::controller::{Event, HostPower};
    let dir = tempfile::tempdir().unwrap();
    let sysfs = Sysfs::new(dir.path().join("sys"));
    let mut l = idle_loop(dir.path(), &sysfs);
    l.log.take();
    l.restore_off(Slot(0), true);
    l.restore_off(Slot(1), false);
    let evs = l.log.take();
    let calls = |slot| {
        evs.iter()
            .filter(|e| e.slot == slot && matches!(e.event, Event::HostCall { .. }))
            .count()
    };
    assert_eq!(calls(Slot(0)), 0, "taken over without a host call");
    assert!(evs
        .iter()
        .any(|e| e.slot == Slot(0) && e.event == Event::AdoptedLowPower));
    assert_eq!(calls(Slot(1)), 1, "entered again: {evs:?}");
    for s in [Slot(0), Slot(1)] {
        assert_eq!(l.vpm.power(s), Some(HostPower::LowPower));
    }
    assert_eq!(l.vpm.power(Slot(2)), Some(HostPower::Active));
}

#[test]
fn guest_driven_lines_are_rate_limited() {
    let mut p = Printer::new(true, Instant::now(), Vec::new());
    let allowed = (0..1000).filter(|_| p.guest_line_allowed()).count();
    assert_eq!(allowed, super::super::output::GUEST_LINES_PER_SEC as usize);
}
