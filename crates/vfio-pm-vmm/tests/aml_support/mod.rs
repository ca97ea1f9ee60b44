//! Shared helpers for the aml_* integration tests: configurations, ACPICA tool runners, parsers.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use vfio_pm_vmm::config::VmmConfig;

/// Fails (never skips) when acpica-tools is missing: CI installs it.
pub fn require_tools() {
    for tool in ["iasl", "acpiexec"] {
        let ok = Command::new(tool)
            .arg("-v")
            .output()
            .map(|o| o.status.success() || !o.stdout.is_empty())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} is not runnable: install acpica-tools (apt-get install acpica-tools); these tests must not pass without it"
        );
    }
}

pub fn config(toml: &str) -> VmmConfig {
    VmmConfig::from_toml_str(toml).unwrap_or_else(|e| panic!("config rejected: {e}\n{toml}"))
}

pub const TRAP_IO: &str = "[trap]\nspace = \"io\"\naddress = 0x440\nwidth = 1\n";

/// The example the QEMU harness uses.
pub fn example_e1000e() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/qemu-e1000e.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn one_device() -> String {
    format!(
        "{TRAP_IO}
[[devices]]
acpi_path = '\\_SB.PCI0.S28'
pci_address = \"0000:00:05.0\"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true
gpe = 0x10
"
    )
}

/// Five devices on \_SB.PCI0 (slots 0..4): mixed d3cold, wake modes and a power resource override.
pub fn many_devices() -> String {
    let mut s = format!("{TRAP_IO}\n[wake]\nroute = \"gpe\"\ntrigger = \"level\"\n");
    let devs = [
        ("S28", "00:05.0", true, "auto", false, Some(0x10), None),
        (
            "S30",
            "00:06.0",
            true,
            "always",
            false,
            Some(0x11),
            Some("PWRB"),
        ),
        ("S38", "00:07.0", false, "auto", true, Some(0x12), None),
        ("S40", "00:08.0", true, "never", false, None, None),
        ("S48", "00:09.0", true, "auto", true, Some(0x13), None),
    ];
    for (name, addr, d3cold, wakeup, pme, gpe, pr) in devs {
        s.push_str(&format!(
            "\n[[devices]]\nacpi_path = '\\_SB.PCI0.{name}'\npci_address = \"{addr}\"\nvendor_id = 0x8086\nclass_code = 0x020000\nd3cold = {d3cold}\nwakeup = \"{wakeup}\"\npme_support = {pme}\n"
        ));
        if let Some(g) = gpe {
            s.push_str(&format!("gpe = {g}\n"));
        }
        if let Some(p) = pr {
            s.push_str(&format!("power_resource = \"{p}\"\n"));
        }
    }
    s
}

/// Two devices behind one virtual root port \_SB.PCI0.RP00, declared by the SSDT itself.
pub fn root_port() -> String {
    format!(
        "{TRAP_IO}
[[devices]]
acpi_path = '\\_SB.PCI0.RP00.S00'
pci_address = \"0000:01:00.0\"
vendor_id = 0x10de
class_code = 0x030000
d3cold = true
root_port = '\\_SB.PCI0.RP00'
node = \"declare\"
gpe = 0x10

[[devices]]
acpi_path = '\\_SB.PCI0.RP00.S01'
pci_address = \"0000:01:00.1\"
vendor_id = 0x10de
class_code = 0x040300
d3cold = true
root_port = '\\_SB.PCI0.RP00'
node = \"declare\"
gpe = 0x11
"
    )
}

/// PCIe root port PME: two endpoints behind the virtual root port \_SB.PCI0.RP00 (00:1c.0) on the
/// `pcie_pme` route, plus a NIC that overrides it back to a GPE.
pub fn pcie_pme() -> String {
    format!(
        "{TRAP_IO}
[wake]
route = \"pcie_pme\"

[[devices]]
acpi_path = '\\_SB.PCI0.RP00.S00'
pci_address = \"0000:01:00.0\"
vendor_id = 0x10de
class_code = 0x030000
d3cold = true
pme_support = true
root_port = '\\_SB.PCI0.RP00'
root_port_bdf = \"0000:00:1c.0\"
node = \"declare\"

[[devices]]
acpi_path = '\\_SB.PCI0.RP00.S01'
pci_address = \"0000:01:00.1\"
vendor_id = 0x10de
class_code = 0x030200
d3cold = true
pme_support = true
root_port = '\\_SB.PCI0.RP00'
node = \"declare\"

[[devices]]
acpi_path = '\\_SB.PCI0.S28'
pci_address = \"0000:00:05.0\"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true
wake_route = \"gpe\"
gpe = 0x10
"
    )
}

/// Hardware-reduced style: GED route, MMIO trap register.
pub fn ged() -> String {
    "[trap]
space = \"mmio\"
address = 0xfe00_0000
width = 4

[wake]
route = \"ged\"

[[devices]]
acpi_path = '\\_SB.PCI0.S28'
pci_address = \"0000:00:05.0\"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true

[[devices]]
acpi_path = '\\_SB.PCI0.S30'
pci_address = \"0000:00:06.0\"
vendor_id = 0x1af4
class_code = 0x010000
d3cold = true
"
    .to_string()
}

