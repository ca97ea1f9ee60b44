//! [`VmmBuilder`]: defaults from the configuration, the few things a VMM may change, and the
//! assembly of the controller, the PM capabilities and the root ports.

use super::notifier::PmeStatusNotifier;
use super::{ManagedRootPort, VmmError, VmmPowerManager};
use crate::aml;
use crate::config::{DeviceConfig, VmmConfig};
use crate::controller::{
    choose_variant, Clock, Controller, ControllerConfig, DeviceSettings, EntryPolicy, EventSink,
    LowPowerVariant, MonotonicClock, NullSink, DEFAULT_MIN_RESIDENCY,
};
use crate::pme::{
    EventFdNotifier, GuestNotifier, PmCapability, PmCapabilityConfig, RootPortPme, WakeRoute,
    PMC_PME_D0, PMC_PME_D3COLD, PMC_PME_D3HOT,
};
use crate::request::Slot;
use crate::trap::TrapDecoder;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// The controller settings for a configured device: vendor, device and class from the
/// configuration; no wake plumbing (`wakeup = "never"`) means plain entry, since no wake could
/// reach the guest; otherwise the entry call follows the device identity
/// ([`EntryPolicy::Auto`]); `d3cold = true` opts the host device into D3cold
/// (`d3cold_allowed` = 1), otherwise the host knob is left alone; the wake route of
/// [`DeviceConfig::wake_route`]; [`DEFAULT_MIN_RESIDENCY`].
pub fn settings_for(device: &DeviceConfig) -> DeviceSettings {
    let mut s = DeviceSettings::new(
        device.vendor_id,
        device.device_id,
        device.class_code,
        device.wake_route(),
    );
    if !device.has_wake() {
        s.entry = EntryPolicy::Plain;
    }
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

/// Builds a [`VmmPowerManager`]. Everything has a default: the monotonic clock, no event sink,
/// the settings of [`settings_for`], new eventfds for the root ports' PME interrupts. A VMM
/// gives its [`GuestNotifier`] (how a GPE or GED wake reaches its guest) unless every wake goes
/// through a root port the manager emulates.
pub struct VmmBuilder {
    config: VmmConfig,
    settings: Vec<DeviceSettings>,
    irqfds: Vec<(PciAddress, Option<Arc<EventFd>>)>,
    notifier: Option<Box<dyn GuestNotifier>>,
    clock: Box<dyn Clock>,
    sink: Box<dyn EventSink>,
}

impl VmmBuilder {
    pub(super) fn new(config: VmmConfig) -> Self {
        let settings = config.devices().iter().map(settings_for).collect();
        let irqfds = config
            .root_ports()
            .iter()
            .filter_map(|p| p.pci_address)
            .map(|bdf| (bdf, None))
            .collect();
        Self {
            config,
            settings,
            irqfds,
            notifier: None,
            clock: Box::new(MonotonicClock::new()),
            sink: Box::new(NullSink),
        }
    }

    /// How a GPE or GED wake reaches the guest (e.g. [`crate::pme::EventFdNotifier`] with the
    /// VMM's SCI or GED irqfd).
    pub fn notifier(mut self, notifier: impl GuestNotifier + 'static) -> Self {
        self.notifier = Some(Box::new(notifier));
        self
    }

    /// The clock the controller stamps events with and times anti-thrash by.
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Where the controller's typed events go (logs, metrics, a test's recorder).
    pub fn events(mut self, sink: impl EventSink + 'static) -> Self {
        self.sink = Box::new(sink);
        self
    }

    /// The anti-thrash minimum residency of every device.
    pub fn min_residency(mut self, d: Duration) -> Self {
        for s in &mut self.settings {
            s.min_residency = d;
        }
        self
    }

    /// The settings a device will be added with (defaults from [`settings_for`]), to adjust:
    /// the entry policy, host D3cold, the host PM capability offset, the residency.
    pub fn device_settings(&mut self, slot: Slot) -> Option<&mut DeviceSettings> {
        self.settings.get_mut(slot.index() as usize)
    }

    /// Uses `irqfd` (e.g. one already registered with KVM) as the PME interrupt of the root port
    /// at `port` instead of a new non-blocking eventfd. [`VmmError::UnknownRootPort`] if no
    /// configured root port has that address.
    pub fn root_port_irqfd(
        mut self,
        port: PciAddress,
        irqfd: Arc<EventFd>,
    ) -> Result<Self, VmmError> {
        let entry = self
            .irqfds
            .iter_mut()
            .find(|(bdf, _)| *bdf == port)
            .ok_or(VmmError::UnknownRootPort(port))?;
        entry.1 = Some(irqfd);
        Ok(self)
    }

    /// Builds the manager: `devices` are the host devices in configuration order (one per
    /// configured device, in D0): the VMM's own, wrapped (`vfio_pm::KernelDevice::from_vfio_device`
    /// or `from_device_fd`). Devices with `d3cold = false` get no power resource, so the guest never
    /// asks for low power for them.
    pub fn build(self, devices: Vec<Box<dyn PowerDevice>>) -> Result<VmmPowerManager, VmmError> {
        let expected = self.config.devices().len();
        if devices.len() != expected {
            return Err(VmmError::DeviceCount {
                expected,
                got: devices.len(),
            });
        }
        let caps: Vec<Arc<Mutex<PmCapability>>> = self
            .config
            .devices()
            .iter()
            .map(|d| Arc::new(Mutex::new(PmCapability::new(pm_capability_config_for(d)))))
            .collect();
        let root_ports = self.root_ports()?;
        let mut notifier = self.wake_notifier(&caps, &root_ports)?;
        let Self {
            config,
            settings,
            notifier: inner,
            clock,
            sink,
            ..
        } = self;
        notifier.inner = inner;
        let mut controller =
            Controller::new(ControllerConfig::default(), Box::new(notifier), clock, sink)?;
        for (i, (dev, settings)) in devices.into_iter().zip(&settings).enumerate() {
            let address = dev.address();
            let want = Slot(i as u32);
            let slot =
                controller
                    .add_device(dev, *settings)
                    .map_err(|source| VmmError::AddDevice {
                        slot: want,
                        address,
                        source,
                    })?;
            // A new controller hands out slots in order: slot = configuration index.
            debug_assert_eq!(slot, want);
        }
        Ok(VmmPowerManager {
            decoder: TrapDecoder::new(&config),
            ssdt: aml::build_ssdt(&config),
            config,
            controller,
            settings,
            caps,
            root_ports,
        })
    }

    fn root_ports(&self) -> Result<Vec<ManagedRootPort>, VmmError> {
        let mut root_ports = Vec::with_capacity(self.irqfds.len());
        for (bdf, irqfd) in &self.irqfds {
            let bdf = *bdf;
            let irqfd = match irqfd {
                Some(fd) => fd.clone(),
                None => Arc::new(
                    EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
                        .map_err(|source| VmmError::RootPortIrqfd { port: bdf, source })?,
                ),
            };
            root_ports.push(ManagedRootPort {
                bdf,
                pme: Arc::new(Mutex::new(RootPortPme::new())),
                irqfd,
            });
        }
        Ok(root_ports)
    }

    /// The manager's notifier: root port PME routes it owns, PME_Status plus the VMM's notifier
    /// for the others. Refuses a device that can be armed for a wake with an ACPI route when
    /// the VMM gave no notifier: its wakes could never reach the guest.
    fn wake_notifier(
        &self,
        caps: &[Arc<Mutex<PmCapability>>],
        root_ports: &[ManagedRootPort],
    ) -> Result<PmeStatusNotifier, VmmError> {
        let mut pci = EventFdNotifier::new();
        let mut root_port_rids = Vec::new();
        let mut targets = Vec::new();
        for ((d, s), cap) in self.config.devices().iter().zip(&self.settings).zip(caps) {
            let Some(route) = s.route else { continue };
            if let (WakeRoute::PciPme { requester_id }, Some(bdf)) = (route, d.root_port_bdf) {
                if let Some(rp) = root_ports.iter().find(|rp| rp.bdf == bdf) {
                    pci.add_pci(requester_id, cap.clone(), rp.pme.clone(), rp.irqfd.clone());
                    root_port_rids.push(requester_id);
                    continue;
                }
            }
            let armed =
                choose_variant(&ControllerConfig::default(), s) == LowPowerVariant::EntryWithWakeup;
            if armed && self.notifier.is_none() {
                return Err(VmmError::NoNotifier { slot: d.slot });
            }
            targets.push((route, cap.clone()));
        }
        Ok(PmeStatusNotifier {
            inner: None,
            targets,
            root_ports: pci,
            root_port_rids,
        })
    }
}
