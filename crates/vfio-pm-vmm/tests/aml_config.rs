//! Every configuration error: the right variant, the field it names, and a message that says why.

mod aml_support;

use aml_support::*;
use vfio_pm_vmm::config::{
    ConfigError, NodeMode, PathError, Problem, RouteKind, VmmConfig, WakeupMode,
};

const DEV: &str = "[[devices]]
acpi_path = '\\_SB.PCI0.S28'
pci_address = \"0000:00:05.0\"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true
gpe = 0x10
";

/// TRAP_IO + one device with `line` replaced or appended.
fn with(device_edit: &[(&str, &str)], extra: &str) -> String {
    let mut dev = DEV.to_string();
    for (key, line) in device_edit {
        let mut lines: Vec<String> = dev.lines().map(str::to_string).collect();
        match lines.iter().position(|l| l.starts_with(&format!("{key} "))) {
            Some(i) if line.is_empty() => {
                lines.remove(i);
            }
            Some(i) => lines[i] = line.to_string(),
            None => lines.push(line.to_string()),
        }
        dev = lines.join("\n") + "\n";
    }
    format!("{TRAP_IO}{extra}\n{dev}")
}

fn err(toml: &str) -> ConfigError {
    match VmmConfig::from_toml_str(toml) {
        Ok(c) => panic!("accepted: {c:?}\n{toml}"),
        Err(e) => e,
    }
}

