//! What `vfio-pm qemu` derives from a QEMU command line: each passed-through device's host
//! address, where the guest sees it, and the ACPI node QEMU's DSDT gives it, or a clear refusal.
//!
//! ACPI naming, as QEMU 7.2's q35 DSDT does it (hw/i386/acpi-build.c,
//! `build_append_pci_bus_devices`; checked by disassembling the DSDT of this machine's QEMU
//! 7.2): a device on `pcie.0` at devfn `d` is `\_SB.PCI0.S<d as two upper-case hex digits>`
//! (00:05.0 → `S28`, 00:06.0 → `S30`), and only function 0 of a non-bridge slot is described.
//! A cold-plugged root port is described on every function, and, with ACPI PCI hotplug on
//! bridges enabled (`ICH9-LPC.acpi-pci-hotplug-with-bridge-support`, on by default for q35
//! machine types 6.1 and newer), its secondary bus gets `S00` for slot 0 with `_SUN` and
//! `_EJ0` (a hotplug slot): a device behind the port at devfn 0x10 is `\_SB.PCI0.S10.S00`.
//! With that hotplug off, the port's children have no node.

use super::args::{self, Collected, Parsed};
use super::opts::{parse_bool, Props};
use serde::Serialize;
use std::fmt;
use vfio_pm::PciAddress;

/// The drivers that pass a host device through with VFIO.
pub const VFIO_DRIVERS: &[&str] = &["vfio-pci", "vfio-pci-nohotplug"];
/// The PCIe root port models.
pub const ROOT_PORT_DRIVERS: &[&str] = &["pcie-root-port", "ioh3420"];
/// q35's root bus.
pub const ROOT_BUS: &str = "pcie.0";
/// The global that turns ACPI hotplug (and so the ACPI nodes) below root ports on or off.
pub const BRIDGE_HOTPLUG_GLOBAL: &str = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support";

/// Why a command line cannot be handled. Each says what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// The words could not be split into options.
    Walk(args::WalkError),
    /// An option's value does not parse.
    Value(args::BadValue),
    /// No `-machine`: QEMU's default x86 machine is `pc` (i440fx).
    NoMachine,
    /// Not q35.
    NotQ35 {
        /// The machine type given.
        machine: String,
    },
    /// A device property is missing or wrong.
    Device {
        /// `id=` or `vfio-pci #N`, and the argument index.
        device: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The same `id` twice.
    DuplicateId(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Walk(e) => write!(f, "QEMU arguments: {e}"),
            Self::Value(b) => write!(f, "QEMU argument {} (-{}): {}", b.index, b.option, b.error),
            Self::NoMachine => f.write_str(
                "no -machine: QEMU's default x86 machine is pc (i440fx), which has no PCIe; \
                 give -machine q35",
            ),
            Self::NotQ35 { machine } => write!(
                f,
                "machine {machine:?} is not q35: vfio-pm qemu needs a q35 machine \
                 (-machine q35 or pc-q35-*); pc/i440fx has no PCIe power management"
            ),
            Self::Device { device, reason } => write!(f, "{device}: {reason}"),
            Self::DuplicateId(id) => write!(f, "id {id:?} is used by two devices"),
        }
    }
}

impl std::error::Error for PlanError {}

/// The machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// The type (`q35`, `pc-q35-7.2`).
    pub machine_type: String,
    /// Every `-machine` value, in order.
    pub raw: Vec<String>,
    /// ACPI hotplug on bridges (gives root ports' children their ACPI nodes).
    pub bridge_hotplug: bool,
}

/// A PCIe root port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootPort {
    /// `id=`.
    pub id: String,
    /// `bus=` (default `pcie.0`).
    pub bus: String,
    /// Slot on that bus.
    pub slot: u8,
    /// Function.
    pub function: u8,
    /// `chassis=`.
    pub chassis: Option<u32>,
    /// `slot=` (the port's physical slot number, not its address).
    pub port_slot: Option<u32>,
    /// Its node in QEMU's DSDT.
    pub acpi_path: String,
}

