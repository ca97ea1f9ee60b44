//! Shared by the exporter tests: a real Prometheus (installed from Debian when missing), the
//! exporter as a child process, loopback HTTP, bounded waits.
#![allow(dead_code)]

use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vfio_pm::PciAddress;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";
pub const SKIP_ENV: &str = "VFIO_PM_SKIP_PROMETHEUS";

pub fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// A child process killed and reaped when dropped.
pub struct Guard {
    pub name: &'static str,
    pub child: Child,
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
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn assert_running(&mut self) {
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
pub fn run_bounded(limit: &str, cmd: &[&str]) -> bool {
    Command::new("timeout")
        .arg(limit)
        .args(cmd)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure Debian's prometheus is installed; `false` means skip (only with the opt-out set).
pub fn ensure_prometheus() -> bool {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
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

pub fn percent_encode(s: &str) -> String {
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
pub fn eventually<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
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

pub struct Prometheus {
    pub guard: Guard,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(dir: &Path, target: SocketAddr) -> Self {
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
    pub fn query(&self, promql: &str) -> Vec<(String, f64)> {
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
    pub fn wait_for(&self, promql: &str, want: f64) {
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

pub fn start_exporter(root: &Path) -> (Guard, SocketAddr) {
    start_exporter_on(root, "127.0.0.1:0")
}

/// The exporter listening on `listen`, and the address it says it listens on.
pub fn start_exporter_on(root: &Path, listen: &str) -> (Guard, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["exporter", "--listen", listen, "--interval", "100ms"])
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
