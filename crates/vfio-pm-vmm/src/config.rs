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

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use vfio_pm::PciAddress;

/// Most devices one configuration (and the one-byte trap encoding) can describe.
pub const MAX_DEVICES: usize = crate::trap::MAX_SLOTS;

/// Names the generator puts directly under `\_SB`; no configured device may use them.
pub const RESERVED_SB_NAMES: [&str; 3] = ["VPMR", "VPMT", "VPMW"];

/// I/O port ranges that QEMU (and its firmware) already use on x86; the trap port must avoid them.
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

// ---------------------------------------------------------------------------------------------
// ACPI names
// ---------------------------------------------------------------------------------------------

/// One 4-character ACPI name segment (`PCI0`, `S28_`), always valid: `A-Z` or `_` first, then
/// `A-Z`, `0-9` or `_`. Shorter ASL spellings are padded with `_` as ASL does (`S28` is `S28_`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameSeg([u8; 4]);

impl NameSeg {
    /// Parses one segment, padding names of 1 to 3 characters with `_`.
    pub fn new(text: &str) -> Result<Self, NameError> {
        let bytes = text.as_bytes();
        let bad = |reason: &'static str| NameError {
            segment: text.to_string(),
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("is empty"));
        }
        if bytes.len() > 4 {
            return Err(bad("is longer than 4 characters"));
        }
        if bytes.iter().any(|b| b.is_ascii_lowercase()) {
            return Err(bad("has lowercase letters (ACPI names are upper case)"));
        }
        if !(bytes[0].is_ascii_uppercase() || bytes[0] == b'_') {
            return Err(bad("must start with A-Z or '_'"));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        {
            return Err(bad("may only contain A-Z, 0-9 and '_'"));
        }
        let mut seg = [b'_'; 4];
        seg[..bytes.len()].copy_from_slice(bytes);
        Ok(Self(seg))
    }

    /// A segment from bytes the caller knows are valid (generator constants).
    pub(crate) const fn from_raw(bytes: [u8; 4]) -> Self {
        Self(bytes)
    }

    /// The four bytes as they appear in AML.
    pub fn bytes(&self) -> [u8; 4] {
        self.0
    }

    /// The four characters (`S28_`).
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("____")
    }

    /// The ASL spelling: trailing `_` padding removed, as iasl prints it (`S28`, `_SB`).
    pub fn asl(&self) -> &str {
        let s = self.as_str();
        let trimmed = s.trim_end_matches('_');
        if trimmed.is_empty() {
            &s[..1]
        } else {
            trimmed
        }
    }
}

impl fmt::Debug for NameSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for NameSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name segment or path is not a valid ACPI name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment:?} is not a valid 4-char ACPI name: it {reason}")]
pub struct NameError {
    /// The offending segment.
    pub segment: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An absolute ACPI namespace path such as `\_SB.PCI0.S28`, with at least one segment below the
/// root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcpiPath {
    segments: Vec<NameSeg>,
}

/// Why a string is not an absolute ACPI path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Relative paths are ambiguous in an SSDT.
    #[error("must be absolute (start with '\\'), e.g. \\_SB.PCI0.S28")]
    NotAbsolute,
    /// `\` alone.
    #[error("names no object (only the root)")]
    Root,
    /// A bad segment.
    #[error(transparent)]
    Segment(#[from] NameError),
    /// More segments than AML can encode.
    #[error("has {0} segments; AML allows at most 255")]
    TooLong(usize),
}

impl AcpiPath {
    /// Builds a path from segments; `None` if there are none.
    pub fn from_segments(segments: Vec<NameSeg>) -> Option<Self> {
        (!segments.is_empty() && segments.len() <= 255).then_some(Self { segments })
    }

    /// A path from segments the caller knows are 1..=255 (generator constants).
    pub(crate) fn from_raw(segments: Vec<NameSeg>) -> Self {
        Self { segments }
    }