/// A passed-through device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VfioDevice {
    /// Index of its `-device` word in the arguments.
    pub arg_index: usize,
    /// `vfio-pci` or `vfio-pci-nohotplug`.
    pub driver: String,
    /// `id=`.
    pub id: Option<String>,
    /// The host device (`host=` or `sysfsdev=`).
    pub host: PciAddress,
    /// `bus=` (default `pcie.0`).
    pub bus: String,
    /// Slot on that bus.
    pub slot: u8,
    /// Function.
    pub function: u8,
    /// `multifunction=`.
    pub multifunction: bool,
    /// The root port it sits behind (`id`), if any.
    pub root_port: Option<String>,
    /// Where the guest sees it when the bus number is known (on `pcie.0`: bus 00); behind a
    /// root port the guest numbers the bus itself.
    pub guest_bdf: Option<String>,
    /// Its node in QEMU's DSDT, when QEMU emits one.
    pub acpi_path: Option<String>,
    /// Why there is no node, or what to know about it.
    pub acpi_note: String,
    /// QEMU puts `_EJ0` on the node (ACPI hotplug slot).
    pub acpi_eject: bool,
}

/// Everything derived from one command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QemuPlan {
    /// The QEMU binary (the first word).
    pub binary: String,
    /// The machine.
    pub machine: Machine,
    /// Passed-through devices, in command line order.
    pub devices: Vec<VfioDevice>,
    /// Every root port.
    pub root_ports: Vec<RootPort>,
    /// `-acpitable` values already there.
    pub acpi_tables: Vec<String>,
    /// `-chardev` ids already taken.
    pub chardev_ids: Vec<String>,
    /// `-global` values.
    pub globals: Vec<String>,
    /// Things that may make the plan wrong (`-readconfig`, `-set`).
    pub warnings: Vec<String>,
}

/// Parses `slot[.function]` in hex (`0x` allowed), or a JSON number as a devfn.
pub fn parse_addr(props: &Props, value: &str) -> Option<(u8, u8)> {
    if props.is_number("addr") {
        let devfn: u16 = value.parse().ok()?;
        return (devfn <= 0xff).then_some(((devfn >> 3) as u8, (devfn & 7) as u8));
    }
    let hex = |t: &str| {
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        (!t.is_empty() && t.len() <= 2)
            .then(|| u8::from_str_radix(t, 16).ok())
            .flatten()
    };
    let (slot, function) = match value.split_once('.') {
        Some((s, f)) => (hex(s)?, hex(f)?),
        None => (hex(value)?, 0),
    };
    (slot <= 0x1f && function <= 7).then_some((slot, function))
}

fn parse_u32(v: &str) -> Option<u32> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// `\_SB.PCI0.Sxx` for devfn `d` under `parent`.
fn node(parent: &str, slot: u8, function: u8) -> String {
    format!("{parent}.S{:02X}", (slot << 3) | function)
}

fn machine(c: &Collected) -> Result<Machine, PlanError> {
    let machine_type = c
        .machines
        .iter()
        .rev()
        .find_map(|m| m.props.get("type"))
        .ok_or(PlanError::NoMachine)?
        .to_string();
    let q35_version = if machine_type == "q35" {
        Some(None)
    } else {
        machine_type.strip_prefix("pc-q35-").map(Some)
    };
    let Some(version) = q35_version else {
        return Err(PlanError::NotQ35 {
            machine: machine_type,
        });
    };
    // q35 machine types before 6.1 default to native PCIe hotplug: no ACPI nodes below ports.
    let mut bridge_hotplug = version.map_or(true, |v| {
        let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0)) >= (6, 1)
    });
    for g in &c.globals {
        if let Some(v) = g
            .strip_prefix(BRIDGE_HOTPLUG_GLOBAL)
            .and_then(|r| r.strip_prefix('='))
        {
            bridge_hotplug = parse_bool(v).unwrap_or(bridge_hotplug);
        }
    }
    Ok(Machine {
        machine_type,
        raw: c.machines.iter().map(|m| m.raw.clone()).collect(),
        bridge_hotplug,
    })
}

