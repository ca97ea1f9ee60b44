//! The laptop topology on real kernels: an e1000e behind a PCIe root port whose SSDT puts
//! `_PR0`/`_PR3` on the port, not on the endpoint (as laptop firmware does for a dGPU). Linux
//! then powers the endpoint off by runtime-suspending the port to D3cold; `vfio-pm doctor` and
//! `status` must say D3cold is reachable.
//!
//! One boot per kernel, self-contained: its own QEMU devices, SSDT (vfio-pm's generator over
//! [`CONFIG_TOML`]) and `/init` (a shell script running the static `vfio-pm`). What the guest
//! kernel needs for the port's runtime PM is in docs/kernel-behaviour.md ("Root port D3cold"):
//! native PCIe hotplug on the port (QEMU's ACPI hotplug off), `_PR0`/`_PR3` (+ `_S0W`) on the
//! port's ACPI node, and `d3cold_allowed` = 1 on the port (QEMU's root port has no PM
//! capability, so the kernel starts it at 0).

use crate::console::Check;
use crate::kernels::{self, KernelImage, KernelSeries};
use crate::qemu::{self, BootOutcome, BootSpec};
use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vfio_pm_vmm::config::VmmConfig;

/// The root port (`-device pcie-root-port,addr=0x6`): `\_SB.PCI0.S30` in QEMU's DSDT.
pub const PORT: &str = "0000:00:06.0";
/// The e1000e behind it, bound to vfio-pci by `/init`.
pub const ENDPOINT: &str = "0000:01:00.0";

/// The VMM configuration the SSDT is generated from: the power resource on the port's node.
pub const CONFIG_TOML: &str = r#"
[table]
oem_id = "VFIOPM"
oem_table_id = "VFIOPMRP"
oem_revision = 1

[trap]
space = "io"
address = 0x440
width = 1

[wake]
route = "gpe"
trigger = "edge"

[[devices]]
# QEMU's pcie-root-port at 00:06.0 (1b36:000c); its _PR0/_PR3 power the endpoint below it.
acpi_path = '\_SB.PCI0.S30'
pci_address = "0000:00:06.0"
vendor_id = 0x1b36
device_id = 0x000c
class_code = 0x060400
d3cold = true
wakeup = "auto"
pme_support = false
has_pm_capability = true
hotplug_eject = false
gpe = 0x10
"#;

/// QEMU arguments added to the harness's machine: the port, the endpoint behind it, and native
/// PCIe hotplug (QEMU's default ACPI hotplug makes the kernel refuse D3 for the port).
pub fn qemu_args() -> Vec<String> {
    [
        "-device",
        "pcie-root-port,id=rp1,bus=pcie.0,addr=0x6,chassis=1,slot=1",
        "-device",
        "e1000e,bus=rp1,addr=0",
        "-global",
        "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The guest's `/init`: bind the endpoint, let the port suspend, print what sysfs and
/// `vfio-pm` say between `VFIOPM-RP` markers, power off. Every wait is bounded.
pub fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
for m in {modules}; do insmod /lib/vfio-pm/$m || echo "VFIOPM-RP insmod-failed $m"; done
P=/sys/bus/pci/devices/{port}
E=/sys/bus/pci/devices/{endpoint}
echo "VFIOPM-RP kernel $(uname -r)"
echo "VFIOPM-RP port-pr3 $(ls $P/firmware_node/power_resources_D3hot 2>/dev/null | tr '\n' ' ')"
echo "VFIOPM-RP port-d3cold-allowed-at-boot $(cat $P/d3cold_allowed)"
echo vfio-pci > $E/driver_override
echo {endpoint} > /sys/bus/pci/drivers_probe
echo auto > $P/power/control
echo 1 > $P/d3cold_allowed
i=0
while [ $i -lt 40 ] && [ "$(cat $P/power_state)" != D3cold ]; do sleep 0.25; i=$((i+1)); done
echo "VFIOPM-RP port $(cat $P/power_state) $(cat $P/power/runtime_status)"
echo "VFIOPM-RP endpoint $(cat $E/power_state) $(cat $E/power/runtime_status) $(readlink $E/driver)"
echo "VFIOPM-RP begin doctor"
/bin/vfio-pm doctor {endpoint} --no-open --json
echo "VFIOPM-RP end doctor"
echo "VFIOPM-RP begin status"
/bin/vfio-pm status {endpoint} --json
echo "VFIOPM-RP end status"
echo "VFIOPM-RP begin table"
/bin/vfio-pm status {endpoint}
echo "VFIOPM-RP end table"
echo "VFIOPM-RP done"
poweroff -f
"#,
        modules = modules.join(" "),
        port = PORT,
        endpoint = ENDPOINT,
    )
}

