//! From a QEMU command line to what `vfio-pm qemu` adds: the SSDT with a power resource per
//! passed-through device, the doorbell (isa-debugcon on a chardev socket the agent listens
//! on), the mailbox (an ivshmem-plain device over a file the agent reads), and the `-global`
//! that keeps QEMU's ACPI hotplug from putting `_EJ0` on a device behind a root port (Linux
//! never uses ACPI D3cold on a node with `_EJ0`). Pure: it decides, the agent acts.

use super::args;
use super::opts::Props;
use super::plan::{QemuPlan, VfioDevice, BRIDGE_HOTPLUG_GLOBAL, ROOT_BUS};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vfio_pm::{PciAddress, Sysfs};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, NodeMode, TrapFile, VmmConfig, WakeupMode};
use vfio_pm_vmm::controller::needs_guest_driver;

/// The chardev id of the doorbell.
pub const DOORBELL_CHARDEV: &str = "vfiopm-db";
/// The memory backend id of the mailbox.
pub const MAILBOX_MEMDEV: &str = "vfiopm-shm";
/// The device id of the mailbox.
pub const MAILBOX_DEVICE: &str = "vfiopm-mailbox";

/// What a user may change (flags of `vfio-pm qemu`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Options {
    /// I/O port of the doorbell (default 0x440).
    pub trap_port: u16,
    /// Slot on `pcie.0` for the mailbox device (default 0x1e).
    pub mailbox_slot: u8,
    /// How long the guest's `_ON` waits at least for the agent's reply.
    pub ack_timeout_ms: u16,
    /// Anti-thrash: least time between two host transitions of a device.
    pub min_residency: Duration,
    /// Devices that need the wakeup variant but get plain entry anyway.
    pub allow_plain_entry: Vec<PciAddress>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            trap_port: 0x440,
            mailbox_slot: 0x1e,
            ack_timeout_ms: vfio_pm_vmm::config::DEFAULT_ACK_TIMEOUT_MS,
            min_residency: vfio_pm_vmm::controller::DEFAULT_MIN_RESIDENCY,
            allow_plain_entry: Vec::new(),
        }
    }
}

/// The files of one VM's agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Paths {
    /// The directory holding them.
    pub dir: PathBuf,
    /// The generated SSDT (`-acpitable file=`).
    pub ssdt: PathBuf,
    /// The mailbox's backing file (`-object memory-backend-file,mem-path=`).
    pub mailbox: PathBuf,
    /// The doorbell socket the agent listens on (`-chardev socket,path=`).
    pub socket: PathBuf,
    /// What `attach` needs: this setup, as JSON.
    pub state: PathBuf,
}

impl Paths {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ssdt: dir.join("ssdt.aml"),
            mailbox: dir.join("mailbox"),
            socket: dir.join("doorbell.sock"),
            state: dir.join("state.json"),
        }
    }
}

/// One passed-through device and what vfio-pm does with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Managed {
    /// The host device.
    pub host: PciAddress,
    /// Where the guest sees it (`bus` nominal behind a root port: the guest numbers it).
    pub guest: PciAddress,
    /// Its ACPI node in the guest.
    pub acpi_path: String,
    /// Its slot (index in the configuration) when managed; `None`: left to the guest alone.
    pub slot: Option<u32>,
    /// Why it is or is not managed.
    pub note: String,
}

/// Everything decided for one VM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    /// The user's options.
    pub options: Options,
    /// The files.
    pub paths: Paths,
    /// Every passed-through device.
    pub devices: Vec<Managed>,
    /// The configuration the SSDT is generated from (managed devices in slot order).
    pub config: ConfigFile,
    /// The arguments to add to QEMU's.
    pub extra_args: Vec<String>,
}

impl Setup {
    /// The validated configuration.
    pub fn vmm_config(&self) -> Result<VmmConfig> {
        VmmConfig::validate(&self.config).context("the generated configuration is invalid")
    }

    /// The managed devices' host addresses, in slot order.
    pub fn managed_hosts(&self) -> Vec<PciAddress> {
        let mut m: Vec<(u32, PciAddress)> = self
            .devices
            .iter()
            .filter_map(|d| d.slot.map(|s| (s, d.host)))
            .collect();
        m.sort_unstable();
        m.into_iter().map(|(_, h)| h).collect()
    }
}

