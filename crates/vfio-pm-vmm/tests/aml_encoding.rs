//! Byte-level checks of the AML objects acpi_tables lacks or gets wrong, with iasl as the oracle
//! for the acpi_tables bug this crate works around.

mod aml_support;

use acpi_tables::Aml;
use aml_support::*;
use vfio_pm_vmm::aml::ops::{pkg_length, External, ExternalBlock, PowerResource, Raw};
use vfio_pm_vmm::aml::{self, gpe_method_name};
use vfio_pm_vmm::config::{AcpiPath, GpeTrigger, NameSeg};

fn bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

#[test]
fn pkg_length_boundaries() {
    assert_eq!(pkg_length(0), Some(vec![0x01]));
    assert_eq!(pkg_length(62), Some(vec![0x3f]));
    // 63 bytes of content + 2 length bytes = 65 = 0x41: lead 0x40 | 0x1, then 0x04.
    assert_eq!(pkg_length(63), Some(vec![0x41, 0x04]));
    assert_eq!(pkg_length(0xffd), Some(vec![0x4f, 0xff]));
    assert_eq!(pkg_length(0xffe), Some(vec![0x81, 0x00, 0x01]));
    assert_eq!(pkg_length(0x0fff_fffb), Some(vec![0xcf, 0xff, 0xff, 0xff]));
    assert_eq!(pkg_length(0x0fff_fffc), None);
}

#[test]
fn power_resource_encoding() {
    let sta = Raw(vec![0xaa, 0xbb]);
    let pr = PowerResource {
        name: NameSeg::new("PR00").unwrap(),
        system_level: 0x02,
        resource_order: 0x1234,
        children: vec![&sta],
    };
    // ExtOpPrefix, PowerResOp, PkgLength(1 + 4 + 1 + 2 + 2 = 10), NameSeg, SystemLevel,
    // ResourceOrder (LE word), TermList.
    assert_eq!(
        bytes(&pr),
        vec![0x5b, 0x84, 0x0a, b'P', b'R', b'0', b'0', 0x02, 0x34, 0x12, 0xaa, 0xbb]
    );
    // A body above 62 bytes needs a two-byte PkgLength.
    let big = Raw(vec![0xa3; 60]);
    let pr = PowerResource {
        name: NameSeg::new("PWR").unwrap(),
        system_level: 0,
        resource_order: 0,
        children: vec![&big],
    };
    let b = bytes(&pr);
    assert_eq!(&b[..2], &[0x5b, 0x84]);
    // 4 (name) + 1 + 2 + 60 = 67 content bytes + 2 length bytes = 69 = 0x45.
    assert_eq!(&b[2..4], &[0x45, 0x04]);
    assert_eq!(&b[4..8], b"PWR_");
}

#[test]
fn external_and_its_if_zero_block() {
    let p: AcpiPath = "\\_SB.PCI0.S28".parse().unwrap();
    let e = External {
        path: &p,
        object_type: 6,
        argument_count: 0,
    };
    let mut want = vec![0x15, b'\\', 0x2f, 3];
    want.extend_from_slice(b"_SB_PCI0S28_");
    want.extend_from_slice(&[6, 0]);
    assert_eq!(bytes(&e), want);
    let block = ExternalBlock { externals: vec![e] };
    let b = bytes(&block);
    assert_eq!(b[0], 0xa0);
    assert_eq!(b[1] as usize, b.len() - 1);
    assert_eq!(b[2], 0x00); // If (Zero)
    assert_eq!(&b[3..], &want[..]);
    assert!(bytes(&ExternalBlock { externals: vec![] }).is_empty());
}

#[test]
fn name_strings() {
    let one: AcpiPath = "\\_SB".parse().unwrap();
    assert_eq!(bytes(&one), b"\\_SB_".to_vec());
    let two: AcpiPath = "\\_SB.PCI0".parse().unwrap();
    assert_eq!(bytes(&two), [&[b'\\', 0x2e][..], b"_SB_PCI0"].concat());
    assert_eq!(gpe_method_name(0x0a, GpeTrigger::Edge).as_str(), "_E0A");
    assert_eq!(gpe_method_name(0xff, GpeTrigger::Level).as_str(), "_LFF");
}

#[test]
fn generated_table_contains_a_correct_power_resource_opcode() {
    let t = aml::build_ssdt(&config(&example_e1000e()));
    let pos = t
        .windows(2)
        .position(|w| w == [0x5b, 0x84])
        .expect("PowerResOp");
    let len_bytes = 1 + usize::from(t[pos + 2] >> 6);
    let name = pos + 2 + len_bytes;
    assert_eq!(&t[name..name + 7], &[b'P', b'R', b'0', b'0', 0, 0, 0]);
    // The PkgLength covers exactly the power resource: the next object is the device Scope.
    let mut len = usize::from(t[pos + 2] & if len_bytes == 1 { 0x3f } else { 0x0f });
    for i in 1..len_bytes {
        len |= usize::from(t[pos + 2 + i]) << (4 + 8 * (i - 1));
    }
    let end = pos + 2 + len;
    assert_eq!(
        t.get(end),
        Some(&0x10),
        "a Scope follows the power resource"
    );
    assert!(
        !t.windows(2).any(|w| w == [0x84, 0x5b]),
        "no swapped opcode"
    );
}

/// The reason this crate has its own PowerResource: acpi_tables 0.2.1 swaps the opcode bytes and
/// iasl refuses the result. If this test starts failing, acpi_tables has been fixed.
#[test]
fn acpi_tables_power_resource_is_rejected_by_iasl() {
    require_tools();
    use acpi_tables::aml::{Method, Path, PowerResource as Broken, Scope};
    let ret = acpi_tables::aml::Return::new(&acpi_tables::aml::ONE);
    let sta = Method::new(Path::new("_STA"), 0, false, vec![&ret]);
    let pr = Broken::new(Path::new("PRXX"), 0, 0, vec![&sta]);
    let scope = Scope::new(Path::new("\\_SB_"), vec![&pr]);
    let mut sdt = acpi_tables::sdt::Sdt::new(*b"SSDT", 36, 2, *b"VFIOPM", *b"BROKENPR", 1);
    sdt.append_slice(&bytes(&scope));
    let broken = bytes(&pr);
    assert_eq!(
        &broken[..2],
        &[0x84, 0x5b],
        "acpi_tables still swaps the opcode"
    );
    let d = aml::disassemble_full(sdt.as_slice());
    let rejected = match d {
        Err(_) => true,
        Ok(out) => !out.problems().is_empty() || !out.output.contains("PowerResource (PRXX"),
    };
    assert!(
        rejected,
        "iasl accepted acpi_tables' swapped PowerResource opcode"
    );
}