/// The console lines between `VFIOPM-RP begin NAME` and `VFIOPM-RP end NAME`.
fn section(console: &str, name: &str) -> String {
    let lines: Vec<&str> = console.lines().map(|l| l.trim_end_matches('\r')).collect();
    let begin = format!("VFIOPM-RP begin {name}");
    let end = format!("VFIOPM-RP end {name}");
    let Some(start) = lines.iter().position(|l| l.ends_with(&begin)) else {
        return String::new();
    };
    lines[start + 1..]
        .iter()
        .take_while(|l| !l.ends_with(&end))
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// The words after `VFIOPM-RP key`.
fn fact<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    let prefix = format!("VFIOPM-RP {key}");
    console.lines().find_map(|l| {
        let at = l.find(&prefix)?;
        let rest = l[at + prefix.len()..].trim_end_matches('\r');
        // A whole word: `port` is not `port-pr3`.
        (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim())
    })
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        passed,
        detail,
    }
}

/// The checks of one boot, from its console and its trap capture.
pub fn judge(console: &str, trap: &[u8], release: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let kernel = fact(console, "kernel").unwrap_or("?");
    out.push(check(
        "rp-kernel",
        kernel == release,
        format!("guest runs {kernel}, want {release}"),
    ));
    let pr3 = fact(console, "port-pr3").unwrap_or("");
    out.push(check(
        "rp-port-has-pr3",
        !pr3.is_empty(),
        format!("{PORT} firmware_node/power_resources_D3hot: {pr3:?}"),
    ));
    let port = fact(console, "port").unwrap_or("?");
    out.push(check(
        "rp-port-d3cold",
        port == "D3cold suspended",
        format!("{PORT}: {port} (power_state runtime_status)"),
    ));
    let ep = fact(console, "endpoint").unwrap_or("?");
    out.push(check(
        "rp-endpoint-d3cold",
        ep.starts_with("D3cold suspended") && ep.ends_with("vfio-pci"),
        format!("{ENDPOINT}: {ep} (power_state runtime_status driver)"),
    ));
    // The port's _OFF writes slot 0's off byte (0x00) after the boot's _ON (0x80).
    let off = trap.iter().skip_while(|b| **b != 0x80).any(|b| *b == 0x00);
    out.push(check(
        "rp-trap-off",
        off,
        format!("trap bytes {trap:02x?}: the port's _OFF ran"),
    ));
    out.push(doctor_check(&section(console, "doctor")));
    out.push(status_check(
        &section(console, "status"),
        &section(console, "table"),
    ));
    out.push(check(
        "rp-guest-done",
        fact(console, "done").is_some(),
        "the guest's /init ran to the end".into(),
    ));
    out
}

fn doctor_check(json: &str) -> Check {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let fpr = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["id"] == "firmware_power_resources"))
        .cloned()
        .unwrap_or(Value::Null);
    let upstream = fpr["detail"].as_str().is_some_and(|d| d.contains(PORT));
    check(
        "rp-doctor-upstream-pr3",
        v["d3cold_reachable"] == true && fpr["verdict"] == "pass" && upstream,
        format!(
            "d3cold_reachable {}, firmware_power_resources {} {}",
            v["d3cold_reachable"], fpr["verdict"], fpr["detail"]
        ),
    )
}

fn status_check(json: &str, table: &str) -> Check {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let split = &v[0]["residency"]["d3_split"];
    let row = table.lines().nth(1).unwrap_or("");
    check(
        "rp-status-d3cold-column",
        split == "unknown" && row.contains("D3cold") && !row.contains("never"),
        format!("residency.d3_split {split}; table row {row:?}"),
    )
}

/// One kernel's boot and its checks.
#[derive(Clone, Debug)]
pub struct RootPortRun {
    /// Kernel.
    pub kernel: KernelImage,
    /// The boot.
    pub outcome: BootOutcome,
    /// Its checks.
    pub checks: Vec<Check>,
    /// Where the console was saved.
    pub console_log: PathBuf,
}

impl RootPortRun {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        !self.outcome.timed_out && self.checks.iter().all(|c| c.passed)
    }
}

impl fmt::Display for RootPortRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<26} root-port {:>6.1?}  {}",
            self.kernel.release,
            self.outcome.elapsed,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        for c in &self.checks {
            writeln!(f, "      {c}")?;
        }
        if !self.passed() {
            writeln!(f, "      console: {}", self.console_log.display())?;
        }
        Ok(())
    }
}

