//! The VMM's ACPI device configuration: which passthrough devices get virtual power resources, where
//! the trap register lives and how wake events reach the guest.
//!
//! A configuration is written in TOML and parsed with [`VmmConfig::from_toml_str`], which validates
//! everything the AML generator ([`crate::aml`]) and the trap decoder ([`crate::trap`]) rely on. A
//! [`VmmConfig`] therefore always describes a table that can be generated: the generator never fails
//! and never panics.
//!
//! ```toml
//! [trap]
//! space = "io"        # "io" (SystemIO port) or "mmio" (SystemMemory address)
//! address = 0x440     # I/O port or physical address
//! width = 1           # access width in bytes: 1, 2 or 4 (8 too for mmio)
//!
//! [wake]
//! route = "gpe"       # "gpe": a \_GPE._Exx/_Lxx method per device; "ged": \_SB.VPMW (slot);
//!                     # "pcie_pme": PME message to the device's virtual PCIe root port
//! trigger = "edge"    # gpe only: "edge" (_Exx) or "level" (_Lxx)
//!
//! [[devices]]
//! acpi_path = '\_SB.PCI0.S28'
//! pci_address = "0000:00:05.0"
//! vendor_id = 0x8086
//! device_id = 0x10d3
//! class_code = 0x020000
//! d3cold = true
//! gpe = 0x10
//! ```
//!
//! Per device, optional keys: `wakeup` (`"auto"` | `"always"` | `"never"`, see [`WakeupMode`]),
//! `pme_support` (default false), `has_pm_capability` (default true), `hotplug_eject` (default false),
//! `root_port` (ACPI path of the upstream virtual root port), `root_port_bdf` (that root port's
//! guest PCI address, e.g. `"0000:00:1c.0"`; needed for the `pcie_pme` route, given once per root
//! port and equal wherever repeated), `wake_route` (`"gpe"` | `"ged"` | `"pcie_pme"`: this device's
//! route instead of `[wake] route`), `power_resource` (override the
//! generated `PRxx` name), `node` (`"existing"`: the DSDT already has the device node, the SSDT adds to
//! it with `Scope`; `"declare"`: the SSDT declares `Device (...)` with `_ADR`). Optional `[table]`:
//! `oem_id` (≤ 6 chars), `oem_table_id` (≤ 8 chars), `oem_revision`.

mod error;
mod file;
mod names;
mod validate;

pub use error::{ConfigError, Problem};
pub use file::{
    ConfigFile, DeviceFile, GpeTrigger, NodeMode, RouteKind, TableFile, TrapFile, TrapSpace,
    WakeFile, WakeupMode,
};
pub use names::{AcpiPath, NameError, NameSeg, PathError};

use crate::request::Slot;
use vfio_pm::PciAddress;

/// Most devices one configuration (and the one-byte trap encoding) can describe.
pub const MAX_DEVICES: usize = crate::trap::MAX_SLOTS;

/// Names the generator puts directly under `\_SB`; no configured device may use them.
pub const RESERVED_SB_NAMES: [&str; 4] = [
    crate::aml::TRAP_REGION,
    crate::aml::TRAP_FIELD,
    crate::aml::GED_METHOD,
    crate::aml::MAILBOX_METHOD,
];

/// I/O port ranges that QEMU (and its firmware) already use on x86; a TOML configuration's trap
/// port must avoid them ([`VmmConfig::from_toml_str`]).
pub const RESERVED_IO_PORTS: &[(u16, u16, &str)] = &[
    (
        0x0000,
        0x00ff,
        "legacy ISA devices (DMA, PIC, PIT, keyboard controller, RTC, POST port 0x80)",
    ),
    (0x0170, 0x0177, "the secondary IDE controller"),
    (0x01f0, 0x01f7, "the primary IDE controller"),
    (0x02f8, 0x02ff, "COM2"),
    (0x0376, 0x0376, "the secondary IDE control port"),
    (0x0378, 0x037f, "LPT1"),
    (0x03b0, 0x03df, "VGA"),
    (0x03f6, 0x03f6, "the primary IDE control port"),
    (0x03f8, 0x03ff, "COM1"),
    (
        0x0402,
        0x0402,
        "the firmware debug log (SeaBIOS/OVMF debugcon)",
    ),
    (0x0505, 0x0505, "pvpanic"),
    (0x0510, 0x051b, "QEMU fw_cfg (selector, data and DMA ports)"),
    (0x0600, 0x067f, "the q35 ACPI PM and GPE0 block"),
    (0x0a00, 0x0a17, "ACPI memory hotplug"),
    (0x0cd8, 0x0ce3, "q35 ACPI CPU hotplug"),
    (
        0x0cf8,
        0x0cff,
        "PCI configuration mechanism #1 and the reset control register",
    ),
    (0xae00, 0xae17, "PIIX ACPI PCI hotplug"),
    (0xaf00, 0xaf1f, "PIIX ACPI CPU hotplug"),
    (0xb000, 0xb03f, "the PIIX ACPI PM block"),
    (0x5658, 0x5658, "vmport"),
];

/// Guest-physical windows of the x86 platform devices that an MMIO trap register must avoid:
/// a write there would reach the IOAPIC, HPET or local APIC, not the VMM's trap.
pub const RESERVED_MMIO: &[(u64, u64, &str)] = &[
    (
        0xfec0_0000,
        0xfecf_ffff,
        "inside the IOAPIC window 0xfec00000..=0xfecfffff",
    ),
    (
        0xfed0_0000,
        0xfed0_03ff,
        "inside the HPET window 0xfed00000..=0xfed003ff",
    ),
    (
        0xfee0_0000,
        0xfeef_ffff,
        "inside the local APIC / MSI window 0xfee00000..=0xfeefffff",
    ),
];

