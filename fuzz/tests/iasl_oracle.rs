//! An oracle outside the project for the `config_aml` target's kept inputs: every configuration
//! among the seeds, the corpus and the reproducers that validates gives an SSDT that ACPICA's
//! `iasl -d` disassembles without an error, a warning or an undecodable byte. (The fuzz target
//! itself checks the same tables with the project's own AML walker, thousands of times faster.)

use std::process::Command;
use vfio_pm_fuzz::{artifacts_dir, corpus_dir, inputs_in, seeds_dir};
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::VmmConfig;

#[test]
fn every_kept_configuration_disassembles_cleanly() {
    let iasl = Command::new("iasl").arg("-v").output();
    assert!(
        iasl.is_ok_and(|o| o.status.success() || !o.stdout.is_empty()),
        "iasl is not runnable: install acpica-tools (cargo xtask deps); this test must not pass without it"
    );
    let dirs = [
        seeds_dir("config_aml"),
        corpus_dir("config_aml"),
        artifacts_dir("config_aml"),
    ];
    let mut checked = 0;
    for path in dirs.iter().flat_map(|d| inputs_in(d).unwrap()) {
        let bytes = std::fs::read(&path).unwrap();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        let Ok(config) = VmmConfig::from_toml_str(text) else {
            continue;
        };
        let table = aml::build_ssdt(&config);
        let d = aml::disassemble_full(&table)
            .unwrap_or_else(|e| panic!("{}: iasl -d failed: {e}", path.display()));
        assert!(
            d.problems().is_empty(),
            "{}: iasl -d reported {:?}\n{}",
            path.display(),
            d.problems(),
            d.output
        );
        for bad in ["Unknown", "Unresolved", "/**** ", "Corrupt"] {
            assert!(
                !d.output.contains(bad),
                "{}: {bad:?} in\n{}",
                path.display(),
                d.output
            );
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} kept configurations validate");
    println!("{checked} kept configurations disassemble cleanly");
}
