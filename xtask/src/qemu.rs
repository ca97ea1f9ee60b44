//! One QEMU boot (TCG, q35, virtual IOMMU, an e1000e at 00:05.0), console captured, with a hard
//! timeout.

use anyhow::{Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to boot.
#[derive(Clone, Debug)]
pub struct BootSpec {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Extra kernel command line words (after the harness's own).
    pub append: String,
    /// An extra ACPI table (`-acpitable file=`), if any.
    pub acpi_table: Option<PathBuf>,
    /// Where isa-debugcon writes the bytes of the trap port.
    pub trap_log: PathBuf,
    /// Kill QEMU after this long.
    pub timeout: Duration,
}

/// What came out of a boot.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    /// The whole serial console (lossy UTF-8).
    pub console: String,
    /// QEMU's stderr.
    pub stderr: String,
    /// True when QEMU was killed at the timeout.
    pub timed_out: bool,
    /// QEMU's exit status (None if it had to be killed and could not be reaped).
    pub status: Option<ExitStatus>,
    /// Wall time of the boot.
    pub elapsed: Duration,
    /// The bytes written to the trap port.
    pub trap: Vec<u8>,
}

impl BootOutcome {
    /// The last `n` console lines, without control characters (escape sequences of the BIOS).
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<String> = self
            .console
            .lines()
            .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
            .map(|l| l.trim_end().to_string())
            .collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// The QEMU command line for `spec` (without spawning).
pub fn command(spec: &BootSpec) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35,accel=tcg",
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "1",
    ])
    .args(["-device", "intel-iommu,intremap=on"])
    .args(["-device", "e1000e,bus=pcie.0,addr=0x5", "-nic", "none"])
    .arg("-kernel")
    .arg(&spec.kernel)
    .arg("-initrd")
    .arg(&spec.initrd)
    .arg("-append")
    .arg(
        format!(
            "console=ttyS0 intel_iommu=on panic=-1 quiet {}",
            spec.append
        )
        .trim(),
    )
    .args(["-nographic", "-no-reboot"])
    .args([
        "-device".to_string(),
        format!(
            "isa-debugcon,iobase=0x{:x},chardev=dbg",
            crate::ssdt::TRAP_PORT
        ),
        "-chardev".to_string(),
        format!("file,id=dbg,path={}", spec.trap_log.display()),
    ]);
    if let Some(t) = &spec.acpi_table {
        cmd.arg("-acpitable").arg(format!("file={}", t.display()));
    }
    cmd
}

fn drain(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut v) = into.lock() {
                v.extend_from_slice(&buf[..n]);
            }
        }
    })
}

fn take(v: &Arc<Mutex<Vec<u8>>>) -> String {
    v.lock()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Boots `spec` and waits for QEMU to exit, killing it at the timeout.
pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    let _ = std::fs::remove_file(&spec.trap_log);
    let start = Instant::now();
    let mut child = command(spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86: cargo xtask deps)")?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(drain(s, out.clone()));
    }
    if let Some(s) = child.stderr.take() {
        readers.push(drain(s, err.clone()));
    }
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() >= spec.timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for r in readers {
        let _ = r.join();
    }
    Ok(BootOutcome {
        console: take(&out),
        stderr: take(&err),
        timed_out,
        status,
        elapsed: start.elapsed(),
        trap: std::fs::read(&spec.trap_log).unwrap_or_default(),
    })
}

/// Writes the console capture next to the other run files, for a human to read.
pub fn save_console(dir: &Path, outcome: &BootOutcome) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let p = dir.join("console.log");
    std::fs::write(&p, &outcome.console)?;
    if !outcome.stderr.is_empty() {
        std::fs::write(dir.join("qemu-stderr.log"), &outcome.stderr)?;
    }
    Ok(p)
}