/// SSDT header identifiers, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableIds {
    /// OEM ID, space padded.
    pub oem_id: [u8; 6],
    /// OEM table ID, space padded.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
}

/// The trap register, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapRegister {
    /// I/O or MMIO.
    pub space: TrapSpace,
    /// Port or address.
    pub address: u64,
    /// Access width in bytes: 1, 2, 4 (or 8 for MMIO).
    pub width: u8,
}

/// The acknowledged mailbox, validated (see [`crate::mailbox`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxConfig {
    /// ACPI path of the `ivshmem-plain` device node whose BAR2 is the shared memory.
    pub device: AcpiPath,
    /// The least time `_ON` waits for the reply, in milliseconds (`Sleep (1)` per poll).
    pub ack_timeout_ms: u16,
}

/// Default [`MailboxConfig::ack_timeout_ms`]: long enough for a loaded host's EXIT.
pub const DEFAULT_ACK_TIMEOUT_MS: u16 = 5000;

/// The wake route, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeConfig {
    /// The default route (devices may override it: [`DeviceConfig::route`]).
    pub route: RouteKind,
    /// GPE method flavour.
    pub trigger: GpeTrigger,
}

/// One device, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Slot index: position in `devices`, used by the trap encoding and the GED method.
    pub slot: Slot,
    /// ACPI path of the device node.
    pub acpi_path: AcpiPath,
    /// Guest PCI address.
    pub pci_address: PciAddress,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id, if given.
    pub device_id: Option<u16>,
    /// 24-bit class code.
    pub class_code: u32,
    /// D3cold opt-in.
    pub d3cold: bool,
    /// Wake plumbing variant.
    pub wakeup: WakeupMode,
    /// PME support advertised by the guest-visible device.
    pub pme_support: bool,
    /// The guest-visible device has a PM capability.
    pub has_pm_capability: bool,
    /// The VMM puts `_EJ0` on the node.
    pub hotplug_eject: bool,
    /// Upstream virtual root port.
    pub root_port: Option<AcpiPath>,
    /// Guest PCI address of the upstream root port, if the configuration gives it (for any device
    /// behind that root port).
    pub root_port_bdf: Option<PciAddress>,
    /// This device's wake route (its `wake_route`, else `[wake] route`).
    pub route: RouteKind,
    /// GPE number (GPE route with wake).
    pub gpe: Option<u8>,
    /// Full path of the device's power resource (D3cold devices only).
    pub power_resource: Option<AcpiPath>,
    /// Whether the SSDT declares the node.
    pub node: NodeMode,
}

impl DeviceConfig {
    /// Whether the device gets wake plumbing (GPE method, GED branch or root port PME).
    pub fn has_wake(&self) -> bool {
        self.wakeup != WakeupMode::Never
    }

    /// The device's PCIe requester ID as its root port reports it in Root Status:
    /// `bus << 8 | devfn` of the guest PCI address.
    pub fn requester_id(&self) -> u16 {
        (u16::from(self.pci_address.bus) << 8) | u16::from(self.pci_address.devfn())
    }

    /// The resolved wake route: its GPE for the GPE route (the AML's `\_GPE._Exx` does
    /// `Notify (dev, 2)`), GED event bit = slot for the GED route (the VMM's `_EVT` calls
    /// `\_SB.VPMW (slot)`), or a PCI PME with the device's requester ID for the `pcie_pme`
    /// route; `None` without wake plumbing (`wakeup = "never"`).
    pub fn wake_route(&self) -> Option<crate::pme::WakeRoute> {
        use crate::pme::WakeRoute;
        if !self.has_wake() {
            return None;
        }
        match (self.route, self.gpe) {
            (RouteKind::Gpe, Some(gpe)) => Some(WakeRoute::AcpiGpe {
                gpe: u16::from(gpe),
            }),
            // Validation gives every GPE-route device with wake a GPE.
            (RouteKind::Gpe, None) => None,
            (RouteKind::PciePme, _) => Some(WakeRoute::PciPme {
                requester_id: self.requester_id(),
            }),
            (RouteKind::Ged, _) => Some(WakeRoute::Ged {
                event: self.slot.index(),
            }),
        }
    }

    /// Whether the device gets `_PRW` (GPE route only; see [`WakeupMode`]).
    pub fn has_prw(&self) -> bool {
        self.gpe.is_some()
            && match self.wakeup {
                WakeupMode::Auto => self.pme_support,
                WakeupMode::Always => true,
                WakeupMode::Never => false,
            }
    }

    /// The `_S0W` value: 4 (D3cold) for D3cold devices, 3 (D3hot) otherwise.
    pub fn s0w(&self) -> u8 {
        if self.d3cold {
            4
        } else {
            3
        }
    }
}

/// A virtual root port some configured device sits behind, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootPortConfig {
    /// ACPI path of the root port node.
    pub acpi_path: AcpiPath,
    /// Its guest PCI address, if given (`root_port_bdf`); always given when a device behind it
    /// uses [`RouteKind::PciePme`].
    pub pci_address: Option<PciAddress>,
    /// The devices behind it, in slot order.
    pub devices: Vec<Slot>,
}

/// A validated configuration: everything [`crate::aml::build_ssdt`] and
/// [`crate::trap::TrapDecoder`] need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmConfig {
    table: TableIds,
    trap: TrapRegister,
    wake: WakeConfig,
    devices: Vec<DeviceConfig>,
    root_ports: Vec<RootPortConfig>,
    mailbox: Option<MailboxConfig>,
}
