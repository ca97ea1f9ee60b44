//! Why a configuration is refused: the field and the problem.

use super::{PathError, TrapSpace, WakeupMode};

/// A configured number as written: negative values in decimal (`-1`, not `0xffffffffffffffff`).
fn as_written(value: i64) -> String {
    if value < 0 {
        value.to_string()
    } else {
        format!("{value:#x}")
    }
}

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
    #[error("{} is out of range ({min:#x}..={max:#x})", as_written(*.value))]
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
    /// `ack_timeout_ms` without a mailbox to wait on.
    #[error("ack_timeout_ms is set but mailbox is not: only the mailbox trap waits for a reply")]
    UnusedAckTimeout,
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
    /// `root_port_bdf` is the device's own address.
    #[error("{bdf} is this device's own pci_address: root_port_bdf is the address of the root port above it, e.g. \"0000:00:1c.0\"")]
    RootPortIsTheDevice {
        /// The address.
        bdf: String,
    },
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
