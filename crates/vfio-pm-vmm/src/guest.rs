//! A simulated Linux guest: what the guest kernel does with the generated power resources.
//!
//! Used by `vfio-pm demo` and the adapter tests to drive a [`VmmPowerManager`] the way a real
//! guest would, without a VM. The model follows Linux's PCI/ACPI runtime PM (6.1):
//!
//! - **Runtime suspend** of an idle device whose target state is D3cold
//!   (`pci_finish_runtime_suspend` → `pci_set_power_state(D3cold)`): arm wake (PMCSR PME_En,
//!   only if the PM capability advertises PME from D3cold), PMCSR PowerState = D3hot, then the
//!   platform transition evaluates the power resource's `_OFF`, i.e. the trap write the
//!   generated AML makes ([`crate::aml::trap_value`], so the encoding is the generator's).
//! - **Wake**: the GPE method / GED `_EVT` does `Notify (dev, 2)`; for a device in D3cold,
//!   `pci_acpi_wake_dev` requests a runtime resume.
//! - **Runtime resume**: `_ON` (trap write), then PMCSR PowerState = D0 with PME_Status
//!   written 1 to clear and PME_En clear (`pci_pme_active(dev, false)`).
//!
//! Notifications reach the guest through a [`GuestInbox`], a [`GuestNotifier`] given to the
//! manager; [`SimulatedGuest::handle_wakes`] takes them like the guest's interrupt handler.
//!
//! - **PCIe PME** (`pcie_pme` route), like Linux's `pcie_pme` service driver: at probe
//!   ([`SimulatedGuest::probe_pcie_pme`]) clear Root Status PME Status and set Root Control PME
//!   Interrupt Enable; on the root port's interrupt
//!   ([`SimulatedGuest::handle_root_port_interrupt`]) disable PME Interrupt Enable, then while
//!   Root Status has PME Status: take the requester ID, clear PME Status (RW1C, which loads the
//!   next pending requester), find the device (by requester ID, else any device behind the port)
//!   with PME_Status in its PMCSR, clear PME_Status and PME_En (`pci_check_pme_status`) and
//!   resume it; finally re-enable PME Interrupt Enable.

use crate::config::TrapSpace;
use crate::controller::RequestOutcome;
use crate::pme::{
    Delivery, GuestNotifier, NotifyError, WakeRoute, PMCSR_OFFSET, PMCSR_PME_EN, PMCSR_PME_STATUS,
    PMC_OFFSET, PMC_PME_D3COLD, ROOT_CONTROL_OFFSET, ROOT_CTL_PME_IE, ROOT_PME_QUEUE_LEN,
    ROOT_STATUS_OFFSET, ROOT_STA_PME_STATUS,
};
use crate::request::{PowerAction, Slot};
use crate::vmm::{trap_bytes, VmmError, VmmPowerManager};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_pm::PciAddress;

/// PMCSR PowerState value for D3hot.
const PMCSR_D3HOT: u32 = 0x3;

/// Errors of the simulated guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// No configured device in this slot.
    #[error("no device in slot {0}")]
    UnknownDevice(u32),
    /// The device has no power resource (`d3cold = false`): the guest never evaluates
    /// `_ON`/`_OFF` for it.
    #[error("slot {0} has no power resource")]
    NoPowerResource(u32),
    /// The request does not fit the guest's view of the device (suspend while suspended,
    /// resume while on).
    #[error("slot {slot}: device is already {state:?}")]
    WrongState {
        /// The device.
        slot: u32,
        /// Its guest-side state.
        state: GuestPower,
    },
    /// The VMM refused the access. The guest's own state has moved on regardless, as the AML
    /// method does not see the VMM's result.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

/// The guest's view of a device's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestPower {
    /// On (the power resource is on).
    D0,
    /// Runtime-suspended with the power resource off.
    D3Cold,
}

/// One trap write as the guest makes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrapWrite {
    /// I/O port or MMIO.
    pub space: TrapSpace,
    /// Port or guest-physical address.
    pub address: u64,
    /// The bytes, little endian; the length is the register width.
    pub data: Vec<u8>,
}

/// Why the guest changed a device's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The device went idle (autosuspend).
    Idle,
    /// The guest needs the device (a driver request).
    Use,
    /// A wake notification (`Notify (dev, 2)`).
    Wake,
}

