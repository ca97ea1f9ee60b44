//! The TOML file, as written (also built in code: [`ConfigFile::new`], [`TrapFile::io`],
//! [`DeviceFile::new`]).

use serde::{Deserialize, Serialize};
use vfio_pm::PciAddress;

/// Address space of the trap register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrapSpace {
    /// An x86 I/O port (`OperationRegion (..., SystemIO, ...)`).
    Io,
    /// A guest-physical MMIO address (`OperationRegion (..., SystemMemory, ...)`).
    Mmio,
}

/// Which kind of route wake events take to the guest, as the configuration chooses it (TOML
/// `route = "gpe" | "ged" | "pcie_pme"`). The resolved route, with the GPE number, GED event or
/// requester ID, is [`crate::pme::WakeRoute`] ([`super::DeviceConfig::wake_route`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A GPE method per device (`\_GPE._Exx` or `_Lxx`) doing `Notify (device, 2)`; the VMM raises
    /// the device's GPE.
    #[default]
    Gpe,
    /// Hardware-reduced ACPI: the VMM's generic event device `_EVT` handler calls
    /// `\_SB.VPMW (slot)`, which does `Notify (device, 2)` for that device slot.
    Ged,
    /// Native PCIe PME: the VMM sets PME_Status in the device's emulated PMCSR and sends a
    /// PM_PME message to the device's virtual root port (`root_port`, `root_port_bdf`), whose
    /// Root Status takes the device's requester ID and whose interrupt the guest's PCIe PME
    /// service driver handles. No AML wake method. Needs `pme_support = true`: a guest does not
    /// enable PME on a device whose PMC advertises none.
    #[serde(rename = "pcie_pme")]
    PciePme,
}

/// GPE method flavour for [`RouteKind::Gpe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpeTrigger {
    /// `_Exx`: the VMM pulses the GPE status bit.
    #[default]
    Edge,
    /// `_Lxx`: the VMM holds the GPE status bit until the guest clears it.
    Level,
}

/// Whether the device gets wake plumbing, and `_PRW`.
///
/// Observed in real guests: a GPE named in `_PRW` stays disabled unless the guest-visible device
/// advertises PME support in its PM capability, while a GPE method on a GPE that no `_PRW` names,
/// doing `Notify (device, 2)`, resumes a device in D3cold reliably. Hence:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeupMode {
    /// Wake method (GPE or GED); `_PRW` only when `pme_support = true` (GPE route only).
    #[default]
    Auto,
    /// Wake method and always `_PRW` (GPE route only): use when the guest arms wake through `_PRW`
    /// even though the device does not advertise PME.
    Always,
    /// No wake plumbing at all: no GPE method, no `_PRW`, no GED branch.
    Never,
}

/// Whether the DSDT already has the device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeMode {
    /// The DSDT declares `Device (...)` (QEMU q35: `\_SB.PCI0.Sxx` with `_ADR`): the SSDT declares
    /// it `External` and adds objects with `Scope (path)`. Declaring it again would be a second
    /// device with the same `_ADR`, which Linux ignores.
    #[default]
    Existing,
    /// The SSDT declares `Scope (parent) { Device (name) { Name (_ADR, ...) ... } }` itself.
    Declare,
}

/// `[table]`: SSDT header identifiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableFile {
    /// OEM ID, up to 6 printable ASCII characters.
    pub oem_id: String,
    /// OEM table ID, up to 8 printable ASCII characters.
    pub oem_table_id: String,
    /// OEM revision.
    pub oem_revision: u32,
}

impl Default for TableFile {
    fn default() -> Self {
        Self {
            oem_id: "VFIOPM".into(),
            oem_table_id: "VFIOPMPR".into(),
            oem_revision: 1,
        }
    }
}

/// `[trap]`: where `_ON`/`_OFF` write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrapFile {
    /// I/O port or MMIO.
    pub space: TrapSpace,
    /// Port number or guest-physical address.
    pub address: i64,
    /// Access width in bytes (default 1).
    #[serde(default = "one")]
    pub width: i64,
    /// ACPI path of an `ivshmem-plain` device whose shared memory (BAR2) carries the
    /// acknowledged mailbox ([`crate::mailbox`]): `_ON` then waits for the VMM's reply.
    #[serde(default)]
    pub mailbox: Option<String>,
    /// How long `_ON` waits at least for the mailbox reply, in milliseconds (default 5000).
    #[serde(default)]
    pub ack_timeout_ms: Option<i64>,
}

