//! SSDT generation: virtual ACPI power resources for passthrough devices.
//!
//! [`build_ssdt`] turns a validated [`VmmConfig`] into a complete SSDT (header, OEM ids, checksum)
//! built with `acpi_tables` plus the objects in `aml/ops.rs` that it lacks or gets wrong. For a QEMU
//! e1000e at 00:05.0 (`\_SB.PCI0.S28`, slot 0, trap port 0x440, GPE 0x10) the table reads, as
//! `iasl -d` prints it:
//!
//! ```text
//! External (_SB_.PCI0, DeviceObj)
//! External (_SB_.PCI0.S28_, DeviceObj)
//! Scope (\_SB) {
//!     OperationRegion (VPMR, SystemIO, 0x0440, One)
//!     Field (VPMR, ByteAcc, NoLock, Preserve) { VPMT, 8 }
//! }
//! Scope (\_SB.PCI0) {
//!     PowerResource (PR00, 0x00, 0x0000) {
//!         Name (STAT, One)
//!         Method (_STA, 0, NotSerialized) { Return (STAT) }
//!         Method (_ON, 0, NotSerialized) { \_SB.VPMT = 0x80   STAT = One }
//!         Method (_OFF, 0, NotSerialized) { \_SB.VPMT = Zero  STAT = Zero }
//!     }
//! }
//! Scope (\_SB.PCI0.S28) {
//!     Name (_PR0, Package (0x01) { \_SB.PCI0.PR00 })
//!     Name (_PR3, Package (0x01) { \_SB.PCI0.PR00 })
//!     Name (_S0W, 0x04)
//! }
//! Scope (\_GPE) {
//!     Method (_E10, 0, NotSerialized) { Notify (\_SB.PCI0.S28, 0x02) }
//! }
//! ```
//!
//! Layout decisions (each observed to matter with real guests, see the project's reference notes):
//!
//! * Device nodes the DSDT already has are declared `External` and extended with
//!   `Scope (\_SB.PCI0.S28)`; with `node = "declare"` the SSDT declares them as
//!   `Scope (\_SB.PCI0) { Device (S28) { Name (_ADR, ...) ... } }`, never with a multi-segment
//!   `Device` name (iasl cannot recompile its own disassembly of that).
//! * One power resource per D3cold device, `PRxx` (xx = slot, hex) in the device's parent scope,
//!   `SystemLevel` 0, `ResourceOrder` 0. Its `_STA` returns `STAT`, a `Name` that `_ON`/`_OFF`
//!   update after writing the trap register (encoding in [`crate::trap`]), so the VMM never
//!   answers reads. `STAT` starts at 1: the device is powered when the VM starts.
//! * `_PR0` and `_PR3` name the resource (D3cold devices only: a resource in `_PR0` alone would be
//!   turned off in D3hot). `_S0W` is 4 for D3cold devices, 3 otherwise.
//! * A root port (`root_port`) gets `_PR0`/`_PR3` naming the resources of all D3cold devices behind
//!   it (the guest turns a shared resource off only when every user is off) and `_S0W` 4 if all of
//!   them are D3cold, 3 otherwise.
//! * Wake, GPE route: `\_GPE._Exx` (or `_Lxx`), xx = the device's GPE, doing `Notify (dev, 2)`;
//!   `_PRW` = `Package { gpe, 0x03 }` only as [`crate::config::WakeupMode`] says.
//! * Wake, GED route (hardware-reduced ACPI): `\_SB.VPMW (slot)` does `Notify (dev, 2)` for the
//!   device in that slot. The VMM's generic event device `_EVT` handler calls it, e.g.
//!   `If (events & VFIO_PM_WAKE) { \_SB.VPMW (slot_register) }`.
//! * Wake, PCIe PME route (`pcie_pme`): no AML at all, no `_PRW`. The wake is native: PME_Status
//!   in the device's PMCSR and a PM_PME message to the root port, whose interrupt the guest's PCIe
//!   PME service driver handles. The endpoint and the root port keep `_PR0`/`_PR3`/`_S0W`.
//!
//! The route is per device ([`DeviceConfig::route`]), so one table can mix them.

