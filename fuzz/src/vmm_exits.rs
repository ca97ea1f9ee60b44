//! Target `vmm_exits`: everything a guest's VM exits hand to [`VmmPowerManager`] (trap register
//! writes, PM capability and root port config accesses, any slot, any port), interleaved with
//! host-side events on the simulated host (a host access that wakes a device, the kernel's
//! asynchronous work, a failing resume, time passing, polls) and VM resets and shutdown.
//!
//! The configuration is one of the hand-written seeds of the `config_aml` target (GPE, GED, PCIe
//! PME routes, root ports, D3hot-only devices). Invariants:
//!
//! - nothing panics, whatever the guest writes;
//! - a trap write fails with [`VmmError::Trap`] exactly when the decoder refuses it, and a
//!   decoded one reaches the controller as the request the decoder decoded;
//! - every error of a malformed guest access (bad slot, bad offset or width, unknown root port)
//!   is one [`VmmError::is_guest_error`] says the VMM may ignore, and config reads through the
//!   manager equal the emulated registers;
//! - after a VM reset or shutdown, no host device is left in low power unless the teardown
//!   report lists it as failed.

use arbitrary::{Result, Unstructured};
use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice};
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::controller::{ManualClock, TeardownReport};
use vfio_pm_vmm::pme::{RecordingNotifier, ROOT_CONTROL_OFFSET};
use vfio_pm_vmm::vmm::{VmmError, VmmPowerManager};
use vfio_pm_vmm::{PowerAction, Slot};

/// The configurations the target picks from (the `config_aml` seeds).
const CONFIGS: &[&str] = &[
    include_str!("../seeds/config_aml/example-e1000e.toml"),
    include_str!("../seeds/config_aml/many-devices.toml"),
    include_str!("../seeds/config_aml/root-port.toml"),
    include_str!("../seeds/config_aml/pcie-pme.toml"),
    include_str!("../seeds/config_aml/ged-mmio.toml"),
    include_str!("../seeds/config_aml/d3hot-only.toml"),
];

/// Host address of configured device `i` (bus 0x41, device `i`; the seeds have at most 5).
fn host_addr(i: usize) -> PciAddress {
    PciAddress::new(0, 0x41, (i % 32) as u8, 0).expect("device number below 32")
}

struct Rig {
    host: SimHost,
    vpm: VmmPowerManager,
    clock: ManualClock,
    config: VmmConfig,
}

fn rig(u: &mut Unstructured) -> Result<Option<Rig>> {
    let text = u.choose(CONFIGS)?;
    let platform = *u.choose(&[Platform::D3cold, Platform::D3hot])?;
    let config = VmmConfig::from_toml_str(text).expect("the seed configurations validate");
    let n = config.devices().len();
    let mut b = SimHost::builder().platform(platform);
    for i in 0..n {
        b = b.device(DeviceConfig::new(host_addr(i)));
    }
    let Ok(host) = b.build() else { return Ok(None) };
    let mut devices: Vec<Box<dyn PowerDevice>> = Vec::new();
    for i in 0..n {
        match host.open(host_addr(i)) {
            Ok(d) => devices.push(Box::new(d)),
            Err(_) => return Ok(None),
        }
    }
    let clock = ManualClock::new();
    let min_residency = Duration::from_millis(u64::from(u.int_in_range(0..=200u8)?));
    let built = VmmPowerManager::builder(config.clone())
        .notifier(RecordingNotifier::new())
        .clock(clock.clone())
        .min_residency(min_residency)
        .build(devices);
    // Running out of file descriptors or the like is not the guest's doing.
    let Ok(vpm) = built else { return Ok(None) };
    Ok(Some(Rig {
        host,
        vpm,
        clock,
        config,
    }))
}

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(Some(mut rig)) = rig(&mut u) else {
        return;
    };
    while !u.is_empty() {
        if rig.step(&mut u).is_err() {
            return;
        }
    }
    let report = rig.vpm.shutdown();
    rig.nothing_left_engaged(&report);
}

