//! Virtual PME: the guest-visible side of a device wake.
//!
//! - [`PmCapability`]: the PCI Power Management capability (PCI PM spec 1.2) of a
//!   guest-visible device. The VMM always intercepts it, for every device (MSI-X ones
//!   included): PME_Support, PME_En and PME_Status are emulated, never passed through.
//! - [`RootPortPme`]: the PME part of a PCIe root port's PCIe capability (Root Control
//!   bit 3, Root Status with the requester ID, PME Status and PME Pending), including the
//!   spec's pending queue.
//! - [`GuestNotifier`]: how a wake reaches the guest ([`WakeRoute`]: PCI PME, ACPI GPE or a
//!   GED event), with an irqfd-style implementation ([`EventFdNotifier`]) and a recording
//!   one for tests and demos (`RecordingNotifier`, feature `test-utils`).
//!
//! Every register access takes guest-controlled offsets, widths and values; malformed ones
//! return [`RegisterError`] and never panic.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vmm_sys_util::eventfd::EventFd;

/// Capability ID of the PCI Power Management capability.
pub const PM_CAP_ID: u8 = 0x01;
/// Length in bytes of the PM capability (ID, next, PMC, PMCSR, PMCSR_BSE, Data).
pub const PM_CAP_LEN: usize = 8;
/// Offset of PMC (Power Management Capabilities) within the capability.
pub const PMC_OFFSET: usize = 2;
/// Offset of PMCSR (Power Management Control/Status) within the capability.
pub const PMCSR_OFFSET: usize = 4;

/// PMC bits 2:0: version 3 = PCI PM spec 1.2.
pub const PMC_VERSION_1_2: u16 = 0x3;
/// PMC bit 9: D1 supported.
pub const PMC_D1_SUPPORT: u16 = 1 << 9;
/// PMC bit 10: D2 supported.
pub const PMC_D2_SUPPORT: u16 = 1 << 10;
/// PMC bit 11: PME can be asserted from D0.
pub const PMC_PME_D0: u16 = 1 << 11;
/// PMC bit 12: PME can be asserted from D1.
pub const PMC_PME_D1: u16 = 1 << 12;
/// PMC bit 13: PME can be asserted from D2.
pub const PMC_PME_D2: u16 = 1 << 13;
/// PMC bit 14: PME can be asserted from D3hot.
pub const PMC_PME_D3HOT: u16 = 1 << 14;
/// PMC bit 15: PME can be asserted from D3cold.
pub const PMC_PME_D3COLD: u16 = 1 << 15;

/// PMCSR bits 1:0: PowerState.
pub const PMCSR_POWER_STATE: u16 = 0x3;
/// PMCSR bit 3: No_Soft_Reset.
pub const PMCSR_NO_SOFT_RESET: u16 = 1 << 3;
/// PMCSR bit 8: PME_En.
pub const PMCSR_PME_EN: u16 = 1 << 8;
/// PMCSR bits 12:9: Data_Select (reads 0: no Data register).
pub const PMCSR_DATA_SELECT: u16 = 0xf << 9;
/// PMCSR bits 14:13: Data_Scale (reads 0).
pub const PMCSR_DATA_SCALE: u16 = 0x3 << 13;
/// PMCSR bit 15: PME_Status (RW1C).
pub const PMCSR_PME_STATUS: u16 = 1 << 15;

/// A malformed register access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Width other than 1, 2 or 4 bytes.
    #[error("invalid access width {0} (expected 1, 2 or 4)")]
    BadWidth(usize),
    /// The access does not fit in the register block.
    #[error("access at offset {offset:#x} width {width} is outside the {len}-byte register block")]
    OutOfRange {
        /// Offset of the access within the block.
        offset: usize,
        /// Width of the access.
        width: usize,
        /// Length of the block.
        len: usize,
    },
}

fn check_access(offset: usize, width: usize, len: usize) -> Result<(), RegisterError> {
    if !matches!(width, 1 | 2 | 4) {
        return Err(RegisterError::BadWidth(width));
    }
    match offset.checked_add(width) {
        Some(end) if end <= len => Ok(()),
        _ => Err(RegisterError::OutOfRange { offset, width, len }),
    }
}

