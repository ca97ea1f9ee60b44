//! `vfio-pm qemu`: guest-driven D3cold for stock QEMU.
//!
//! - `vfio-pm qemu [OPTIONS] -- QEMU ARGS...` starts QEMU with what it needs added (the SSDT,
//!   the doorbell, the mailbox: [`setup`]), takes hold of the devices once QEMU opened them and
//!   serves the guest's `_ON`/`_OFF` ([`agent`]) until QEMU exits, with QEMU's exit status.
//! - `vfio-pm qemu print-args --name VM -- QEMU ARGS...` prepares the files and prints the
//!   arguments to add, for a QEMU something else starts (libvirt, Proxmox); `vfio-pm qemu
//!   attach --name VM --pid PID` then serves it.
//! - `vfio-pm qemu print-plan -- QEMU ARGS...` shows what is derived from a command line.

pub mod agent;
pub mod args;
pub mod opts;
mod output;
pub mod plan;
pub mod setup;
#[cfg(test)]
mod setup_tests;
#[cfg(test)]
mod tests;
pub mod timed;

use anyhow::{Context, Result};
use setup::{Options, Paths, Setup};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::{PciAddress, Sysfs};
use vfio_pm_vmm::mailbox::Mailbox;

/// Where each prepared VM's files go unless `--state-dir` says otherwise (kept across host
/// reboots: the domain's QEMU arguments name them).
pub const STATE_ROOT: &str = "/var/lib/vfio-pm/qemu";
/// Where `vfio-pm qemu -- ...` keeps its files while QEMU runs.
pub const LAUNCH_ROOT: &str = "/run/vfio-pm/qemu";

/// `vfio-pm qemu ...`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct QemuArgs {
    #[command(subcommand)]
    command: Option<QemuCommand>,
    #[command(flatten)]
    tuning: Tuning,
    #[command(flatten)]
    run: RunFlags,
    /// The directory for this VM's files while it runs (default /run/vfio-pm/qemu/launch-PID,
    /// removed at exit).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The QEMU binary and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "QEMU_BINARY ARGS")]
    argv: Vec<String>,
}

/// What changes the generated setup.
#[derive(clap::Args, Clone)]
struct Tuning {
    /// I/O port of the doorbell the guest's _ON/_OFF write.
    #[arg(long, default_value = "0x440", value_parser = parse_u16)]
    trap_port: u16,
    /// Free pcie.0 slot for the mailbox (an ivshmem-plain device).
    #[arg(long, default_value = "0x1e", value_parser = parse_u8)]
    mailbox_slot: u8,
    /// How long the guest's _ON waits at least for the host's LOW_POWER_EXIT.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ack_timeout: Duration,
    /// Least time between two host transitions of a device (anti-thrash).
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    min_residency: Duration,
    /// Give plain LOW_POWER_ENTRY to a device that needs the wakeup variant (NVIDIA display
    /// and 3D controllers: stock QEMU cannot deliver their wake, so they are left alone).
    #[arg(long, value_name = "HOST_BDF")]
    allow_plain_entry: Vec<PciAddress>,
}

/// How the agent runs.
#[derive(clap::Args, Clone)]
struct RunFlags {
    /// JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// How long to wait for QEMU to open its devices.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    adopt_timeout: Duration,
    /// Test only: wait this long before serving a guest _ON (a slow LOW_POWER_EXIT).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    test_ack_delay: Option<Duration>,
}