fn expect(toml: &str, field: &str, check: impl Fn(&Problem) -> bool, words: &[&str]) {
    let e = err(toml);
    assert_eq!(e.field(), Some(field), "{e}");
    assert!(check(e.problem().unwrap()), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
    for w in words {
        assert!(msg.contains(w), "{msg:?} lacks {w:?}");
    }
}

#[test]
fn the_example_and_defaults_are_accepted() {
    let c = config(&example_e1000e());
    let d = &c.devices()[0];
    assert_eq!(d.acpi_path.to_string(), "\\_SB.PCI0.S28");
    assert_eq!(
        d.power_resource.as_ref().unwrap().to_string(),
        "\\_SB.PCI0.PR00"
    );
    assert_eq!(d.pci_address.to_string(), "0000:00:05.0");
    assert_eq!(d.gpe, Some(0x10));
    assert!(d.has_pm_capability && !d.hotplug_eject && d.d3cold);
    assert_eq!(d.wakeup, WakeupMode::Auto);
    assert_eq!(d.node, NodeMode::Existing);
    assert!(!d.has_prw());
    assert_eq!(c.wake().route, RouteKind::Gpe);
    assert_eq!(c.trap().address, 0x440);
    let c = config(&with(&[], ""));
    assert_eq!(&c.table().oem_id, b"VFIOPM");
}

#[test]
fn toml_errors_are_reported() {
    assert!(matches!(err("not toml ["), ConfigError::Toml(_)));
    assert!(matches!(err(&with(&[], "bogus = 1")), ConfigError::Toml(_)));
    let e = err(&with(&[("d3cold", "d3cold = \"yes\"")], ""));
    assert!(matches!(e, ConfigError::Toml(_)));
    assert!(e.to_string().contains("d3cold"), "{e}");
    let e = err(&with(&[("wakeup", "wakeup = \"sometimes\"")], ""));
    assert!(e.to_string().contains("sometimes"), "{e}");
    assert!(matches!(err(DEV), ConfigError::Toml(_)), "missing [trap]");
}

#[test]
fn bad_acpi_paths() {
    let bad = |text: &str, reason: fn(&PathError) -> bool, words: &[&str]| {
        expect(
            &with(&[("acpi_path", &format!("acpi_path = '{text}'"))], ""),
            "devices[0].acpi_path",
            |p| matches!(p, Problem::BadPath { reason: r, .. } if reason(r)),
            words,
        )
    };
    bad(
        "\\_SB.PCI0.S2-8",
        |r| matches!(r, PathError::Segment(_)),
        &["S2-8", "not a valid 4-char ACPI name"],
    );
    bad(
        "\\_SB.PCI0.S2800",
        |r| matches!(r, PathError::Segment(_)),
        &["longer than 4"],
    );
    bad(
        "\\_SB.pci0.S28",
        |r| matches!(r, PathError::Segment(_)),
        &["lowercase"],
    );
    bad(
        "\\_SB.PCI0.8S",
        |r| matches!(r, PathError::Segment(_)),
        &["must start with"],
    );
    bad(
        "\\_SB..S28",
        |r| matches!(r, PathError::Segment(_)),
        &["empty"],
    );
    bad(
        "_SB.PCI0.S28",
        |r| *r == PathError::NotAbsolute,
        &["absolute"],
    );
    bad("\\", |r| *r == PathError::Root, &["root"]);
    let long = format!("\\{}", vec!["ABCD"; 256].join("."));
    bad(&long, |r| *r == PathError::TooLong(256), &["255"]);
    expect(
        &with(&[("acpi_path", "acpi_path = '\\S28'")], ""),
        "devices[0].acpi_path",
        |p| matches!(p, Problem::NoParentScope { .. }),
        &["parent scope"],
    );
    // ASL padding: S28 and S28_ are the same name.
    let c = config(&with(
        &[("acpi_path", "acpi_path = '\\_SB_.PCI0.S28_'")],
        "",
    ));
    assert_eq!(c.devices()[0].acpi_path.to_string(), "\\_SB.PCI0.S28");
}

#[test]
fn bad_numbers_and_ids() {
    expect(
        &with(&[("pci_address", "pci_address = \"0000:00:20.0\"")], ""),
        "devices[0].pci_address",
        |p| matches!(p, Problem::BadPciAddress(_)),
        &["invalid PCI address"],
    );
    for v in ["0x0000", "0xffff"] {
        expect(
            &with(&[("vendor_id", &format!("vendor_id = {v}"))], ""),
            "devices[0].vendor_id",
            |p| matches!(p, Problem::BadVendorId(_)),
            &["not a valid PCI vendor id"],
        );
    }
    expect(
        &with(&[("vendor_id", "vendor_id = 0x10000")], ""),
        "devices[0].vendor_id",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["out of range"],
    );
    expect(
        &with(&[("device_id", "device_id = -1")], ""),
        "devices[0].device_id",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["out of range"],
    );
    expect(
        &with(&[("class_code", "class_code = 0x1000000")], ""),
        "devices[0].class_code",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["0xffffff"],
    );
    expect(
        &with(&[("gpe", "gpe = 256")], ""),
        "devices[0].gpe",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["0xff"],
    );
    expect(
        &format!("[table]\noem_id = \"TOOLONGID\"\n{}", with(&[], "")),
        "table.oem_id",
        |p| matches!(p, Problem::BadOemString { max: 6, .. }),
        &["6"],
    );
    expect(
        &format!("[table]\noem_table_id = \"TAB\u{e9}\"\n{}", with(&[], "")),
        "table.oem_table_id",
        |p| matches!(p, Problem::BadOemString { max: 8, .. }),
        &["ASCII"],
    );
}

#[test]
fn configurations_that_would_silently_lose_d3cold_are_refused() {
    expect(
        &with(&[("hotplug_eject", "hotplug_eject = true")], ""),
        "devices[0].hotplug_eject",
        |p| *p == Problem::EjectLosesD3cold,
        &["_EJ0", "d3cold"],
    );
    expect(
        &with(&[("has_pm_capability", "has_pm_capability = false")], ""),
        "devices[0].has_pm_capability",
        |p| *p == Problem::NoPmCapability,
        &["PM capability", "D3hot"],
    );
    // The same settings without D3cold are fine.
    config(&with(
        &[
            ("d3cold", "d3cold = false"),
            ("hotplug_eject", "hotplug_eject = true"),
            ("has_pm_capability", "has_pm_capability = false"),
        ],
        "",
    ));
}

#[test]
fn wake_route_mismatches() {
    expect(
        &with(&[("gpe", "")], ""),
        "devices[0].gpe",
        |p| matches!(p, Problem::MissingGpe { .. }),
        &["GPE"],
    );
    expect(
        &with(&[("wakeup", "wakeup = \"never\"")], ""),
        "devices[0].gpe",
        |p| *p == Problem::UnusedGpe,
        &["only used"],
    );
    expect(
        &with(&[], "[wake]\nroute = \"ged\"\n"),
        "devices[0].gpe",
        |p| *p == Problem::UnusedGpe,
        &["gpe"],
    );
    expect(
        &with(
            &[("gpe", ""), ("wakeup", "wakeup = \"always\"")],
            "[wake]\nroute = \"ged\"\n",
        ),
        "devices[0].wakeup",
        |p| *p == Problem::PrwNeedsGpe,
        &["_PRW"],
    );
    config(&with(&[("gpe", "")], "[wake]\nroute = \"ged\"\n"));
    config(&with(&[("gpe", ""), ("wakeup", "wakeup = \"never\"")], ""));
}

#[test]
fn power_resource_names() {
    expect(
        &with(
            &[
                ("d3cold", "d3cold = false"),
                ("power_resource", "power_resource = \"PWRA\""),
            ],
            "",
        ),
        "devices[0].power_resource",
        |p| *p == Problem::UnusedPowerResource,
        &["d3cold = false"],
    );
    expect(
        &with(&[("power_resource", "power_resource = \"pwra\"")], ""),
        "devices[0].power_resource",
        |p| matches!(p, Problem::BadPath { .. }),
        &["lowercase"],
    );
}

#[test]
fn root_port_must_be_above_the_device() {
    expect(
        &with(&[("root_port", "root_port = '\\_SB.PCI0.RP00'")], ""),
        "devices[0].root_port",
        |p| matches!(p, Problem::RootPortNotAncestor { .. }),
        &["not an ancestor"],
    );
    expect(
        &with(&[("root_port", "root_port = 'RP00'")], ""),
        "devices[0].root_port",
        |p| matches!(p, Problem::BadPath { .. }),
        &["absolute"],
    );
}

fn two(second: &[(&str, &str)]) -> String {
    let mut s = with(&[], "");
    let mut dev = DEV
        .replace("S28", "S30")
        .replace("00:05.0", "00:06.0")
        .replace("0x10", "0x11");
    for (key, line) in second {
        let lines: Vec<String> = dev
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{key} ")) {
                    line.to_string()
                } else {
                    l.to_string()
                }
            })
            .collect();
        dev = lines.join("\n") + "\n";
        if !dev.contains(line) {
            dev.push_str(line);
            dev.push('\n');
        }
    }
    s.push('\n');
    s.push_str(&dev);
    s
}

