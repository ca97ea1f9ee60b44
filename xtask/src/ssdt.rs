//! The extra ACPI table of the `d3cold` platform: the project's own generator
//! ([`vfio_pm_vmm::aml::build_ssdt`]) over `examples/qemu-e1000e.toml`, and the decoder of the
//! trap port its power resource writes to.
//!
//! The real guest kernel then runs vfio-pm's AML: `_OFF` when the device runtime-suspends, `_ON`
//! when it resumes, each writing one byte to the configured trap port, which QEMU's
//! `isa-debugcon` captures into a file for [`decoder`]'s [`TrapDecoder::decode_stream`].

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::trap::TrapDecoder;

/// The VMM configuration the harness's table is generated from (the e1000e at 00:05.0,
/// `\_SB.PCI0.S28`, slot 0, trap I/O port 0x440).
pub const CONFIG_TOML: &str = include_str!("../../examples/qemu-e1000e.toml");

/// The parsed and validated [`CONFIG_TOML`].
///
/// The harness captures the trap with `isa-debugcon`, which records one-byte I/O port writes:
/// any other trap register is refused here rather than silently misread.
pub fn config() -> Result<VmmConfig> {
    let config = VmmConfig::from_toml_str(CONFIG_TOML)
        .context("examples/qemu-e1000e.toml is not a valid vfio-pm VMM configuration")?;
    let trap = config.trap();
    anyhow::ensure!(
        trap.space == TrapSpace::Io && trap.width == 1 && trap.address <= u64::from(u16::MAX),
        "the harness needs a one-byte I/O port trap register (isa-debugcon), the config has {trap:?}"
    );
    Ok(config)
}

/// The I/O port `_ON`/`_OFF` write to (`isa-debugcon` listens there on both platforms).
pub fn trap_port() -> Result<u16> {
    let address = config()?.trap().address;
    u16::try_from(address).context("trap port beyond 16 bits")
}

/// The decoder of the bytes captured from [`trap_port`].
pub fn decoder() -> Result<TrapDecoder> {
    Ok(TrapDecoder::new(&config()?))
}

/// Writes the generated SSDT (AML) into `work` and returns its path.
pub fn build(work: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(work)?;
    let aml = work.join("ssdt.aml");
    std::fs::write(&aml, aml::build_ssdt(&config()?))
        .with_context(|| format!("writing {}", aml.display()))?;
    Ok(aml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_s28_power_resources_on_port_0x440() {
        let config = config().expect("the example configuration is valid");
        assert_eq!(trap_port().ok(), Some(0x440));
        let table = aml::build_ssdt(&config);
        assert_eq!(&table[..4], b"SSDT");
        assert_eq!(
            table.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "checksum"
        );
        let has = |needle: &[u8]| table.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"S28_") && has(b"_PR3") && has(b"_PR0") && has(b"PR00"));
    }
}
