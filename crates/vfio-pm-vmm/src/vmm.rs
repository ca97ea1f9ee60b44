//! The VMM adapter: the thin glue between a VMM's device model and the pieces of this crate.
//!
//! [`VmmPowerManager`] ties one validated [`VmmConfig`] to one [`Controller`]:
//!
//! | VMM moment                             | call                                          |
//! |----------------------------------------|-----------------------------------------------|
//! | VM build: ACPI tables                  | [`VmmPowerManager::ssdt`]                     |
//! | vCPU exit on the trap port / MMIO      | [`VmmPowerManager::on_trap_write`]            |
//! | guest config access to the PM cap      | [`VmmPowerManager::on_pm_config_read`] / [`VmmPowerManager::on_pm_config_write`] |
//! | event loop: [`VmmPowerManager::epoll_fd`] readable | [`VmmPowerManager::poll`]         |
//! | the VMM's own device accesses          | [`VmmPowerManager::host_access`]              |
//! | VM reset / shutdown                    | [`VmmPowerManager::reset`] / [`VmmPowerManager::shutdown`] |
//!
//! Devices are addressed by their [`DeviceSlot`]: the index of the device in the
//! configuration's `devices`, the same number the generated AML writes to the trap register.
//!
//! Every guest-controlled input (trap writes, PM capability offsets, widths and values) is
//! validated; a malformed one returns a [`VmmError`] and changes nothing. Nothing here panics.
//!
//! ## PME_Status for every device
//! Each device gets an emulated PCI PM capability ([`PmCapability`]), MSI-X devices included.
//! Whatever route a host wake takes to the guest (ACPI GPE, GED, or a PCIe root port PME), the
//! manager first sets PME_Status in that device's emulated PMCSR, so a guest that scans PME
//! status (Linux `pci_check_pme_status`, `pci_pme_active(false)` on resume) finds and clears it.
//!
//! ## PCIe root port PME (`pcie_pme` route)
//! The manager owns one [`RootPortPme`] (Root Control / Root Status, pending queue) and one
//! interrupt [`EventFd`] per configured root port with a PCI address (`root_port_bdf`). Route
//! the guest's config accesses to the root port's PCIe capability, Root Control..Root Status,
//! to [`VmmPowerManager::on_root_port_config_read`] / [`VmmPowerManager::on_root_port_config_write`]
//! and register [`VmmPowerManager::root_port_irqfd`] with KVM as an irqfd for the root port's
//! interrupt (or give the manager your own with [`VmmBuilder::set_root_port_irqfd`]). A host wake
//! of a `pcie_pme` device never reaches the VMM's notifier: the manager sets PME_Status in the
//! device's PMCSR and, only if PME_En is set, sends the PME message (the device's requester ID)
//! to its root port, which writes the irqfd if PME Interrupt Enable is set.