/// A PCI device power state as PMCSR encodes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum PciPowerState {
    /// D0.
    D0,
    /// D1.
    D1,
    /// D2.
    D2,
    /// D3hot (PMCSR cannot express D3cold: that is a platform state).
    D3Hot,
}

impl PciPowerState {
    /// Decodes PMCSR bits 1:0.
    pub fn from_bits(bits: u16) -> Self {
        match bits & PMCSR_POWER_STATE {
            0 => Self::D0,
            1 => Self::D1,
            2 => Self::D2,
            _ => Self::D3Hot,
        }
    }

    /// PMCSR bits 1:0.
    pub fn bits(self) -> u16 {
        match self {
            Self::D0 => 0,
            Self::D1 => 1,
            Self::D2 => 2,
            Self::D3Hot => 3,
        }
    }
}

/// Static properties of an emulated PM capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PmCapabilityConfig {
    /// Next capability pointer (read-only byte 1).
    pub next_ptr: u8,
    /// PME_Support bits 15:11 as a PMC value (e.g. `PMC_PME_D0 | PMC_PME_D3HOT | PMC_PME_D3COLD`).
    /// D1/D2 bits are ignored: D1/D2 are not supported.
    pub pme_support: u16,
    /// No_Soft_Reset (PMCSR bit 3): D3hot→D0 keeps the device's state.
    pub no_soft_reset: bool,
}

impl Default for PmCapabilityConfig {
    fn default() -> Self {
        Self {
            next_ptr: 0,
            pme_support: PMC_PME_D0 | PMC_PME_D3HOT | PMC_PME_D3COLD,
            no_soft_reset: true,
        }
    }
}

/// What a PMCSR write changed, for the VMM to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PmWriteOutcome {
    /// The PowerState field changed: `(old, new)`.
    pub power_state: Option<(PciPowerState, PciPowerState)>,
    /// PME_Status was set and the guest cleared it.
    pub pme_status_cleared: bool,
    /// PME_En changed to this value.
    pub pme_enable: Option<bool>,
}

/// The emulated PCI Power Management capability of one guest-visible device.
///
/// Layout (offsets within the capability): 0 Cap ID (RO), 1 Next pointer (RO), 2..4 PMC (RO),
/// 4..6 PMCSR, 6 PMCSR_BSE (RO 0), 7 Data (RO 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PmCapability {
    config: PmCapabilityConfig,
    power_state: PciPowerState,
    pme_en: bool,
    pme_status: bool,
}

impl PmCapability {
    /// A capability in D0 with PME_En and PME_Status clear.
    pub fn new(config: PmCapabilityConfig) -> Self {
        Self {
            config,
            power_state: PciPowerState::D0,
            pme_en: false,
            pme_status: false,
        }
    }

    /// The PMC register (read-only).
    pub fn pmc(&self) -> u16 {
        let support = self.config.pme_support & (PMC_PME_D0 | PMC_PME_D3HOT | PMC_PME_D3COLD);
        PMC_VERSION_1_2 | support
    }

    /// The PMCSR register as the guest reads it.
    pub fn pmcsr(&self) -> u16 {
        let mut v = self.power_state.bits();
        if self.config.no_soft_reset {
            v |= PMCSR_NO_SOFT_RESET;
        }
        if self.pme_en {
            v |= PMCSR_PME_EN;
        }
        if self.pme_status {
            v |= PMCSR_PME_STATUS;
        }
        v
    }

    /// The guest-programmed power state.
    pub fn power_state(&self) -> PciPowerState {
        self.power_state
    }

    /// PME_En.
    pub fn pme_enabled(&self) -> bool {
        self.pme_en
    }

    /// PME_Status.
    pub fn pme_status(&self) -> bool {
        self.pme_status
    }

    fn byte(&self, i: usize) -> u8 {
        match i {
            0 => PM_CAP_ID,
            1 => self.config.next_ptr,
            2 => self.pmc() as u8,
            3 => (self.pmc() >> 8) as u8,
            4 => self.pmcsr() as u8,
            5 => (self.pmcsr() >> 8) as u8,
            _ => 0,
        }
    }