impl TrapFile {
    /// A one-byte trap register at I/O port `port`.
    pub fn io(port: u16) -> Self {
        Self {
            space: TrapSpace::Io,
            address: i64::from(port),
            width: 1,
            mailbox: None,
            ack_timeout_ms: None,
        }
    }

    /// A `width`-byte trap register at guest-physical `address`.
    pub fn mmio(address: u64, width: u8) -> Self {
        Self {
            space: TrapSpace::Mmio,
            // Out of TOML's range becomes -1, which validation refuses with a field-named error.
            address: i64::try_from(address).unwrap_or(-1),
            width: i64::from(width),
            mailbox: None,
            ack_timeout_ms: None,
        }
    }
}

fn one() -> i64 {
    1
}

/// `[wake]`: the wake route shared by all devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeFile {
    /// GPE, GED or PCIe PME (the default for devices without `wake_route`).
    pub route: RouteKind,
    /// Edge or level GPE methods.
    pub trigger: GpeTrigger,
}

/// One `[[devices]]` entry as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFile {
    /// ACPI path of the device node, e.g. `\_SB.PCI0.S28`.
    pub acpi_path: String,
    /// Guest PCI address, e.g. `0000:00:05.0`.
    pub pci_address: String,
    /// PCI vendor id.
    pub vendor_id: i64,
    /// PCI device id (informational).
    #[serde(default)]
    pub device_id: Option<i64>,
    /// 24-bit PCI class code (class, subclass, prog-if).
    pub class_code: i64,
    /// D3cold opt-in: give the device a power resource in `_PR0`/`_PR3`.
    #[serde(default)]
    pub d3cold: bool,
    /// Wake plumbing variant.
    #[serde(default)]
    pub wakeup: WakeupMode,
    /// Whether the guest-visible PM capability advertises PME support.
    #[serde(default)]
    pub pme_support: bool,
    /// Whether the guest-visible device has a PCI PM capability.
    #[serde(default = "yes")]
    pub has_pm_capability: bool,
    /// Whether the VMM puts `_EJ0` (ACPI hotplug eject) on this node.
    #[serde(default)]
    pub hotplug_eject: bool,
    /// ACPI path of the upstream virtual root port, if any.
    #[serde(default)]
    pub root_port: Option<String>,
    /// Guest PCI address of the upstream virtual root port (needed for [`RouteKind::PciePme`]).
    #[serde(default)]
    pub root_port_bdf: Option<String>,
    /// This device's wake route, overriding `[wake] route`.
    #[serde(default)]
    pub wake_route: Option<RouteKind>,
    /// GPE number for [`RouteKind::Gpe`].
    #[serde(default)]
    pub gpe: Option<i64>,
    /// Power resource name override (default `PRxx`, xx = slot in hex).
    #[serde(default)]
    pub power_resource: Option<String>,
    /// Whether the node exists in the DSDT.
    #[serde(default)]
    pub node: NodeMode,
}

impl DeviceFile {
    /// A device at guest `pci_address` whose ACPI node is `acpi_path`, with every optional key
    /// at its default (no D3cold, automatic wake plumbing, a PM capability, the DSDT's own node).
    /// Set the rest with struct update syntax: `DeviceFile { d3cold: true, gpe: Some(0x10),
    /// ..DeviceFile::new(...) }`.
    pub fn new(acpi_path: &str, pci_address: PciAddress, vendor_id: u16, class_code: u32) -> Self {
        Self {
            acpi_path: acpi_path.to_string(),
            pci_address: pci_address.to_string(),
            vendor_id: i64::from(vendor_id),
            device_id: None,
            class_code: i64::from(class_code),
            d3cold: false,
            wakeup: WakeupMode::default(),
            pme_support: false,
            has_pm_capability: true,
            hotplug_eject: false,
            root_port: None,
            root_port_bdf: None,
            wake_route: None,
            gpe: None,
            power_resource: None,
            node: NodeMode::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// The whole file as written; [`super::VmmConfig::validate`] turns it into a
/// [`super::VmmConfig`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// SSDT header identifiers.
    #[serde(default)]
    pub table: TableFile,
    /// The trap register.
    pub trap: TrapFile,
    /// The wake route.
    #[serde(default)]
    pub wake: WakeFile,
    /// The devices, in slot order.
    #[serde(default)]
    pub devices: Vec<DeviceFile>,
}

impl ConfigFile {
    /// A configuration in code, no TOML: the trap register and the devices in slot order, with
    /// the default `[table]` and `[wake]`.
    pub fn new(trap: TrapFile, devices: Vec<DeviceFile>) -> Self {
        Self {
            table: TableFile::default(),
            trap,
            wake: WakeFile::default(),
            devices,
        }
    }
}
