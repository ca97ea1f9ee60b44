//! The extra ACPI table of the `d3cold` platform, and the trap port its power resource uses.
//!
//! [`build`] is the single place that produces the table: today it compiles
//! `xtask/data/ssdt.asl` with `iasl`; it is meant to be replaced by the project's own generator
//! (`vfio_pm_vmm::aml::build_ssdt`) without touching the rest of the harness.

use crate::run_cmd;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// I/O port that `_ON`/`_OFF` write to; QEMU's isa-debugcon captures it into a file.
///
/// Not 0x402 (the BIOS log) and not 0x510 (QEMU's fw_cfg selector on x86, which the firmware
/// needs to load the kernel).
pub const TRAP_PORT: u16 = 0x0530;

/// Byte that `_ON` writes to [`TRAP_PORT`].
pub const TRAP_ON: u8 = b'1';
/// Byte that `_OFF` writes to [`TRAP_PORT`].
pub const TRAP_OFF: u8 = b'0';

/// The ASL source: a PowerResource under `\_SB.PCI0`, named by `_PR0`/`_PR3` of `\_SB.PCI0.S28`.
pub fn asl_source() -> String {
    include_str!("../data/ssdt.asl").replace("@TRAP_PORT@", &format!("0x{TRAP_PORT:04X}"))
}

/// Writes the SSDT (AML) into `work` and returns its path.
pub fn build(work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let asl = work.join("ssdt.asl");
    let aml = work.join("ssdt.aml");
    std::fs::write(&asl, asl_source())?;
    let _ = std::fs::remove_file(&aml);
    run_cmd(
        Command::new("iasl")
            .current_dir(work)
            .args(["-p", "ssdt"])
            .arg("ssdt.asl"),
    )
    .context("compiling the SSDT with iasl")?;
    anyhow::ensure!(aml.is_file(), "iasl produced no {}", aml.display());
    Ok(aml)
}