#[test]
fn clashes_between_devices() {
    config(&two(&[]));
    expect(
        &two(&[("acpi_path", "acpi_path = '\\_SB.PCI0.S28'")]),
        "devices[1].acpi_path",
        |p| matches!(p, Problem::Duplicate { other: 0, .. }),
        &["also used by devices[0]"],
    );
    expect(
        &two(&[("pci_address", "pci_address = \"00:05.0\"")]),
        "devices[1].pci_address",
        |p| matches!(p, Problem::Duplicate { other: 0, .. }),
        &["0000:00:05.0"],
    );
    expect(
        &two(&[("gpe", "gpe = 0x10")]),
        "devices[1].gpe",
        |p| matches!(p, Problem::Duplicate { other: 0, .. }),
        &["GPE 0x10"],
    );
    // Device 1 asks for the name device 0 gets generated (PR00 in the same scope).
    expect(
        &two(&[("power_resource", "power_resource = \"PR00\"")]),
        "devices[1].power_resource",
        |p| matches!(p, Problem::Duplicate { other: 0, .. }),
        &["\\_SB.PCI0.PR00"],
    );
    // A device whose node is where a power resource would go.
    expect(
        &two(&[("acpi_path", "acpi_path = '\\_SB.PCI0.PR00'")]),
        "devices[0].power_resource",
        |p| matches!(p, Problem::NameClash { .. }),
        &["defined twice"],
    );
    // A root port that is another device's node.
    expect(
        &two(&[
            ("acpi_path", "acpi_path = '\\_SB.PCI0.S28.S00'"),
            ("root_port", "root_port = '\\_SB.PCI0.S28'"),
        ]),
        "devices[1].root_port",
        |p| matches!(p, Problem::NameClash { .. }),
        &["device node of devices[0]"],
    );
    // Generated names under \_SB.
    expect(
        &with(&[("acpi_path", "acpi_path = '\\_SB.VPMT'")], ""),
        "devices[0].acpi_path",
        |p| matches!(p, Problem::NameClash { .. }),
        &["generator"],
    );
}

