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
//! Devices are addressed by their [`Slot`]: the index of the device in the configuration's
//! `devices`, the same number the generated AML writes to the trap register and the
//! controller's own index.
//!
//! The manager is `Send`: a VMM keeps it behind the device lock its vCPU threads and its event
//! loop share (`Arc<Mutex<VmmPowerManager>>`); the event loop waits on
//! [`VmmPowerManager::epoll_fd`] without the lock and takes it only to call
//! [`VmmPowerManager::poll`] with a zero timeout.
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
//! interrupt (or give the manager your own with [`VmmBuilder::root_port_irqfd`]). A host wake
//! of a `pcie_pme` device never reaches the VMM's notifier: the manager sets PME_Status in the
//! device's PMCSR and, only if PME_En is set, sends the PME message (the device's requester ID)
//! to its root port, which writes the irqfd if PME Interrupt Enable is set.

mod builder;
mod notifier;
mod summary;

pub use builder::{pm_capability_config_for, settings_for, VmmBuilder};
pub use summary::SsdtSummary;

use crate::config::{TrapSpace, VmmConfig};
use crate::controller::{
    Controller, ControllerError, DeviceSettings, DeviceStats, HostPower, LowPowerVariant,
    RequestOutcome, TeardownReport,
};
use crate::pme::{
    GuestNotifier, PciPowerState, PmCapability, PmWriteOutcome, RegisterError, RootPortPme,
};
use crate::request::{GuestRequest, Slot};
use crate::trap::{TrapDecoder, TrapError};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice};
use vmm_sys_util::eventfd::EventFd;

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
    #[error("no configured device in {0}")]
    UnknownSlot(Slot),
    /// A mailbox request word in one slot's place names another slot. Nothing changed.
    #[error("the mailbox request in {slot} names {word_slot}")]
    MailboxSlot {
        /// The slot the request names.
        word_slot: Slot,
        /// The slot whose words hold it.
        slot: Slot,
    },
    /// A device can be armed for a host wake on a GPE or GED route, but the VMM gave no
    /// notifier ([`VmmBuilder::notifier`]): its wakes could never reach the guest.
    #[error("{slot} uses LOW_POWER_ENTRY_WITH_WAKEUP with an ACPI wake route, but no notifier was given (VmmBuilder::notifier)")]
    NoNotifier {
        /// The device.
        slot: Slot,
    },
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
    #[error("adding host device {address} for {slot}")]
    AddDevice {
        /// The configuration slot.
        slot: Slot,
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
                | Self::MailboxSlot { .. }
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

/// The bytes a guest writes to the trap register for `action` of `device` (the value the
/// generated AML stores, little endian, the register's width). For the simulated guest and the
/// fuzz targets (`test-utils`).
#[cfg(any(test, feature = "test-utils"))]
pub fn trap_bytes(
    trap: crate::config::TrapRegister,
    device: &crate::config::DeviceConfig,
    action: crate::request::PowerAction,
) -> Vec<u8> {
    let value = crate::aml::trap_value(device, action);
    value.to_le_bytes()[..usize::from(trap.width.min(8))].to_vec()
}

/// What a trap write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapOutcome {
    /// The decoded write.
    pub request: GuestRequest,
    /// What the controller did.
    pub outcome: RequestOutcome,
}

/// What one pending mailbox request did ([`VmmPowerManager::serve_mailbox`]).
#[derive(Debug)]
pub struct MailboxReply {
    /// The slot whose words were read.
    pub slot: Slot,
    /// The request word that was acknowledged.
    pub req: u32,
    /// The decoded request and what the controller did, or why nothing was done (a malformed
    /// word, a host failure). The reply is written either way, so the guest never waits out
    /// its timeout on a request the host has seen.
    pub result: Result<TrapOutcome, VmmError>,
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

struct ManagedRootPort {
    bdf: PciAddress,
    pme: Arc<Mutex<RootPortPme>>,
    irqfd: Arc<EventFd>,
}

/// Everything a VMM calls for VFIO runtime power management of one VM.
pub struct VmmPowerManager {
    config: VmmConfig,
    decoder: TrapDecoder,
    ssdt: Vec<u8>,
    controller: Controller,
    /// Per slot: the settings the device was added with.
    settings: Vec<DeviceSettings>,
    /// Per slot: the emulated PM capability.
    caps: Vec<Arc<Mutex<PmCapability>>>,
    root_ports: Vec<ManagedRootPort>,
}

impl VmmPowerManager {
    /// A builder with every default (see [`VmmBuilder`]).
    pub fn builder(config: VmmConfig) -> VmmBuilder {
        VmmBuilder::new(config)
    }

    /// The common case: `devices` in configuration order, `notifier` for GPE/GED wakes, the
    /// monotonic clock and no event sink.
    pub fn new(
        config: VmmConfig,
        devices: Vec<Box<dyn PowerDevice>>,
        notifier: impl GuestNotifier + 'static,
    ) -> Result<Self, VmmError> {
        Self::builder(config).notifier(notifier).build(devices)
    }

    /// The configuration (devices in slot order: `config().devices()[slot]`).
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

    /// The slots, ascending (one per configured device).
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        (0..self.caps.len() as u32).map(Slot)
    }