/// One `_ON` or `_OFF` the guest evaluated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GuestStep {
    /// The device.
    pub device: u32,
    /// `_ON` or `_OFF`.
    pub action: &'static str,
    /// Why.
    pub reason: Reason,
    /// The trap write.
    pub trap: TrapWrite,
    /// What the VMM did with it.
    pub outcome: RequestOutcome,
    /// PME_Status as the guest found it for this resume (read while resuming, or by the PCIe PME
    /// driver before it; then cleared); `false` for `_OFF`.
    pub pme_status_seen: bool,
}

/// What the guest did with one wake notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WakeHandled {
    /// The route it came through.
    pub route: WakeRoute,
    /// The device the AML notified, if any is on that route.
    pub device: Option<u32>,
    /// The resume it caused (`None`: the device was already on, the notification is ignored).
    pub resumed: Option<GuestStep>,
}

/// The guest's end of wake notifications: give a clone to the manager as its notifier.
#[derive(Clone, Debug, Default)]
pub struct GuestInbox(Arc<Mutex<VecDeque<WakeRoute>>>);

impl GuestInbox {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }
    fn lock(&self) -> MutexGuard<'_, VecDeque<WakeRoute>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Notifications not yet taken.
    pub fn pending(&self) -> usize {
        self.lock().len()
    }
    /// Takes every pending notification, in order.
    pub fn take(&self) -> Vec<WakeRoute> {
        self.lock().drain(..).collect()
    }
}

impl GuestNotifier for GuestInbox {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        self.lock().push_back(route);
        Ok(Delivery::Interrupt)
    }
}

#[derive(Clone, Debug)]
struct GuestDevice {
    power: GuestPower,
    has_power_resource: bool,
    route: Option<WakeRoute>,
    requester_id: u16,
    root_port: Option<PciAddress>,
}

/// A Linux guest's runtime PM of the configured devices (see the module docs).
#[derive(Clone, Debug)]
pub struct SimulatedGuest {
    devices: Vec<GuestDevice>,
    inbox: GuestInbox,
}

impl SimulatedGuest {
    /// A guest that has just booted (every device on: Linux runs `_ON` of the D0 resources at
    /// boot, which the manager treats as the initial state), reading notifications from
    /// `inbox` (the notifier the manager was built with).
    pub fn new(vpm: &VmmPowerManager, inbox: GuestInbox) -> Self {
        let devices = vpm
            .config()
            .devices()
            .iter()
            .map(|d| GuestDevice {
                power: GuestPower::D0,
                has_power_resource: d.power_resource.is_some(),
                route: d.wake_route(),
                requester_id: d.requester_id(),
                root_port: d.root_port_bdf,
            })
            .collect();
        Self { devices, inbox }
    }

    /// The guest's view of a device.
    pub fn power(&self, slot: Slot) -> Option<GuestPower> {
        self.devices.get(slot.index() as usize).map(|d| d.power)
    }

    fn device(&self, slot: Slot) -> Result<&GuestDevice, GuestError> {
        let d = self
            .devices
            .get(slot.index() as usize)
            .ok_or(GuestError::UnknownDevice(slot.index()))?;
        if !d.has_power_resource {
            return Err(GuestError::NoPowerResource(slot.index()));
        }
        Ok(d)
    }

    fn set_power(&mut self, slot: Slot, power: GuestPower) {
        if let Some(d) = self.devices.get_mut(slot.index() as usize) {
            d.power = power;
        }
    }

    /// The trap write the AML's `_ON`/`_OFF` of `slot` makes.
    pub fn trap_write(
        &self,
        vpm: &VmmPowerManager,
        slot: Slot,
        action: PowerAction,
    ) -> Result<TrapWrite, GuestError> {
        self.device(slot)?;
        let d = vpm
            .config()
            .devices()
            .get(slot.index() as usize)
            .ok_or(GuestError::UnknownDevice(slot.index()))?;
        let trap = vpm.config().trap();
        Ok(TrapWrite {
            space: trap.space,
            address: trap.address,
            data: trap_bytes(trap, d, action),
        })
    }

    fn evaluate(
        &mut self,
        vpm: &mut VmmPowerManager,
        slot: Slot,
        action: PowerAction,
        reason: Reason,
    ) -> Result<GuestStep, GuestError> {
        let trap = self.trap_write(vpm, slot, action)?;
        let on = action == PowerAction::PowerOn;
        // The AML updates STAT whatever the VMM did with the write.
        self.set_power(
            slot,
            if on {
                GuestPower::D0
            } else {
                GuestPower::D3Cold
            },
        );
        let out = vpm.on_trap_write(trap.space, trap.address, &trap.data)?;
        Ok(GuestStep {
            device: slot.index(),
            action: if on { "_ON" } else { "_OFF" },
            reason,
            trap,
            outcome: out.outcome,
            pme_status_seen: false,
        })
    }

