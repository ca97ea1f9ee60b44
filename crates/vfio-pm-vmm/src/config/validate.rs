//! Turning a [`ConfigFile`] into a [`VmmConfig`]: every check the generator and decoder rely on.

use super::*;
use crate::request::Slot;

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
    /// Parses and validates a TOML configuration, the format of the CLI and the QEMU
    /// integration: besides [`VmmConfig::validate`], an I/O trap port must avoid the ports QEMU
    /// and its firmware use ([`RESERVED_IO_PORTS`]).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text)?;
        let config = Self::validate(&file)?;
        check_qemu_io_ports(config.trap)?;
        Ok(config)
    }

    /// Validates a configuration built in code ([`ConfigFile::new`]) or deserialized by other
    /// means. Which I/O ports are free depends on the VMM, so none is refused here (QEMU's are,
    /// by [`VmmConfig::from_toml_str`]).
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
        let mailbox = validate_mailbox(&file.trap, &devices)?;
        Ok(Self {
            table,
            trap,
            wake,
            devices,
            root_ports,
            mailbox,
        })
    }

    /// The acknowledged mailbox, if configured.
    pub fn mailbox(&self) -> Option<&MailboxConfig> {
        self.mailbox.as_ref()
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

/// `trap.mailbox` and `trap.ack_timeout_ms`: a device node of its own (not a configured device
/// or root port, which get other objects), a timeout of 1 ms to 60 s.
fn validate_mailbox(
    t: &TrapFile,
    devices: &[DeviceConfig],
) -> Result<Option<MailboxConfig>, ConfigError> {
    let Some(text) = &t.mailbox else {
        if t.ack_timeout_ms.is_some() {
            return Err(invalid("trap.ack_timeout_ms", Problem::UnusedAckTimeout));
        }
        return Ok(None);
    };
    let device = path("trap.mailbox", text)?;
    if device.parent().is_none() {
        return Err(invalid(
            "trap.mailbox",
            Problem::NoParentScope { path: text.clone() },
        ));
    }
    for (i, d) in devices.iter().enumerate() {
        if d.acpi_path == device || d.root_port.as_ref() == Some(&device) {
            return Err(invalid(
                "trap.mailbox",
                Problem::NameClash {
                    path: device.asl(),
                    why: format!("it is also a node of devices[{i}]"),
                },
            ));
        }
    }
    let ack_timeout_ms = match t.ack_timeout_ms {
        None => DEFAULT_ACK_TIMEOUT_MS,
        Some(v) => range("trap.ack_timeout_ms", v, 1, 60_000)? as u16,
    };
    Ok(Some(MailboxConfig {
        device,
        ack_timeout_ms,
    }))
}

/// Refuses an I/O trap register that overlaps a port QEMU or its firmware uses.
fn check_qemu_io_ports(trap: TrapRegister) -> Result<(), ConfigError> {
    if trap.space != TrapSpace::Io {
        return Ok(());
    }
    let end = trap.address + u64::from(trap.width) - 1;
    for &(first, last, user) in RESERVED_IO_PORTS {
        if trap.address <= u64::from(last) && end >= u64::from(first) {
            return Err(invalid(
                "trap.address",
                Problem::ReservedPort {
                    start: trap.address,
                    end,
                    first,
                    last,
                    user,
                },
            ));
        }
    }
    Ok(())
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
            // TOML integers are i64, so addresses of 2^63 and above cannot be written; they are
            // not needed (guest-physical addresses fit in 63 bits), and a negative value is
            // refused rather than reinterpreted as one.
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
            let end = address.saturating_add(u64::from(width) - 1);
            if let Some(&(_, _, why)) = RESERVED_MMIO
                .iter()
                .find(|(first, last, _)| address <= *last && end >= *first)
            {
                return Err(bad(why));
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
    let (root_port, root_port_bdf) = root_port_of(i, d, &acpi_path)?;
    let (route, gpe) = wake_of(i, d, wake, root_port.is_some())?;
    // `validate` refused more than MAX_DEVICES (64) devices, so the index fits the trap encoding.
    let slot = Slot(i as u32);
    let power_resource = power_resource_of(i, d, slot, &parent)?;
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

/// A device's `root_port` (an ancestor of its node) and `root_port_bdf` (only with a root
/// port).
fn root_port_of(
    i: usize,
    d: &DeviceFile,
    acpi_path: &AcpiPath,
) -> Result<(Option<AcpiPath>, Option<PciAddress>), ConfigError> {
    let f = |name: &str| format!("devices[{i}].{name}");
    let root_port = match &d.root_port {
        Some(text) => {
            let rp = path(&f("root_port"), text)?;
            if !rp.is_ancestor_of(acpi_path) {
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
    Ok((root_port, root_port_bdf))
}

/// A device's wake route and GPE: `pcie_pme` needs a root port and PME support, `wakeup =
/// "always"` needs the GPE route, and a GPE is given exactly when the GPE route wakes.
fn wake_of(
    i: usize,
    d: &DeviceFile,
    wake: WakeConfig,
    has_root_port: bool,
) -> Result<(RouteKind, Option<u8>), ConfigError> {
    let f = |name: &str| format!("devices[{i}].{name}");
    let route = d.wake_route.unwrap_or(wake.route);
    if route == RouteKind::PciePme && d.wakeup != WakeupMode::Never {
        if !has_root_port {
            return Err(invalid(f("root_port"), Problem::PciePmeNeedsRootPort));
        }
        if !d.pme_support {
            return Err(invalid(f("pme_support"), Problem::PciePmeNeedsPmeSupport));
        }
    }
    let wants_gpe = route == RouteKind::Gpe && d.wakeup != WakeupMode::Never;
    if d.wakeup == WakeupMode::Always && route != RouteKind::Gpe {
        return Err(invalid(f("wakeup"), Problem::PrwNeedsGpe));
    }
    let gpe = match (d.gpe, wants_gpe) {
        (Some(g), true) => Some(range(&f("gpe"), g, 0, 0xff)? as u8),
        (None, false) => None,
        (None, true) => return Err(invalid(f("gpe"), Problem::MissingGpe { wakeup: d.wakeup })),
        (Some(_), false) => return Err(invalid(f("gpe"), Problem::UnusedGpe)),
    };
    Ok((route, gpe))
}

/// The power resource of a `d3cold` device: the given name or `PRxx`, in the node's parent
/// scope; none without D3cold.
fn power_resource_of(
    i: usize,
    d: &DeviceFile,
    slot: Slot,
    parent: &AcpiPath,
) -> Result<Option<AcpiPath>, ConfigError> {
    let f = |name: &str| format!("devices[{i}].{name}");
    Ok(match (&d.power_resource, d.d3cold) {
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
    let ports = group_root_ports(devices)?;
    check_root_port_addresses(&ports, devices)?;
    resolve_root_port_bdfs(&ports, devices)?;
    check_requester_ids(devices)?;
    Ok(ports.into_iter().map(|(p, _)| p).collect())
}

/// A root port given with its address by a device (the index of the first that gave it).
type GivenRootPort = (RootPortConfig, Option<usize>);

/// The distinct root ports in order of first use, each with its devices and the address the
/// devices give (equal wherever repeated).
fn group_root_ports(devices: &[DeviceConfig]) -> Result<Vec<GivenRootPort>, ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
    let mut ports: Vec<GivenRootPort> = Vec::new();
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
    Ok(ports)
}

/// Distinct root ports have distinct addresses, and no device has a root port's address.
fn check_root_port_addresses(
    ports: &[GivenRootPort],
    devices: &[DeviceConfig],
) -> Result<(), ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
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
            if j == i {
                return Err(invalid(
                    f(i, "root_port_bdf"),
                    Problem::RootPortIsTheDevice {
                        bdf: bdf.to_string(),
                    },
                ));
            }
            return Err(invalid(
                f(i, "root_port_bdf"),
                Problem::Duplicate {
                    value: format!("{bdf} (the device's pci_address)"),
                    other: j,
                },
            ));
        }
    }
    Ok(())
}

/// Every device behind a root port gets the port's address, must sit below it, and needs one
/// for the `pcie_pme` route.
fn resolve_root_port_bdfs(
    ports: &[GivenRootPort],
    devices: &mut [DeviceConfig],
) -> Result<(), ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
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
        if d.route == RouteKind::PciePme && d.has_wake() && d.root_port_bdf.is_none() {
            return Err(invalid(
                f(i, "root_port_bdf"),
                Problem::MissingRootPortBdf {
                    root_port: rp.asl(),
                },
            ));
        }
    }
    Ok(())
}

/// The root ports' PME queues and the notifier key on the requester ID: unique among the
/// `pcie_pme` devices that wake.
fn check_requester_ids(devices: &[DeviceConfig]) -> Result<(), ConfigError> {
    let f = |i: usize, name: &str| format!("devices[{i}].{name}");
    for (i, d) in devices.iter().enumerate() {
        if d.route != RouteKind::PciePme || !d.has_wake() {
            continue;
        }
        if let Some(j) = devices[..i].iter().position(|e| {
            e.route == RouteKind::PciePme && e.has_wake() && e.requester_id() == d.requester_id()
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
    Ok(())
}