#[derive(clap::Subcommand)]
enum QemuCommand {
    /// Prepare this VM's files and print the QEMU arguments to add (for libvirt's
    /// <qemu:commandline> with --libvirt), then run `vfio-pm qemu attach`.
    PrintArgs {
        /// The VM's name (its files go to /var/lib/vfio-pm/qemu/NAME).
        #[arg(long)]
        name: String,
        /// The directory for this VM's files instead.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print <qemu:arg value='...'/> lines.
        #[arg(long)]
        libvirt: bool,
        #[command(flatten)]
        tuning: Tuning,
        /// The QEMU command line the VM will run (e.g. from `virsh domxml-to-native`).
        #[arg(last = true, required = true, value_name = "QEMU_BINARY ARGS")]
        argv: Vec<String>,
    },
    /// Serve a running QEMU started with the arguments of `print-args`.
    Attach {
        /// The VM's name given to print-args.
        #[arg(long)]
        name: String,
        /// The directory for this VM's files instead.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// QEMU's process id.
        #[arg(long)]
        pid: u32,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Print what vfio-pm derives from a QEMU command line (devices, guest addresses, ACPI
    /// nodes) as JSON, or why it cannot handle it.
    #[command(hide = true)]
    PrintPlan {
        /// The QEMU binary and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<String>,
    },
}

fn parse_u16(s: &str) -> Result<u16, String> {
    parse_u64(s).and_then(|v| u16::try_from(v).map_err(|_| format!("{s} is above 0xffff")))
}

fn parse_u8(s: &str) -> Result<u8, String> {
    parse_u64(s).and_then(|v| u8::try_from(v).map_err(|_| format!("{s} is above 0xff")))
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number"))
}

impl Tuning {
    fn options(&self) -> Result<Options> {
        let ms = u16::try_from(self.ack_timeout.as_millis())
            .ok()
            .filter(|ms| (1..=60_000).contains(ms))
            .context("--ack-timeout must be between 1ms and 60s")?;
        Ok(Options {
            trap_port: self.trap_port,
            mailbox_slot: self.mailbox_slot,
            ack_timeout_ms: ms,
            min_residency: self.min_residency,
            allow_plain_entry: self.allow_plain_entry.clone(),
        })
    }
}

impl RunFlags {
    fn options(&self, restore_wishes: bool) -> agent::RunOptions {
        agent::RunOptions {
            json: self.json,
            adopt_timeout: self.adopt_timeout,
            test_ack_delay: self.test_ack_delay,
            restore_wishes,
        }
    }
}

/// One QEMU process, told apart from a later one with the same pid: pid and start time
/// (`/proc/PID/stat` field 22).
fn qemu_instance(pid: u32) -> Result<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let start = after
        .split_whitespace()
        .nth(19)
        .with_context(|| format!("/proc/{pid}/stat: no start time"))?;
    Ok(format!("{pid} {start}"))
}

fn state_dir(name: &str, given: Option<PathBuf>) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') || name.len() > 200 {
        anyhow::bail!("--name {name:?}: use a plain name (letters, digits, - and _)");
    }
    Ok(given.unwrap_or_else(|| Path::new(STATE_ROOT).join(name)))
}

/// Plans, writes the SSDT, the mailbox file and the state, and binds the doorbell.
fn materialize(
    sysfs: &Sysfs,
    argv: &[String],
    options: Options,
    dir: &Path,
) -> Result<(Setup, Mailbox, std::os::unix::net::UnixListener)> {
    let plan = plan::plan(argv)?;
    let setup = setup::prepare(sysfs, argv, &plan, options, dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ssdt = vfio_pm_vmm::aml::build_ssdt(&setup.vmm_config()?);
    std::fs::write(&setup.paths.ssdt, ssdt)
        .with_context(|| format!("writing {}", setup.paths.ssdt.display()))?;
    let mailbox = Mailbox::create(&setup.paths.mailbox, setup.config.devices.len())
        .with_context(|| format!("creating {}", setup.paths.mailbox.display()))?;
    std::fs::write(&setup.paths.state, serde_json::to_vec_pretty(&setup)?)
        .with_context(|| format!("writing {}", setup.paths.state.display()))?;
    let listener = agent::bind_doorbell(&setup.paths.socket)?;
    Ok((setup, mailbox, listener))
}

fn launch(sysfs: &Sysfs, args: QemuArgs) -> Result<ExitCode> {
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| Path::new(LAUNCH_ROOT).join(format!("launch-{}", std::process::id())));
    let (setup, mailbox, listener) = materialize(sysfs, &args.argv, args.tuning.options()?, &dir)?;
    let child = std::process::Command::new(&args.argv[0])
        .args(&args.argv[1..])
        .args(&setup.extra_args)
        .spawn()
        .with_context(|| format!("starting {}", args.argv[0]))?;
    let code = agent::run(
        sysfs,
        &setup,
        agent::Vm::Child(child),
        listener,
        mailbox,
        args.run.options(false),
    );
    if args.state_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::from(code?))
}