/// Vendor ID and 24-bit class code of a host device, from sysfs.
fn identity(sysfs: &Sysfs, host: PciAddress) -> Result<(u16, u32)> {
    let dir = sysfs
        .device(host)
        .with_context(|| format!("host device {host}"))?;
    let read = |name: &str| -> Result<u32> {
        let p = dir.dir().join(name);
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(
                std::fs::File::open(&p).with_context(|| format!("opening {}", p.display()))?,
                64,
            ),
            &mut text,
        )
        .with_context(|| format!("reading {}", p.display()))?;
        let t = text.trim();
        u32::from_str_radix(t.trim_start_matches("0x"), 16)
            .with_context(|| format!("{}: {t:?} is not a hex number", p.display()))
    };
    let vendor = u16::try_from(read("vendor")?).context("vendor ID above 0xffff")?;
    Ok((vendor, read("class")? & 0xff_ffff))
}

/// The slots of `pcie.0` that some `-device` takes with an explicit `addr`.
fn root_bus_slots(argv: &[String]) -> Vec<u8> {
    let Ok(options) = args::walk(argv.get(1..).unwrap_or(&[])) else {
        return Vec::new();
    };
    options
        .iter()
        .filter(|o| o.name == "device")
        .filter_map(|o| Props::parse(o.value.as_deref()?, Some("driver")).ok())
        .filter(|p| p.get("bus").map_or(true, |b| b == ROOT_BUS))
        .filter_map(|p| {
            let addr = p.get("addr")?;
            super::plan::parse_addr(&p, addr).map(|(slot, _)| slot)
        })
        .collect()
}

fn guest_address(bus: u8, d: &VfioDevice) -> Result<PciAddress> {
    PciAddress::new(0, bus, d.slot, d.function).with_context(|| {
        format!(
            "{}: guest slot {:#x}.{} is not a PCI address",
            d.host, d.slot, d.function
        )
    })
}

/// The node and guest address vfio-pm gives `d`, and whether it declares the node itself.
fn placement(
    plan: &QemuPlan,
    d: &VfioDevice,
) -> Result<(String, PciAddress, NodeMode, Option<String>)> {
    let devfn = (d.slot << 3) | d.function;
    match &d.root_port {
        None => {
            let acpi = d
                .acpi_path
                .clone()
                .with_context(|| format!("{}: no ACPI node ({})", d.host, d.acpi_note))?;
            Ok((acpi, guest_address(0, d)?, NodeMode::Existing, None))
        }
        Some(port_id) => {
            let (k, port) = plan
                .root_ports
                .iter()
                .enumerate()
                .find(|(_, p)| &p.id == port_id)
                .with_context(|| format!("{}: root port {port_id:?} not found", d.host))?;
            // With ACPI hotplug on bridges off (vfio-pm adds the -global), QEMU describes no
            // node below the port: the SSDT declares it. The bus number is nominal (first
            // bridge: 1); it names no hardware and no wake route uses it.
            let acpi = format!("{}.S{devfn:02X}", port.acpi_path);
            let bus = u8::try_from(k + 1).context("more than 255 root ports")?;
            Ok((
                acpi,
                guest_address(bus, d)?,
                NodeMode::Declare,
                Some(port.acpi_path.clone()),
            ))
        }
    }
}

