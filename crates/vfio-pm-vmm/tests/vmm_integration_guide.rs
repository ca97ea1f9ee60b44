//! docs/vmm-integration.md's `pcie_pme` file, pasted as the guide writes it: it validates, and
//! its SSDT declares the device behind the root port (no `External` for a node no table
//! declares) and disassembles cleanly with iasl. The guide's Rust blocks are doc tests
//! (`VmmIntegrationGuide` in lib.rs).

mod aml_support;

use aml_support::*;
use vfio_pm_vmm::aml;

const GUIDE: &str = include_str!("../../../docs/vmm-integration.md");

/// The guide's ```toml blocks, in order.
fn toml_blocks() -> Vec<&'static str> {
    GUIDE
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .collect()
}

#[test]
fn the_pcie_pme_example_validates_and_iasl_accepts_its_ssdt() {
    require_tools();
    let blocks: Vec<&str> = toml_blocks()
        .into_iter()
        .filter(|b| b.contains("route = \"pcie_pme\""))
        .collect();
    assert_eq!(blocks.len(), 1, "one pcie_pme example in the guide");
    let cfg = config(blocks[0]);
    let table = aml::build_ssdt(&cfg);
    let d = aml::disassemble_full(&table).unwrap_or_else(|e| panic!("iasl -d failed: {e}"));
    assert!(
        d.problems().is_empty(),
        "iasl -d reported {:?}\n{}",
        d.problems(),
        d.log
    );
    // The device is declared here, with its _ADR; only the root port, which the VMM's DSDT
    // has, is External.
    assert!(d.output.contains("Device (S00)"), "{}", d.output);
    // 0000:01:00.0: device 0, function 0 on the root port's secondary bus.
    assert!(d.output.contains("Name (_ADR, Zero)"), "{}", d.output);
    assert!(
        !d.output.contains("External (_SB_.PCI0.RP00.S00"),
        "an External for the device node the SSDT should declare:\n{}",
        d.output
    );
}
