//! Project automation for vfio-pm, and the real-kernel harness that runs vfio-pm inside QEMU
//! against Debian's 6.1 and 6.12 kernels and Debian's newest (trixie-backports or sid).
//!
//! The pieces, in the order `cargo xtask qemu` uses them:
//! - [`deps`]: the host packages (QEMU, iasl, static busybox, cpio, xz), installed with apt-get.
//! - [`kernels`]: the newest Debian kernels resolved by name, downloaded and cached ([`apt`]:
//!   the project's own apt tree for the newest kernel).
//! - [`guest`]: the static in-guest binaries and the initramfs.
//! - [`ssdt`]: the ACPI table that gives the test device D3cold power resources (vfio-pm's own
//!   generator) and the decoder of its trap port.
//! - [`qemu`]: one boot with a hard timeout, console captured.
//! - [`console`]: the parser of the guest's `VFIOPM ...` lines.
//! - [`harness`]: the kernel × platform matrix and its summary.
//! - [`trap`]: the host-side check of the trap bytes the guest's `_ON`/`_OFF` calls wrote.
//! - [`conformance`]: the guest's scenario traces vs the model's, and the conformance table.
//! - [`timing`]: the guest's informational ENTRY/EXIT timings, checked for shape and tabled.
//! - [`rootport`]: the laptop topology (`_PR3` on the root port, not the endpoint), one boot
//!   per kernel.
//! - [`nested`]: a real host kernel (L1) in QEMU running the machine's QEMU with a real guest
//!   (L2) on the passed-through device (`cargo xtask nested`).
//!
//! Beside the harness, [`fuzz`] builds and runs the `cargo fuzz` targets for a bounded time,
//! and [`deb`] builds the Debian package (`cargo xtask deb`) and checks it in a clean Debian
//! root.

pub mod apt;
pub mod conformance;
pub mod console;
pub mod deb;
pub mod deps;
pub mod fuzz;
pub mod guest;
pub mod harness;
pub mod kernels;
pub mod nested;
pub mod qemu;
pub mod rootport;
pub mod ssdt;
pub mod timing;
pub mod tour;
pub mod trap;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use harness::{run, IdleD3Boots, Options, Platform, Summary};
pub use kernels::KernelSeries;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Environment variable that moves [`qemu_dir`] (engineers sharing one tree each set their own,
/// so that concurrent runs do not overwrite each other's initramfs, SSDT and trap captures).
pub const QEMU_DIR_ENV: &str = "VFIO_PM_QEMU_DIR";

/// `target/qemu` under the workspace root, or `$VFIO_PM_QEMU_DIR`: every file the harness makes
/// lives there.
pub fn qemu_dir() -> PathBuf {
    match std::env::var_os(QEMU_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target").join("qemu"),
    }
}

/// Runs a command, failing with its stderr when it exits non-zero; returns its stdout.
pub(crate) fn run_cmd(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        anyhow::bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    run_cmd(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}
