//! `vfio-pm aml`: the SSDT for a device configuration, as AML bytes or ASL text.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::VmmConfig;

/// Arguments of `vfio-pm aml`.
#[derive(clap::Args)]
pub struct AmlArgs {
    /// The device configuration (TOML; see examples/qemu-e1000e.toml).
    config: PathBuf,
    /// Write here instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the ASL text (disassembled with iasl from acpica-tools) instead of AML bytes.
    #[arg(long)]
    dsl: bool,
}

pub fn load(path: &Path) -> Result<VmmConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    VmmConfig::from_toml_str(&text).with_context(|| format!("{}", path.display()))
}

pub fn run(args: AmlArgs) -> Result<ExitCode> {
    let config = load(&args.config)?;
    let table = aml::build_ssdt(&config);
    let bytes = if args.dsl {
        aml::disassemble(&table)?.into_bytes()
    } else {
        table
    };
    match &args.output {
        Some(path) => std::fs::write(path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            anyhow::ensure!(
                args.dsl || !std::io::IsTerminal::is_terminal(&std::io::stdout()),
                "refusing to write binary AML to a terminal: use -o FILE or --dsl"
            );
            crate::out::write_bytes(&bytes)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