    /// Runtime suspend of an idle device to D3cold: PMCSR (PME_En if PME from D3cold is
    /// advertised, PowerState D3hot), then `_OFF`.
    pub fn runtime_suspend(
        &mut self,
        vpm: &mut VmmPowerManager,
        slot: Slot,
    ) -> Result<GuestStep, GuestError> {
        let d = self.device(slot)?;
        if d.power != GuestPower::D0 {
            return Err(GuestError::WrongState {
                slot: slot.index(),
                state: d.power,
            });
        }
        let pmc = vpm.on_pm_config_read(slot, PMC_OFFSET, 2)?;
        let pme_en = if pmc & u32::from(PMC_PME_D3COLD) != 0 {
            u32::from(PMCSR_PME_EN)
        } else {
            0
        };
        vpm.on_pm_config_write(slot, PMCSR_OFFSET, 2, pme_en | PMCSR_D3HOT)?;
        self.evaluate(vpm, slot, PowerAction::PowerOff, Reason::Idle)
    }

    /// Runtime resume: `_ON`, then PMCSR D0 with PME_Status cleared and PME_En off.
    pub fn runtime_resume(
        &mut self,
        vpm: &mut VmmPowerManager,
        slot: Slot,
        reason: Reason,
    ) -> Result<GuestStep, GuestError> {
        let d = self.device(slot)?;
        if d.power != GuestPower::D3Cold {
            return Err(GuestError::WrongState {
                slot: slot.index(),
                state: d.power,
            });
        }
        let mut step = self.evaluate(vpm, slot, PowerAction::PowerOn, reason)?;
        let pmcsr = vpm.on_pm_config_read(slot, PMCSR_OFFSET, 2)?;
        step.pme_status_seen = pmcsr & u32::from(PMCSR_PME_STATUS) != 0;
        vpm.on_pm_config_write(slot, PMCSR_OFFSET, 2, u32::from(PMCSR_PME_STATUS))?;
        Ok(step)
    }

    /// Takes the pending notifications and acts on each like Linux: `Notify (dev, 2)` for a
    /// device in D3cold resumes it; for a device that is on, nothing happens. Then takes the
    /// root ports' PME interrupts: each root port whose interrupt eventfd
    /// ([`VmmPowerManager::root_port_irqfd`], non-blocking by default) has a count is handled with
    /// [`SimulatedGuest::handle_root_port_interrupt`].
    pub fn handle_wakes(
        &mut self,
        vpm: &mut VmmPowerManager,
    ) -> Result<Vec<WakeHandled>, GuestError> {
        let mut out = Vec::new();
        while let Some(h) = self.handle_next_wake(vpm)? {
            out.push(h);
        }
        let ports: Vec<PciAddress> = vpm.root_ports().collect();
        for port in ports {
            let fired = vpm
                .root_port_irqfd(port)
                .is_some_and(|fd| fd.read().is_ok_and(|n| n > 0));
            if fired {
                out.extend(self.handle_root_port_interrupt(vpm, port)?);
            }
        }
        Ok(out)
    }

    /// Root ports with a device behind them on the PCIe PME route.
    fn pme_root_ports(&self) -> Vec<PciAddress> {
        let mut ports = Vec::new();
        for d in &self.devices {
            if let (Some(WakeRoute::PciPme { .. }), Some(p)) = (d.route, d.root_port) {
                if !ports.contains(&p) {
                    ports.push(p);
                }
            }
        }
        ports
    }

    /// The PCIe PME service driver's probe on every root port with a `pcie_pme` device behind
    /// it: clear Root Status PME Status (RW1C), then set Root Control PME Interrupt Enable
    /// (read-modify-write). Returns the root ports probed.
    pub fn probe_pcie_pme(
        &mut self,
        vpm: &mut VmmPowerManager,
    ) -> Result<Vec<PciAddress>, GuestError> {
        let ports = self.pme_root_ports();
        for &port in &ports {
            vpm.on_root_port_config_write(port, ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS)?;
            let ctl = vpm.on_root_port_config_read(port, ROOT_CONTROL_OFFSET, 2)?;
            vpm.on_root_port_config_write(
                port,
                ROOT_CONTROL_OFFSET,
                2,
                ctl | u32::from(ROOT_CTL_PME_IE),
            )?;
        }
        Ok(ports)
    }