#[test]
fn device_count_limits() {
    expect(
        &format!("devices = []\n{TRAP_IO}"),
        "devices",
        |p| *p == Problem::NoDevices,
        &["at least one"],
    );
    let mut s = TRAP_IO.to_string();
    for i in 0..65 {
        s.push_str(&format!(
            "[[devices]]\nacpi_path = '\\_SB.PCI0.D{i:03}'\npci_address = \"00:{:02x}.{}\"\nvendor_id = 0x8086\nclass_code = 0\nwakeup = \"never\"\n",
            i / 8,
            i % 8
        ));
    }
    expect(
        &s,
        "devices",
        |p| matches!(p, Problem::TooManyDevices { count: 65, max: 64 }),
        &["64"],
    );
}

#[test]
fn trap_register_errors() {
    let trap = |body: &str| format!("[trap]\n{body}\n{DEV}");
    for (port, user) in [
        ("0x402", "debug log"),
        ("0x510", "fw_cfg"),
        ("0x80", "legacy ISA"),
        ("0xcf8", "PCI configuration"),
        ("0x600", "ACPI PM"),
    ] {
        expect(
            &trap(&format!("space = \"io\"\naddress = {port}")),
            "trap.address",
            |p| matches!(p, Problem::ReservedPort { .. }),
            &[user],
        );
    }
    // A 4-byte register at 0x4ff reaches 0x502 but not 0x505; at 0x502 it overlaps pvpanic.
    config(&trap("space = \"io\"\naddress = 0x4f0\nwidth = 4"));
    expect(
        &trap("space = \"io\"\naddress = 0x502\nwidth = 4"),
        "trap.address",
        |p| matches!(p, Problem::ReservedPort { first: 0x505, .. }),
        &["pvpanic"],
    );
    expect(
        &trap("space = \"io\"\naddress = 0x10000"),
        "trap.address",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["out of range"],
    );
    expect(
        &trap("space = \"io\"\naddress = 0x440\nwidth = 8"),
        "trap.width",
        |p| matches!(p, Problem::BadWidth { .. }),
        &["1, 2 or 4"],
    );
    expect(
        &trap("space = \"mmio\"\naddress = 0xfe000000\nwidth = 3"),
        "trap.width",
        |p| matches!(p, Problem::BadWidth { .. }),
        &["1, 2, 4 or 8"],
    );
    expect(
        &trap("space = \"mmio\"\naddress = 0xfe000002\nwidth = 4"),
        "trap.address",
        |p| matches!(p, Problem::BadMmioAddress { .. }),
        &["aligned"],
    );
    expect(
        &trap("space = \"mmio\"\naddress = 0\nwidth = 4"),
        "trap.address",
        |p| matches!(p, Problem::BadMmioAddress { .. }),
        &["address 0"],
    );
    expect(
        &trap("space = \"mmio\"\naddress = -4\nwidth = 4"),
        "trap.address",
        |p| matches!(p, Problem::OutOfRange { .. }),
        &["out of range"],
    );
}

#[test]
fn arbitrary_input_never_panics() {
    // A cheap fuzz over mutations of a valid file: every outcome is Ok or a typed error.
    let base = example_e1000e();
    let bytes = base.as_bytes();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut b = bytes.to_vec();
        let i = (seed as usize) % b.len();
        b[i] = (seed >> 32) as u8 & 0x7f;
        if let Ok(text) = String::from_utf8(b) {
            if let Ok(cfg) = VmmConfig::from_toml_str(&text) {
                let _ = vfio_pm_vmm::aml::build_ssdt(&cfg);
            }
        }
    }
}
