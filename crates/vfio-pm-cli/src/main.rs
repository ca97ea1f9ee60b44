//! `vfio-pm`: runtime power management for VFIO passthrough devices, from the command line.

mod aml_cmd;
mod demo;
mod direct;
mod doctor_cmd;
mod exporter;
mod manpages;
mod out;
mod qemu;
mod status;
mod table;
mod watch;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::{PciAddress, Sysfs};

const ABOUT: &str = "Runtime power management for VFIO passthrough PCI devices (Linux 6.1+)";

const LONG_ABOUT: &str = "\
Runtime power management for VFIO passthrough PCI devices (Linux 6.1+).

Power states of a PCI device (sysfs power_state):
  D0      fully on.
  D3hot   asleep, main power still applied; config space stays readable.
  D3cold  main power removed by platform firmware (ACPI _PR3 power resources);
          the deepest saving, only where firmware supports it for the slot.
Runtime status (power/runtime_status): active = in use; suspended = runtime PM
has put the device in D3hot or D3cold.

vfio-pci puts devices that no process has open into D3 by itself. A VMM holding
a device asks for low power with VFIO_DEVICE_FEATURE LOW_POWER_ENTRY, or
LOW_POWER_ENTRY_WITH_WAKEUP (the kernel signals an eventfd on the first
host-side wake and leaves low power: NVIDIA GPUs need this), and LOW_POWER_EXIT.
Low power belongs to an open device fd: closing the fd ends it, and a device a
VMM holds cannot be opened by another process. So probe, cycle and hold are
diagnostics for devices no VMM holds; status and doctor never disturb a device.

Exit status: 0 success (doctor: D3cold reachable), 1 doctor: D3cold not
reachable / cycle: a check failed, 2 error.";

#[derive(Parser)]
#[command(name = "vfio-pm", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// sysfs root to read (for captured trees); also VFIO_PM_SYSFS_ROOT.
    #[arg(long, global = true, value_name = "DIR")]
    sysfs_root: Option<std::path::PathBuf>,
    /// probe, cycle, hold: open the device through /dev/vfio/devices/vfioN and an iommufd
    /// (the kernel needs CONFIG_IOMMUFD; `doctor` shows which interfaces it offers) instead of
    /// its IOMMU group.
    #[arg(long, global = true)]
    iommufd: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// PCI devices with driver, power state, runtime status and residency (vfio-bound first).
    Status {
        /// Only these devices.
        bdf: Vec<PciAddress>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Explain, check by check, whether the device can reach D3cold when idle.
    Doctor {
        /// The device.
        bdf: PciAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Never open the device; infer kernel support from the kernel version.
        #[arg(long)]
        no_open: bool,
    },
    /// Which low-power features the kernel offers for this device (opens it).
    Probe {
        /// The device.
        bdf: PciAddress,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Enter low power, wait for the kernel to suspend the device, report the state and timings, exit.
    Cycle {
        /// The device.
        bdf: PciAddress,
        /// Use ENTRY_WITH_WAKEUP, wake the device by a host-side access and verify the eventfd fired once.
        #[arg(long)]
        wakeup: bool,
        /// Number of cycles (at least 1).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
        /// How long to wait for the kernel to suspend the device.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep the device in low power until Ctrl-C or --for ends, printing each change and wake.
    Hold {
        /// The device.
        bdf: PciAddress,
        /// Use ENTRY_WITH_WAKEUP and re-arm after each wake.
        #[arg(long)]
        wakeup: bool,
        /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// How often to sample sysfs.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Print JSON, one object per line.
        #[arg(long)]
        json: bool,
    },
    /// Follow power state and runtime status of devices, printing each transition; Ctrl-C prints residency.
    Watch(watch::WatchArgs),
    /// Serve Prometheus metrics (power state, residency, wakes, D3cold reachability) over HTTP.
    Exporter(exporter::ExporterArgs),
    /// Write the SSDT (virtual ACPI power resources, _PR0/_PR3, wake GPE) for a VMM configuration.
    Aml(aml_cmd::AmlArgs),
    /// Run the whole chain (guest _OFF trap, host D3cold, host wake, PME, _ON) on a simulated host and guest.
    Demo(demo::DemoArgs),
    /// QEMU integration (in progress: `qemu print-plan -- QEMU ARGS...`).
    /// Guest-driven D3cold for stock QEMU: start QEMU with what it needs added (or print the
    /// arguments and attach to a QEMU libvirt starts), take hold of its devices, turn the
    /// guest's _OFF/_ON into LOW_POWER_ENTRY/EXIT. See docs/qemu.md.
    Qemu(Box<qemu::QemuArgs>),
    /// Write the manual pages (one per command) generated from this command's definitions.
    Man(manpages::ManArgs),
    /// Write the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(manpages::CompletionsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.sysfs_root.is_some() && matches!(cli.command, Command::Aml(_) | Command::Demo(_)) {
        <Cli as clap::CommandFactory>::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--sysfs-root does not apply to aml and demo: they read no sysfs",
            )
            .exit();
    }
    let sysfs = match &cli.sysfs_root {
        Some(root) => Sysfs::new(root),
        None => Sysfs::from_env(),
    };
    let via = if cli.iommufd {
        vfio_pm::iommufd::Interface::Iommufd
    } else {
        vfio_pm::iommufd::Interface::Group
    };
    let result = match cli.command {
        Command::Status { bdf, json } => status::run(&sysfs, &bdf, json),
        Command::Doctor { bdf, json, no_open } => doctor_cmd::run(&sysfs, bdf, json, no_open),
        Command::Probe { bdf, json } => direct::probe(&sysfs, bdf, via, json),
        Command::Cycle {
            bdf,
            wakeup,
            count,
            timeout,
            json,
        } => direct::cycle(&sysfs, bdf, via, wakeup, count, timeout, json),
        Command::Hold {
            bdf,
            wakeup,
            duration,
            interval,
            json,
        } => direct::hold(&sysfs, bdf, via, wakeup, duration, interval, json),
        Command::Watch(args) => watch::run(&sysfs, args),
        Command::Exporter(args) => exporter::run(&sysfs, args),
        Command::Aml(args) => aml_cmd::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Qemu(args) => qemu::run(&sysfs, *args),
        Command::Man(args) => manpages::man(Cli::command(), args),
        Command::Completions(args) => manpages::completions(Cli::command(), args),
    };
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): nothing more to say.
        Err(e) if out::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vfio-pm: error: {}", out::error_text(&e));
            ExitCode::from(2)
        }
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
pub(crate) fn print_quietly(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
