//! The Debian package as an operator gets it: built by `cargo xtask deb` (cargo-deb), installed
//! with dpkg into a clean Debian bookworm root made by debootstrap (cached under
//! target/deb/roots), and checked there: `vfio-pm --version`, `man -w` of every page, tab
//! completion in bash, zsh and fish, `systemd-analyze verify` of every unit, and the exporter
//! unit started by the root's own systemd (booted with systemd-nspawn), sandbox and all, then
//! scraped on the root's loopback.
//!
//! Needs root (debootstrap, systemd-nspawn, both installed with apt-get when missing) and
//! Debian's archive the first time. Without root the test SKIPS loudly; `VFIO_PM_SKIP_DEB=1`
//! skips it loudly on a machine that cannot reach the archive. Any other failure fails.

use std::io::Write;
use std::time::Instant;

/// Writes to the real stderr: a passing test's `eprintln!` is captured and never shown.
fn loud(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Every check the package must pass by name (a check that silently went missing fails too).
const REQUIRED: &[&str] = &[
    "version",
    "man-w-vfio-pm-status",
    "man-w-every-page",
    "man-renders",
    "bash-completion",
    "zsh-completion",
    "fish-completion",
    "units-shipped",
    "systemd-analyze-verify-vfio-pm-exporter.service",
    "libvirt-hook",
    "boot",
    "exporter-default-started",
    "exporter-default-credentials",
    "exporter-default-read-only-system",
    "exporter-default-scraped",
    "exporter-all-devices-started",
    "exporter-all-devices-credentials",
    "exporter-all-devices-read-only-system",
    "exporter-all-devices-scraped",
    "exporter-reads-every-device",
    "exporter-exposure",
    "exporter-journal",
];

#[test]
fn the_deb_installs_into_clean_bookworm_and_its_exporter_unit_serves_metrics() {
    if std::env::var("VFIO_PM_SKIP_DEB").as_deref() == Ok("1") {
        loud(
            "\n*** SKIPPED: Debian package test (VFIO_PM_SKIP_DEB=1): the .deb, its man pages, \
             completions and systemd unit were NOT checked ***\n",
        );
        return;
    }
    if !is_root() {
        loud(
            "\n*** SKIPPED: Debian package test needs root (debootstrap, systemd-nspawn): the \
             .deb, its man pages, completions and systemd unit were NOT checked ***\n",
        );
        return;
    }
    let start = Instant::now();
    let deb = xtask::deb::build_with_root()
        .unwrap_or_else(|e| panic!("building the .deb or the bookworm root: {e:#}"));
    let built = start.elapsed();
    let checks = xtask::deb::check::run(&deb)
        .unwrap_or_else(|e| panic!("checking {} in a bookworm root: {e:#}", deb.display()));
    let report: Vec<String> = checks.iter().map(ToString::to_string).collect();
    let report = report.join("\n");
    loud(&format!(
        "{}\n{report}\n(package and root ready in {built:.1?}, checked in {:.1?})",
        deb.display(),
        start.elapsed() - built
    ));
    for name in REQUIRED {
        assert!(
            checks.iter().any(|c| c.name == *name),
            "check {name} did not run\n{report}"
        );
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}\n{report}");
}