    /// The segments below the root.
    pub fn segments(&self) -> &[NameSeg] {
        &self.segments
    }

    /// The last segment (the object's own name).
    pub fn last(&self) -> NameSeg {
        // Never empty by construction.
        self.segments.last().copied().unwrap_or(NameSeg(*b"____"))
    }

    /// The parent scope, or `None` for a child of the root.
    pub fn parent(&self) -> Option<AcpiPath> {
        (self.segments.len() > 1).then(|| Self {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    /// `self` with one more segment (`None` beyond 255 segments).
    pub fn child(&self, seg: NameSeg) -> Option<AcpiPath> {
        let mut segments = self.segments.clone();
        segments.push(seg);
        Self::from_segments(segments)
    }

    /// Whether `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &AcpiPath) -> bool {
        other.segments.len() > self.segments.len() && other.segments.starts_with(&self.segments)
    }

    /// The ASL spelling iasl prints: `\_SB.PCI0.S28`.
    pub fn asl(&self) -> String {
        let mut s = String::from("\\");
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(seg.asl());
        }
        s
    }
}

impl FromStr for AcpiPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, PathError> {
        let rest = s.strip_prefix('\\').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Err(PathError::Root);
        }
        let segments = rest
            .split('.')
            .map(NameSeg::new)
            .collect::<Result<Vec<_>, _>>()?;
        if segments.len() > 255 {
            return Err(PathError::TooLong(segments.len()));
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for AcpiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.asl())
    }
}

impl fmt::Debug for AcpiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AcpiPath({})", self.asl())
    }
}

// ---------------------------------------------------------------------------------------------
// The TOML file, as written
// ---------------------------------------------------------------------------------------------

/// Address space of the trap register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrapSpace {
    /// An x86 I/O port (`OperationRegion (..., SystemIO, ...)`).
    Io,
    /// A guest-physical MMIO address (`OperationRegion (..., SystemMemory, ...)`).
    Mmio,
}

/// How wake events reach the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WakeRoute {
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

/// GPE method flavour for [`WakeRoute::Gpe`].
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
}

fn one() -> i64 {
    1
}

/// `[wake]`: the wake route shared by all devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WakeFile {
    /// GPE, GED or PCIe PME (the default for devices without `wake_route`).
    pub route: WakeRoute,
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
    /// Guest PCI address of the upstream virtual root port (needed for [`WakeRoute::PciePme`]).
    #[serde(default)]
    pub root_port_bdf: Option<String>,
    /// This device's wake route, overriding `[wake] route`.
    #[serde(default)]
    pub wake_route: Option<WakeRoute>,
    /// GPE number for [`WakeRoute::Gpe`].
    #[serde(default)]
    pub gpe: Option<i64>,
    /// Power resource name override (default `PRxx`, xx = slot in hex).
    #[serde(default)]
    pub power_resource: Option<String>,
    /// Whether the node exists in the DSDT.
    #[serde(default)]
    pub node: NodeMode,
}

fn yes() -> bool {
    true
}

/// The whole file as written; [`VmmConfig::validate`] turns it into a [`VmmConfig`].
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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not TOML, or not the expected shape (unknown key, wrong type, missing key).
    #[error("invalid configuration file: {0}")]
    Toml(#[from] toml::de::Error),
    /// A value is wrong; `field` names it (`devices[1].acpi_path`).
    #[error("{field}: {problem}")]
    Invalid {
        /// The offending field, e.g. `devices[1].acpi_path`.
        field: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

impl ConfigError {
    /// The problem, if this is a validation error.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Invalid { problem, .. } => Some(problem),
            ConfigError::Toml(_) => None,
        }
    }

    /// The field, if this is a validation error.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Toml(_) => None,
        }
    }
}

