//! What `vfio-pm qemu print-args --libvirt` prints is valid libvirt domain XML: pasted into a
//! domain's `<qemu:commandline>` as docs/qemu.md shows, the domain passes libvirt's own schema
//! (`virt-xml-validate`, from Debian's libvirt-clients, which `cargo xtask deps` installs). A
//! domain with a malformed `<qemu:arg>` fails the same check, so the check can fail.

use std::path::Path;
use std::process::Command;
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};

/// The domain around the printed lines (docs/qemu.md, "Attach").
fn domain(qemu_args: &str) -> String {
    format!(
        "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n\
         <name>vm</name>\n<memory unit='MiB'>1024</memory>\n\
         <os><type arch='x86_64' machine='q35'>hvm</type></os>\n\
         <devices><hostdev mode='subsystem' type='pci' managed='yes'><source>\
         <address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>\
         <address type='pci' domain='0x0000' bus='0x00' slot='0x06' function='0x0'/>\
         </hostdev></devices>\n\
         <qemu:commandline>\n{qemu_args}</qemu:commandline>\n</domain>\n"
    )
}

fn validate(dir: &Path, name: &str, xml: &str) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, xml).unwrap();
    Command::new("virt-xml-validate")
        .arg(&path)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate")
}

#[test]
fn print_args_libvirt_output_is_valid_domain_xml() {
    let have = Command::new("virt-xml-validate")
        .arg("--help")
        .output()
        .is_ok();
    if !have {
        assert!(
            std::env::var("CI").is_err(),
            "virt-xml-validate missing in CI: `cargo xtask deps` installs libvirt-clients"
        );
        eprintln!(
            "\n*** SKIPPED: libvirt XML check: virt-xml-validate not installed (apt-get install \
             libvirt-clients, or `cargo xtask deps`): the printed XML was NOT validated ***\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeSysfs::create(tmp.path().join("sys")).unwrap();
    fake.add(&FakeDevice::vfio("0000:01:00.0".parse().unwrap()))
        .unwrap();
    let state = tmp.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .env("VFIO_PM_SYSFS_ROOT", fake.root())
        .args(["qemu", "print-args", "--name", "vm", "--libvirt", "--state-dir"])
        .arg(&state)
        .args([
            "--",
            "LC_ALL=C",
            "/usr/bin/qemu-system-x86_64",
            "-machine",
            "pc-q35-7.2,accel=kvm",
            "-device",
            r#"{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0","bus":"pcie.0","addr":"0x6"}"#,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines = String::from_utf8(out.stdout).unwrap();
    assert!(
        lines.lines().count() >= 8 && lines.lines().all(|l| l.starts_with("<qemu:arg value='")),
        "{lines}"
    );
    assert!(
        lines.contains("-acpitable") && lines.contains("ivshmem-plain"),
        "{lines}"
    );
    let good = validate(tmp.path(), "good.xml", &domain(&lines));
    assert!(
        good.status.success(),
        "libvirt refuses the domain: {}\n{}",
        String::from_utf8_lossy(&good.stderr),
        domain(&lines)
    );
    let bad = validate(
        tmp.path(),
        "bad.xml",
        &domain(&format!("{lines}<qemu:arg valu='-x'/>\n")),
    );
    assert!(!bad.status.success(), "a malformed qemu:arg must fail");
}
