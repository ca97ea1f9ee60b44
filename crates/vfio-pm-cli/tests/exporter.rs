//! `vfio-pm exporter` scraped by a real Prometheus server over a fake sysfs tree that changes
//! during the test; its output checked by `promtool check metrics`.
//!
//! Prometheus comes from Debian's `prometheus` package: installed with apt-get when
//! `/usr/bin/prometheus` is missing. When that is impossible the test fails saying so, unless
//! `VFIO_PM_SKIP_PROMETHEUS=1`, when it prints a loud SKIPPED line. Everything listens on
//! 127.0.0.1 only; every wait is bounded; child processes are killed on every path.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vfio_pm::doctor::{diagnose, KernelSupport};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::{PciAddress, Sysfs};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
const SKIP_ENV: &str = "VFIO_PM_SKIP_PROMETHEUS";

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A child process killed and reaped when dropped.
struct Guard {
    name: &'static str,
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Guard {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = self.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("{} exited early: {status}\n{err}", self.name);
        }
    }
}

/// Runs `cmd` with a time limit (coreutils `timeout`), returning whether it succeeded.
fn run_bounded(limit: &str, cmd: &[&str]) -> bool {
    Command::new("timeout")
        .arg(limit)
        .args(cmd)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure Debian's prometheus is installed; `false` means skip (only with the opt-out set).
fn ensure_prometheus() -> bool {
    if Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
        return true;
    }
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let why = if !root {
        "not root, so apt-get cannot install it".to_string()
    } else if !Path::new("/usr/bin/apt-get").exists() {
        "no apt-get on this machine".to_string()
    } else {
        // Keep Debian's own service from starting (no-op where no init system runs): the test
        // runs its own prometheus with its own config, storage and port.
        let policy = Path::new("/usr/sbin/policy-rc.d");
        let wrote_policy = !policy.exists()
            && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
            && Command::new("chmod")
                .args(["755"])
                .arg(policy)
                .status()
                .is_ok();
        let install = [
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            "prometheus",
        ];
        let ok = run_bounded("900", &install)
            || (run_bounded("600", &["apt-get", "update"]) && run_bounded("900", &install));
        if wrote_policy {
            let _ = std::fs::remove_file(policy);
        }
        if ok && Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists() {
            return true;
        }
        "apt-get install -y prometheus failed (see its output above)".to_string()
    };
    if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
        eprintln!(
            "\n************************************************************\n\
             SKIPPED: exporter vs real Prometheus: {PROMETHEUS} is missing and {why}; \
             {SKIP_ENV}=1 allows skipping\n\
             ************************************************************\n"
        );
        return false;
    }
    panic!(
        "{PROMETHEUS} is missing and cannot be installed: {why}. Install Debian's `prometheus` \
         package, or set {SKIP_ENV}=1 to skip this test loudly."
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `check` until it returns `Some`, or fails after `limit` with `what`.
fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus {
    guard: Guard,
    addr: SocketAddr,
}

impl Prometheus {
    fn start(dir: &Path, target: SocketAddr) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vfio-pm\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut p = Self {
            guard: Guard {
                name: "prometheus",
                child,
            },
            addr,
        };
        eventually("prometheus ready", Duration::from_secs(60), || {
            p.guard.assert_running();
            matches!(http_get(p.addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        p
    }

    /// Values of an instant query, by `bdf` label (or "" when it has none).
    fn query(&self, promql: &str) -> Vec<(String, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Ok((200, body)) = http_get(self.addr, &path) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let bdf = r["metric"]["bdf"].as_str().unwrap_or("").to_string();
                let val: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
                (bdf, val)
            })
            .collect()
    }

    /// Waits until `promql` has exactly one series with value `want`.
    fn wait_for(&self, promql: &str, want: f64) {
        eventually(
            &format!("{promql} == {want} (last: {:?})", self.query(promql)),
            Duration::from_secs(30),
            || {
                let r = self.query(promql);
                (r.len() == 1 && r[0].1 == want).then_some(())
            },
        );
    }
}

fn start_exporter(root: &Path) -> (Guard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["exporter", "--listen", "127.0.0.1:0", "--interval", "100ms"])
        .env("VFIO_PM_SYSFS_ROOT", root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vfio-pm exporter");
    let err = child.stderr.take().unwrap();
    let guard = Guard {
        name: "vfio-pm exporter",
        child,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the exporter says where it listens");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim_end_matches("/metrics").parse().unwrap();
        }
    };
    (guard, addr)
}

fn tree(root: &Path) -> FakeSysfs {
    let fake = FakeSysfs::create(root).unwrap();
    fake.set_disable_idle_d3(false).unwrap();
    let mut nic = FakeDevice::vfio(addr("0000:00:02.0"));
    nic.driver = Some("e1000e".into());
    fake.add(&nic).unwrap();
    let mut gpu = FakeDevice::vfio(addr("0000:00:05.0"));
    gpu.vendor = 0x10de;
    gpu.device = 0x2204;
    gpu.class = 0x030000;
    gpu.power_state = "D0".into();
    gpu.runtime_status = "active".into();
    fake.add(&gpu).unwrap();
    let mut nvme = FakeDevice::vfio(addr("0000:00:06.0"));
    nvme.class = 0x010802;
    nvme.power_state = "D3hot".into();
    nvme.power_resources = Some(vec![]); // no _PR3: D3cold impossible
    fake.add(&nvme).unwrap();
    fake
}

#[test]
fn prometheus_scrapes_the_exporter_and_sees_changes() {
    if !ensure_prometheus() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root: PathBuf = tmp.path().join("sys");
    let fake = tree(&root);
    let (mut exporter, exporter_addr) = start_exporter(&root);

    // The exposition itself: promtool's linter accepts it.
    let (code, body) = http_get(exporter_addr, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        body.contains(
            "vfio_pm_device_power_state{bdf=\"0000:00:05.0\",vendor=\"10de\",device=\"2204\",class=\"030000\",driver=\"vfio-pci\",state=\"D0\"} 1"
        ),
        "{body}"
    );
    assert!(
        !body.contains("0000:00:02.0"),
        "only vfio-bound devices: {body}"
    );
    assert_eq!(http_get(exporter_addr, "/nope").unwrap().0, 404);

    let prom_dir = tmp.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let prom = Prometheus::start(&prom_dir, exporter_addr);

    prom.wait_for("up{job=\"vfio-pm\"}", 1.0);
    prom.wait_for(
        "vfio_pm_device_power_state{bdf=\"0000:00:05.0\",state=\"D0\"}",
        1.0,
    );
    prom.wait_for(
        "vfio_pm_device_power_state{bdf=\"0000:00:06.0\",state=\"D3hot\"}",
        1.0,
    );
    prom.wait_for(
        "vfio_pm_device_runtime_status{bdf=\"0000:00:06.0\",status=\"suspended\"}",
        1.0,
    );
    prom.wait_for(
        "vfio_pm_device_runtime_suspended_seconds_total{bdf=\"0000:00:06.0\"}",
        9.0,
    );
    prom.wait_for(
        "vfio_pm_device_runtime_active_seconds_total{bdf=\"0000:00:06.0\"}",
        1.0,
    );
    // The doctor's verdicts, made without opening anything.
    prom.wait_for("vfio_pm_device_d3cold_reachable{bdf=\"0000:00:06.0\"}", 0.0);
    let sysfs = Sysfs::new(&root);
    let gpu_ok = diagnose(
        &sysfs,
        addr("0000:00:05.0"),
        KernelSupport::InferFromVersion,
    )
    .unwrap()
    .d3cold_reachable;
    prom.wait_for(
        "vfio_pm_device_d3cold_reachable{bdf=\"0000:00:05.0\"}",
        f64::from(u8::from(gpu_ok)),
    );
    // Labels carry identity: the fleet can select by class or driver.
    prom.wait_for(
        "count(vfio_pm_device_runtime_active_seconds_total{class=\"030000\",vendor=\"10de\",driver=\"vfio-pci\"})",
        1.0,
    );
    assert!(prom
        .query("vfio_pm_device_runtime_status{bdf=\"0000:00:02.0\"}")
        .is_empty());

    // The GPU goes idle: the next scrapes show D3cold, and the sampler counted the change.
    let mut gpu = FakeDevice::vfio(addr("0000:00:05.0"));
    gpu.vendor = 0x10de;
    gpu.device = 0x2204;
    gpu.class = 0x030000;
    gpu.suspended_ms = 20_000;
    fake.add(&gpu).unwrap();
    prom.wait_for(
        "vfio_pm_device_power_state{bdf=\"0000:00:05.0\",state=\"D3cold\"}",
        1.0,
    );
    prom.wait_for(
        "vfio_pm_device_power_state{bdf=\"0000:00:05.0\",state=\"D0\"}",
        0.0,
    );
    prom.wait_for(
        "vfio_pm_device_runtime_suspended_seconds_total{bdf=\"0000:00:05.0\"}",
        20.0,
    );
    eventually("a transition counted", Duration::from_secs(30), || {
        let r = prom.query("vfio_pm_device_transitions_total{bdf=\"0000:00:05.0\"}");
        (r.len() == 1 && r[0].1 >= 1.0).then_some(())
    });
    // ... and wakes again: one wake.
    gpu.power_state = "D0".into();
    gpu.runtime_status = "active".into();
    fake.add(&gpu).unwrap();
    prom.wait_for("vfio_pm_device_wakes_total{bdf=\"0000:00:05.0\"}", 1.0);
    // Time the sampler attributed to D3cold is there for residency queries.
    eventually("observed D3cold time", Duration::from_secs(30), || {
        let r = prom.query(
            "vfio_pm_device_observed_state_seconds_total{bdf=\"0000:00:05.0\",state=\"D3cold\"}",
        );
        (r.len() == 1 && r[0].1 > 0.0).then_some(())
    });

    // The queries docs/operations.md gives, with a short range: fleet D3cold residency ...
    eventually("fleet D3cold residency", Duration::from_secs(30), || {
        let r = prom.query(
            "sum(rate(vfio_pm_device_observed_state_seconds_total{state=\"D3cold\"}[1m])) \
             / sum(rate(vfio_pm_device_observed_state_seconds_total[1m]))",
        );
        (r.len() == 1 && r[0].1 > 0.0 && r[0].1 <= 1.0).then_some(())
    });
    // ... and devices that never reach D3cold: the NVMe without _PR3, not the GPU.
    eventually("never-D3cold devices", Duration::from_secs(30), || {
        let r = prom.query(
            "increase(vfio_pm_device_observed_state_seconds_total{state=\"D3cold\"}[1m]) == 0",
        );
        let bdfs: Vec<&str> = r.iter().map(|(b, _)| b.as_str()).collect();
        (bdfs == ["0000:00:06.0"]).then_some(())
    });

    // Unplug: the device's series end; no read of it counts as an exporter error.
    fake.remove(addr("0000:00:06.0")).unwrap();
    eventually("06.0 gone from the scrape", Duration::from_secs(30), || {
        prom.query("vfio_pm_device_power_state{bdf=\"0000:00:06.0\"}")
            .is_empty()
            .then_some(())
    });
    prom.wait_for("vfio_pm_scrape_errors_total", 0.0);
    prom.wait_for("vfio_pm_build_info", 1.0);

    // SIGTERM: a clean exit.
    exporter.assert_running();
    kill(exporter.pid(), Signal::SIGTERM).unwrap();
    let status = eventually("the exporter exits", Duration::from_secs(20), || {
        exporter.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}");
    drop(prom.guard);
}

#[test]
fn a_bad_sysfs_root_is_an_error_not_empty_metrics() {
    let out = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["exporter", "--listen", "127.0.0.1:0"])
        .env("VFIO_PM_SYSFS_ROOT", "/nonexistent-vfio-pm-root")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot list PCI devices"));
}