/// What is wrong with a configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Not a valid ACPI path.
    #[error("{text:?} — {reason}")]
    BadPath {
        /// The text.
        text: String,
        /// Why.
        reason: PathError,
    },
    /// A device directly under the root has no parent scope to hold its power resource.
    #[error("{path} has no parent scope: put the device under a bus, e.g. \\_SB.PCI0.S28")]
    NoParentScope {
        /// The path.
        path: String,
    },
    /// Not a valid PCI address.
    #[error(transparent)]
    BadPciAddress(#[from] vfio_pm::PciAddressError),
    /// A number outside its range.
    #[error("{value:#x} is out of range ({min:#x}..={max:#x})")]
    OutOfRange {
        /// The value given.
        value: i64,
        /// Smallest allowed.
        min: i64,
        /// Largest allowed.
        max: i64,
    },
    /// 0x0000 and 0xffff are not vendors.
    #[error("{0:#06x} is not a valid PCI vendor id")]
    BadVendorId(u16),
    /// OEM id too long or not printable ASCII.
    #[error("{text:?} must be at most {max} printable ASCII characters")]
    BadOemString {
        /// The text.
        text: String,
        /// Maximum length.
        max: usize,
    },
    /// Nothing to generate.
    #[error("no devices configured: add at least one [[devices]] entry")]
    NoDevices,
    /// More devices than the trap encoding has slots.
    #[error("{count} devices configured; at most {max} fit the trap encoding")]
    TooManyDevices {
        /// Devices given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Same value as another device.
    #[error("{value} is also used by devices[{other}]")]
    Duplicate {
        /// The clashing value.
        value: String,
        /// The other device's index.
        other: usize,
    },
    /// A generated or configured name clashes with another object of the table.
    #[error("{path} would be defined twice: {why}")]
    NameClash {
        /// The clashing path.
        path: String,
        /// With what.
        why: String,
    },
    /// The trap I/O port overlaps a port QEMU or its firmware uses.
    #[error("I/O ports {start:#x}..={end:#x} overlap {first:#x}..={last:#x}, used by {user}")]
    ReservedPort {
        /// First trap port.
        start: u64,
        /// Last trap port.
        end: u64,
        /// Reserved range start.
        first: u16,
        /// Reserved range end.
        last: u16,
        /// Who uses it.
        user: &'static str,
    },
    /// Access width not supported in this space.
    #[error("width {width} is not supported for {space:?} (use {allowed})")]
    BadWidth {
        /// The width given.
        width: i64,
        /// The space.
        space: TrapSpace,
        /// The allowed widths.
        allowed: &'static str,
    },
    /// MMIO trap address not naturally aligned, zero, or wrapping.
    #[error("{address:#x} is not a usable {width}-byte MMIO address: {reason}")]
    BadMmioAddress {
        /// The address.
        address: u64,
        /// The width.
        width: u8,
        /// Why.
        reason: &'static str,
    },
    /// `_EJ0` on a D3cold device: the guest kernel ignores ACPI power management on eject-capable
    /// nodes, so D3cold would silently never happen.
    #[error("d3cold = true with hotplug_eject = true: Linux never uses ACPI D3cold on a node with _EJ0; disable ACPI hotplug eject on this node or set d3cold = false")]
    EjectLosesD3cold,
    /// D3cold without a PM capability: the guest caps the device at D3hot (d3cold_allowed = 0).
    #[error("d3cold = true with has_pm_capability = false: the guest caps a device without a PCI PM capability at D3hot and never calls _OFF; expose a PM capability or set d3cold = false")]
    NoPmCapability,
    /// The root port is not above the device.
    #[error("{root_port} is not an ancestor of the device path {device}")]
    RootPortNotAncestor {
        /// The root port path.
        root_port: String,
        /// The device path.
        device: String,
    },
    /// GPE route, wake wanted, no GPE.
    #[error("wake.route = \"gpe\" and wakeup = {wakeup:?} need a GPE number (or set wakeup = \"never\")")]
    MissingGpe {
        /// The device's wakeup mode.
        wakeup: WakeupMode,
    },
    /// A GPE given where none is used.
    #[error("a GPE is only used with wake.route = \"gpe\" and wakeup other than \"never\"")]
    UnusedGpe,
    /// `wakeup = "always"` asks for `_PRW`, which needs a GPE.
    #[error("wakeup = \"always\" emits _PRW, which names a GPE: it needs wake.route = \"gpe\"")]
    PrwNeedsGpe,
    /// A power resource name on a device that gets no power resource.
    #[error("power_resource is set but d3cold = false: only D3cold devices get a power resource")]
    UnusedPowerResource,
    /// The `pcie_pme` route without a virtual root port above the device.
    #[error("wake route \"pcie_pme\" delivers through the device's virtual PCIe root port: set root_port (and root_port_bdf), or choose another route")]
    PciePmeNeedsRootPort,
    /// The `pcie_pme` route on a root port whose PCI address no device gives.
    #[error("wake route \"pcie_pme\" needs the PCI address of root port {root_port}: set root_port_bdf, e.g. \"0000:00:1c.0\"")]
    MissingRootPortBdf {
        /// The root port's ACPI path.
        root_port: String,
    },
    /// The `pcie_pme` route on a device that advertises no PME support.
    #[error("wake route \"pcie_pme\" with pme_support = false: the guest never enables PME_En on a device whose PMC advertises no PME support, so no wake would reach it; set pme_support = true or choose another route")]
    PciePmeNeedsPmeSupport,
    /// `root_port_bdf` without `root_port`.
    #[error("root_port_bdf is set but root_port is not: name the root port's ACPI path too")]
    UnusedRootPortBdf,
    /// Two devices give different PCI addresses for the same root port.
    #[error("root port {root_port} is {bdf} here but {other_bdf} in devices[{other}]")]
    RootPortBdfConflict {
        /// The root port's ACPI path.
        root_port: String,
        /// The address given here.
        bdf: String,
        /// The address the other device gives.
        other_bdf: String,
        /// The other device's index.
        other: usize,
    },
    /// The device's address cannot be below its root port (other domain, or a bus number not
    /// above the root port's).
    #[error("{device} cannot be below root port {root_port}: a device behind a root port is in its domain on a higher bus number")]
    NotBelowRootPort {
        /// The device's address.
        device: String,
        /// The root port's address.
        root_port: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------------------------

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

/// The wake route, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WakeConfig {
    /// The default route (devices may override it: [`DeviceConfig::route`]).
    pub route: WakeRoute,
    /// GPE method flavour.
    pub trigger: GpeTrigger,
}

/// One device, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Slot index: position in `devices`, used by the trap encoding and the GED method.
    pub slot: crate::trap::DeviceSlot,
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
    pub route: WakeRoute,
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
    /// uses [`WakeRoute::PciePme`].
    pub pci_address: Option<PciAddress>,
    /// The devices behind it, in slot order.
    pub devices: Vec<crate::trap::DeviceSlot>,
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
}

fn invalid(field: impl Into<String>, problem: Problem) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem,
    }
}