/// Decides everything for `plan` (parsed from `argv`).
pub fn prepare(
    sysfs: &Sysfs,
    argv: &[String],
    plan: &QemuPlan,
    options: Options,
    dir: &Path,
) -> Result<Setup> {
    let paths = Paths::in_dir(dir);
    if plan.devices.is_empty() {
        bail!("no -device vfio-pci in the QEMU arguments: nothing to manage");
    }
    let mut devices = Vec::new();
    let mut files = Vec::new();
    for d in &plan.devices {
        if d.function != 0 {
            devices.push(Managed {
                host: d.host,
                guest: guest_address(0, d)?,
                acpi_path: String::new(),
                slot: None,
                note: format!(
                    "not managed: function {} has no ACPI node of its own in QEMU's DSDT",
                    d.function
                ),
            });
            continue;
        }
        let (acpi_path, guest, node, root_port) = placement(plan, d)?;
        let (vendor, class) = identity(sysfs, d.host)?;
        let plain_ok = options.allow_plain_entry.contains(&d.host);
        if needs_guest_driver(vendor, class) && !plain_ok {
            devices.push(Managed {
                host: d.host,
                guest,
                acpi_path,
                slot: None,
                note: "not managed: an NVIDIA display/3D controller needs its guest driver before every low-power entry \
                       (LOW_POWER_ENTRY_WITH_WAKEUP), and stock QEMU cannot deliver the wake to the guest; the guest keeps \
                       it in D3hot. --allow-plain-entry overrides"
                    .into(),
            });
            continue;
        }
        let slot = files.len() as u32;
        files.push(DeviceFile {
            d3cold: true,
            wakeup: WakeupMode::Never,
            node,
            root_port,
            ..DeviceFile::new(&acpi_path, guest, vendor, class)
        });
        devices.push(Managed {
            host: d.host,
            guest,
            acpi_path,
            slot: Some(slot),
            note: "managed: guest _OFF -> LOW_POWER_ENTRY, _ON -> LOW_POWER_EXIT (plain entry: host accesses re-suspend it)".into(),
        });
    }
    if files.is_empty() {
        bail!(
            "no passed-through device can be managed: {}",
            devices
                .iter()
                .map(|d| format!("{}: {}", d.host, d.note))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let taken = root_bus_slots(argv);
    if taken.contains(&options.mailbox_slot)
        || plan
            .root_ports
            .iter()
            .any(|p| p.bus == ROOT_BUS && p.slot == options.mailbox_slot)
    {
        bail!(
            "pcie.0 slot {:#x} is taken: choose a free one with --mailbox-slot",
            options.mailbox_slot
        );
    }
    if options.mailbox_slot == 0 || options.mailbox_slot > 0x1e {
        bail!(
            "--mailbox-slot {:#x}: use a free slot of pcie.0 between 0x1 and 0x1e",
            options.mailbox_slot
        );
    }
    for id in [DOORBELL_CHARDEV] {
        if plan.chardev_ids.iter().any(|c| c == id) {
            bail!("the QEMU arguments already use chardev id {id:?}");
        }
    }
    let mut trap = TrapFile::io(options.trap_port);
    let mailbox_node = format!(r"\_SB.PCI0.S{:02X}", options.mailbox_slot << 3);
    trap.mailbox = Some(mailbox_node);
    trap.ack_timeout_ms = Some(i64::from(options.ack_timeout_ms));
    let config = ConfigFile::new(trap, files);
    let text = toml::to_string(&config).context("serializing the configuration")?;
    // The TOML path adds QEMU's reserved-port check.
    VmmConfig::from_toml_str(&text).context("the doorbell port or a device does not fit QEMU")?;

    let mut extra_args = vec![
        "-acpitable".to_string(),
        format!("file={}", paths.ssdt.display()),
        "-chardev".into(),
        format!(
            "socket,id={DOORBELL_CHARDEV},path={},reconnect=1",
            paths.socket.display()
        ),
        "-device".into(),
        format!(
            "isa-debugcon,iobase={:#x},chardev={DOORBELL_CHARDEV}",
            options.trap_port
        ),
        "-object".into(),
        format!(
            "memory-backend-file,id={MAILBOX_MEMDEV},mem-path={},size={},share=on",
            paths.mailbox.display(),
            vfio_pm_vmm::mailbox::MAILBOX_BYTES
        ),
        "-device".into(),
        format!(
            "ivshmem-plain,id={MAILBOX_DEVICE},memdev={MAILBOX_MEMDEV},bus={ROOT_BUS},addr={:#x}",
            options.mailbox_slot
        ),
    ];
    let behind_port = plan.devices.iter().any(|d| d.root_port.is_some());
    if behind_port && plan.machine.bridge_hotplug {
        if plan
            .globals
            .iter()
            .any(|g| g.starts_with(BRIDGE_HOTPLUG_GLOBAL))
        {
            bail!("{BRIDGE_HOTPLUG_GLOBAL} is set on: it puts _EJ0 on the device nodes behind root ports, and Linux never uses ACPI D3cold on such a node; remove it");
        }
        extra_args.push("-global".into());
        extra_args.push(format!("{BRIDGE_HOTPLUG_GLOBAL}=off"));
    }
    Ok(Setup {
        options,
        paths,
        devices,
        config,
        extra_args,
    })
}