mod mailbox;
#[cfg(any(test, feature = "test-utils"))]
pub mod ops;
#[cfg(not(any(test, feature = "test-utils")))]
mod ops;
#[cfg(any(test, feature = "test-utils"))]
pub mod tools;

pub use mailbox::{BAR2_OFFSET, MAILBOX_METHOD};

#[cfg(any(test, feature = "test-utils"))]
pub use tools::{compile_asl, disassemble, disassemble_full, AmlToolError, IaslOutput};

use crate::config::{
    AcpiPath, DeviceConfig, GpeTrigger, NameSeg, NodeMode, RouteKind, TrapSpace, VmmConfig,
};
use crate::request::{GuestRequest, PowerAction};
use acpi_tables::aml::{
    self, Arg, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path, Return, Scope, Store,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use ops::{External, ExternalBlock, PowerResource, Raw, OBJECT_TYPE_DEVICE};

/// Name of the trap OperationRegion, under `\_SB`.
pub(crate) const TRAP_REGION: &str = "VPMR";
/// Name of the trap field, under `\_SB`.
pub(crate) const TRAP_FIELD: &str = "VPMT";
/// Name of the GED wake method, under `\_SB`.
pub(crate) const GED_METHOD: &str = "VPMW";
/// Name of the power state `Name` inside each power resource.
pub(crate) const STATE_NAME: &str = "STAT";
/// `_PRW` sleep state: the deepest system state the device can wake from.
pub(crate) const PRW_SLEEP_STATE: u8 = 3;
/// SSDT revision (2: 64-bit integers).
pub const SSDT_REVISION: u8 = 2;

/// An `acpi_tables` path for a validated absolute path. Never panics: every segment is 4 bytes.
fn abs(p: &AcpiPath) -> Path {
    let mut s = String::from("\\");
    for (i, seg) in p.segments().iter().enumerate() {
        if i > 0 {
            s.push('.');
        }
        s.push_str(seg.as_str());
    }
    Path::new(&s)
}

/// An `acpi_tables` path for one validated segment.
fn rel(seg: NameSeg) -> Path {
    Path::new(seg.as_str())
}

/// A name segment from a constant; the constants used here are all valid names (unit-tested).
fn seg(s: &'static str) -> NameSeg {
    let mut b = [b'_'; 4];
    for (dst, src) in b.iter_mut().zip(s.bytes()) {
        *dst = src;
    }
    NameSeg::from_raw(b)
}

/// `\_SB.VPMT`, the trap field.
fn trap_field_path() -> AcpiPath {
    AcpiPath::from_raw(vec![seg("_SB_"), seg(TRAP_FIELD)])
}

/// The value `_ON` (or `_OFF`) of `device` writes to the trap register.
pub fn trap_value(device: &DeviceConfig, action: PowerAction) -> u64 {
    crate::trap::encode(GuestRequest {
        slot: device.slot,
        action,
    })
}

/// The GPE method name for `gpe`: `_Exx` or `_Lxx` (xx upper-case hex).
pub fn gpe_method_name(gpe: u8, trigger: GpeTrigger) -> NameSeg {
    let prefix = match trigger {
        GpeTrigger::Edge => 'E',
        GpeTrigger::Level => 'L',
    };
    let hex = format!("{gpe:02X}");
    let h = hex.as_bytes();
    NameSeg::from_raw([b'_', prefix as u8, h[0], h[1]])
}

/// The AML body (everything after the 36-byte header) for `config`.
pub(crate) fn build_body(config: &VmmConfig) -> Vec<u8> {
    let mut out = Vec::new();
    let devices = config.devices();
    build_externals(config, &mut out);
    // The trap register, the mailbox method and, for the GED route, the wake method.
    build_sb_scope(config).to_aml_bytes(&mut out);
    if let Some(mb) = config.mailbox() {
        mailbox::bar_fields(mb, &mut out);
    }

    // Per device: power resource and device objects.
    for d in devices {
        build_device(d, config.mailbox().is_some(), &mut out);
    }

    build_root_ports(devices, &mut out);
    build_gpe_methods(config, &mut out);
    out
}

/// External declarations: every ancestor scope except \_SB, existing device nodes, root ports.
fn build_externals(config: &VmmConfig, out: &mut Vec<u8>) {
    let devices = config.devices();
    let mut externals: Vec<AcpiPath> = Vec::new();
    let add_with_ancestors = |p: &AcpiPath, externals: &mut Vec<AcpiPath>| {
        let segs = p.segments();
        for n in 2..=segs.len() {
            if let Some(a) = AcpiPath::from_segments(segs[..n].to_vec()) {
                if !externals.contains(&a) {
                    externals.push(a);
                }
            }
        }
    };
    for d in devices {
        if let Some(parent) = d.acpi_path.parent() {
            add_with_ancestors(&parent, &mut externals);
        }
        if d.node == NodeMode::Existing {
            add_with_ancestors(&d.acpi_path, &mut externals);
        }
        if let Some(rp) = &d.root_port {
            add_with_ancestors(rp, &mut externals);
        }
    }
    if let Some(mb) = config.mailbox() {
        add_with_ancestors(&mb.device, &mut externals);
    }
    // A device the SSDT declares itself is not External.
    externals.retain(|p| {
        !devices
            .iter()
            .any(|d| d.node == NodeMode::Declare && d.acpi_path == *p)
    });
    externals.sort_by_key(|p| p.asl());
    ExternalBlock {
        externals: externals
            .iter()
            .map(|path| External {
                path,
                object_type: OBJECT_TYPE_DEVICE,
                argument_count: 0,
            })
            .collect(),
    }
    .to_aml_bytes(out);
}

/// Root ports: `_PR0`/`_PR3` naming the power resources of the devices behind each, `_S0W`.
fn build_root_ports(devices: &[DeviceConfig], out: &mut Vec<u8>) {
    let mut ports: Vec<&AcpiPath> = Vec::new();
    for d in devices {
        if let Some(rp) = &d.root_port {
            if !ports.contains(&rp) {
                ports.push(rp);
            }
        }
    }
    for rp in ports {
        let behind: Vec<&DeviceConfig> = devices
            .iter()
            .filter(|d| d.root_port.as_ref() == Some(rp))
            .collect();
        let resources: Vec<&AcpiPath> = behind
            .iter()
            .filter_map(|d| d.power_resource.as_ref())
            .collect();
        let all_d3cold = behind.iter().all(|d| d.d3cold);
        let refs: Vec<&dyn Aml> = resources.iter().map(|p| *p as &dyn Aml).collect();
        let pkg = Package::new(refs);
        let pr0 = Name::new(rel(seg("_PR0")), &pkg);
        let pr3 = Name::new(rel(seg("_PR3")), &pkg);
        let s0w_val: u8 = if all_d3cold { 4 } else { 3 };
        let s0w = Name::new(rel(seg("_S0W")), &s0w_val);
        let mut children: Vec<&dyn Aml> = Vec::new();
        if !resources.is_empty() {
            children.push(&pr0);
            children.push(&pr3);
        }
        children.push(&s0w);
        Scope::new(abs(rp), children).to_aml_bytes(out);
    }
}

/// GPE methods (devices on the GPE route only; a `pcie_pme` device's wake is the guest's PCIe
/// PME service driver handling its root port's interrupt, no AML).
fn build_gpe_methods(config: &VmmConfig, out: &mut Vec<u8>) {
    let devices = config.devices();
    let trigger = config.wake().trigger;
    let methods: Vec<(NameSeg, &AcpiPath)> = devices
        .iter()
        .filter(|d| d.has_wake() && d.route == RouteKind::Gpe)
        .filter_map(|d| d.gpe.map(|g| (gpe_method_name(g, trigger), &d.acpi_path)))
        .collect();
    if !methods.is_empty() {
        let two: u8 = 2;
        let notifies: Vec<Notify> = methods
            .iter()
            .map(|(_, p)| Notify::new(*p as &dyn Aml, &two))
            .collect();
        let ms: Vec<Method> = methods
            .iter()
            .zip(&notifies)
            .map(|((name, _), n)| Method::new(rel(*name), 0, false, vec![n as &dyn Aml]))
            .collect();
        let children: Vec<&dyn Aml> = ms.iter().map(|m| m as &dyn Aml).collect();
        Scope::new(Path::new("\\_GPE"), children).to_aml_bytes(out);
    }
}

fn build_sb_scope(config: &VmmConfig) -> Raw {
    let trap = config.trap();
    let space = match trap.space {
        TrapSpace::Io => OpRegionSpace::SystemIO,
        TrapSpace::Mmio => OpRegionSpace::SystemMemory,
    };
    let access = match trap.width {
        1 => FieldAccessType::Byte,
        2 => FieldAccessType::Word,
        4 => FieldAccessType::DWord,
        _ => FieldAccessType::QWord,
    };
    let address = trap.address;
    let length = trap.width;
    let region = OpRegion::new(rel(seg(TRAP_REGION)), space, &address, &length);
    let field = Field::new(
        rel(seg(TRAP_REGION)),
        access,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(
            seg(TRAP_FIELD).bytes(),
            usize::from(trap.width) * 8,
        )],
    );
    let mut children: Vec<&dyn Aml> = vec![&region, &field];
    let mailbox_method = Raw(config.mailbox().map(mailbox::method).unwrap_or_default());
    if config.mailbox().is_some() {
        children.push(&mailbox_method);
    }

    // GED wake method: If (Arg0 == slot) { Notify (dev, 2) } per device with wake.
    let two: u8 = 2;
    let woken: Vec<&DeviceConfig> = config
        .devices()
        .iter()
        .filter(|d| d.has_wake() && d.route == RouteKind::Ged)
        .collect();
    // Slots are below 64 (the configuration refuses more devices): a ByteConst, as iasl emits.
    let slots: Vec<u8> = woken.iter().map(|d| d.slot.index() as u8).collect();
    let conds: Vec<Equal> = slots.iter().map(|s| Equal::new(&Arg(0), s)).collect();
    let notifies: Vec<Notify> = woken
        .iter()
        .map(|d| Notify::new(&d.acpi_path as &dyn Aml, &two))
        .collect();
    let ifs: Vec<If> = conds
        .iter()
        .zip(&notifies)
        .map(|(c, n)| If::new(c, vec![n as &dyn Aml]))
        .collect();
    let method = Method::new(
        rel(seg(GED_METHOD)),
        1,
        false,
        ifs.iter().map(|i| i as &dyn Aml).collect(),
    );
    if !woken.is_empty() {
        children.push(&method);
    }
    let mut bytes = Vec::new();
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut bytes);
    Raw(bytes)
}