fn range(field: &str, value: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if value < min || value > max {
        Err(invalid(field, Problem::OutOfRange { value, min, max }))
    } else {
        Ok(value)
    }
}

fn path(field: &str, text: &str) -> Result<AcpiPath, ConfigError> {
    text.parse::<AcpiPath>().map_err(|reason| {
        invalid(
            field,
            Problem::BadPath {
                text: text.to_string(),
                reason,
            },
        )
    })
}

fn oem<const N: usize>(field: &str, text: &str) -> Result<[u8; N], ConfigError> {
    if text.len() > N || !text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(invalid(
            field,
            Problem::BadOemString {
                text: text.to_string(),
                max: N,
            },
        ));
    }
    let mut out = [b' '; N];
    out[..text.len()].copy_from_slice(text.as_bytes());
    Ok(out)
}

impl VmmConfig {
    /// Parses and validates a TOML configuration.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        Self::validate(&file)
    }

    /// Validates a configuration built in code (or deserialized by other means).
    pub fn validate(file: &ConfigFile) -> Result<Self, ConfigError> {
        let table = TableIds {
            oem_id: oem::<6>("table.oem_id", &file.table.oem_id)?,
            oem_table_id: oem::<8>("table.oem_table_id", &file.table.oem_table_id)?,
            oem_revision: file.table.oem_revision,
        };
        let trap = validate_trap(&file.trap)?;
        let wake = WakeConfig {
            route: file.wake.route,
            trigger: file.wake.trigger,
        };
        if file.devices.is_empty() {
            return Err(invalid("devices", Problem::NoDevices));
        }
        if file.devices.len() > MAX_DEVICES {
            return Err(invalid(
                "devices",
                Problem::TooManyDevices {
                    count: file.devices.len(),
                    max: MAX_DEVICES,
                },
            ));
        }
        let mut devices = Vec::with_capacity(file.devices.len());
        for (i, d) in file.devices.iter().enumerate() {
            devices.push(validate_device(i, d, wake)?);
        }
        check_clashes(&devices)?;
        let root_ports = validate_root_ports(&mut devices)?;
        Ok(Self {
            table,
            trap,
            wake,
            devices,
            root_ports,
        })
    }

    /// SSDT header identifiers.
    pub fn table(&self) -> &TableIds {
        &self.table
    }

    /// The trap register.
    pub fn trap(&self) -> TrapRegister {
        self.trap
    }

    /// The wake route.
    pub fn wake(&self) -> WakeConfig {
        self.wake
    }

    /// The devices in slot order.
    pub fn devices(&self) -> &[DeviceConfig] {
        &self.devices
    }

    /// The distinct virtual root ports, in order of first use by a device.
    pub fn root_ports(&self) -> &[RootPortConfig] {
        &self.root_ports
    }
}