/// Packs `/init`, busybox, the kernel's modules and `vfio-pm` into `work/rp-initrd-<release>.gz`.
fn initramfs(work: &Path, kernel: &KernelImage, cli: &Path) -> Result<PathBuf> {
    let root = work.join(format!("rp-initramfs-{}", kernel.release));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "lib/vfio-pm", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox: install busybox-static (cargo xtask deps)")?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let mut names = Vec::new();
    for m in &kernel.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?
            .to_string();
        std::fs::copy(m, root.join("lib/vfio-pm").join(&name))?;
        names.push(name);
    }
    std::fs::copy(cli, root.join("bin/vfio-pm"))?;
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(root.join("bin/vfio-pm"))
        .status();
    let out = work.join(format!("rp-initrd-{}.gz", kernel.release));
    crate::guest::pack(&root, &init_script(&names), &out, "the root-port initramfs")
}

/// Boots each kernel once on the root-port topology and judges it.
pub fn run(series: &[KernelSeries], timeout: Duration) -> Result<Vec<RootPortRun>> {
    crate::deps::ensure()?;
    let kernels: Vec<KernelImage> = series
        .iter()
        .map(|s| kernels::ensure(*s))
        .collect::<Result<_>>()?;
    // The same package set as the main harness builds: cargo's feature unification then gives
    // the same artifacts, so neither run rebuilds the other's.
    let binaries = crate::guest::build(&[crate::guest::GUEST, crate::guest::CLI])?;
    let cli = &binaries
        .iter()
        .find(|(name, _)| name == crate::guest::CLI.bin)
        .context("the static vfio-pm was not built")?
        .1;
    let work = crate::qemu_dir().join("work");
    std::fs::create_dir_all(&work)?;
    let config = VmmConfig::from_toml_str(CONFIG_TOML)
        .context("the root-port VMM configuration is not valid")?;
    let ssdt = work.join("rp-ssdt.aml");
    std::fs::write(&ssdt, vfio_pm_vmm::aml::build_ssdt(&config))?;
    let mut runs = Vec::new();
    for k in kernels {
        let initrd = initramfs(&work, &k, cli)?;
        let dir = crate::qemu_dir()
            .join("runs")
            .join(format!("{}-root-port", k.release));
        std::fs::create_dir_all(&dir)?;
        let spec = BootSpec {
            kernel: k.vmlinuz.clone(),
            initrd,
            append: String::new(),
            acpi_table: Some(ssdt.clone()),
            trap_port: 0x440,
            trap_log: dir.join("trap.log"),
            timeout,
        };
        eprintln!(
            "xtask qemu: booting {} on the root-port topology",
            k.release
        );
        let outcome = qemu::boot_with(&spec, &qemu_args())?;
        let console_log = qemu::save_console(&dir, &outcome)?;
        let checks = judge(&outcome.console, &outcome.trap, &k.release);
        runs.push(RootPortRun {
            kernel: k,
            outcome,
            checks,
            console_log,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_puts_the_power_resource_on_the_port() {
        let config = VmmConfig::from_toml_str(CONFIG_TOML).unwrap();
        let table = vfio_pm_vmm::aml::build_ssdt(&config);
        let has = |needle: &[u8]| table.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"S30_") && has(b"_PR3") && has(b"_PR0"));
        assert_eq!(config.trap().address, 0x440);
    }

    #[test]
    fn judging_needs_every_fact() {
        let console = "VFIOPM-RP kernel 6.1.0\nVFIOPM-RP port-pr3 LNXPOWER:00 \n\
            VFIOPM-RP port D3cold suspended\n\
            VFIOPM-RP endpoint D3cold suspended ../../../bus/pci/drivers/vfio-pci\n\
            VFIOPM-RP begin doctor\n{\"d3cold_reachable\": true, \"checks\": [{\"id\": \
            \"firmware_power_resources\", \"verdict\": \"pass\", \"detail\": \"upstream bridge \
            0000:00:06.0 has _PR3\"}]}\nVFIOPM-RP end doctor\nVFIOPM-RP begin status\n\
            [{\"residency\": {\"d3_split\": \"unknown\"}}]\nVFIOPM-RP end status\n\
            VFIOPM-RP begin table\nDEVICE STATE D3COLD\n0000:01:00.0 D3cold ?\n\
            VFIOPM-RP end table\nVFIOPM-RP done\n";
        let checks = judge(console, &[0x80, 0x00, 0x80], "6.1.0");
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
        let stuck = console.replace("port D3cold suspended", "port D3hot suspended");
        let checks = judge(&stuck, &[0x80], "6.1.0");
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["rp-port-d3cold", "rp-trap-off"]);
        let never = console.replace("0000:01:00.0 D3cold ?", "0000:01:00.0 D3cold never");
        assert!(judge(&never, &[0x80, 0], "6.1.0")
            .iter()
            .any(|c| c.name == "rp-status-d3cold-column" && !c.passed));
    }
}