/// One device that opts out of D3cold: no power resource, _S0W 3, wake only.
pub fn d3hot_only() -> String {
    format!(
        "{TRAP_IO}
[[devices]]
acpi_path = '\\_SB.PCI0.S28'
pci_address = \"0000:00:05.0\"
vendor_id = 0x8086
class_code = 0x020000
d3cold = false
gpe = 0x10
"
    )
}

/// Every configuration the table tests cover, with a name.
/// `one_device` with the acknowledged mailbox on an ivshmem-plain node at 00:08.0.
pub fn mailbox() -> String {
    one_device().replace(
        "width = 1\n",
        "width = 1\nmailbox = '\\_SB.PCI0.S40'\nack_timeout_ms = 3000\n",
    )
}

pub fn all_configs() -> Vec<(&'static str, VmmConfig)> {
    vec![
        ("example-e1000e", config(&example_e1000e())),
        ("one-device", config(&one_device())),
        ("many-devices", config(&many_devices())),
        ("root-port", config(&root_port())),
        ("ged-mmio", config(&ged())),
        ("d3hot-only", config(&d3hot_only())),
        ("pcie-pme", config(&pcie_pme())),
        ("mailbox", config(&mailbox())),
    ]
}

/// The minimal DSDT the acpiexec tests load the SSDT beside.
pub const DSDT_ASL: &str = r#"DefinitionBlock ("", "DSDT", 2, "VFIOPM", "TESTDSDT", 1)
{
    Scope (\_SB)
    {
        Device (PCI0)
        {
            Name (_HID, EisaId ("PNP0A08"))
            Device (S28) { Name (_ADR, 0x00050000) }
            Device (S30) { Name (_ADR, 0x00060000) }
            Device (S38) { Name (_ADR, 0x00070000) }
            Device (S40) { Name (_ADR, 0x00080000) }
            Device (S48) { Name (_ADR, 0x00090000) }
            Device (RP00)
            {
                Name (_ADR, 0x001C0000)
            }
        }
    }
}
"#;

/// One region write acpiexec performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionWrite {
    pub space: String,
    pub address: u64,
    pub width: usize,
    pub value: u64,
}

/// What one evaluated method did.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub path: String,
    pub writes: Vec<RegionWrite>,
    /// (node name as acpiexec prints it, e.g. "S28_", notify value)
    pub notifies: Vec<(String, u64)>,
    /// "[Integer] = ..." results
    pub integer: Option<u64>,
    pub lines: Vec<String>,
}

/// Runs `acpiexec -x 0x1000 -b "execute A; execute B; ..."` on the DSDT above plus `ssdt` and
/// splits its output by evaluation. Debug level 0x1000 (ACPI_LV_BFIELD) makes acpiexec print each
/// field write: "ExAccessRegion : [WRITE] Region [SystemIO:1], Width 1, ... at 0000000000000440"
/// followed by "ExFieldDatumIo : Value Written 0000000000000080, Width 1".
pub fn acpiexec(ssdt: &[u8], methods: &[&str]) -> (Vec<Evaluation>, String) {
    require_tools();
    let dir = tempfile::tempdir().unwrap();
    let dsdt = vfio_pm_vmm::aml::compile_asl(DSDT_ASL).expect("compile the test DSDT");
    std::fs::write(dir.path().join("dsdt.aml"), &dsdt.output).unwrap();
    std::fs::write(dir.path().join("ssdt.aml"), ssdt).unwrap();
    let batch: Vec<String> = methods.iter().map(|m| format!("execute {m}")).collect();
    let out = Command::new("acpiexec")
        .args([
            "-x",
            "0x1000",
            "-b",
            &batch.join("; "),
            "dsdt.aml",
            "ssdt.aml",
        ])
        .current_dir(dir.path())
        .output()
        .expect("run acpiexec (install acpica-tools)");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (parse_acpiexec(&log), log)
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

pub fn parse_acpiexec(log: &str) -> Vec<Evaluation> {
    let mut evals: Vec<Evaluation> = Vec::new();
    let mut pending: Option<(String, u64, usize)> = None;
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("Evaluating ") {
            evals.push(Evaluation {
                path: rest.trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = evals.last_mut() else {
            continue;
        };
        cur.lines.push(line.to_string());
        if line.contains("ExAccessRegion") && line.contains("[WRITE]") {
            // ... [WRITE] Region [SystemIO:1], Width 1, ByteBase 0, Offset 0 at 0000000000000440
            let space = line
                .split("Region [")
                .nth(1)
                .and_then(|s| s.split(':').next())
                .unwrap()
                .to_string();
            let width: usize = line
                .split("Width ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            let address = hex(line.rsplit(" at ").next().unwrap());
            pending = Some((space, address, width));
        } else if line.contains("ExFieldDatumIo") && line.contains("Value Written") {
            let value = hex(line
                .split("Value Written ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap());
            let (space, address, width) = pending
                .take()
                .expect("a write value without a region access");
            cur.writes.push(RegionWrite {
                space,
                address,
                width,
                value,
            });
        } else if line.contains("Received a System Notify on [") {
            let node = line
                .split("Notify on [")
                .nth(1)
                .and_then(|s| s.split(']').next())
                .unwrap()
                .to_string();
            let value = hex(line
                .split("Value ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap());
            cur.notifies.push((node, value));
        } else if let Some(v) = line.trim().strip_prefix("[Integer] = ") {
            cur.integer = Some(hex(v));
        }
    }
    evals
}