fn validate_trap(t: &TrapFile) -> Result<TrapRegister, ConfigError> {
    match t.space {
        TrapSpace::Io => {
            if ![1, 2, 4].contains(&t.width) {
                return Err(invalid(
                    "trap.width",
                    Problem::BadWidth {
                        width: t.width,
                        space: t.space,
                        allowed: "1, 2 or 4",
                    },
                ));
            }
            let address = range("trap.address", t.address, 0, 0xffff - (t.width - 1))? as u64;
            let end = address + t.width as u64 - 1;
            for &(first, last, user) in RESERVED_IO_PORTS {
                if address <= u64::from(last) && end >= u64::from(first) {
                    return Err(invalid(
                        "trap.address",
                        Problem::ReservedPort {
                            start: address,
                            end,
                            first,
                            last,
                            user,
                        },
                    ));
                }
            }
            Ok(TrapRegister {
                space: t.space,
                address,
                width: t.width as u8,
            })
        }
        TrapSpace::Mmio => {
            if ![1, 2, 4, 8].contains(&t.width) {
                return Err(invalid(
                    "trap.width",
                    Problem::BadWidth {
                        width: t.width,
                        space: t.space,
                        allowed: "1, 2, 4 or 8",
                    },
                ));
            }
            let width = t.width as u8;
            // TOML integers are i64; reinterpret so addresses above 2^63 can be written as negative
            // numbers is not worth it: guest-physical addresses fit in 63 bits.
            let address = range("trap.address", t.address, 0, i64::MAX)? as u64;
            let bad = |reason| {
                invalid(
                    "trap.address",
                    Problem::BadMmioAddress {
                        address,
                        width,
                        reason,
                    },
                )
            };
            if address == 0 {
                return Err(bad("address 0 is not a device register"));
            }
            if address % u64::from(width) != 0 {
                return Err(bad("not naturally aligned to the access width"));
            }
            Ok(TrapRegister {
                space: t.space,
                address,
                width,
            })
        }
    }
}

