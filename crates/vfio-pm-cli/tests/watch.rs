//! `vfio-pm watch` over a fake sysfs tree that changes while it runs: transitions, devices
//! removed, added and unbound, JSON lines, the residency summary, and clean stops by `--count`
//! and by SIGTERM. Every wait is bounded; the child is killed on every path.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::PciAddress;

const WAIT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A running `vfio-pm watch`, its stdout as a stream of lines; killed when dropped.
struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn start(root: &std::path::Path, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
            .arg("watch")
            .args(args)
            .env("VFIO_PM_SYSFS_ROOT", root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vfio-pm watch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line satisfying `pred`; fails the test with everything seen on timeout.
    fn expect(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line {what} within {WAIT:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for the process to exit; returns its status and the rest of stdout and stderr.
    fn finish(mut self) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "watch did not exit; saw:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (status, std::mem::take(&mut self.seen), err)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tree() -> (tempfile::TempDir, FakeSysfs) {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let mut nic = FakeDevice::vfio(addr("0000:00:02.0"));
    nic.driver = Some("e1000e".into());
    nic.power_state = "D0".into();
    nic.runtime_status = "active".into();
    fake.add(&nic).unwrap();
    let mut gpu = FakeDevice::vfio(addr("0000:00:05.0"));
    gpu.power_state = "D0".into();
    gpu.runtime_status = "active".into();
    fake.add(&gpu).unwrap();
    fake.add(&FakeDevice::vfio(addr("0000:00:06.0"))).unwrap();
    (tmp, fake)
}

#[test]
fn follows_transitions_unplug_hotplug_and_unbind_then_summarises_on_sigterm() {
    let (tmp, fake) = tree();
    let mut w = Watch::start(tmp.path(), &["--interval", "50ms", "--for", "120s"]);
    w.expect("for 05.0 present", |l| {
        l.contains("0000:00:05.0  present: D0 active (vfio-pci)")
    });
    w.expect("for 06.0 present", |l| {
        l.contains("0000:00:06.0  present: D3cold suspended")
    });

    // The GPU goes idle: D0 active -> D3cold suspended, the kernel counting suspended time.
    let mut gpu = FakeDevice::vfio(addr("0000:00:05.0"));
    gpu.suspended_ms = 9500;
    fake.add(&gpu).unwrap();
    let line = w.expect("for the suspend", |l| {
        l.contains("0000:00:05.0") && l.contains("-> D3cold suspended")
    });
    assert!(
        line.contains("after "),
        "time in the previous state: {line}"
    );
    assert!(!line.contains("[wake]"), "{line}");

    // It wakes: a transition flagged as a wake.
    gpu.power_state = "D0".into();
    gpu.runtime_status = "active".into();
    gpu.active_ms = 1200;
    fake.add(&gpu).unwrap();
    w.expect("for the wake", |l| {
        l.contains("0000:00:05.0") && l.contains("-> D0 active") && l.contains("[wake]")
    });

    fake.remove(addr("0000:00:06.0")).unwrap();
    w.expect("for the unplug", |l| {
        l.contains("0000:00:06.0  gone: removed after ")
    });

    fake.add(&FakeDevice::vfio(addr("0000:00:07.0"))).unwrap();
    w.expect("for the hot-plugged device", |l| {
        l.contains("0000:00:07.0  appeared: D3cold suspended (vfio-pci)")
    });

    // Unbinding from vfio-pci ends following, with the new driver named.
    let mut unbound = FakeDevice::vfio(addr("0000:00:07.0"));
    unbound.driver = Some("nvme".into());
    fake.add(&unbound).unwrap();
    w.expect("for the unbind", |l| {
        l.contains("0000:00:07.0  gone: unbound from vfio-pci (driver now nvme)")
    });

    // The non-vfio NIC never shows up in the default selection.
    assert!(!w.seen.iter().any(|l| l.contains("0000:00:02.0")));

    kill(Pid::from_raw(w.child.id() as i32), Signal::SIGTERM).unwrap();
    let (status, lines, err) = w.finish();
    assert!(status.success(), "{status:?} {err}");
    let text = lines.join("\n");
    let header = lines
        .iter()
        .position(|l| l.starts_with("DEVICE") && l.contains("D3COLD") && l.contains("WAKES"))
        .unwrap_or_else(|| panic!("no summary table:\n{text}"));
    let row = |bdf: &str| {
        lines[header..]
            .iter()
            .find(|l| l.starts_with(bdf))
            .unwrap_or_else(|| panic!("no summary row for {bdf}:\n{text}"))
            .clone()
    };
    let gpu_row = row("0000:00:05.0");
    let cols: Vec<&str> = gpu_row.split_whitespace().collect();
    // DEVICE WATCHED D0 % D3HOT % D3COLD % TRANSITIONS WAKES LAST. The fake tree writes
    // power_state and runtime_status one after the other, so a sample may catch a mixed state
    // in between: at least the two real transitions, and exactly one wake.
    let transitions: u64 = cols[8].parse().unwrap();
    assert!(transitions >= 2, "transitions: {gpu_row}");
    assert_eq!(cols[9], "1", "wakes: {gpu_row}");
    assert!(gpu_row.ends_with("D0 active"), "{gpu_row}");
    assert!(row("0000:00:06.0").contains("gone (was D3cold suspended)"));
    assert!(row("0000:00:07.0").contains("gone"));
}

#[test]
fn json_lines_parse_and_count_stops_deterministically() {
    let (tmp, fake) = tree();
    let mut w = Watch::start(
        tmp.path(),
        &[
            "--json",
            "--interval",
            "50ms",
            "--count",
            "2",
            "--for",
            "120s",
        ],
    );
    let is = |bdf: &'static str, event: &'static str| {
        move |l: &str| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["bdf"] == bdf && v["event"] == event
        }
    };
    let first = w.expect("present 06.0", is("0000:00:06.0", "present"));
    let v: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(v["state"]["power_state"], "D3cold");
    assert_eq!(v["state"]["runtime_status"], "suspended");
    assert!(v["time"].as_str().unwrap().ends_with('Z'), "{first}");

    fake.remove(addr("0000:00:06.0")).unwrap();
    let gone = w.expect("gone 06.0", is("0000:00:06.0", "gone"));
    let v: serde_json::Value = serde_json::from_str(&gone).unwrap();
    assert_eq!(v["reason"], "removed");
    assert_eq!(v["last_state"]["power_state"], "D3cold");
    assert!(v["previous_for_s"].as_f64().unwrap() >= 0.0);

    fake.add(&FakeDevice::vfio(addr("0000:00:08.0"))).unwrap();
    w.expect("appeared 08.0", is("0000:00:08.0", "appeared"));

    // Two changes: --count 2 ends the watch with a summary object per device.
    let (status, lines, err) = w.finish();
    assert!(status.success(), "{status:?} {err}");
    let all: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = |bdf: &str| {
        all.iter()
            .find(|v| v["event"] == "summary" && v["bdf"] == bdf)
            .unwrap_or_else(|| panic!("no summary for {bdf}: {lines:?}"))
    };
    assert_eq!(summary("0000:00:06.0")["present"], false);
    assert_eq!(summary("0000:00:08.0")["present"], true);
    assert_eq!(summary("0000:00:05.0")["last"]["power_state"], "D0");
    assert_eq!(summary("0000:00:05.0")["kernel_suspended_seconds"], 9.0);
    assert!(summary("0000:00:05.0")["observed"]["d0_seconds"].is_number());
}

#[test]
fn named_devices_may_be_absent_and_a_bad_root_is_an_error() {
    let (tmp, _fake) = tree();
    let w = Watch::start(
        tmp.path(),
        &["0000:00:09.0", "--interval", "20ms", "--for", "100ms"],
    );
    let (status, lines, _) = w.finish();
    assert!(status.success());
    assert!(
        lines[0].contains("none of the devices is present yet"),
        "{lines:?}"
    );

    let w = Watch::start(&tmp.path().join("nope"), &["--for", "100ms"]);
    let (status, _, err) = w.finish();
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("bus/pci/devices"), "{err}");
}
