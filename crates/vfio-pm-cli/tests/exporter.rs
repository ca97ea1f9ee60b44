//! `vfio-pm exporter` scraped by a real Prometheus server over a fake sysfs tree that changes
//! during the test; its output checked by `promtool check metrics`.
//!
//! Prometheus comes from Debian's `prometheus` package: installed with apt-get when
//! `/usr/bin/prometheus` is missing. When that is impossible the test fails saying so, unless
//! `VFIO_PM_SKIP_PROMETHEUS=1`, when it prints a loud SKIPPED line. Everything listens on
//! 127.0.0.1 only; every wait is bounded; child processes are killed on every path.

mod support;

use nix::sys::signal::{kill, Signal};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;
use vfio_pm::doctor::{diagnose, KernelSupport};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::Sysfs;

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

#[test]
fn the_listen_address_may_be_a_host_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("sys");
    tree(&root);
    let (_exporter, at) = start_exporter_on(&root, "localhost:0");
    assert!(at.ip().is_loopback(), "{at}");
    let (code, body) = http_get(at, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
}