fn validate_device(
    i: usize,
    d: &DeviceFile,
    wake: WakeConfig,
) -> Result<DeviceConfig, ConfigError> {
    let f = |name: &str| format!("devices[{i}].{name}");
    let acpi_path = path(&f("acpi_path"), &d.acpi_path)?;
    let parent = acpi_path.parent().ok_or_else(|| {
        invalid(
            f("acpi_path"),
            Problem::NoParentScope {
                path: d.acpi_path.clone(),
            },
        )
    })?;
    let pci_address = d
        .pci_address
        .parse::<PciAddress>()
        .map_err(|e| invalid(f("pci_address"), Problem::BadPciAddress(e)))?;
    let vendor_id = range(&f("vendor_id"), d.vendor_id, 0, 0xffff)? as u16;
    if vendor_id == 0 || vendor_id == 0xffff {
        return Err(invalid(f("vendor_id"), Problem::BadVendorId(vendor_id)));
    }
    let device_id = match d.device_id {
        Some(v) => Some(range(&f("device_id"), v, 0, 0xffff)? as u16),
        None => None,
    };
    let class_code = range(&f("class_code"), d.class_code, 0, 0xff_ffff)? as u32;
    if d.d3cold && d.hotplug_eject {
        return Err(invalid(f("hotplug_eject"), Problem::EjectLosesD3cold));
    }
    if d.d3cold && !d.has_pm_capability {
        return Err(invalid(f("has_pm_capability"), Problem::NoPmCapability));
    }
    let root_port = match &d.root_port {
        Some(text) => {
            let rp = path(&f("root_port"), text)?;
            if !rp.is_ancestor_of(&acpi_path) {
                return Err(invalid(
                    f("root_port"),
                    Problem::RootPortNotAncestor {
                        root_port: rp.asl(),
                        device: acpi_path.asl(),
                    },
                ));
            }
            Some(rp)
        }
        None => None,
    };
    let root_port_bdf = match (&d.root_port_bdf, &root_port) {
        (None, _) => None,
        (Some(_), None) => return Err(invalid(f("root_port_bdf"), Problem::UnusedRootPortBdf)),
        (Some(text), Some(_)) => {
            let bdf = text
                .parse::<PciAddress>()
                .map_err(|e| invalid(f("root_port_bdf"), Problem::BadPciAddress(e)))?;
            Some(bdf)
        }
    };
    let route = d.wake_route.unwrap_or(wake.route);
    if route == WakeRoute::PciePme && d.wakeup != WakeupMode::Never {
        if root_port.is_none() {
            return Err(invalid(f("root_port"), Problem::PciePmeNeedsRootPort));
        }
        if !d.pme_support {
            return Err(invalid(f("pme_support"), Problem::PciePmeNeedsPmeSupport));
        }
    }
    let wants_gpe = route == WakeRoute::Gpe && d.wakeup != WakeupMode::Never;
    if d.wakeup == WakeupMode::Always && route != WakeRoute::Gpe {
        return Err(invalid(f("wakeup"), Problem::PrwNeedsGpe));
    }
    let gpe = match (d.gpe, wants_gpe) {
        (Some(g), true) => Some(range(&f("gpe"), g, 0, 0xff)? as u8),
        (None, false) => None,
        (None, true) => return Err(invalid(f("gpe"), Problem::MissingGpe { wakeup: d.wakeup })),
        (Some(_), false) => return Err(invalid(f("gpe"), Problem::UnusedGpe)),
    };
    let slot = crate::trap::DeviceSlot::new(i as u8).ok_or_else(|| {
        invalid(
            "devices",
            Problem::TooManyDevices {
                count: i + 1,
                max: MAX_DEVICES,
            },
        )
    })?;
    let power_resource = match (&d.power_resource, d.d3cold) {
        (Some(_), false) => return Err(invalid(f("power_resource"), Problem::UnusedPowerResource)),
        (None, false) => None,
        (given, true) => {
            let name = given
                .clone()
                .unwrap_or_else(|| format!("PR{:02X}", slot.index()));
            let seg = NameSeg::new(&name).map_err(|e| {
                invalid(
                    f("power_resource"),
                    Problem::BadPath {
                        text: name.clone(),
                        reason: PathError::Segment(e),
                    },
                )
            })?;
            // The parent has at most 254 segments, so the child always fits.
            parent.child(seg)
        }
    };
    Ok(DeviceConfig {
        slot,
        acpi_path,
        pci_address,
        vendor_id,
        device_id,
        class_code,
        d3cold: d.d3cold,
        wakeup: d.wakeup,
        pme_support: d.pme_support,
        has_pm_capability: d.has_pm_capability,
        hotplug_eject: d.hotplug_eject,
        root_port,
        root_port_bdf,
        route,
        gpe,
        power_resource,
        node: d.node,
    })
}