fn label(p: &Parsed, driver: &str, n: usize) -> String {
    match p.props.get("id") {
        Some(id) => format!("{driver} id={id} (argument {})", p.index),
        None => format!("{driver} #{n} (argument {})", p.index),
    }
}

fn dev_err(device: &str, reason: impl Into<String>) -> PlanError {
    PlanError::Device {
        device: device.to_string(),
        reason: reason.into(),
    }
}

fn root_port(p: &Parsed, n: usize) -> Result<RootPort, PlanError> {
    let driver = p.props.get("driver").unwrap_or("pcie-root-port");
    let who = label(p, driver, n);
    let id = p
        .props
        .get("id")
        .ok_or_else(|| dev_err(&who, "a root port needs id= (devices name it with bus=)"))?;
    let bus = p.props.get("bus").unwrap_or(ROOT_BUS).to_string();
    let addr = p.props.get("addr").ok_or_else(|| {
        dev_err(
            &who,
            "no addr=: QEMU would pick the slot; give the port an explicit addr=",
        )
    })?;
    let (slot, function) = parse_addr(&p.props, addr)
        .ok_or_else(|| dev_err(&who, format!("addr={addr:?} is not slot[.function] in hex")))?;
    Ok(RootPort {
        id: id.to_string(),
        acpi_path: node(r"\_SB.PCI0", slot, function),
        bus,
        slot,
        function,
        chassis: p.props.get("chassis").and_then(parse_u32),
        port_slot: p.props.get("slot").and_then(parse_u32),
    })
}

fn host_address(p: &Parsed, who: &str) -> Result<PciAddress, PlanError> {
    if let Some(fd) = p.props.get("fd") {
        return Err(dev_err(
            who,
            format!(
                "fd={fd}: a device given by an iommufd cdev fd is not supported; \
                 name it with host=DDDD:BB:DD.F"
            ),
        ));
    }
    let from_host = p.props.get("host").map(|h| {
        h.parse::<PciAddress>()
            .map_err(|e| dev_err(who, format!("host={h:?}: {e}")))
    });
    let from_sysfs = p.props.get("sysfsdev").map(|s| {
        let base = s.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        base.parse::<PciAddress>().map_err(|e| {
            dev_err(
                who,
                format!("sysfsdev={s:?} does not end in a PCI address: {e}"),
            )
        })
    });
    match (from_host, from_sysfs) {
        (Some(h), Some(s)) => {
            let (h, s) = (h?, s?);
            if h == s {
                Ok(h)
            } else {
                Err(dev_err(
                    who,
                    format!("host={h} and sysfsdev= name different devices ({s})"),
                ))
            }
        }
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => Err(dev_err(who, "no host= (or sysfsdev=): which host device?")),
    }
}

