//! Host packages the harness needs, installed with apt-get when missing.

use crate::run_cmd;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages needed by `cargo xtask qemu`.
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "acpica-tools",
    "busybox-static",
    "cpio",
    "xz-utils",
    // Signs trixie-backports and sid, where the newest kernel comes from (crate::apt).
    "debian-archive-keyring",
    // virt-xml-validate and libvirt's schemas: the libvirt XML `vfio-pm qemu print-args
    // --libvirt` prints is checked against them (crates/vfio-pm-cli/tests/libvirt_xml.rs).
    "libvirt-clients",
];

/// Whether a Debian package is installed.
pub fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// The packages of [`PACKAGES`] that are not installed.
pub fn missing() -> Vec<&'static str> {
    missing_of(PACKAGES)
}

fn missing_of<'a>(packages: &[&'a str]) -> Vec<&'a str> {
    packages.iter().copied().filter(|p| !installed(p)).collect()
}

fn apt_get(args: &[&str]) -> Result<String> {
    run_cmd(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(args),
    )
}

/// Installs whatever of [`PACKAGES`] is missing (non-interactive; `apt-get update` once if a
/// package is not found). Fast no-op when everything is present.
pub fn ensure() -> Result<()> {
    ensure_packages(PACKAGES)
}

/// Installs whatever of `packages` is missing, like [`ensure`] (other tasks' own host packages,
/// e.g. debootstrap for the Debian package test).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing = missing_of(packages);
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing packages {missing:?} and not root: run `sudo apt-get install {}` or `cargo xtask deps` as root",
            missing.join(" ")
        );
    }
    eprintln!("xtask deps: installing {}", missing.join(" "));
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    if let Err(first) = apt_get(&args) {
        eprintln!("xtask deps: install failed ({first:#}); running apt-get update and retrying");
        apt_get(&["update"]).context("apt-get update")?;
        apt_get(&args).context("apt-get install")?;
    }
    let still = missing_of(packages);
    if !still.is_empty() {
        bail!("apt-get reported success but {still:?} are still not installed");
    }
    Ok(())
}
