//! The `vfio-pm` binary over captured sysfs trees: output, JSON shape, errors and exit codes.

use std::process::{Command, Output};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::PciAddress;

fn vfio_pm(root: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(args)
        .env("VFIO_PM_SYSFS_ROOT", root)
        .output()
        .expect("run vfio-pm")
}

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

fn tree() -> (tempfile::TempDir, FakeSysfs) {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path()).unwrap();
    fake.set_disable_idle_d3(false).unwrap();
    let mut nic = FakeDevice::vfio(addr("0000:00:02.0"));
    nic.driver = Some("e1000e".into());
    nic.power_state = "D0".into();
    nic.runtime_status = "active".into();
    fake.add(&nic).unwrap();
    fake.add(&FakeDevice::vfio(addr("0000:00:05.0"))).unwrap();
    let mut hot = FakeDevice::vfio(addr("0000:00:06.0"));
    hot.power_resources = Some(vec![]);
    hot.power_state = "D3hot".into();
    fake.add(&hot).unwrap();
    (tmp, fake)
}

#[test]
fn status_lists_vfio_devices_first_with_power_columns() {
    let (tmp, _fake) = tree();
    let out = vfio_pm(tmp.path(), &["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("DEVICE"));
    assert!(
        lines[1].starts_with("0000:00:05.0") && lines[1].contains("D3cold"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("0000:00:06.0") && lines[2].contains("D3hot"),
        "{text}"
    );
    assert!(
        lines[3].starts_with("0000:00:02.0") && lines[3].contains("e1000e"),
        "{text}"
    );
    assert!(lines[1].contains("90%"), "suspended share: {text}");
}

#[test]
fn status_json_carries_every_field_and_unknowns() {
    let (tmp, fake) = tree();
    let dir = fake.add(&FakeDevice::vfio(addr("0000:00:07.0"))).unwrap();
    std::fs::remove_file(dir.join("power/runtime_status")).unwrap();
    let out = vfio_pm(tmp.path(), &["status", "--json", "00:07.0", "00:05.0"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["address"], "0000:00:05.0");
    assert_eq!(a[0]["power_state"], "D3cold");
    assert_eq!(a[0]["power_resources_d3hot"][0], "LNXPOWER:00");
    assert_eq!(a[1]["runtime_status"]["unknown"], "no power/runtime_status");
}

#[test]
fn doctor_exit_status_says_whether_d3cold_is_reachable() {
    let (tmp, _fake) = tree();
    let hot = vfio_pm(
        tmp.path(),
        &["doctor", "0000:00:06.0", "--no-open", "--json"],
    );
    assert_eq!(hot.status.code(), Some(1), "{hot:?}");
    let v: serde_json::Value = serde_json::from_slice(&hot.stdout).unwrap();
    assert_eq!(v["d3cold_reachable"], false);
    let human = vfio_pm(tmp.path(), &["doctor", "0000:00:06.0", "--no-open"]);
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(text.contains("[FAIL] firmware_power_resources"), "{text}");
    assert!(text.contains("NOT reachable"), "{text}");
}

#[test]
fn bad_input_gets_a_clear_error_and_exit_2() {
    let (tmp, _fake) = tree();
    let bad = vfio_pm(tmp.path(), &["doctor", "0000:00:20.0"]);
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8(bad.stderr).unwrap();
    assert!(err.contains("invalid PCI address"), "{err}");

    let missing = vfio_pm(tmp.path(), &["status", "0000:00:09.0"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8(missing.stderr)
        .unwrap()
        .contains("no PCI device 0000:00:09.0"));

    let nosysfs = vfio_pm(&tmp.path().join("nope"), &["status"]);
    assert_eq!(nosysfs.status.code(), Some(2));
    assert!(String::from_utf8(nosysfs.stderr)
        .unwrap()
        .contains("bus/pci/devices"));

    // Opening a device that is not bound to vfio-pci explains how to bind it.
    let probe = vfio_pm(tmp.path(), &["probe", "0000:00:02.0"]);
    assert_eq!(probe.status.code(), Some(2));
    let err = String::from_utf8(probe.stderr).unwrap();
    assert!(err.contains("bound to e1000e, not vfio-pci"), "{err}");
}

#[test]
fn help_explains_the_power_states() {
    let out = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "D0",
        "D3hot",
        "D3cold",
        "LOW_POWER_ENTRY_WITH_WAKEUP",
        "Exit status",
    ] {
        assert!(text.contains(word), "{word} missing from --help");
    }
}

#[test]
fn aml_writes_a_checksummed_ssdt_and_names_bad_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/qemu-e1000e.toml"
    );
    let out_path = tmp.path().join("ssdt.aml");
    let out = vfio_pm(
        tmp.path(),
        &["aml", example, "-o", out_path.to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let table = std::fs::read(&out_path).unwrap();
    assert_eq!(&table[0..4], b"SSDT");
    let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, table.len());
    assert_eq!(
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "checksum"
    );

    let bad = tmp.path().join("bad.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("0x440", "0x402");
    std::fs::write(&bad, text).unwrap();
    let out = vfio_pm(tmp.path(), &["aml", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("trap.address"), "{err}");
}

#[test]
fn status_shows_since_boot_residency_and_says_how_d3_was_split() {
    let (tmp, _fake) = tree();
    let out = vfio_pm(tmp.path(), &["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        &header[6..],
        ["ACTIVE", "SUSPENDED", "SHARE", "D3COLD"],
        "{text}"
    );
    let capable: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&capable[6..], ["1.0s", "9.0s", "90%", "?"], "{text}");
    let no_pr3: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(no_pr3[0], "0000:00:06.0");
    assert_eq!(
        no_pr3[9], "never",
        "no _PR3: all suspended time was D3hot: {text}"
    );

    let out = vfio_pm(
        tmp.path(),
        &["status", "--json", "0000:00:06.0", "0000:00:05.0"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gpu = &v[0]["residency"];
    assert_eq!(gpu["d0_seconds"], 1.0);
    assert_eq!(gpu["d3_seconds"], 9.0);
    assert_eq!(gpu["suspended_share"], 0.9);
    assert_eq!(gpu["d3_split"], "unknown");
    assert!(gpu["d3cold_seconds"].is_null());
    let nvme = &v[1]["residency"];
    assert_eq!(nvme["d3_split"], "inferred_no_d3cold");
    assert_eq!(nvme["d3hot_seconds"], 9.0);
    assert_eq!(nvme["d3cold_seconds"], 0.0);
}
