//! The plan over whole command lines: every syntax `vfio-pm qemu` reads and every refusal.

use super::plan::{plan, PlanError, QemuPlan};

fn argv(words: &[&str]) -> Vec<String> {
    std::iter::once("qemu-system-x86_64")
        .chain(words.iter().copied())
        .map(str::to_string)
        .collect()
}

fn ok(words: &[&str]) -> QemuPlan {
    match plan(&argv(words)) {
        Ok(p) => p,
        Err(e) => panic!("{words:?}: {e}"),
    }
}

fn err(words: &[&str]) -> String {
    match plan(&argv(words)) {
        Ok(p) => panic!("{words:?} was accepted: {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn key_value_device_on_the_root_bus() {
    let p = ok(&[
        "-machine",
        "q35,accel=kvm",
        "-m",
        "4G",
        "-device",
        "vfio-pci,host=0000:01:00.0,bus=pcie.0,addr=0x6,id=gpu",
        "-device",
        "vfio-pci-nohotplug,host=02:00.0,addr=05.0",
        "-nographic",
    ]);
    assert_eq!(p.binary, "qemu-system-x86_64");
    assert_eq!(p.machine.machine_type, "q35");
    assert!(p.machine.bridge_hotplug);
    let d = &p.devices[0];
    assert_eq!(d.host.to_string(), "0000:01:00.0");
    assert_eq!((d.slot, d.function), (6, 0));
    assert_eq!(d.guest_bdf.as_deref(), Some("0000:00:06.0"));
    assert_eq!(d.acpi_path.as_deref(), Some(r"\_SB.PCI0.S30"));
    assert_eq!(d.id.as_deref(), Some("gpu"));
    assert_eq!(d.arg_index, 4);
    assert!(!d.acpi_eject && d.root_port.is_none());
    let d = &p.devices[1];
    assert_eq!(d.driver, "vfio-pci-nohotplug");
    assert_eq!(d.host.to_string(), "0000:02:00.0");
    assert_eq!(d.acpi_path.as_deref(), Some(r"\_SB.PCI0.S28"));
    assert_eq!(d.bus, "pcie.0");
}

#[test]
fn acpi_names_are_devfn_in_upper_case_hex() {
    let p = ok(&["-M", "q35", "-device", "vfio-pci,host=01:00.0,addr=0x1f"]);
    assert_eq!(p.devices[0].acpi_path.as_deref(), Some(r"\_SB.PCI0.SF8"));
    let p = ok(&["-M", "q35", "-device", "vfio-pci,host=01:00.0,addr=3"]);
    assert_eq!(p.devices[0].acpi_path.as_deref(), Some(r"\_SB.PCI0.S18"));
    // Function 1: QEMU's DSDT has no node for it.
    let p = ok(&[
        "-M",
        "q35",
        "-device",
        "vfio-pci,host=01:00.1,addr=0x6.1,multifunction=on",
    ]);
    let d = &p.devices[0];
    assert_eq!((d.slot, d.function, d.multifunction), (6, 1, true));
    assert_eq!(d.guest_bdf.as_deref(), Some("0000:00:06.1"));
    assert!(d.acpi_path.is_none() && d.acpi_note.contains("function 0"));
}

#[test]
fn libvirt_json_syntax_behind_a_root_port() {
    let p = ok(&[
        "-machine",
        "pc-q35-7.2,usb=off,dump-guest-core=off",
        "-device",
        r#"{"driver":"pcie-root-port","port":8,"chassis":1,"id":"pci.1","bus":"pcie.0","multifunction":true,"addr":"0x1"}"#,
        "-device",
        r#"{"driver":"pcie-root-port","port":9,"chassis":2,"id":"pci.2","bus":"pcie.0","addr":"0x1.0x1"}"#,
        "-device",
        r#"{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0","bus":"pci.2","addr":"0x0"}"#,
        "-chardev",
        "socket,id=charmonitor,fd=30,server=on,wait=off",
    ]);
    assert_eq!(p.root_ports.len(), 2);
    let rp = &p.root_ports[1];
    assert_eq!((rp.id.as_str(), rp.slot, rp.function), ("pci.2", 1, 1));
    assert_eq!(rp.chassis, Some(2));
    assert_eq!(rp.acpi_path, r"\_SB.PCI0.S09");
    let d = &p.devices[0];
    assert_eq!(d.root_port.as_deref(), Some("pci.2"));
    assert!(d.guest_bdf.is_none(), "the guest numbers the port's bus");
    assert_eq!(d.acpi_path.as_deref(), Some(r"\_SB.PCI0.S09.S00"));
    assert!(d.acpi_eject, "ACPI hotplug puts _EJ0 there");
    assert_eq!(p.chardev_ids, ["charmonitor"]);
}

#[test]
fn json_number_addr_is_a_devfn() {
    let p = ok(&[
        "-M",
        "q35",
        "-device",
        r#"{"driver":"vfio-pci","host":"01:00.0","addr":48}"#,
    ]);
    assert_eq!((p.devices[0].slot, p.devices[0].function), (6, 0));
    let p = ok(&[
        "-M",
        "q35",
        "-device",
        r#"{"driver":"vfio-pci","host":"01:00.0","addr":"0x6"}"#,
    ]);
    assert_eq!(p.devices[0].slot, 6);
}

#[test]
fn root_port_children_without_bridge_hotplug_have_no_node() {
    let port = "pcie-root-port,id=rp,bus=pcie.0,addr=0x2,chassis=1,slot=4";
    let dev = "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:03:00.0/,bus=rp";
    let p = ok(&["-M", "q35", "-device", port, "-device", dev]);
    let d = &p.devices[0];
    assert_eq!(d.host.to_string(), "0000:03:00.0");
    assert_eq!((d.slot, d.function), (0, 0), "below a port the slot is 0");
    assert_eq!(d.acpi_path.as_deref(), Some(r"\_SB.PCI0.S10.S00"));
    assert_eq!(p.root_ports[0].port_slot, Some(4));
    let off = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off";
    let p = ok(&["-M", "q35", "-global", off, "-device", port, "-device", dev]);
    assert!(!p.machine.bridge_hotplug);
    assert!(p.devices[0].acpi_path.is_none());
    assert!(p.devices[0].acpi_note.contains("hotplug"));
    assert_eq!(p.globals, [off]);
    // Machine types before 6.1 have no ACPI hotplug below ports on q35.
    let p = ok(&["-M", "pc-q35-6.0", "-device", port, "-device", dev]);
    assert!(p.devices[0].acpi_path.is_none());
    let p = ok(&["-M", "pc-q35-6.1", "-device", port, "-device", dev]);
    assert!(p.devices[0].acpi_path.is_some());
}

#[test]
fn records_existing_acpi_tables_and_warns_about_hidden_devices() {
    let p = ok(&[
        "-M",
        "q35",
        "-acpitable",
        "file=/x/ssdt.aml",
        "-readconfig",
        "vm.cfg",
        "-set",
        "device.gpu.addr=7",
    ]);
    assert_eq!(p.acpi_tables, ["file=/x/ssdt.aml"]);
    assert_eq!(p.warnings.len(), 2);
    assert!(p.devices.is_empty());
    // Serialises (what print-plan prints).
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["machine"]["machine_type"], "q35");
}

#[test]
fn refuses_what_it_cannot_handle() {
    for (words, needle) in [
        (
            vec!["-device", "vfio-pci,host=01:00.0,addr=6"],
            "no -machine",
        ),
        (
            vec!["-M", "pc", "-device", "vfio-pci,host=01:00.0"],
            "not q35",
        ),
        (vec!["-machine", "pc-i440fx-7.2"], "not q35"),
        (vec!["-machine", "microvm"], "not q35"),
        (
            vec!["-M", "q35", "-device", "vfio-pci,host=01:00.0"],
            "explicit addr",
        ),
        (
            vec!["-M", "q35", "-device", "vfio-pci,fd=12,addr=6"],
            "fd=12",
        ),
        (vec!["-M", "q35", "-device", "vfio-pci,addr=6"], "no host="),
        (
            vec!["-M", "q35", "-device", "vfio-pci,host=1:2:3:4.0,addr=6"],
            "host=",
        ),
        (
            vec!["-M", "q35", "-device", "vfio-pci,host=01:00.0,addr=0x20"],
            "addr=",
        ),
        (
            vec!["-M", "q35", "-device", "vfio-pci,host=01:00.0,addr=6.8"],
            "addr=",
        ),
        (
            vec!["-M", "q35", "-device", "vfio-pci,host=01:00.0,addr=zz"],
            "addr=",
        ),
        (
            vec![
                "-M",
                "q35",
                "-device",
                "vfio-pci,host=01:00.0,bus=br0,addr=1",
            ],
            "bus=\"br0\"",
        ),
        (
            vec![
                "-M",
                "q35",
                "-device",
                "vfio-pci,host=01:00.0,sysfsdev=/sys/x/0000:02:00.0,addr=6",
            ],
            "different devices",
        ),
        (
            vec!["-M", "q35", "-device", "vfio-pci,sysfsdev=/dev/null,addr=6"],
            "sysfsdev=",
        ),
        (
            vec!["-M", "q35", "-device", "pcie-root-port,addr=2"],
            "needs id=",
        ),
        (
            vec!["-M", "q35", "-device", "pcie-root-port,id=rp"],
            "no addr=",
        ),
        (
            vec![
                "-M",
                "q35",
                "-device",
                "pcie-root-port,id=rp,addr=2",
                "-device",
                "vfio-pci,host=01:00.0,bus=rp,addr=1",
            ],
            "only slot 0",
        ),
        (
            vec![
                "-M",
                "q35",
                "-device",
                "pcie-root-port,id=rp,addr=2,bus=other",
                "-device",
                "vfio-pci,host=01:00.0,bus=rp",
            ],
            "not pcie.0",
        ),
        (
            vec![
                "-M",
                "q35",
                "-device",
                "vfio-pci,host=01:00.0,addr=5,id=a",
                "-device",
                "e1000e,id=a",
            ],
            "used by two",
        ),
        (vec!["-M", "q35", "-device"], "needs a value"),
        (
            vec!["-M", "q35", "-device", r#"{"driver":"vfio-pci""#],
            "invalid JSON",
        ),
        (vec!["-M", "q35", "-device", "vfio-pci,=x"], "empty name"),
    ] {
        let e = err(&words);
        assert!(e.contains(needle), "{words:?}: {e:?} lacks {needle:?}");
    }
    assert!(matches!(plan(&[]), Err(PlanError::NoMachine)));
}

#[test]
fn never_panics_on_odd_input() {
    let odd = [
        "",
        "-",
        "--",
        ",",
        ",,",
        "=",
        "{",
        "}",
        "{}",
        "[]",
        "0x",
        ".",
        "0x.0x",
        "\u{0}",
        "é,é=é",
        "vfio-pci",
        "vfio-pci,",
        "vfio-pci,addr=",
        "vfio-pci,addr=.",
        "vfio-pci,host=",
    ];
    for a in odd {
        for b in odd {
            for opt in [
                "-device",
                "-machine",
                "-M",
                "-global",
                "-acpitable",
                "-chardev",
                a,
            ] {
                let _ = plan(&argv(&["-M", "q35", opt, a, "-device", b]));
                let _ = plan(&argv(&[opt, a, b]));
            }
        }
    }
}