fn print_args(
    sysfs: &Sysfs,
    name: &str,
    given: Option<PathBuf>,
    libvirt: bool,
    tuning: &Tuning,
    argv: &[String],
) -> Result<ExitCode> {
    let dir = state_dir(name, given)?;
    // `virsh domxml-to-native qemu-argv` puts the environment first (`LC_ALL=C PATH=...`).
    let is_env = |w: &String| {
        w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let argv: Vec<String> = argv.iter().skip_while(|w| is_env(w)).cloned().collect();
    let (setup, _, _) = materialize(sysfs, &argv, tuning.options()?, &dir)?;
    for d in &setup.devices {
        eprintln!("{}: {}", d.host, d.note);
    }
    let mut out = String::new();
    for a in &setup.extra_args {
        if libvirt {
            let v = a
                .replace('&', "&amp;")
                .replace('\'', "&apos;")
                .replace('<', "&lt;");
            out.push_str(&format!("<qemu:arg value='{v}'/>\n"));
        } else {
            out.push_str(a);
            out.push('\n');
        }
    }
    crate::print_quietly(&out);
    Ok(ExitCode::SUCCESS)
}

fn attach(
    sysfs: &Sysfs,
    name: &str,
    given: Option<PathBuf>,
    pid: u32,
    run: &RunFlags,
) -> Result<ExitCode> {
    let dir = state_dir(name, given)?;
    let paths = Paths::in_dir(&dir);
    let text = std::fs::read(&paths.state).with_context(|| {
        format!(
            "reading {} (run `vfio-pm qemu print-args --name {name}` first)",
            paths.state.display()
        )
    })?;
    let setup: Setup =
        serde_json::from_slice(&text).with_context(|| format!("{}", paths.state.display()))?;
    agent::check_holder(sysfs, pid, &setup.managed_hosts())?;
    let mailbox = Mailbox::open(&setup.paths.mailbox, setup.config.devices.len())
        .with_context(|| format!("opening {}", setup.paths.mailbox.display()))?;
    let listener = agent::bind_doorbell(&setup.paths.socket)?;
    // The same QEMU as last time: this agent replaces one that stopped, and the guest's last
    // wishes in the mailbox are current. Another QEMU (the VM restarted): they are the old
    // VM's, and its guest starts with every device on.
    let instance = qemu_instance(pid)?;
    let marker = dir.join("qemu-instance");
    let same = std::fs::read_to_string(&marker).is_ok_and(|t| t == instance);
    std::fs::write(&marker, &instance).with_context(|| format!("writing {}", marker.display()))?;
    let code = agent::run(
        sysfs,
        &setup,
        agent::Vm::Attached(pid),
        listener,
        mailbox,
        run.options(same),
    )?;
    Ok(ExitCode::from(code))
}

/// Runs `vfio-pm qemu`.
pub fn run(sysfs: &Sysfs, args: QemuArgs) -> Result<ExitCode> {
    match args.command {
        None => launch(sysfs, args),
        Some(QemuCommand::PrintArgs {
            name,
            state_dir,
            libvirt,
            tuning,
            argv,
        }) => print_args(sysfs, &name, state_dir, libvirt, &tuning, &argv),
        Some(QemuCommand::Attach {
            name,
            state_dir,
            pid,
            run,
        }) => attach(sysfs, &name, state_dir, pid, &run),
        Some(QemuCommand::PrintPlan { argv }) => {
            let plan = plan::plan(&argv)?;
            crate::print_quietly(&format!("{}\n", serde_json::to_string_pretty(&plan)?));
            Ok(ExitCode::SUCCESS)
        }
    }
}