fn vfio_device(
    p: &Parsed,
    n: usize,
    ports: &[RootPort],
    machine: &Machine,
) -> Result<VfioDevice, PlanError> {
    let driver = p.props.get("driver").unwrap_or_default().to_string();
    let who = label(p, &driver, n);
    let host = host_address(p, &who)?;
    let bus = p.props.get("bus").unwrap_or(ROOT_BUS).to_string();
    let port = (bus != ROOT_BUS)
        .then(|| {
            ports.iter().find(|r| r.id == bus).ok_or_else(|| {
                dev_err(
                    &who,
                    format!(
                        "bus={bus:?} is neither {ROOT_BUS} nor a pcie-root-port id: devices behind \
                         other bridges (pcie-pci-bridge, switches, pxb) are not supported"
                    ),
                )
            })
        })
        .transpose()?;
    if let Some(rp) = port {
        if rp.bus != ROOT_BUS {
            return Err(dev_err(
                &who,
                format!(
                    "root port {} sits on {:?}, not {ROOT_BUS}: not supported",
                    rp.id, rp.bus
                ),
            ));
        }
    }
    let (slot, function) = match (p.props.get("addr"), port) {
        (Some(a), _) => parse_addr(&p.props, a).ok_or_else(|| {
            dev_err(
                &who,
                format!("addr={a:?} is not slot[.function] in hex (e.g. 0x5 or 06.0)"),
            )
        })?,
        // Below a root port the only slot is 0: what QEMU picks is known.
        (None, Some(_)) => (0, 0),
        (None, None) => {
            return Err(dev_err(
                &who,
                "no addr=: QEMU would pick the slot, and the ACPI node depends on it; \
                 give an explicit addr= (e.g. addr=0x6)",
            ))
        }
    };
    if port.is_some() && slot != 0 {
        return Err(dev_err(
            &who,
            format!("addr={slot:#x}: below a PCIe root port only slot 0 exists"),
        ));
    }
    let multifunction = p
        .props
        .get("multifunction")
        .and_then(parse_bool)
        .unwrap_or(false);
    let (acpi_path, acpi_note, acpi_eject) = match port {
        None if function == 0 => (Some(node(r"\_SB.PCI0", slot, 0)), String::new(), false),
        None => (
            None,
            "QEMU's DSDT describes only function 0 of a slot on pcie.0".to_string(),
            false,
        ),
        Some(rp) if !machine.bridge_hotplug => (
            None,
            format!(
                "ACPI hotplug on bridges is off, so QEMU's DSDT has no node below root port {}",
                rp.id
            ),
            false,
        ),
        Some(rp) if function != 0 => (
            None,
            format!(
                "QEMU's DSDT describes only function 0 below root port {}",
                rp.id
            ),
            false,
        ),
        Some(rp) => (
            Some(node(&rp.acpi_path, 0, 0)),
            format!(
                "ACPI hotplug slot: QEMU puts _SUN and _EJ0 on it ({BRIDGE_HOTPLUG_GLOBAL}=on)"
            ),
            true,
        ),
    };
    Ok(VfioDevice {
        arg_index: p.index,
        driver,
        id: p.props.get("id").map(str::to_string),
        host,
        guest_bdf: port
            .is_none()
            .then(|| format!("0000:00:{slot:02x}.{function}")),
        root_port: port.map(|r| r.id.clone()),
        bus,
        slot,
        function,
        multifunction,
        acpi_path,
        acpi_note,
        acpi_eject,
    })
}

/// Derives the plan from a QEMU command line (`argv[0]` is the binary).
pub fn plan(argv: &[String]) -> Result<QemuPlan, PlanError> {
    let (binary, rest) = argv
        .split_first()
        .map_or(("", &[][..]), |(b, r)| (b.as_str(), r));
    let options = args::walk(rest).map_err(PlanError::Walk)?;
    let c = args::collect(&options).map_err(PlanError::Value)?;
    let machine = machine(&c)?;
    let driver = |p: &Parsed| p.props.get("driver").unwrap_or_default().to_string();
    let ports: Vec<RootPort> = c
        .devices
        .iter()
        .filter(|p| ROOT_PORT_DRIVERS.contains(&driver(p).as_str()))
        .enumerate()
        .map(|(n, p)| root_port(p, n))
        .collect::<Result<_, _>>()?;
    let devices: Vec<VfioDevice> = c
        .devices
        .iter()
        .filter(|p| VFIO_DRIVERS.contains(&driver(p).as_str()))
        .enumerate()
        .map(|(n, p)| vfio_device(p, n, &ports, &machine))
        .collect::<Result<_, _>>()?;
    let mut ids: Vec<&str> = c.devices.iter().filter_map(|p| p.props.get("id")).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(PlanError::DuplicateId(w[0].to_string()));
    }
    let warnings = c
        .hidden
        .iter()
        .map(|h| format!("{h}: devices or properties set this way are not seen by vfio-pm"))
        .collect();
    Ok(QemuPlan {
        binary: binary.to_string(),
        machine,
        devices,
        root_ports: ports,
        acpi_tables: c.acpi_tables.iter().map(|p| p.raw.clone()).collect(),
        chardev_ids: c
            .chardevs
            .iter()
            .filter_map(|p| p.props.get("id").map(str::to_string))
            .collect(),
        globals: c.globals,
        warnings,
    })
}