/// `with_mailbox`: `_ON`/`_OFF` call `\_SB.VPMA` (`_ON` waits for the reply) instead of writing
/// the trap register themselves.
fn build_device(d: &DeviceConfig, with_mailbox: bool, out: &mut Vec<u8>) {
    let trap = trap_field_path();
    let state = rel(seg(STATE_NAME));

    // Power resource (D3cold devices only).
    let mut pr_bytes = Vec::new();
    if let Some(pr) = &d.power_resource {
        let on_value = trap_value(d, PowerAction::PowerOn);
        let off_value = trap_value(d, PowerAction::PowerOff);
        let one: u8 = 1;
        let zero: u8 = 0;
        let stat_name = Name::new(rel(seg(STATE_NAME)), &one);
        let ret = Return::new(&state);
        let sta = Method::new(rel(seg("_STA")), 0, false, vec![&ret]);
        let w_on = Store::new(&trap, &on_value);
        let w_off = Store::new(&trap, &off_value);
        // Slots are below 64 (validated): a ByteConst.
        let slot = d.slot.index() as u8;
        let c_on = Raw(mailbox::call(slot, on_value, true));
        let c_off = Raw(mailbox::call(slot, off_value, false));
        let (on_write, off_write): (&dyn Aml, &dyn Aml) = if with_mailbox {
            (&c_on, &c_off)
        } else {
            (&w_on, &w_off)
        };
        let s_on = Store::new(&state, &one);
        let on = Method::new(rel(seg("_ON_")), 0, false, vec![on_write, &s_on]);
        let s_off = Store::new(&state, &zero);
        let off = Method::new(rel(seg("_OFF")), 0, false, vec![off_write, &s_off]);
        PowerResource {
            name: pr.last(),
            system_level: 0,
            resource_order: 0,
            children: vec![&stat_name, &sta, &on, &off],
        }
        .to_aml_bytes(&mut pr_bytes);
    }
    let pr_raw = Raw(pr_bytes);

    // Device objects.
    let pkg_refs: Vec<&dyn Aml> = d.power_resource.iter().map(|p| p as &dyn Aml).collect();
    let pkg = Package::new(pkg_refs);
    let pr0 = Name::new(rel(seg("_PR0")), &pkg);
    let pr3 = Name::new(rel(seg("_PR3")), &pkg);
    let s0w_val = d.s0w();
    let s0w = Name::new(rel(seg("_S0W")), &s0w_val);
    let gpe = d.gpe.unwrap_or(0);
    let sleep = PRW_SLEEP_STATE;
    let prw_pkg = Package::new(vec![&gpe, &sleep]);
    let prw = Name::new(rel(seg("_PRW")), &prw_pkg);
    let adr_val: u32 = (u32::from(d.pci_address.device) << 16) | u32::from(d.pci_address.function);
    let adr = Name::new(rel(seg("_ADR")), &adr_val);

    let mut objects: Vec<&dyn Aml> = Vec::new();
    if d.node == NodeMode::Declare {
        objects.push(&adr);
    }
    if d.power_resource.is_some() {
        objects.push(&pr0);
        objects.push(&pr3);
    }
    objects.push(&s0w);
    if d.has_prw() {
        objects.push(&prw);
    }

    let Some(parent) = d.acpi_path.parent() else {
        return; // validated: every device has a parent scope
    };
    match d.node {
        NodeMode::Existing => {
            if d.power_resource.is_some() {
                Scope::new(abs(&parent), vec![&pr_raw]).to_aml_bytes(out);
            }
            Scope::new(abs(&d.acpi_path), objects).to_aml_bytes(out);
        }
        NodeMode::Declare => {
            let dev = aml::Device::new(rel(d.acpi_path.last()), objects);
            let mut children: Vec<&dyn Aml> = Vec::new();
            if d.power_resource.is_some() {
                children.push(&pr_raw);
            }
            children.push(&dev);
            Scope::new(abs(&parent), children).to_aml_bytes(out);
        }
    }
}

/// The complete SSDT for `config`: header (signature `SSDT`, revision 2, the configured OEM ids,
/// creator `RVAT`), AML body, checksum.
pub fn build_ssdt(config: &VmmConfig) -> Vec<u8> {
    let ids = config.table();
    let mut sdt = Sdt::new(
        *b"SSDT",
        36,
        SSDT_REVISION,
        ids.oem_id,
        ids.oem_table_id,
        ids.oem_revision,
    );
    sdt.append_slice(&build_body(config));
    sdt.as_slice().to_vec()
}
