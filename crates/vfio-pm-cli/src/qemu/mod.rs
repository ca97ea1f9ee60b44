//! `vfio-pm qemu`: the QEMU integration. For now the argument analysis, shown by the hidden
//! `vfio-pm qemu print-plan -- QEMU_BINARY ARGS...` as JSON.

pub mod args;
pub mod opts;
pub mod plan;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

/// `vfio-pm qemu ...`.
#[derive(clap::Args)]
pub struct QemuArgs {
    #[command(subcommand)]
    command: QemuCommand,
}

#[derive(clap::Subcommand)]
enum QemuCommand {
    /// Print what vfio-pm derives from a QEMU command line (devices, guest addresses, ACPI
    /// nodes) as JSON, or why it cannot handle it.
    PrintPlan {
        /// The QEMU binary and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
}

/// Runs `vfio-pm qemu`.
pub fn run(args: QemuArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        QemuCommand::PrintPlan { argv } => {
            let plan = plan::plan(&argv)?;
            println!("{}", serde_json::to_string_pretty(&plan)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
