//! One manager, shared the way a VMM shares its device state: two "vCPU" threads take the lock
//! to handle their guest's trap writes, an event-loop thread waits on the manager's epoll fd
//! without the lock and takes it only to poll. Every genuine host wake of the wakeup-variant
//! device becomes exactly one guest notification, the plain device's wakes none, and shutdown
//! leaves nothing engaged.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_pm::PowerDevice;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, TrapSpace, VmmConfig};
use vfio_pm_vmm::pme::{Delivery, GuestNotifier, NotifyError, WakeRoute};
use vfio_pm_vmm::vmm::VmmPowerManager;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const PORT: u16 = 0x440;
const ROUNDS: usize = 50;

#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl GuestNotifier for Counting {
    fn notify(&self, _route: WakeRoute) -> Result<Delivery, NotifyError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(Delivery::Interrupt)
    }
}

fn trap(vpm: &Mutex<VmmPowerManager>, byte: u8) {
    let mut vpm = vpm.lock().unwrap();
    vpm.on_trap_write(TrapSpace::Io, u64::from(PORT), &[byte])
        .unwrap();
}

#[test]
fn two_vcpu_threads_and_an_event_loop_share_one_manager() {
    let gpu = DeviceFile {
        d3cold: true,
        gpe: Some(0x10),
        ..DeviceFile::new(
            r"\_SB.PCI0.S28",
            "0000:00:05.0".parse().unwrap(),
            0x10de,
            0x030000,
        )
    };
    let nic = DeviceFile {
        d3cold: true,
        gpe: Some(0x11),
        ..DeviceFile::new(
            r"\_SB.PCI0.S30",
            "0000:00:06.0".parse().unwrap(),
            0x8086,
            0x020000,
        )
    };
    let config = VmmConfig::validate(&ConfigFile::new(TrapFile::io(PORT), vec![gpu, nic])).unwrap();
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new("0000:41:00.0".parse().unwrap()))
        .device(DeviceConfig::new("0000:42:00.0".parse().unwrap()))
        .build()
        .unwrap();
    let addrs = host.addresses();
    let devices: Vec<Box<dyn PowerDevice>> = addrs
        .iter()
        .map(|a| Box::new(host.open(*a).unwrap()) as Box<dyn PowerDevice>)
        .collect();
    let wakes = Counting::default();
    let vpm = VmmPowerManager::builder(config)
        .notifier(wakes.clone())
        .min_residency(Duration::ZERO)
        .build(devices)
        .unwrap();
    let epoll_fd = vpm.epoll_fd();
    let vpm = Arc::new(Mutex::new(vpm));
    let stop = Arc::new(AtomicBool::new(false));

    // The event loop: waits without the lock, polls with it.
    let event_loop = {
        let (vpm, stop) = (vpm.clone(), stop.clone());
        std::thread::spawn(move || {
            let epoll = Epoll::new().unwrap();
            epoll
                .ctl(
                    ControlOperation::Add,
                    epoll_fd,
                    EpollEvent::new(EventSet::IN, 1),
                )
                .unwrap();
            let mut events = vec![EpollEvent::default(); 4];
            let mut polls = 0usize;
            while !stop.load(Ordering::Acquire) {
                if epoll.wait(20, &mut events).unwrap() > 0 {
                    vpm.lock().unwrap().poll(Some(Duration::ZERO)).unwrap();
                    polls += 1;
                }
            }
            polls
        })
    };

    // vCPU 0 runs the GPU's guest: _OFF, the host suspends it, lspci wakes it, the guest gets
    // exactly one notification and answers with _ON.
    let gpu_vcpu = {
        let (vpm, host, wakes) = (vpm.clone(), host.clone(), wakes.clone());
        let addr = addrs[0];
        std::thread::spawn(move || {
            for round in 1..=ROUNDS {
                trap(&vpm, 0x00);
                host.run_pending();
                host.host_config_read(addr).unwrap();
                let deadline = Instant::now() + Duration::from_secs(10);
                while wakes.0.load(Ordering::SeqCst) < round {
                    assert!(
                        Instant::now() < deadline,
                        "wake {round} never reached the guest"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                trap(&vpm, 0x80);
            }
        })
    };
    // vCPU 1 runs the NIC's guest meanwhile: plain entry, host accesses never reach it.
    let nic_vcpu = {
        let (vpm, host) = (vpm.clone(), host.clone());
        let addr = addrs[1];
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                trap(&vpm, 0x01);
                host.run_pending();
                host.host_config_read(addr).unwrap();
                trap(&vpm, 0x81);
            }
        })
    };
    gpu_vcpu.join().unwrap();
    nic_vcpu.join().unwrap();
    // Let the event loop see anything still pending, then stop it.
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Release);
    let polls = event_loop.join().unwrap();

    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        ROUNDS,
        "one notification per host wake"
    );
    assert!(
        polls >= ROUNDS,
        "the event loop handled every wake ({polls} polls)"
    );
    let mut vpm = vpm.lock().unwrap();
    let gpu_stats = vpm.stats(vfio_pm_vmm::Slot(0)).unwrap();
    let nic_stats = vpm.stats(vfio_pm_vmm::Slot(1)).unwrap();
    assert_eq!(gpu_stats.host_wakes, ROUNDS as u64);
    assert_eq!(gpu_stats.pme_delivered, ROUNDS as u64);
    assert_eq!(nic_stats.pme_delivered, 0);
    assert_eq!(nic_stats.entries, ROUNDS as u64);
    let report = vpm.shutdown();
    assert!(report.failed.is_empty(), "{report:?}");
    for a in &addrs {
        assert!(!host.snapshot(*a).unwrap().engaged, "{a} left engaged");
    }
}