impl Rig {
    fn slot(&self, u: &mut Unstructured) -> Result<Slot> {
        let n = self.config.devices().len() as u32;
        Ok(Slot(if u.ratio(7, 8)? {
            u.int_in_range(0..=n.saturating_sub(1))?
        } else {
            u.arbitrary()?
        }))
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        match u.int_in_range(0..=11u8)? {
            0..=3 => self.trap_write(u)?,
            4 => {
                let (slot, offset, width) = (
                    self.slot(u)?,
                    u.int_in_range(0..=9)?,
                    u.int_in_range(0..=5)?,
                );
                let got = self.vpm.on_pm_config_read(slot, offset, width);
                match self.vpm.pm_capability(slot) {
                    Some(cap) => {
                        let direct = cap.lock().map(|c| c.read(offset, width)).ok();
                        match (&got, direct) {
                            (Ok(v), Some(Ok(d))) => assert_eq!(*v, d, "PM read {offset}/{width}"),
                            (Err(e), Some(Err(_))) => assert!(e.is_guest_error(), "{e:?}"),
                            (g, d) => panic!("manager {g:?}, capability {d:?}"),
                        }
                    }
                    None => assert!(got.is_err_and(|e| e.is_guest_error())),
                }
            }
            5 => {
                let (slot, offset, width) = (
                    self.slot(u)?,
                    u.int_in_range(0..=9)?,
                    u.int_in_range(0..=5)?,
                );
                let value: u32 = u.arbitrary()?;
                if let Err(e) = self.vpm.on_pm_config_write(slot, offset, width, value) {
                    assert!(e.is_guest_error(), "{e:?}");
                }
            }
            6 => self.root_port_access(u)?,
            7 => {
                let i = u.int_in_range(0..=self.config.devices().len())?;
                let _ = self.host.host_config_read(host_addr(i));
                self.host.run_pending();
            }
            8 => {
                self.clock
                    .advance(Duration::from_millis(u64::from(u.arbitrary::<u8>()?)));
                self.host.run_pending();
                if let Err(e) = self.vpm.poll(Some(Duration::ZERO)) {
                    assert!(!e.is_guest_error(), "poll: {e:?}");
                }
            }
            9 => {
                let i = u.int_in_range(0..=self.config.devices().len().saturating_sub(1))?;
                let _ = self.host.set_resume_failure(host_addr(i), u.arbitrary()?);
            }
            10 => {
                if u.ratio(1, 4)? {
                    let report = self.vpm.reset();
                    self.nothing_left_engaged(&report);
                }
            }
            _ => {
                let _ = self.vpm.poll_pending();
            }
        }
        Ok(())
    }

    fn trap_write(&mut self, u: &mut Unstructured) -> Result<()> {
        let dec = self.vpm.decoder().clone();
        let data = if u.ratio(3, 4)? {
            // A well-formed _ON/_OFF of some device, or noise of the register's width.
            let devices = self.config.devices();
            let d = &devices[u.int_in_range(0..=devices.len() - 1)?];
            let action = *u.choose(&[PowerAction::PowerOn, PowerAction::PowerOff])?;
            vfio_pm_vmm::vmm::trap_bytes(self.config.trap(), d, action)
        } else {
            let len = u.int_in_range(0..=9usize)?;
            u.bytes(len.min(u.len()))?.to_vec()
        };
        let (space, addr) = if u.ratio(7, 8)? {
            (dec.space(), dec.address())
        } else {
            (
                *u.choose(&[TrapSpace::Io, TrapSpace::Mmio])?,
                u.arbitrary()?,
            )
        };
        let decoded = dec.decode(space, addr, &data);
        match (self.vpm.on_trap_write(space, addr, &data), decoded) {
            (Ok(out), Ok(req)) => assert_eq!(out.request, req),
            (Err(VmmError::Trap(e)), Err(d)) => assert_eq!(e, d),
            (Err(e), Ok(_)) => assert!(!matches!(e, VmmError::Trap(_)), "{e:?}"),
            (r, d) => panic!("manager {r:?}, decoder {d:?}"),
        }
        Ok(())
    }

    fn root_port_access(&mut self, u: &mut Unstructured) -> Result<()> {
        let ports: Vec<PciAddress> = self.vpm.root_ports().collect();
        let port = match ports.as_slice() {
            [] => host_addr(31),
            p if u.ratio(7, 8)? => *u.choose(p)?,
            _ => PciAddress::new(0, u.arbitrary()?, u.int_in_range(0..=31)?, 0)
                .expect("device number below 32"),
        };
        let offset = ROOT_CONTROL_OFFSET - 2 + u.int_in_range(0..=11)?;
        let width = u.int_in_range(0..=5)?;
        let result = if u.arbitrary()? {
            self.vpm
                .on_root_port_config_read(port, offset, width)
                .map(drop)
        } else {
            self.vpm
                .on_root_port_config_write(port, offset, width, u.arbitrary()?)
                .map(drop)
        };
        if let Err(e) = result {
            let irqfd = matches!(e, VmmError::RootPortIrqfd { .. });
            assert!(e.is_guest_error() || irqfd, "{e:?}");
            assert!(
                ports.contains(&port) || matches!(e, VmmError::UnknownRootPort(_)),
                "{e:?}"
            );
        }
        Ok(())
    }

    fn nothing_left_engaged(&self, report: &TeardownReport) {
        for i in 0..self.config.devices().len() {
            let Ok(snap) = self.host.snapshot(host_addr(i)) else {
                continue;
            };
            assert!(
                !snap.engaged || report.failed.contains(&Slot(i as u32)),
                "device {i} still in low power after teardown {report:?}"
            );
        }
    }
}