    /// The controller (read-only: stats, power states, variants of every slot).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    fn check_slot(&self, slot: Slot) -> Result<usize, VmmError> {
        let i = slot.index() as usize;
        if i < self.caps.len() {
            Ok(i)
        } else {
            Err(VmmError::UnknownSlot(slot))
        }
    }

    /// The settings a device was added with.
    pub fn settings(&self, slot: Slot) -> Option<DeviceSettings> {
        self.settings.get(slot.index() as usize).copied()
    }

    /// Counters and residency of a device.
    pub fn stats(&self, slot: Slot) -> Option<DeviceStats> {
        self.controller.stats(slot)
    }

    /// The controller's view of a device's host power.
    pub fn power(&self, slot: Slot) -> Option<HostPower> {
        self.controller.power(slot)
    }

    /// The low-power variant in use for a device.
    pub fn variant(&self, slot: Slot) -> Option<LowPowerVariant> {
        self.controller.variant(slot)
    }

    /// The emulated PM capability of a device (shared handle, e.g. for the VMM's config space
    /// emulation).
    pub fn pm_capability(&self, slot: Slot) -> Option<Arc<Mutex<PmCapability>>> {
        self.caps.get(slot.index() as usize).cloned()
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
        let request = self.decoder.decode(space, addr, data)?;
        self.check_slot(request.slot)?;
        let outcome = self.controller.handle_request(request)?;
        Ok(TrapOutcome { request, outcome })
    }

    /// A guest request that reached the VMM some other way than [`VmmPowerManager::on_trap_write`]
    /// (decoded elsewhere, or replayed to restore the guest's last wish after the VMM side
    /// restarted).
    pub fn handle_request(&mut self, request: GuestRequest) -> Result<RequestOutcome, VmmError> {
        self.check_slot(request.slot)?;
        Ok(self.controller.handle_request(request)?)
    }

    /// Takes over a device that is already in plain low power with the guest's last request
    /// `_OFF`, without a host call (a restarted VMM side: see
    /// [`Controller::adopt_low_power`]).
    pub fn adopt_low_power(&mut self, slot: Slot) -> Result<(), VmmError> {
        self.check_slot(slot)?;
        Ok(self.controller.adopt_low_power(slot)?)
    }

    /// Serves every pending request of the acknowledged mailbox (after a doorbell, and once when
    /// the host side starts, for requests made while it was away): decodes each slot's request
    /// word, hands it to the controller, then writes the reply. A word whose trap value names
    /// another slot or is malformed is acknowledged and ignored. Work is bounded by the
    /// configured slots, however often the guest rings.
    pub fn serve_mailbox(
        &mut self,
        mailbox: &crate::mailbox::Mailbox,
    ) -> Result<Vec<MailboxReply>, std::io::Error> {
        let mut replies = Vec::new();
        for (slot, words) in mailbox.pending()? {
            let result = self
                .decoder
                .decode_value(words.trap_value())
                .map_err(VmmError::from)
                .and_then(|request| {
                    if request.slot != slot {
                        return Err(VmmError::MailboxSlot {
                            word_slot: request.slot,
                            slot,
                        });
                    }
                    self.check_slot(slot)?;
                    let outcome = self.controller.handle_request(request)?;
                    Ok(TrapOutcome { request, outcome })
                });
            mailbox.acknowledge(slot, words.req)?;
            replies.push(MailboxReply {
                slot,
                req: words.req,
                result,
            });
        }
        Ok(replies)
    }

    /// A guest read of the emulated PM capability: `offset` relative to the capability
    /// (0..8: ID, next, PMC, PMCSR, ...), `width` 1, 2 or 4.
    pub fn on_pm_config_read(
        &self,
        slot: Slot,
        offset: usize,
        width: usize,
    ) -> Result<u32, VmmError> {
        let i = self.check_slot(slot)?;
        Ok(lock(&self.caps[i]).read(offset, width)?)
    }

    /// A guest write of the emulated PM capability (see [`PmConfigWrite`] for the one case
    /// where the VMM must forward something to the host device).
    pub fn on_pm_config_write(
        &mut self,
        slot: Slot,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<PmConfigWrite, VmmError> {
        let i = self.check_slot(slot)?;
        let outcome = lock(&self.caps[i]).write(offset, width, value)?;
        let passthrough = self.settings[i].host_pm_cap.is_none()
            && self.controller.variant(slot) == Some(LowPowerVariant::D3HotFallback);
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
        slot: Slot,
        f: impl FnOnce(&dyn PowerDevice) -> R,
    ) -> Result<R, VmmError> {
        self.check_slot(slot)?;
        Ok(self.controller.host_access(slot, f)?)
    }

    /// VM reset: every device leaves low power (nothing stays engaged), postponed entries are
    /// dropped, the emulated PM capabilities are reset (D0, PME_En and PME_Status clear), and so
    /// are the root ports' PME registers (PME Interrupt Enable, PME Status, pending queue).
    pub fn reset(&mut self) -> TeardownReport {
        let report = self.controller.reset_vm();
        for cap in &self.caps {
            lock(cap).reset();
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

/// Compile-time proof that a VMM can move the manager to another thread (behind its device
/// lock) and share the root port irqfds and PM capabilities it hands out.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<VmmPowerManager>();
    send::<VmmBuilder>();
    send_sync::<Arc<Mutex<PmCapability>>>();
    send_sync::<Arc<EventFd>>();
};
