//! The simulated host's state: per-device runtime-PM core fields and vfio-pci core fields.

use crate::config::DeviceConfig;
use crate::config_space::ConfigSpace;
use crate::eventfd::WakeupEventFd;
use crate::events::Event;
use crate::platform::{KernelVersion, Platform};
use vfio_pm::{PciAddress, PowerObservation, PowerState, RuntimeStatus};

/// Runtime-PM status of the model (the two stable states; transitions are instantaneous).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rpm {
    Active,
    Suspended,
}

/// INTx state of an open device whose user enabled INTx (`vdev->irq_type == INTx`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Intx {
    /// `ctx->masked`.
    pub(crate) masked: bool,
    /// An interrupt arrived while masked.
    pub(crate) pending: bool,
    /// How many times the INTx trigger eventfd was signalled.
    pub(crate) triggers: u64,
}

/// One simulated PCI device bound to vfio-pci.
#[derive(Debug)]
pub(crate) struct DevState {
    pub(crate) cfg: DeviceConfig,
    // --- PCI / runtime-PM core ---
    pub(crate) usage: u32,
    pub(crate) status: Rpm,
    pub(crate) idle_pending: bool,
    /// `power/control` is `auto`.
    pub(crate) runtime_allowed: bool,
    pub(crate) d3cold_allowed: bool,
    /// `pdev->current_state`.
    pub(crate) power: PowerState,
    pub(crate) resume_fails: bool,
    // --- vfio-pci core ---
    /// The generation of the open fd, if open.
    pub(crate) handle: Option<u64>,
    pub(crate) engaged: bool,
    pub(crate) wake: Option<WakeupEventFd>,
    pub(crate) pm_intx_masked: bool,
    pub(crate) intx: Option<Intx>,
    pub(crate) config: ConfigSpace,
}

impl DevState {
    pub(crate) fn new(cfg: DeviceConfig) -> Self {
        Self {
            config: ConfigSpace::e1000e(cfg.pm_capability),
            resume_fails: cfg.resume_fails,
            cfg,
            usage: 1, // the PCI core's probe reference
            status: Rpm::Active,
            idle_pending: false,
            runtime_allowed: true,
            d3cold_allowed: true,
            power: PowerState::D0,
            handle: None,
            engaged: false,
            wake: None,
            pm_intx_masked: false,
            intx: None,
        }
    }

    pub(crate) fn address(&self) -> PciAddress {
        self.cfg.address
    }

    pub(crate) fn observe(&self) -> PowerObservation {
        PowerObservation {
            power_state: self.power.clone(),
            runtime_status: match self.status {
                Rpm::Active => RuntimeStatus::Active,
                Rpm::Suspended => RuntimeStatus::Suspended,
            },
        }
    }
}

/// The whole simulated host.
#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) platform: Platform,
    pub(crate) kernel: KernelVersion,
    pub(crate) devices: Vec<DevState>,
    pub(crate) events: Vec<Event>,
    pub(crate) next_handle: u64,
}

impl HostState {
    pub(crate) fn log(&mut self, event: Event) {
        self.events.push(event);
    }

    pub(crate) fn index_of(&self, address: PciAddress) -> Option<usize> {
        self.devices.iter().position(|d| d.address() == address)
    }

    /// The device at `i`; callers only use indexes from [`HostState::index_of`].
    pub(crate) fn dev(&mut self, i: usize) -> &mut DevState {
        &mut self.devices[i]
    }
}