fn check_clashes(devices: &[DeviceConfig]) -> Result<(), ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
    for (i, d) in devices.iter().enumerate() {
        for (j, e) in devices[..i].iter().enumerate() {
            let dup = |field: &str, value: String| {
                invalid(f(i, field), Problem::Duplicate { value, other: j })
            };
            if d.acpi_path == e.acpi_path {
                return Err(dup("acpi_path", d.acpi_path.asl()));
            }
            if d.pci_address == e.pci_address {
                return Err(dup("pci_address", d.pci_address.to_string()));
            }
            if let (Some(a), Some(b)) = (d.gpe, e.gpe) {
                if a == b {
                    return Err(dup("gpe", format!("GPE {a:#04x}")));
                }
            }
            if let (Some(a), Some(b)) = (&d.power_resource, &e.power_resource) {
                if a == b {
                    return Err(dup("power_resource", a.asl()));
                }
            }
        }
        // A device node that is also an ancestor / root port of another is fine; a device that is
        // another device's root port is not a root port we would give _PR0/_PR3 twice.
        for (j, e) in devices.iter().enumerate() {
            if let Some(rp) = &e.root_port {
                if *rp == d.acpi_path {
                    return Err(invalid(
                        f(j, "root_port"),
                        Problem::NameClash {
                            path: rp.asl(),
                            why: format!("it is also the device node of devices[{i}]"),
                        },
                    ));
                }
            }
        }
        // Generated objects against configured nodes.
        let mut nodes: Vec<(&AcpiPath, String)> = Vec::new();
        for (j, e) in devices.iter().enumerate() {
            nodes.push((&e.acpi_path, format!("the device node of devices[{j}]")));
            if let Some(rp) = &e.root_port {
                nodes.push((rp, format!("the root port of devices[{j}]")));
            }
        }
        if let Some(pr) = &d.power_resource {
            if let Some((_, what)) = nodes.iter().find(|(p, _)| *p == pr) {
                return Err(invalid(
                    f(i, "power_resource"),
                    Problem::NameClash {
                        path: pr.asl(),
                        why: format!("the power resource has the same path as {what}"),
                    },
                ));
            }
        }
        for path in [Some(&d.acpi_path), d.root_port.as_ref()]
            .into_iter()
            .flatten()
        {
            let segs = path.segments();
            if segs.len() == 2
                && segs[0].as_str() == "_SB_"
                && RESERVED_SB_NAMES.contains(&segs[1].as_str())
            {
                return Err(invalid(
                    f(i, if path == &d.acpi_path { "acpi_path" } else { "root_port" }),
                    Problem::NameClash {
                        path: path.asl(),
                        why: "the generator defines this name (trap region, trap field or GED wake method)".into(),
                    },
                ));
            }
        }
    }
    Ok(())
}