    /// Reads `width` (1, 2 or 4) bytes at `offset` within the capability, little endian.
    /// Unaligned accesses are served byte by byte.
    pub fn read(&self, offset: usize, width: usize) -> Result<u32, RegisterError> {
        check_access(offset, width, PM_CAP_LEN)?;
        Ok((0..width).fold(0u32, |acc, i| {
            acc | (u32::from(self.byte(offset + i)) << (8 * i))
        }))
    }

    /// Writes `width` bytes of `value` at `offset`. Read-only bits ignore writes, PME_Status
    /// is write-1-to-clear, PowerState writes of unsupported states (D1, D2) are discarded
    /// (PCI PM 1.2 §5.4.2: the write completes, no state change).
    pub fn write(
        &mut self,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<PmWriteOutcome, RegisterError> {
        check_access(offset, width, PM_CAP_LEN)?;
        let mut out = PmWriteOutcome::default();
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            match offset + i {
                4 => {
                    let new = PciPowerState::from_bits(u16::from(b));
                    if matches!(new, PciPowerState::D0 | PciPowerState::D3Hot)
                        && new != self.power_state
                    {
                        out.power_state = Some((self.power_state, new));
                        self.power_state = new;
                    }
                }
                5 => {
                    let en = b & 0x01 != 0;
                    if en != self.pme_en {
                        out.pme_enable = Some(en);
                        self.pme_en = en;
                    }
                    if b & 0x80 != 0 && self.pme_status {
                        self.pme_status = false;
                        out.pme_status_cleared = true;
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The device signals a wake: sets PME_Status. Returns true when the device asserts
    /// PME (PME_En set); with PME_En clear the status is latched for the guest to find.
    pub fn signal_pme(&mut self) -> bool {
        self.pme_status = true;
        self.pme_en
    }

    /// Conventional reset (VM reset): D0, PME_En and PME_Status clear.
    pub fn reset(&mut self) {
        self.power_state = PciPowerState::D0;
        self.pme_en = false;
        self.pme_status = false;
    }
}

/// Offset of Root Control within the PCIe capability.
pub const ROOT_CONTROL_OFFSET: usize = 0x1c;
/// Offset of Root Capabilities within the PCIe capability.
pub const ROOT_CAPABILITIES_OFFSET: usize = 0x1e;
/// Offset of Root Status within the PCIe capability.
pub const ROOT_STATUS_OFFSET: usize = 0x20;
/// Root Control bit 3: PME Interrupt Enable.
pub const ROOT_CTL_PME_IE: u16 = 1 << 3;
/// Root Control bits 2:0 (SERR on correctable/non-fatal/fatal error enables), plain RW.
pub const ROOT_CTL_SERR_MASK: u16 = 0x7;
/// Root Status bit 16: PME Status (RW1C).
pub const ROOT_STA_PME_STATUS: u32 = 1 << 16;
/// Root Status bit 17: PME Pending (RO).
pub const ROOT_STA_PME_PENDING: u32 = 1 << 17;
/// Maximum number of requesters queued behind a set PME Status.
pub const ROOT_PME_QUEUE_LEN: usize = 256;

/// What a root port PME event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RootPmeOutcome {
    /// PME Status rose with PME Interrupt Enable set: raise the root port's interrupt.
    Interrupt,
    /// PME Status rose but the interrupt is disabled: latched.
    Latched,
    /// PME Status was already set: the requester was queued (PME Pending).
    Queued,
    /// The requester was already queued or current: nothing new.
    Duplicate,
    /// The queue was full: dropped (the device's own PME_Status stays set).
    Dropped,
}

/// The PME registers of a PCIe root port (Root Control / Root Capabilities / Root Status),
/// accessed with offsets relative to the PCIe capability, `0x1c..0x24`.
#[derive(Clone, Debug, Default)]
pub struct RootPortPme {
    control: u16,
    status: bool,
    requester: u16,
    queue: VecDeque<u16>,
    dropped: u64,
}

impl RootPortPme {
    /// A root port with everything clear.
    pub fn new() -> Self {
        Self::default()
    }

    /// Root Control.
    pub fn root_control(&self) -> u16 {
        self.control
    }

    /// Root Status.
    pub fn root_status(&self) -> u32 {
        let mut v = u32::from(self.requester);
        if self.status {
            v |= ROOT_STA_PME_STATUS;
        }
        if !self.queue.is_empty() {
            v |= ROOT_STA_PME_PENDING;
        }
        v
    }

    /// PME messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn interrupt_enabled(&self) -> bool {
        self.control & ROOT_CTL_PME_IE != 0
    }

    fn raise(&self) -> RootPmeOutcome {
        if self.interrupt_enabled() {
            RootPmeOutcome::Interrupt
        } else {
            RootPmeOutcome::Latched
        }
    }

    /// A PM_PME message from `requester_id` (bus/devfn) arrives.
    pub fn pme_message(&mut self, requester_id: u16) -> RootPmeOutcome {
        if !self.status {
            self.status = true;
            self.requester = requester_id;
            return self.raise();
        }
        if self.requester == requester_id || self.queue.contains(&requester_id) {
            return RootPmeOutcome::Duplicate;
        }
        if self.queue.len() >= ROOT_PME_QUEUE_LEN {
            self.dropped += 1;
            return RootPmeOutcome::Dropped;
        }
        self.queue.push_back(requester_id);
        RootPmeOutcome::Queued
    }

    fn byte(&self, i: usize) -> u8 {
        match i {
            0..=1 => (self.control >> (8 * i)) as u8,
            4..=7 => (self.root_status() >> (8 * (i - 4))) as u8,
            _ => 0, // Root Capabilities: CRS Software Visibility not supported.
        }
    }

    /// Reads at `offset` (relative to the PCIe capability, within `0x1c..0x24`).
    pub fn read(&self, offset: usize, width: usize) -> Result<u32, RegisterError> {
        let rel = Self::rel(offset, width)?;
        Ok((0..width).fold(0u32, |acc, i| {
            acc | (u32::from(self.byte(rel + i)) << (8 * i))
        }))
    }

    fn rel(offset: usize, width: usize) -> Result<usize, RegisterError> {
        let rel = offset
            .checked_sub(ROOT_CONTROL_OFFSET)
            .ok_or(RegisterError::OutOfRange {
                offset,
                width,
                len: ROOT_CONTROL_OFFSET + 8,
            })?;
        check_access(rel, width, 8).map_err(|e| match e {
            RegisterError::OutOfRange { .. } => RegisterError::OutOfRange {
                offset,
                width,
                len: ROOT_CONTROL_OFFSET + 8,
            },
            e => e,
        })?;
        Ok(rel)
    }

    /// Writes at `offset` (relative to the PCIe capability). Returns true when the write
    /// makes the root port raise its PME interrupt: PME Interrupt Enable set while PME Status
    /// is set, or PME Status cleared with a queued requester loaded (re-asserted).
    pub fn write(
        &mut self,
        offset: usize,
        width: usize,
        value: u32,
    ) -> Result<bool, RegisterError> {
        let rel = Self::rel(offset, width)?;
        let was_enabled = self.interrupt_enabled();
        let mut clear_status = false;
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            match rel + i {
                0 => {
                    let mask = ROOT_CTL_SERR_MASK | ROOT_CTL_PME_IE;
                    self.control = (self.control & !mask) | (u16::from(b) & mask);
                }
                6 => clear_status |= b & 0x01 != 0,
                _ => {}
            }
        }
        let mut interrupt = false;
        if clear_status && self.status {
            self.status = false;
            self.requester = 0;
            if let Some(next) = self.queue.pop_front() {
                self.status = true;
                self.requester = next;
                interrupt = self.interrupt_enabled();
            }
        }
        if !was_enabled && self.interrupt_enabled() && self.status {
            interrupt = true;
        }
        Ok(interrupt)
    }

    /// Reset: everything clear.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// A 64-bit ACPI GPE block's status and enable bits (GPE0_STS / GPE0_EN), shared between
/// the VMM's I/O port emulation and the notifier.
#[derive(Debug, Default)]
pub struct GpeBlock {
    status: AtomicU64,
    enable: AtomicU64,
}

impl GpeBlock {
    /// All clear.
    pub fn new() -> Self {
        Self::default()
    }
    /// GPE0_STS.
    pub fn status(&self) -> u64 {
        self.status.load(Ordering::Acquire)
    }
    /// GPE0_EN.
    pub fn enable(&self) -> u64 {
        self.enable.load(Ordering::Acquire)
    }
    /// Guest write to GPE0_STS: write-1-to-clear.
    pub fn clear_status(&self, bits: u64) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }
    /// Guest write to GPE0_EN.
    pub fn set_enable(&self, bits: u64) {
        self.enable.store(bits, Ordering::Release);
    }
    /// Sets status bit `gpe`; returns true when it is enabled (raise SCI).
    /// GPE numbers ≥ 64 are not in this block: returns `None`.
    pub fn set_status(&self, gpe: u16) -> Option<bool> {
        let bit = 1u64.checked_shl(u32::from(gpe)).filter(|_| gpe < 64)?;
        self.status.fetch_or(bit, Ordering::AcqRel);
        Some(self.enable() & bit != 0)
    }
}

/// The event register of a generic event device (GED), as in hardware-reduced ACPI VMMs:
/// the AML's `_EVT` reads it (read clears) and runs the matching Notify.
#[derive(Debug, Default)]
pub struct GedEvents {
    pending: AtomicU64,
}

impl GedEvents {
    /// Nothing pending.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets event bit `event` (< 64); false if out of range.
    pub fn set(&self, event: u32) -> bool {
        match 1u64.checked_shl(event) {
            Some(bit) if event < 64 => {
                self.pending.fetch_or(bit, Ordering::AcqRel);
                true
            }
            _ => false,
        }
    }
    /// The guest's read of the selector register: returns and clears the pending bits.
    pub fn take(&self) -> u64 {
        self.pending.swap(0, Ordering::AcqRel)
    }
}

/// How a wake reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "route")]
pub enum WakeRoute {
    /// PCI PME: set PME_Status in the device's PM capability, then a PM_PME message to its
    /// root port (interrupt if PME Interrupt Enable is set).
    PciPme {
        /// The device's requester ID (bus << 8 | devfn).
        requester_id: u16,
    },
    /// ACPI GPE: set the GPE status bit and raise the SCI; the AML's `_Exx`/`_Lxx` method
    /// does `Notify(dev, 2)`.
    AcpiGpe {
        /// GPE number.
        gpe: u16,
    },
    /// Generic event device event bit; `_EVT` does `Notify(dev, 2)`.
    Ged {
        /// Event bit.
        event: u32,
    },
}

/// What a notification did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// An interrupt was raised (irqfd written).
    Interrupt,
    /// Status set, but the guest has not enabled the interrupt (PME_En / PME IE / GPE enable
    /// clear): the guest will find it when it enables or scans.
    Latched,
    /// Queued behind another PME at the root port (PME Pending).
    Queued,
}

/// Why a notification could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The notifier has no target for this route.
    #[error("no notification target registered for {0:?}")]
    UnknownRoute(WakeRoute),
    /// Writing the interrupt eventfd failed.
    #[error("interrupt eventfd write failed: {0}")]
    Irqfd(#[source] std::io::Error),
    /// The root port's PME queue was full.
    #[error("root port PME queue full; PME for {0:?} dropped")]
    QueueFull(WakeRoute),
}

/// The VMM side of a guest wake notification.
pub trait GuestNotifier: Send {
    /// Delivers one wake through `route`.
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError>;
}

impl<T: GuestNotifier + Sync + ?Sized> GuestNotifier for Arc<T> {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        (**self).notify(route)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct PciTarget {
    pm: Arc<Mutex<PmCapability>>,
    root_port: Arc<Mutex<RootPortPme>>,
    irqfd: Arc<EventFd>,
}

/// Irqfd-style notifier: updates the emulated registers shared with the VMM's config-space
/// emulation and writes 1 to the eventfd the VMM registered with KVM as an irqfd.
#[derive(Default)]
pub struct EventFdNotifier {
    pci: HashMap<u16, PciTarget>,
    gpe: Option<(Arc<GpeBlock>, EventFd)>,
    ged: Option<(Arc<GedEvents>, EventFd)>,
}

impl EventFdNotifier {
    /// No targets yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a PCI PME target: the device's PM capability, its root port's registers and
    /// the root port's interrupt irqfd (shared by the devices below that root port).
    pub fn add_pci(
        &mut self,
        requester_id: u16,
        pm: Arc<Mutex<PmCapability>>,
        root_port: Arc<Mutex<RootPortPme>>,
        irqfd: Arc<EventFd>,
    ) {
        self.pci.insert(
            requester_id,
            PciTarget {
                pm,
                root_port,
                irqfd,
            },
        );
    }

