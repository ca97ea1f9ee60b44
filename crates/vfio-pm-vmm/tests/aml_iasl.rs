//! Oracle: ACPICA's iasl disassembles every generated table without errors or warnings, and
//! recompiling that disassembly gives back the same AML body byte for byte (golden test).

mod aml_support;

use aml_support::*;
use vfio_pm_vmm::aml;

const HEADER: usize = 36;

#[test]
fn iasl_disassembles_every_table_cleanly() {
    require_tools();
    for (name, cfg) in all_configs() {
        let table = aml::build_ssdt(&cfg);
        let d =
            aml::disassemble_full(&table).unwrap_or_else(|e| panic!("{name}: iasl -d failed: {e}"));
        assert!(
            d.problems().is_empty(),
            "{name}: iasl -d reported problems: {:?}\n{}",
            d.problems(),
            d.log
        );
        assert!(d.log.contains("Disassembly completed"), "{name}: {}", d.log);
        assert!(
            d.output.contains(
                "DefinitionBlock (\"\", \"SSDT\", 2, \"VFIOPM\", \"VFIOPMPR\", 0x00000001)"
            ),
            "{name}: {}",
            d.output
        );
        // The disassembler marks what it could not decode.
        for bad in ["Unknown", "Unresolved", "/**** ", "Corrupt"] {
            assert!(!d.output.contains(bad), "{name}: {bad:?} in\n{}", d.output);
        }
    }
}

#[test]
fn recompiled_disassembly_is_byte_identical() {
    require_tools();
    for (name, cfg) in all_configs() {
        let table = aml::build_ssdt(&cfg);
        let asl = aml::disassemble(&table).unwrap();
        let compiled = aml::compile_asl(&asl).unwrap_or_else(|e| {
            panic!("{name}: iasl cannot recompile its disassembly: {e}\n{asl}")
        });
        assert!(
            compiled.problems().is_empty(),
            "{name}: recompiling reported {:?}\n{}",
            compiled.problems(),
            compiled.log
        );
        let again = compiled.output;
        // Header: same signature, length, revision, OEM ids; compiler id/revision and checksum
        // differ (iasl writes "INTL" and its version).
        assert_eq!(&again[..8], &table[..8], "{name}: signature/length");
        assert_eq!(again[8], table[8], "{name}: revision");
        assert_eq!(
            &again[10..28],
            &table[10..28],
            "{name}: OEM ids and revision"
        );
        assert_eq!(&again[28..32], b"INTL");
        if again[HEADER..] != table[HEADER..] {
            let first = again[HEADER..]
                .iter()
                .zip(&table[HEADER..])
                .position(|(a, b)| a != b);
            panic!(
                "{name}: AML differs from iasl's recompilation at body offset {first:?}\nours: {:02x?}\niasl: {:02x?}\n{asl}",
                &table[HEADER..],
                &again[HEADER..]
            );
        }
    }
}

#[test]
fn generated_tables_have_valid_headers_and_checksums() {
    for (name, cfg) in all_configs() {
        let t = aml::build_ssdt(&cfg);
        assert_eq!(&t[..4], b"SSDT", "{name}");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len(),
            "{name}"
        );
        assert_eq!(t[8], 2, "{name}: revision");
        assert_eq!(&t[10..16], b"VFIOPM", "{name}");
        assert_eq!(&t[16..24], b"VFIOPMPR", "{name}");
        assert_eq!(
            u32::from_le_bytes(t[24..28].try_into().unwrap()),
            1,
            "{name}"
        );
        assert_eq!(
            t.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "{name}: checksum"
        );
    }
}

#[test]
fn disassembly_of_the_example_names_the_expected_objects() {
    require_tools();
    let cfg = config(&example_e1000e());
    let asl = aml::disassemble(&aml::build_ssdt(&cfg)).unwrap();
    for needle in [
        "External (_SB_.PCI0, DeviceObj)",
        "External (_SB_.PCI0.S28_, DeviceObj)",
        "OperationRegion (VPMR, SystemIO, 0x0440, One)",
        "PowerResource (PR00, 0x00, 0x0000)",
        "\\_SB.VPMT = 0x80",
        "\\_SB.VPMT = Zero",
        "Scope (\\_SB.PCI0.S28)",
        "Name (_S0W, 0x04)",
        "Method (_E10, 0, NotSerialized)",
        "Notify (\\_SB.PCI0.S28, 0x02)",
    ] {
        assert!(asl.contains(needle), "missing {needle:?} in\n{asl}");
    }
    assert!(!asl.contains("_PRW"), "no _PRW without PME support:\n{asl}");
}

#[test]
fn disassemble_rejects_a_non_table_with_an_error_not_a_panic() {
    require_tools();
    let r = aml::disassemble(b"definitely not an ACPI table");
    // iasl either fails or produces something; whichever, it is a Result, and a garbage input must
    // not come back as a clean SSDT.
    if let Ok(text) = r {
        assert!(!text.contains("DefinitionBlock (\"\", \"SSDT\""), "{text}");
    }
}