/// Groups the devices by root port, resolves each root port's PCI address (given once, equal
/// wherever repeated) into every device behind it, and checks the `pcie_pme` devices have one.
fn validate_root_ports(devices: &mut [DeviceConfig]) -> Result<Vec<RootPortConfig>, ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
    let mut ports: Vec<(RootPortConfig, Option<usize>)> = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        let Some(rp) = &d.root_port else { continue };
        let k = match ports.iter().position(|(p, _)| p.acpi_path == *rp) {
            Some(k) => k,
            None => {
                ports.push((
                    RootPortConfig {
                        acpi_path: rp.clone(),
                        pci_address: None,
                        devices: Vec::new(),
                    },
                    None,
                ));
                ports.len() - 1
            }
        };
        let (port, given_by) = &mut ports[k];
        port.devices.push(d.slot);
        if let Some(bdf) = d.root_port_bdf {
            match (port.pci_address, *given_by) {
                (Some(other_bdf), Some(other)) if other_bdf != bdf => {
                    return Err(invalid(
                        f(i, "root_port_bdf"),
                        Problem::RootPortBdfConflict {
                            root_port: rp.asl(),
                            bdf: bdf.to_string(),
                            other_bdf: other_bdf.to_string(),
                            other,
                        },
                    ));
                }
                (Some(_), _) => {}
                (None, _) => {
                    port.pci_address = Some(bdf);
                    *given_by = Some(i);
                }
            }
        }
    }
    // Distinct root ports have distinct addresses, and no device has a root port's address.
    for (k, (p, given_by)) in ports.iter().enumerate() {
        let (Some(bdf), Some(i)) = (p.pci_address, *given_by) else {
            continue;
        };
        for (q, other) in ports[..k].iter() {
            if let (Some(b), Some(j)) = (q.pci_address, *other) {
                if b == bdf {
                    return Err(invalid(
                        f(i, "root_port_bdf"),
                        Problem::Duplicate {
                            value: format!("{bdf} (root port {})", q.acpi_path.asl()),
                            other: j,
                        },
                    ));
                }
            }
        }
        if let Some(j) = devices.iter().position(|d| d.pci_address == bdf) {
            return Err(invalid(
                f(i, "root_port_bdf"),
                Problem::Duplicate {
                    value: format!("{bdf} (the device's pci_address)"),
                    other: j,
                },
            ));
        }
    }
    for (i, d) in devices.iter_mut().enumerate() {
        let Some(rp) = &d.root_port else { continue };
        let Some((port, _)) = ports.iter().find(|(p, _)| p.acpi_path == *rp) else {
            continue;
        };
        if let Some(bdf) = port.pci_address {
            let device = d.pci_address;
            if bdf.domain != device.domain || bdf.bus >= device.bus {
                return Err(invalid(
                    f(i, "pci_address"),
                    Problem::NotBelowRootPort {
                        device: device.to_string(),
                        root_port: bdf.to_string(),
                    },
                ));
            }
        }
        d.root_port_bdf = port.pci_address;
        if d.route == WakeRoute::PciePme && d.has_wake() && d.root_port_bdf.is_none() {
            return Err(invalid(
                f(i, "root_port_bdf"),
                Problem::MissingRootPortBdf {
                    root_port: rp.asl(),
                },
            ));
        }
    }
    // The root ports' PME queues and the notifier key on the requester ID.
    for (i, d) in devices.iter().enumerate() {
        if d.route != WakeRoute::PciePme || !d.has_wake() {
            continue;
        }
        if let Some(j) = devices[..i].iter().position(|e| {
            e.route == WakeRoute::PciePme && e.has_wake() && e.requester_id() == d.requester_id()
        }) {
            return Err(invalid(
                f(i, "pci_address"),
                Problem::Duplicate {
                    value: format!("requester ID {:#06x}", d.requester_id()),
                    other: j,
                },
            ));
        }
    }
    Ok(ports.into_iter().map(|(p, _)| p).collect())
}