    /// The root port's PME interrupt, handled like Linux's `pcie_pme_irq` + `pcie_pme_work_fn`
    /// (see the module docs). Returns one [`WakeHandled`] per PME request taken from Root Status
    /// (empty: PME Status was clear, the interrupt was not ours).
    pub fn handle_root_port_interrupt(
        &mut self,
        vpm: &mut VmmPowerManager,
        port: PciAddress,
    ) -> Result<Vec<WakeHandled>, GuestError> {
        let mut out = Vec::new();
        let rtsta = vpm.on_root_port_config_read(port, ROOT_STATUS_OFFSET, 4)?;
        if rtsta & ROOT_STA_PME_STATUS == 0 {
            return Ok(out);
        }
        let ctl = vpm.on_root_port_config_read(port, ROOT_CONTROL_OFFSET, 2)?;
        let pme_ie = u32::from(ROOT_CTL_PME_IE);
        vpm.on_root_port_config_write(port, ROOT_CONTROL_OFFSET, 2, ctl & !pme_ie)?;
        // Each pass takes one request; the queue bounds how many can follow.
        for _ in 0..=ROOT_PME_QUEUE_LEN {
            let rtsta = vpm.on_root_port_config_read(port, ROOT_STATUS_OFFSET, 4)?;
            if rtsta & ROOT_STA_PME_STATUS == 0 {
                break;
            }
            let requester_id = rtsta as u16;
            vpm.on_root_port_config_write(port, ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS)?;
            out.push(self.pme_request(vpm, port, requester_id)?);
        }
        vpm.on_root_port_config_write(port, ROOT_CONTROL_OFFSET, 2, ctl | pme_ie)?;
        Ok(out)
    }

    /// `pci_check_pme_status` on one device: PME_Status set → write it back to clear it, with
    /// PME_En cleared; true if it was set.
    fn check_pme_status(&self, vpm: &mut VmmPowerManager, slot: Slot) -> Result<bool, GuestError> {
        let pmcsr = vpm.on_pm_config_read(slot, PMCSR_OFFSET, 2)?;
        if pmcsr & u32::from(PMCSR_PME_STATUS) == 0 {
            return Ok(false);
        }
        let v = (pmcsr | u32::from(PMCSR_PME_STATUS)) & !u32::from(PMCSR_PME_EN);
        vpm.on_pm_config_write(slot, PMCSR_OFFSET, 2, v)?;
        Ok(true)
    }

    /// `pcie_pme_handle_request`: the device with this requester ID behind `port`, else every
    /// device behind `port` (`pcie_pme_walk_bus`), whose PME_Status is set gets resumed.
    fn pme_request(
        &mut self,
        vpm: &mut VmmPowerManager,
        port: PciAddress,
        requester_id: u16,
    ) -> Result<WakeHandled, GuestError> {
        let behind: Vec<(Slot, u16)> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.root_port == Some(port))
            .map(|(i, d)| (Slot(i as u32), d.requester_id))
            .collect();
        let exact: Vec<Slot> = behind
            .iter()
            .filter(|(_, rid)| *rid == requester_id)
            .map(|(s, _)| *s)
            .collect();
        let candidates = if exact.is_empty() {
            behind.iter().map(|(s, _)| *s).collect()
        } else {
            exact
        };
        let mut device = None;
        for s in candidates {
            if self.check_pme_status(vpm, s)? {
                device = Some(s);
                break;
            }
        }
        let resumed = match device {
            Some(s) if self.power(s) == Some(GuestPower::D3Cold) => {
                let mut step = self.runtime_resume(vpm, s, Reason::Wake)?;
                step.pme_status_seen = true;
                Some(step)
            }
            _ => None,
        };
        Ok(WakeHandled {
            route: WakeRoute::PciPme { requester_id },
            device: device.map(Slot::index),
            resumed,
        })
    }

    /// Like [`SimulatedGuest::handle_wakes`], for the oldest pending notification only
    /// (`None`: nothing pending).
    pub fn handle_next_wake(
        &mut self,
        vpm: &mut VmmPowerManager,
    ) -> Result<Option<WakeHandled>, GuestError> {
        let Some(route) = self.inbox.lock().pop_front() else {
            return Ok(None);
        };
        let device = self
            .devices
            .iter()
            .position(|d| d.route == Some(route))
            .map(|i| Slot(i as u32));
        let resumed = match device {
            Some(s) if self.power(s) == Some(GuestPower::D3Cold) => {
                Some(self.runtime_resume(vpm, s, Reason::Wake)?)
            }
            _ => None,
        };
        Ok(Some(WakeHandled {
            route,
            device: device.map(Slot::index),
            resumed,
        }))
    }
}