    /// Sets the GPE block and the SCI irqfd.
    pub fn set_gpe(&mut self, block: Arc<GpeBlock>, sci: EventFd) {
        self.gpe = Some((block, sci));
    }

    /// Sets the GED event register and the GED interrupt irqfd.
    pub fn set_ged(&mut self, events: Arc<GedEvents>, irqfd: EventFd) {
        self.ged = Some((events, irqfd));
    }
}

impl GuestNotifier for EventFdNotifier {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        let fire = |fd: &EventFd| fd.write(1).map_err(NotifyError::Irqfd);
        match route {
            WakeRoute::PciPme { requester_id } => {
                let t = self
                    .pci
                    .get(&requester_id)
                    .ok_or(NotifyError::UnknownRoute(route))?;
                if !lock(&t.pm).signal_pme() {
                    return Ok(Delivery::Latched);
                }
                match lock(&t.root_port).pme_message(requester_id) {
                    RootPmeOutcome::Interrupt => fire(&t.irqfd).map(|()| Delivery::Interrupt),
                    RootPmeOutcome::Latched => Ok(Delivery::Latched),
                    RootPmeOutcome::Queued | RootPmeOutcome::Duplicate => Ok(Delivery::Queued),
                    RootPmeOutcome::Dropped => Err(NotifyError::QueueFull(route)),
                }
            }
            WakeRoute::AcpiGpe { gpe } => {
                let (block, sci) = self.gpe.as_ref().ok_or(NotifyError::UnknownRoute(route))?;
                match block.set_status(gpe) {
                    None => Err(NotifyError::UnknownRoute(route)),
                    Some(true) => fire(sci).map(|()| Delivery::Interrupt),
                    Some(false) => Ok(Delivery::Latched),
                }
            }
            WakeRoute::Ged { event } => {
                let (events, irq) = self.ged.as_ref().ok_or(NotifyError::UnknownRoute(route))?;
                if !events.set(event) {
                    return Err(NotifyError::UnknownRoute(route));
                }
                fire(irq).map(|()| Delivery::Interrupt)
            }
        }
    }
}

/// Records every notification (for tests and the demo); always delivers an interrupt.
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default, Clone)]
pub struct RecordingNotifier {
    log: Arc<Mutex<Vec<WakeRoute>>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl RecordingNotifier {
    /// Empty log.
    pub fn new() -> Self {
        Self::default()
    }
    /// A copy of the notifications so far, in order.
    pub fn routes(&self) -> Vec<WakeRoute> {
        lock(&self.log).clone()
    }
    /// How many notifications so far.
    pub fn count(&self) -> usize {
        lock(&self.log).len()
    }
    /// Notifications for one route.
    pub fn count_for(&self, route: WakeRoute) -> usize {
        lock(&self.log).iter().filter(|r| **r == route).count()
    }
}

#[cfg(any(test, feature = "test-utils"))]
impl GuestNotifier for RecordingNotifier {
    fn notify(&self, route: WakeRoute) -> Result<Delivery, NotifyError> {
        lock(&self.log).push(route);
        Ok(Delivery::Interrupt)
    }
}

#[cfg(test)]
mod tests;
