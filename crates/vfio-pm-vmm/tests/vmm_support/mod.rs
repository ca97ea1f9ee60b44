//! The rig shared by the `VmmPowerManager` tests: a simulated host with one device per
//! configured `[[devices]]` entry, the manager over it, and a simulated Linux guest.
#![allow(dead_code)]

use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice};
use vfio_pm_sim::{DeviceConfig, KernelVersion, Platform, SimHost};
use vfio_pm_vmm::config::VmmConfig;
use vfio_pm_vmm::controller::{EventLog, ManualClock};
use vfio_pm_vmm::guest::{GuestInbox, SimulatedGuest};
use vfio_pm_vmm::vmm::VmmPowerManager;
use vfio_pm_vmm::Slot;

/// Host address of configured device `i`.
pub fn host_addr(i: usize) -> PciAddress {
    PciAddress::new(0, 0x41, i as u8, 0).unwrap()
}

/// Trap slot of configured device `i`.
pub fn slot(i: usize) -> Slot {
    Slot(i as u32)
}

/// Everything a test drives or inspects.
pub struct Rig {
    pub host: SimHost,
    pub vpm: VmmPowerManager,
    pub guest: SimulatedGuest,
    pub inbox: GuestInbox,
    pub log: EventLog,
    pub clock: ManualClock,
}

/// A D3cold host running `kernel`, managed per `config` (TOML).
pub fn build(config: &str, kernel: KernelVersion, min_residency: Duration) -> Rig {
    let config = VmmConfig::from_toml_str(config).unwrap();
    let n = config.devices().len();
    let mut b = SimHost::builder().platform(Platform::D3cold).kernel(kernel);
    for i in 0..n {
        b = b.device(DeviceConfig::new(host_addr(i)));
    }
    let host = b.build().unwrap();
    let devices: Vec<Box<dyn PowerDevice>> = (0..n)
        .map(|i| Box::new(host.open(host_addr(i)).unwrap()) as Box<dyn PowerDevice>)
        .collect();
    let inbox = GuestInbox::new();
    let log = EventLog::new();
    let clock = ManualClock::new();
    let vpm = VmmPowerManager::builder(config)
        .min_residency(min_residency)
        .notifier(inbox.clone())
        .clock(clock.clone())
        .events(log.clone())
        .build(devices)
        .unwrap();
    let guest = SimulatedGuest::new(&vpm, inbox.clone());
    Rig {
        host,
        vpm,
        guest,
        inbox,
        log,
        clock,
    }
}
