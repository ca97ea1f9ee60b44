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
    /// The I/O port isa-debugcon listens on (the power resource's trap register).
    pub trap_port: u16,
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
    /// How many trap bytes there were when each `VFIOPM INFO trap-mark` line arrived.
    pub trap_marks: Vec<TrapMark>,
}

/// The console line `VFIOPM INFO trap-mark <name>` that the guest prints around a window in which
/// it holds the device in a known state, and the trap capture's length when the line arrived.
///
/// The guest prints the line after the state change it reports (so the trap bytes of that change
/// are already in the file, which QEMU writes synchronously from the vCPU) and keeps the state
/// for a while afterwards, so the host's read of the length cannot catch a later byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapMark {
    /// The mark's name (e.g. `begin`).
    pub name: String,
    /// Bytes in the trap capture at that moment.
    pub trap_len: usize,
}

/// The console prefix of a trap mark.
pub const TRAP_MARK: &str = "VFIOPM INFO trap-mark ";

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
            // no_timer_check: under TCG on a loaded 2-core host the kernel's IO-APIC timer
            // check can miss its ticks and panic ("timer doesn't work through
            // Interrupt-remapped IO-APIC"), seen on 6.12 while other builds ran.
            "console=ttyS0 intel_iommu=on panic=-1 no_timer_check quiet {}",
            spec.append
        )
        .trim(),
    )
    .args(["-nographic", "-no-reboot"])
    .args([
        "-device".to_string(),
        format!("isa-debugcon,iobase=0x{:x},chardev=dbg", spec.trap_port),
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

/// Like [`drain`] for the console, noting the trap capture's length at each trap mark line.
fn drain_console(
    mut r: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
    trap_log: PathBuf,
    marks: Arc<Mutex<Vec<TrapMark>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut pending: Vec<u8> = Vec::new();
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut v) = into.lock() {
                v.extend_from_slice(&buf[..n]);
            }
            pending.extend_from_slice(&buf[..n]);
            while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&line);
                if let Some(at) = line.find(TRAP_MARK) {
                    let name = line[at + TRAP_MARK.len()..].trim().to_string();
                    let trap_len = std::fs::metadata(&trap_log)
                        .map(|m| m.len() as usize)
                        .unwrap_or(0);
                    if let Ok(mut m) = marks.lock() {
                        m.push(TrapMark { name, trap_len });
                    }
                }
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
    boot_with(spec, &[])
}

/// As [`boot`], with `extra` QEMU arguments after the harness's own (more devices, `-global`;
/// QEMU takes the last `-m`/`-smp`).
pub fn boot_with(spec: &BootSpec, extra: &[String]) -> Result<BootOutcome> {
    let _ = std::fs::remove_file(&spec.trap_log);
    let start = Instant::now();
    let mut child = command(spec)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (install qemu-system-x86: cargo xtask deps)")?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let marks = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(s) = child.stdout.take() {
        readers.push(drain_console(
            s,
            out.clone(),
            spec.trap_log.clone(),
            marks.clone(),
        ));
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
        trap_marks: marks.lock().map(|m| m.clone()).unwrap_or_default(),
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
