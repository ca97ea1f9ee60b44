//! The `vfio-pm` binary on big hosts and odd trees: closed pipes, errors said once, sysfs
//! attributes that are FIFOs or endless, counters that cannot be right, unreadable nodes,
//! power resources up the hierarchy, and the smaller things a careful user notices.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::PciAddress;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn vfio_pm_cmd(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfio-pm"));
    c.args(args).env("VFIO_PM_SYSFS_ROOT", root);
    c
}

/// Runs to completion (its output read as it comes), killed after 20 s: a hang is a failure,
/// not a stuck test.
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vfio-pm");
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            panic!("vfio-pm hung for 20 s");
        }
    }
}

fn vfio_pm(root: &Path, args: &[&str]) -> Output {
    run(vfio_pm_cmd(root, args))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tree with `n` devices spread over buses (SR-IOV hosts have hundreds of functions), bound
/// to `driver`.
fn big_tree_with(n: usize, driver: &str) -> (tempfile::TempDir, FakeSysfs) {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    for i in 0..n {
        let a = PciAddress::new(0, (i / 256) as u8 + 1, ((i / 8) % 32) as u8, (i % 8) as u8);
        let mut d = FakeDevice::vfio(a.unwrap());
        d.driver = Some(driver.into());
        fake.add(&d).unwrap();
    }
    (tmp, fake)
}

fn big_tree(n: usize) -> (tempfile::TempDir, FakeSysfs) {
    big_tree_with(n, "vfio-pci")
}

/// Reads one line of the command's stdout, closes the pipe, and returns how it ended.
fn read_one_line_then_close(root: &Path, args: &[&str]) -> Output {
    let mut child = vfio_pm_cmd(root, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(!first.is_empty());
    // The reader is dropped here: the pipe is closed with most of the output unread.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "vfio-pm did not end after its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn every_output_ends_quietly_on_a_closed_pipe() {
    // 250 devices: JSON well past a pipe's 64 KiB; a long driver name takes the table past it.
    let (tmp, _fake) = big_tree_with(250, &"d".repeat(250));
    for args in [&["status", "--json"][..], &["status"][..]] {
        let all = vfio_pm(tmp.path(), args);
        assert!(
            all.stdout.len() > 80 * 1024,
            "{args:?}: {} bytes",
            all.stdout.len()
        );
        let out = read_one_line_then_close(tmp.path(), args);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{args:?}: {:?}\n{}",
            out.status,
            stderr(&out)
        );
    }
    let out = read_one_line_then_close(
        tmp.path(),
        &["doctor", "0000:01:00.0", "--json", "--no-open"],
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn each_error_is_said_once() {
    let out = vfio_pm(Path::new("/nonexistent-vfio-pm-root"), &["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_vfio-pm"));
        c.arg("aml").arg(&empty);
        c
    });
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let first_line = err.lines().next().unwrap_or_default().to_string();
    assert!(!first_line.is_empty(), "{err}");
    // The TOML parser's message appears once, not once per layer that embeds it.
    let toml_msg = err.split(": ").last().unwrap_or_default();
    assert_eq!(err.matches(toml_msg.trim()).count(), 1, "{err}");
}

#[test]
fn a_fifo_or_an_endless_file_as_an_attribute_is_unknown_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let dir = fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    std::fs::remove_file(dir.join("power_state")).unwrap();
    nix::unistd::mkfifo(&dir.join("power_state"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    std::fs::remove_file(dir.join("power/runtime_status")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("power/runtime_status")).unwrap();
    let big = fake.add(&FakeDevice::vfio(addr("0000:00:06.0"))).unwrap();
    std::fs::write(big.join("power/control"), "a".repeat(100_000)).unwrap();

    let out = vfio_pm(tmp.path(), &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let why = |i: usize, f: &str| v[i][f]["unknown"].as_str().unwrap_or("").to_string();
    assert!(why(0, "power_state").contains("FIFO"), "{v}");
    assert!(why(0, "runtime_status").contains("device node"), "{v}");
    assert!(why(1, "power_control").contains("larger than 4096"), "{v}");
    // The table form too (and a 100 KB field would not fit a table cell anyway).
    let out = vfio_pm(tmp.path(), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = vfio_pm(tmp.path(), &["doctor", "0000:00:06.0", "--no-open"]);
    assert!(
        stdout(&out).contains("power/control: unknown (power/control: larger than 4096 bytes)"),
        "{}",
        stdout(&out)
    );
    let out = vfio_pm(tmp.path(), &["watch", "--for", "300ms", "0000:00:05.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn counters_beyond_the_uptime_are_called_an_error_not_residency() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let mut d = FakeDevice::vfio(addr("0000:00:05.0"));
    d.active_ms = u64::MAX;
    fake.add(&d).unwrap();
    let out = vfio_pm(tmp.path(), &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("100%") && !text.contains("5124095576030h"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("a counter reset or a bad read"),
        "{}",
        stderr(&out)
    );
    let out = vfio_pm(tmp.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["residency"]["counter_error"]
        .as_str()
        .unwrap()
        .contains("since boot"));
}

/// A laptop: the dGPU has no `_PR3` of its own; its root port does.
fn laptop() -> (tempfile::TempDir, FakeSysfs) {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    fake.set_disable_idle_d3(false).unwrap();
    let mut port = FakeDevice::vfio(addr("0000:00:01.0"));
    port.driver = Some("pcieport".into());
    port.class = 0x060400;
    port.power_resources = Some(vec!["PXP".into()]);
    fake.add(&port).unwrap();
    let mut gpu = FakeDevice::vfio(addr("0000:01:00.0"));
    gpu.parent = Some(port.address);
    gpu.class = 0x030000;
    gpu.power_resources = Some(vec![]);
    fake.add(&gpu).unwrap();
    (tmp, fake)
}

#[test]
fn power_resources_on_the_root_port_make_d3cold_reachable() {
    let (tmp, fake) = laptop();
    let out = vfio_pm(
        tmp.path(),
        &["doctor", "0000:01:00.0", "--no-open", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "firmware_power_resources")
        .unwrap()
        .clone();
    assert_eq!(check["verdict"], "pass", "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains("0000:00:01.0"),
        "{check}"
    );
    let out = vfio_pm(tmp.path(), &["status", "0000:01:00.0"]);
    let row = stdout(&out).lines().nth(1).unwrap().to_string();
    assert!(row.contains("D3cold") && !row.contains("never"), "{row}");

    // A port that may not suspend keeps the device powered: a failure with the fix.
    let mut port = FakeDevice::vfio(addr("0000:00:01.0"));
    port.driver = Some("pcieport".into());
    port.power_resources = Some(vec!["PXP".into()]);
    port.control = "on".into();
    fake.add(&port).unwrap();
    let out = vfio_pm(tmp.path(), &["doctor", "0000:01:00.0", "--no-open"]);
    let text = stdout(&out);
    assert!(text.contains("[FAIL] firmware_power_resources"), "{text}");
    assert!(
        text.contains("echo auto > /sys/bus/pci/devices/0000:00:01.0/power/control"),
        "{text}"
    );
}

#[test]
fn an_unreadable_firmware_node_is_unknown_not_impossible() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let mut d = FakeDevice::vfio(addr("0000:00:05.0"));
    d.power_resources = None;
    let dir = fake.add(&d).unwrap();
    // A file where the firmware_node directory belongs.
    std::fs::write(dir.join("firmware_node"), "").unwrap();
    let out = vfio_pm(tmp.path(), &["doctor", "0000:00:05.0", "--no-open"]);
    let text = stdout(&out);
    assert!(text.contains("[?   ] firmware_power_resources"), "{text}");
    assert!(text.to_lowercase().contains("not a directory"), "{text}");
    assert!(!text.contains("impossible"), "{text}");
    let out = vfio_pm(tmp.path(), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["residency"]["d3_split"], "unknown", "{v}");
}

#[test]
fn the_reason_a_check_could_not_read_its_input_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    // No vfio_pci module parameters in the tree.
    let out = vfio_pm(
        tmp.path(),
        &["doctor", "0000:00:05.0", "--no-open", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let idle = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "disable_idle_d3")
        .unwrap()
        .clone();
    assert!(
        idle["detail"]
            .as_str()
            .unwrap()
            .contains("vfio_pci module not loaded"),
        "{idle}"
    );
}

/// Runs as an unprivileged user (nobody) when the test runs as root, where permissions would
/// not apply.
fn unprivileged(mut cmd: Command) -> Command {
    if nix::unistd::geteuid().is_root() {
        cmd.uid(65534).gid(65534);
    }
    cmd
}

#[test]
fn an_unreadable_device_directory_is_not_driver_none() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let dir = fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = run(unprivileged(vfio_pm_cmd(
        tmp.path(),
        &["doctor", "0000:00:05.0", "--no-open"],
    )));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = stdout(&out);
    assert!(text.contains("[?   ] vfio_bound"), "{text}{}", stderr(&out));
    assert!(text.contains("Permission denied"), "{text}");
    assert!(
        !text.contains("driver: none") && !text.contains("drivers_probe"),
        "{text}"
    );
}

#[test]
fn opening_a_device_another_driver_holds_says_unbind_first() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    let mut nic = FakeDevice::vfio(addr("0000:00:02.0"));
    nic.driver = Some("e1000e".into());
    fake.add(&nic).unwrap();
    for cmd in ["probe", "cycle", "hold"] {
        let out = vfio_pm(tmp.path(), &[cmd, "0000:00:02.0"]);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert!(
            err.contains("echo 0000:00:02.0 > /sys/bus/pci/drivers/e1000e/unbind"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn the_same_device_named_twice_is_listed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    let out = vfio_pm(tmp.path(), &["status", "00:05.0", "0000:00:05.0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).matches("0000:00:05.0").count(),
        1,
        "{}",
        stdout(&out)
    );
}

#[test]
fn cycle_count_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = vfio_pm(tmp.path(), &["cycle", "0000:00:05.0", "--count", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--count"), "{}", stderr(&out));
}

#[test]
fn sysfs_root_is_refused_where_nothing_reads_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["demo", "--sysfs-root", "/x"][..],
        &["aml", "x.toml", "--sysfs-root", "/x"],
    ] {
        let out = vfio_pm(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("does not apply"), "{}", stderr(&out));
    }
}

#[test]
fn a_closed_pipe_during_watch_json_ends_it() {
    let (tmp, _fake) = big_tree(3);
    let mut child = vfio_pm_cmd(tmp.path(), &["watch", "--json", "--interval", "50ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "watch kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// `vfio-pm aml` on the QEMU example configuration with `edit` applied: its stderr.
fn aml_error(edit: impl Fn(String) -> String) -> String {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/qemu-e1000e.toml"
    ))
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("vmm.toml");
    std::fs::write(&path, edit(example)).unwrap();
    let out = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_vfio-pm"));
        c.arg("aml").arg(&path).arg("--dsl");
        c
    });
    assert_eq!(out.status.code(), Some(2), "accepted: {}", stdout(&out));
    stderr(&out)
}

#[test]
fn configuration_mistakes_are_named_plainly() {
    for (window, address) in [
        ("IOAPIC", "0xfec00000"),
        ("HPET", "0xfed00000"),
        ("local APIC", "0xfee00000"),
    ] {
        let err = aml_error(|t| {
            t.replace("space = \"io\"", "space = \"mmio\"")
                .replace("address = 0x440", &format!("address = {address}"))
                .replace("width = 1", "width = 4")
        });
        assert!(err.contains(window), "{address}: {err}");
    }
    let err = aml_error(|t| t.replace("address = 0x440", "address = -1"));
    assert!(
        err.contains("-1 is out of range")
            && !err.contains("0xffff_ffff")
            && !err.contains("0xffffffffffffffff"),
        "{err}"
    );
    let err = aml_error(|t| {
        t.replace(
            "acpi_path = '\\_SB.PCI0.S28'",
            "acpi_path = '\\_SB.PCI0.RP01.S00'\nroot_port = '\\_SB.PCI0.RP01'\nroot_port_bdf = \"0000:01:00.0\"",
        )
        .replace("pci_address = \"0000:00:05.0\"", "pci_address = \"0000:01:00.0\"")
    });
    assert!(
        err.contains("this device's own pci_address") && !err.contains("also used by"),
        "{err}"
    );
}