use crate::aml;
use crate::config::{DeviceConfig, TrapRegister, TrapSpace, VmmConfig, WakeRoute as AcpiWake};
use crate::controller::Clock;
use crate::controller::{
    Controller, ControllerConfig, ControllerError, DeviceSettings, DeviceStats, EventSink,
    GuestRequest, HostPower, LowPowerVariant, RequestOutcome, Slot, TeardownReport, WakeupPolicy,
    DEFAULT_MIN_RESIDENCY,
};
use crate::pme::{
    Delivery, EventFdNotifier, GuestNotifier, NotifyError, PciPowerState, PmCapability,
    PmCapabilityConfig, PmWriteOutcome, RegisterError, RootPortPme, WakeRoute, PMC_PME_D0,
    PMC_PME_D3COLD, PMC_PME_D3HOT,
};
use crate::trap::{DeviceSlot, PowerAction, TrapDecoder, TrapError, TrapEvent};
use std::fmt;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vfio_pm::{HostDevice, PciAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// Errors of the VMM adapter. A guest-caused error (bad trap write, bad PM capability access)
/// leaves every state untouched.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The number of host devices does not match the configuration.
    #[error("the configuration has {expected} devices but {got} host devices were given")]
    DeviceCount {
        /// Devices in the configuration.
        expected: usize,
        /// Host devices given.
        got: usize,
    },
    /// No configured device in this slot.
    #[error("no configured device in slot {0}")]
    UnknownSlot(u8),
    /// A malformed trap write (wrong space, address, width, reserved bits, unknown slot, or a
    /// device without a power resource). Nothing changed.
    #[error("malformed trap write: {0}")]
    Trap(#[from] TrapError),
    /// A malformed PM capability access (width, range). Nothing changed.
    #[error("PM capability access: {0}")]
    PmRegister(#[from] RegisterError),
    /// No configured root port has this PCI address (`root_port_bdf`).
    #[error("no configured root port at {0}")]
    UnknownRootPort(PciAddress),
    /// A malformed root port register access (width, outside Root Control..Root Status).
    /// Nothing changed.
    #[error("root port {port} PME registers: {source}")]
    RootPortRegister {
        /// The root port.
        port: PciAddress,
        /// Why.
        #[source]
        source: RegisterError,
    },
    /// Creating or writing a root port interrupt eventfd failed.
    #[error("root port {port} interrupt eventfd: {source}")]
    RootPortIrqfd {
        /// The root port.
        port: PciAddress,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Putting a host device under control failed.
    #[error("adding host device {address} for slot {slot}: {source}")]
    AddDevice {
        /// The configuration slot.
        slot: u8,
        /// The host device's address.
        address: PciAddress,
        /// Why.
        #[source]
        source: ControllerError,
    },
    /// The controller reported an error (host call failed, device failed, notification
    /// failed, epoll). Also visible in the event stream.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

impl VmmError {
    /// True when the guest caused the error (a malformed access); the VMM should ignore the
    /// access (and may log it rate-limited), as real hardware would.
    pub fn is_guest_error(&self) -> bool {
        matches!(
            self,
            Self::Trap(_)
                | Self::PmRegister(_)
                | Self::UnknownSlot(_)
                | Self::UnknownRootPort(_)
                | Self::RootPortRegister { .. }
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The wake route a configured device uses ([`DeviceConfig::route`]): its GPE for the GPE route
/// (the AML's `\_GPE._Exx` does `Notify (dev, 2)`), GED event bit = slot for the GED route (the
/// VMM's `_EVT` calls `\_SB.VPMW (slot)`), or a PCI PME with the device's requester ID
/// (`bus << 8 | devfn`, [`DeviceConfig::requester_id`]) for the `pcie_pme` route.
pub fn wake_route_for(device: &DeviceConfig) -> WakeRoute {
    // [`DeviceConfig::route`] already resolves `[wake] route` per device.
    match (device.route, device.gpe) {
        (AcpiWake::Gpe, Some(gpe)) => WakeRoute::AcpiGpe {
            gpe: u16::from(gpe),
        },
        (AcpiWake::PciePme, _) => WakeRoute::PciPme {
            requester_id: device.requester_id(),
        },
        _ => WakeRoute::Ged {
            event: u32::from(device.slot.index()),
        },
    }
}

/// The controller settings for a configured device:
/// vendor, device and class from the configuration; `wakeup = "never"` (no wake plumbing in
/// the AML, so a wake could never reach the guest) forces plain entry, otherwise the variant
/// follows the device identity ([`WakeupPolicy::Auto`]); `d3cold = true` opts the host device
/// into D3cold (`d3cold_allowed` = 1), otherwise the host knob is left alone; the wake route
/// of [`wake_route_for`]; [`DEFAULT_MIN_RESIDENCY`].
pub fn settings_for(device: &DeviceConfig) -> DeviceSettings {
    let mut s = DeviceSettings::new(
        device.vendor_id,
        device.device_id.unwrap_or(0),
        device.class_code,
        wake_route_for(device),
    );
    s.wakeup = if device.has_wake() {
        WakeupPolicy::Auto
    } else {
        WakeupPolicy::Never
    };
    s.d3cold = device.d3cold.then_some(true);
    s.min_residency = DEFAULT_MIN_RESIDENCY;
    s
}

/// The emulated PM capability of a configured device: PME_Support advertised only when the
/// configuration says `pme_support = true` (the AML's `_PRW` depends on it too).
pub fn pm_capability_config_for(device: &DeviceConfig) -> PmCapabilityConfig {
    PmCapabilityConfig {
        next_ptr: 0,
        pme_support: if device.pme_support {
            PMC_PME_D0 | PMC_PME_D3HOT | PMC_PME_D3COLD
        } else {
            0
        },
        no_soft_reset: true,
    }
}

/// The bytes a guest writes to the trap register for `action` of `device` (the value the
/// generated AML stores, little endian, the register's width).
pub fn trap_bytes(trap: TrapRegister, device: &DeviceConfig, action: PowerAction) -> Vec<u8> {
    let value = aml::trap_value(device, action);
    value.to_le_bytes()[..usize::from(trap.width.min(8))].to_vec()
}

/// A one-line description of the SSDT of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdtSummary {
    /// Table size in bytes (header included).
    pub bytes: usize,
    /// Power resources (one per `d3cold = true` device).
    pub power_resources: usize,
    /// Devices in the configuration.
    pub devices: usize,
    /// Distinct root ports that get `_PR0`/`_PR3`.
    pub root_ports: usize,
    /// The trap register.
    pub trap: TrapRegister,
    /// How wakes reach the guest: ASL names of the wake methods doing `Notify (dev, 2)`
    /// (`\_GPE._E10`, `\_SB.VPMW`), and `PCIe PME via <root port>` for the `pcie_pme` route.
    pub wake: Vec<String>,
}

impl SsdtSummary {
    /// Describes `config`'s SSDT.
    pub fn of(config: &VmmConfig) -> Self {
        let devices = config.devices();
        let mut ports = Vec::new();
        for d in devices {
            if let Some(rp) = &d.root_port {
                if !ports.contains(&rp) {
                    ports.push(rp);
                }
            }
        }
        let mut wake: Vec<String> = Vec::new();
        let mut push = |w: String| {
            if !wake.contains(&w) {
                wake.push(w);
            }
        };
        for d in devices.iter().filter(|d| d.has_wake()) {
            match (d.route, d.gpe, &d.root_port) {
                (AcpiWake::Gpe, Some(g), _) => push(format!(
                    "\\_GPE.{}",
                    aml::gpe_method_name(g, config.wake().trigger).as_str()
                )),
                (AcpiWake::Ged, _, _) => push(format!("\\_SB.{}", aml::GED_METHOD)),
                (AcpiWake::PciePme, _, Some(rp)) => push(format!("PCIe PME via {}", rp.asl())),
                _ => {}
            }
        }
        Self {
            bytes: aml::build_ssdt(config).len(),
            power_resources: devices
                .iter()
                .filter(|d| d.power_resource.is_some())
                .count(),
            devices: devices.len(),
            root_ports: ports.len(),
            trap: config.trap(),
            wake,
        }
    }
}

impl fmt::Display for SsdtSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.trap.space {
            TrapSpace::Io => "I/O port",
            TrapSpace::Mmio => "MMIO",
        };
        write!(
            f,
            "SSDT {} bytes: {} power resources (_ON/_OFF write the trap {} {:#x}, {} byte{}), \
             _PR0/_PR3 on {} of {} devices",
            self.bytes,
            self.power_resources,
            space,
            self.trap.address,
            self.trap.width,
            if self.trap.width == 1 { "" } else { "s" },
            self.power_resources,
            self.devices,
        )?;
        if self.root_ports > 0 {
            write!(f, " and {} root port(s)", self.root_ports)?;
        }
        let (pme, acpi): (Vec<&String>, Vec<&String>) =
            self.wake.iter().partition(|w| w.starts_with("PCIe PME"));
        if self.wake.is_empty() {
            write!(f, ", no wake methods")?;
        }
        if !acpi.is_empty() {
            let names: Vec<&str> = acpi.iter().map(|s| s.as_str()).collect();
            write!(f, ", Notify(dev, 2) from {}", names.join(" "))?;
        }
        for p in pme {
            write!(f, ", {p}")?;
        }
        Ok(())
    }
}

/// What a trap write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapOutcome {
    /// The decoded write.
    pub event: TrapEvent,
    /// The controller slot it went to.
    pub slot: Slot,
    /// What the controller did.
    pub outcome: RequestOutcome,
}

/// What a guest write to the PM capability did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmConfigWrite {
    /// The register changes.
    pub outcome: PmWriteOutcome,
    /// `Some(state)`: the VMM must pass this PowerState write through to the host device's
    /// own PMCSR. Only for a device in D3hot fallback (kernel without the low-power features)
    /// whose host PM capability offset the controller does not know
    /// ([`DeviceSettings::host_pm_cap`] = `None`). Otherwise the low-power state is driven
    /// by `_ON`/`_OFF` and PowerState is emulated only.
    pub forward_power_state: Option<PciPowerState>,
}

/// Root port PME routes the manager owns go to its own [`EventFdNotifier`] (PME_Status if
/// PME_En, PME message, root port irqfd). Every other route: sets PME_Status in the emulated PM
/// capability of every device on the route, then delivers through the VMM's notifier.
struct PmeStatusNotifier {
    inner: Box<dyn GuestNotifier>,
    targets: Vec<(WakeRoute, Arc<Mutex<PmCapability>>)>,
    root_ports: EventFdNotifier,
    root_port_rids: Vec<u16>,
}

impl GuestNotifier for PmeStatusNotifier {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        if let WakeRoute::PciPme { requester_id } = route {
            if self.root_port_rids.contains(&requester_id) {
                return self.root_ports.notify(route);
            }
        }
        for (r, cap) in &self.targets {
            if *r == route {
                lock(cap).signal_pme();
            }
        }
        self.inner.notify(route)
    }
}

struct Managed {
    slot: Slot,
    settings: DeviceSettings,
    pm: Arc<Mutex<PmCapability>>,
}

struct ManagedRootPort {
    bdf: PciAddress,
    acpi_path: crate::config::AcpiPath,
    pme: Arc<Mutex<RootPortPme>>,
    irqfd: Arc<EventFd>,
}

/// Builds a [`VmmPowerManager`]: defaults from the configuration, per-device adjustments,
/// and the PM capabilities (shared handles) before the notifier exists.
pub struct VmmBuilder {
    config: VmmConfig,
    controller: ControllerConfig,
    settings: Vec<DeviceSettings>,
    caps: Vec<Arc<Mutex<PmCapability>>>,
    irqfds: Vec<(PciAddress, Option<Arc<EventFd>>)>,
}

impl VmmBuilder {
    /// Uses `irqfd` (e.g. one already registered with KVM) as the PME interrupt of the root port
    /// at `port` instead of a new non-blocking eventfd. [`VmmError::UnknownRootPort`] if no
    /// configured root port has that address.
    pub fn set_root_port_irqfd(
        &mut self,
        port: PciAddress,
        irqfd: Arc<EventFd>,
    ) -> Result<(), VmmError> {
        let slot = self
            .irqfds
            .iter_mut()
            .find(|(bdf, _)| *bdf == port)
            .ok_or(VmmError::UnknownRootPort(port))?;
        slot.1 = Some(irqfd);
        Ok(())
    }

    /// Controller-wide settings (e.g. more devices that need the wakeup variant).
    pub fn controller_config(mut self, config: ControllerConfig) -> Self {
        self.controller = config;
        self
    }

    /// The anti-thrash minimum residency of every device.
    pub fn min_residency(mut self, d: Duration) -> Self {
        for s in &mut self.settings {
            s.min_residency = d;
        }
        self
    }

    /// The settings a device will be added with (defaults from [`settings_for`]), to adjust
    /// (wakeup override, host D3cold, route, host PM capability offset, residency).
    pub fn settings_mut(&mut self, slot: DeviceSlot) -> Option<&mut DeviceSettings> {
        self.settings.get_mut(usize::from(slot.index()))
    }

    /// Replaces the emulated PM capability's static properties of a device (e.g. the next
    /// capability pointer of the VMM's config space layout).
    pub fn set_pm_capability_config(&mut self, slot: DeviceSlot, config: PmCapabilityConfig) {
        if let Some(cap) = self.caps.get(usize::from(slot.index())) {
            *lock(cap) = PmCapability::new(config);
        }
    }

    /// The emulated PM capability of a device, shared: give it to
    /// [`crate::pme::EventFdNotifier::add_pci`] for the PCIe root port PME route.
    pub fn pm_capability(&self, slot: DeviceSlot) -> Option<Arc<Mutex<PmCapability>>> {
        self.caps.get(usize::from(slot.index())).cloned()
    }

    /// Builds the manager: `devices` are the opened host devices in configuration order (one
    /// per `[[devices]]`, in D0). Every device is put under the controller; devices with
    /// `d3cold = false` get no power resource, so the guest never asks for low power for them.
    pub fn build(
        self,
        devices: Vec<Box<dyn HostDevice>>,
        notifier: Box<dyn GuestNotifier>,
        clock: Box<dyn Clock>,
        sink: Box<dyn EventSink>,
    ) -> Result<VmmPowerManager, VmmError> {
        let expected = self.config.devices().len();
        if devices.len() != expected {
            return Err(VmmError::DeviceCount {
                expected,
                got: devices.len(),
            });
        }
        let targets = self
            .settings
            .iter()
            .zip(&self.caps)
            .map(|(s, c)| (s.route, c.clone()))
            .collect();
        let mut root_ports = Vec::with_capacity(self.irqfds.len());
        for (bdf, irqfd) in self.irqfds {
            let irqfd = match irqfd {
                Some(fd) => fd,
                None => Arc::new(
                    EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
                        .map_err(|source| VmmError::RootPortIrqfd { port: bdf, source })?,
                ),
            };
            let acpi_path = self
                .config
                .root_ports()
                .iter()
                .find(|p| p.pci_address == Some(bdf))
                .map(|p| p.acpi_path.clone())
                .ok_or(VmmError::UnknownRootPort(bdf))?;
            root_ports.push(ManagedRootPort {
                bdf,
                acpi_path,
                pme: Arc::new(Mutex::new(RootPortPme::new())),
                irqfd,
            });
        }
        let mut pci = EventFdNotifier::new();
        let mut root_port_rids = Vec::new();
        for ((d, s), cap) in self
            .config
            .devices()
            .iter()
            .zip(&self.settings)
            .zip(&self.caps)
        {
            let (WakeRoute::PciPme { requester_id }, Some(bdf)) = (s.route, d.root_port_bdf) else {
                continue;
            };
            if let Some(rp) = root_ports.iter().find(|rp| rp.bdf == bdf) {
                pci.add_pci(requester_id, cap.clone(), rp.pme.clone(), rp.irqfd.clone());
                root_port_rids.push(requester_id);
            }
        }
        let notifier = PmeStatusNotifier {
            inner: notifier,
            targets,
            root_ports: pci,
            root_port_rids,
        };
        let mut controller = Controller::new(self.controller, Box::new(notifier), clock, sink)?;
        let mut managed = Vec::with_capacity(expected);
        for (i, ((dev, settings), pm)) in devices
            .into_iter()
            .zip(self.settings)
            .zip(self.caps)
            .enumerate()
        {
            let address = dev.address();
            let slot =
                controller
                    .add_device(dev, settings)
                    .map_err(|source| VmmError::AddDevice {
                        slot: i as u8,
                        address,
                        source,
                    })?;
            managed.push(Managed { slot, settings, pm });
        }
        Ok(VmmPowerManager {
            decoder: TrapDecoder::new(&self.config),
            ssdt: aml::build_ssdt(&self.config),
            config: self.config,
            controller,
            devices: managed,
            root_ports,
        })
    }
}

/// Everything a VMM calls for VFIO runtime power management of one VM.
pub struct VmmPowerManager {
    config: VmmConfig,
    decoder: TrapDecoder,
    ssdt: Vec<u8>,
    controller: Controller,
    devices: Vec<Managed>,
    root_ports: Vec<ManagedRootPort>,
}

impl VmmPowerManager {
    /// A builder with the defaults of [`settings_for`] and [`pm_capability_config_for`].
    pub fn builder(config: VmmConfig) -> VmmBuilder {
        let settings = config.devices().iter().map(settings_for).collect();
        let caps = config
            .devices()
            .iter()
            .map(|d| Arc::new(Mutex::new(PmCapability::new(pm_capability_config_for(d)))))
            .collect();
        let irqfds = config
            .root_ports()
            .iter()
            .filter_map(|p| p.pci_address)
            .map(|bdf| (bdf, None))
            .collect();
        VmmBuilder {
            config,
            controller: ControllerConfig::default(),
            settings,
            caps,
            irqfds,
        }
    }

    /// With all defaults: `VmmPowerManager::builder(config).build(...)`.
    pub fn new(
        config: VmmConfig,
        devices: Vec<Box<dyn HostDevice>>,
        notifier: Box<dyn GuestNotifier>,
        clock: Box<dyn Clock>,
        sink: Box<dyn EventSink>,
    ) -> Result<Self, VmmError> {
        Self::builder(config).build(devices, notifier, clock, sink)
    }

    /// The configuration.
    pub fn config(&self) -> &VmmConfig {
        &self.config
    }

    /// The trap decoder (its [`TrapDecoder::claims`] serves a VMM's bus dispatch).
    pub fn decoder(&self) -> &TrapDecoder {
        &self.decoder
    }

    /// The SSDT to add to the guest's ACPI tables (next to the DSDT, before the XSDT is built).
    pub fn ssdt(&self) -> &[u8] {
        &self.ssdt
    }

    /// A one-line description of the SSDT.
    pub fn ssdt_summary(&self) -> SsdtSummary {
        SsdtSummary::of(&self.config)
    }

    /// The controller (read-only: stats, power states, variants).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// Configuration slots, ascending.
    pub fn slots(&self) -> impl Iterator<Item = DeviceSlot> + '_ {
        (0..self.devices.len()).filter_map(|i| DeviceSlot::new(i as u8))
    }

    fn managed(&self, slot: DeviceSlot) -> Result<&Managed, VmmError> {
        self.devices
            .get(usize::from(slot.index()))
            .ok_or(VmmError::UnknownSlot(slot.index()))
    }

    /// The controller slot of a configuration slot.
    pub fn controller_slot(&self, slot: DeviceSlot) -> Option<Slot> {
        self.managed(slot).ok().map(|m| m.slot)
    }

    /// The configuration slot of a controller slot (to label [`crate::controller::TimedEvent`]s).
    pub fn device_slot(&self, slot: Slot) -> Option<DeviceSlot> {
        self.devices
            .iter()
            .position(|m| m.slot == slot)
            .and_then(|i| DeviceSlot::new(i as u8))
    }

    /// The configuration of a device.
    pub fn device_config(&self, slot: DeviceSlot) -> Option<&DeviceConfig> {
        self.config.devices().get(usize::from(slot.index()))
    }

    /// The settings a device was added with.
    pub fn settings(&self, slot: DeviceSlot) -> Option<DeviceSettings> {
        self.managed(slot).ok().map(|m| m.settings)
    }

    /// The wake route of a device.
    pub fn wake_route(&self, slot: DeviceSlot) -> Option<WakeRoute> {
        self.settings(slot).map(|s| s.route)
    }

    /// Counters and residency of a device.
    pub fn stats(&self, slot: DeviceSlot) -> Option<DeviceStats> {
        self.controller.stats(self.controller_slot(slot)?)
    }

    /// The controller's view of a device's host power.
    pub fn power(&self, slot: DeviceSlot) -> Option<HostPower> {
        self.controller.power(self.controller_slot(slot)?)
    }

    /// The low-power variant in use for a device.
    pub fn variant(&self, slot: DeviceSlot) -> Option<LowPowerVariant> {
        self.controller.variant(self.controller_slot(slot)?)
    }

    /// The emulated PM capability of a device (shared handle).
    pub fn pm_capability(&self, slot: DeviceSlot) -> Option<Arc<Mutex<PmCapability>>> {
        self.managed(slot).ok().map(|m| m.pm.clone())
    }

    /// A guest write that the VMM's bus dispatch routed here (see [`TrapDecoder::claims`]):
    /// `space` and `addr` of the access, `data` the bytes (little endian, its length the access
    /// width). Decodes it and hands the `_ON`/`_OFF` to the controller. A malformed write is a
    /// [`VmmError::Trap`] and changes nothing.
    pub fn on_trap_write(
        &mut self,
        space: TrapSpace,
        addr: u64,
        data: &[u8],
    ) -> Result<TrapOutcome, VmmError> {
        let event = self.decoder.decode(space, addr, data)?;
        let slot = self.managed(event.device)?.slot;
        let req = match event.action {
            PowerAction::PowerOn => GuestRequest::PowerOn(slot),
            PowerAction::PowerOff => GuestRequest::PowerOff(slot),
        };
        let outcome = self.controller.handle_request(req)?;
        Ok(TrapOutcome {
            event,
            slot,
            outcome,
        })
    }

    /// What a guest read of the trap register returns (0: the AML never reads it).
    pub fn on_trap_read(&self) -> u64 {
        self.decoder.read_value()
    }

    /// A guest read of the emulated PM capability: `offset` relative to the capability
    /// (0..8: ID, next, PMC, PMCSR, ...), `width` 1, 2 or 4.
    pub fn on_pm_config_read(
        &self,
        slot: DeviceSlot,
        offset: usize,
        width: usize,
    ) -> Result<u32, VmmError> {
        let m = self.managed(slot)?;
        Ok(lock(&m.pm).read(offset, width)?)
    }

    /// A guest write of the emulated PM capability (see [`PmConfigWrite`] for the one case
    /// where the VMM must forward something to the host device).
    pub fn on_pm_config_write(
        &mut self,
        slot: DeviceSlot,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<PmConfigWrite, VmmError> {
        let m = self.managed(slot)?;
        let outcome = lock(&m.pm).write(offset, width, value)?;
        let passthrough = m.settings.host_pm_cap.is_none()
            && self.controller.variant(m.slot) == Some(LowPowerVariant::D3HotFallback);
        let forward_power_state = outcome
            .power_state
            .filter(|_| passthrough)
            .map(|(_, new)| new);
        Ok(PmConfigWrite {
            outcome,
            forward_power_state,
        })
    }

    fn root_port(&self, port: PciAddress) -> Result<&ManagedRootPort, VmmError> {
        self.root_ports
            .iter()
            .find(|rp| rp.bdf == port)
            .ok_or(VmmError::UnknownRootPort(port))
    }

    /// The PCI addresses of the root ports the manager emulates PME for (every configured root
    /// port with a `root_port_bdf`), in configuration order.
    pub fn root_ports(&self) -> impl Iterator<Item = PciAddress> + '_ {
        self.root_ports.iter().map(|rp| rp.bdf)
    }

    /// The ACPI path of the root port at `port`.
    pub fn root_port_path(&self, port: PciAddress) -> Option<&crate::config::AcpiPath> {
        self.root_port(port).ok().map(|rp| &rp.acpi_path)
    }

    /// The PME interrupt eventfd of the root port at `port`: register it with KVM as the irqfd of
    /// the root port's interrupt (MSI or INTx). Written once per PME interrupt the root port
    /// raises.
    pub fn root_port_irqfd(&self, port: PciAddress) -> Option<Arc<EventFd>> {
        self.root_port(port).ok().map(|rp| rp.irqfd.clone())
    }

    /// The PME registers of the root port at `port` (shared handle).
    pub fn root_port_pme(&self, port: PciAddress) -> Option<Arc<Mutex<RootPortPme>>> {
        self.root_port(port).ok().map(|rp| rp.pme.clone())
    }

    /// A guest read of the root port's PME registers: `offset` relative to the root port's PCIe
    /// capability, within Root Control..Root Status (`0x1c..0x24`, see
    /// [`crate::pme::ROOT_CONTROL_OFFSET`]), `width` 1, 2 or 4. A malformed access is a
    /// [`VmmError::RootPortRegister`].
    pub fn on_root_port_config_read(
        &self,
        port: PciAddress,
        offset: usize,
        width: usize,
    ) -> Result<u32, VmmError> {
        let rp = self.root_port(port)?;
        let v = lock(&rp.pme)
            .read(offset, width)
            .map_err(|source| VmmError::RootPortRegister { port, source })?;
        Ok(v)
    }

    /// A guest write of the root port's PME registers (offsets as for
    /// [`VmmPowerManager::on_root_port_config_read`]): Root Control's PME Interrupt Enable and
    /// SERR bits, Root Status PME Status write-1-to-clear (which loads the next queued requester,
    /// if any). Returns true when the write raised the root port's PME interrupt (the irqfd was
    /// written): PME Interrupt Enable set while PME Status is set, or PME Status cleared with a
    /// requester pending. A malformed access changes nothing.
    pub fn on_root_port_config_write(
        &mut self,
        port: PciAddress,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<bool, VmmError> {
        let rp = self.root_port(port)?;
        let interrupt = lock(&rp.pme)
            .write(offset, width, value)
            .map_err(|source| VmmError::RootPortRegister { port, source })?;
        if interrupt {
            rp.irqfd
                .write(1)
                .map_err(|source| VmmError::RootPortIrqfd { port, source })?;
        }
        Ok(interrupt)
    }

    /// The controller's epoll fd: add it to the VMM's event loop; when it is readable, call
    /// [`VmmPowerManager::poll`] with a zero timeout.
    pub fn epoll_fd(&self) -> RawFd {
        self.controller.epoll_fd()
    }

    /// The earliest postponed-entry deadline (clock ns): arm the event loop's timer for it.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.controller.next_deadline_ns()
    }

    /// Handles host wakes (each becomes at most one guest notification, PME_Status set first)
    /// and due postponed entries, waiting up to `timeout` (`None`: until something happens).
    /// Returns the number of epoll events handled.
    pub fn poll(&mut self, timeout: Option<Duration>) -> Result<usize, VmmError> {
        Ok(self.controller.poll_once(timeout)?)
    }

    /// Polls with a zero timeout until nothing is pending. Returns the events handled; the
    /// first error stops the loop.
    pub fn poll_pending(&mut self) -> Result<usize, VmmError> {
        let mut total = 0;
        loop {
            let n = self.poll(Some(Duration::ZERO))?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// Runs `f` on a host device as one of the VMM's own accesses (BAR/config region access,
    /// ioctls): a wake it causes is never forwarded to the guest, and an armed device whose
    /// guest wants it off is re-armed.
    pub fn host_access<R>(
        &mut self,
        slot: DeviceSlot,
        f: impl FnOnce(&dyn HostDevice) -> R,
    ) -> Result<R, VmmError> {
        let s = self.managed(slot)?.slot;
        Ok(self.controller.host_access(s, f)?)
    }

    /// VM reset: every device leaves low power (nothing stays engaged), postponed entries are
    /// dropped, the emulated PM capabilities are reset (D0, PME_En and PME_Status clear), and so
    /// are the root ports' PME registers (PME Interrupt Enable, PME Status, pending queue).
    pub fn reset(&mut self) -> TeardownReport {
        let report = self.controller.reset_vm();
        for m in &self.devices {
            lock(&m.pm).reset();
        }
        for rp in &self.root_ports {
            lock(&rp.pme).reset();
        }
        report
    }

    /// VM shutdown: every device leaves low power, then is closed and removed.
    pub fn shutdown(&mut self) -> TeardownReport {
        self.controller.shutdown()
    }
}
