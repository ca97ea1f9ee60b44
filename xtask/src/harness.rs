//! The kernel × platform matrix: prepare once, boot each combination, judge the guest's report.

use crate::console::{Check, GuestReport};
use crate::guest::{self, GuestBinary};
use crate::kernels::{self, KernelImage, KernelSeries};
use crate::qemu::{self, BootOutcome, BootSpec};
use crate::ssdt;
use anyhow::{bail, Result};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The VM's power platform for the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Platform {
    /// No ACPI power resources: the kernel suspends the device to D3hot.
    D3Hot,
    /// The harness's SSDT gives the device power resources: D3cold.
    D3Cold,
}

impl Platform {
    /// Both platforms.
    pub const ALL: [Platform; 2] = [Self::D3Hot, Self::D3Cold];
}

impl FromStr for Platform {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "d3hot" => Ok(Self::D3Hot),
            "d3cold" => Ok(Self::D3Cold),
            other => bail!("unknown platform {other:?} (d3hot, d3cold or all)"),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::D3Hot => "d3hot",
            Self::D3Cold => "d3cold",
        })
    }
}

/// Whether to boot with vfio-pci's `disable_idle_d3=1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IdleD3Boots {
    /// Only the normal boots.
    Skip,
    /// After each kernel's normal boots, one more on [`IDLE_D3_PLATFORM`] (when selected,
    /// else the last selected platform) with `disable_idle_d3=1`, running only the `scenarios`
    /// phase (a guest on such a boot runs only the `module disable_idle_d3=1` scenarios).
    #[default]
    Also,
    /// Only those extra boots.
    Only,
}

impl FromStr for IdleD3Boots {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" | "off" => Ok(Self::Skip),
            "also" | "on" => Ok(Self::Also),
            "only" => Ok(Self::Only),
            other => bail!("unknown --idle-d3 {other:?} (skip, also or only)"),
        }
    }
}

/// The platform of the `disable_idle_d3=1` boot: D3cold, where ENTRY's suspend is visible as
/// a power-resource `_OFF`.
pub const IDLE_D3_PLATFORM: Platform = Platform::D3Cold;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Kernels, in order.
    pub kernels: Vec<KernelSeries>,
    /// Platforms, in order (for each kernel).
    pub platforms: Vec<Platform>,
    /// Also build and install the `vfio-pm` CLI in the guest as `/bin/vfio-pm` (default on;
    /// `--no-cli` turns it off while the CLI does not build).
    pub with_cli: bool,
    /// Guest phases (`vfiopm.phases=`), e.g. `checks`.
    pub phases: Vec<String>,
    /// Hard timeout of one boot.
    pub timeout: Duration,
    /// The extra `disable_idle_d3=1` boots.
    pub idle_d3: IdleD3Boots,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            kernels: KernelSeries::ALL.to_vec(),
            platforms: Platform::ALL.to_vec(),
            with_cli: true,
            phases: vec![
                "checks".into(),
                "scenarios".into(),
                "cli".into(),
                "controller".into(),
                "timing".into(),
            ],
            timeout: Duration::from_secs(120),
            idle_d3: IdleD3Boots::Also,
        }
    }
}

/// The result of one kernel × platform boot.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Kernel.
    pub kernel: KernelImage,
    /// Platform.
    pub platform: Platform,
    /// vfio-pci was loaded with `disable_idle_d3=1` (an extra boot, `scenarios` phase only).
    pub disable_idle_d3: bool,
    /// The boot.
    pub outcome: BootOutcome,
    /// What the guest reported.
    pub report: GuestReport,
    /// Checks made by the host (console sanity, trap port), in addition to the guest's.
    pub host_checks: Vec<Check>,
    /// Where the console was saved.
    pub console_log: PathBuf,
    /// Model-vs-kernel verdicts, when the guest ran the `scenarios` phase: one set for the
    /// boot's vfio-pci parameters, and a `disable_idle_d3=1` set when phase `idle-d3-rebind`
    /// ran those scenarios on a rebound device (kernels that latch the parameter per device).
    pub conformance: Vec<crate::conformance::RunConformance>,
}

fn host_check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        passed,
        detail,
    }
}

/// The interfaces the guest's doctor code found (`VFIOPM INFO vfio-interfaces`) against the
/// kernel's configuration: cdev + iommufd offered exactly when the kernel is built with them.
fn interfaces_check(kernel: &KernelImage, report: &GuestReport) -> Option<Check> {
    let seen = report.info("vfio-interfaces")?;
    let want = kernel.has_cdev_iommufd();
    Some(host_check(
        "host-vfio-interfaces-config",
        seen.contains("cdev+iommufd: yes") == want && seen.contains("group/container: yes"),
        format!("guest: {seen}; kernel config: VFIO_DEVICE_CDEV and IOMMUFD {want}"),
    ))
}

/// The model-vs-kernel verdicts of one boot (see [`RunResult::conformance`]), their host checks
/// and the check of the `disable_idle_d3` latch the guest's `idle-d3-rebind` phase saw, pushed
/// to `hc`.
fn conformance_sets(
    kernel: &KernelImage,
    platform: Platform,
    disable_idle_d3: bool,
    report: &GuestReport,
    hc: &mut Vec<Check>,
) -> Vec<crate::conformance::RunConformance> {
    let model = crate::conformance::model_kernel(&kernel.release);
    let latch = report
        .info(crate::conformance::LATCH_INFO)
        .map(str::to_string);
    if let Some(latch) = &latch {
        let name = |per_device: bool| {
            if per_device {
                "per-device"
            } else {
                "module-init"
            }
        };
        let module = kernel.latches_disable_idle_d3_per_device();
        hc.push(host_check(
            "host-disable-idle-d3-latch",
            module.map(name) == Some(latch.as_str()),
            format!(
                "guest saw the {latch} latch; vfio-pci.ko says {}; the model's {model} says {}",
                module.map_or("?", name),
                name(model.latches_disable_idle_d3_per_device())
            ),
        ));
    }
    let mut sets = Vec::new();
    if report
        .records
        .contains(&crate::console::Record::Begin("scenarios".into()))
    {
        sets.push(disable_idle_d3);
    }
    if latch.as_deref() == Some("per-device") && !disable_idle_d3 {
        sets.push(true);
    }
    let mut conformance = Vec::new();
    for idle_d3 in sets {
        match crate::conformance::compare(kernel.series, model, platform, idle_d3, report) {
            Ok(c) => {
                hc.extend(c.host_checks());
                conformance.push(c);
            }
            Err(e) => hc.push(host_check("host-scenarios-parse", false, e.to_string())),
        }
    }
    conformance
}

impl RunResult {
    fn judge(
        kernel: KernelImage,
        platform: Platform,
        disable_idle_d3: bool,
        outcome: BootOutcome,
        console_log: PathBuf,
    ) -> Self {
        let report = GuestReport::parse(&outcome.console);
        let mut hc = Vec::new();
        hc.push(host_check(
            "host-no-timeout",
            !outcome.timed_out,
            format!(
                "QEMU ran {:.1?} (status {:?})",
                outcome.elapsed, outcome.status
            ),
        ));
        let checks: Vec<&Check> = report.checks().collect();
        let (pass, fail) = (
            checks.iter().filter(|c| c.passed).count() as u32,
            checks.iter().filter(|c| !c.passed).count() as u32,
        );
        hc.push(match report.done() {
            Some((p, f)) => host_check(
                "host-done-matches",
                (p, f) == (pass, fail) && p > 0,
                format!("guest said pass={p} fail={f}, console has pass={pass} fail={fail}"),
            ),
            None => host_check(
                "host-done-matches",
                false,
                "no VFIOPM DONE line: the guest did not finish".into(),
            ),
        });
        hc.push(host_check(
            "host-console-clean",
            report.garbled.is_empty(),
            format!(
                "{} garbled VFIOPM lines {:?}",
                report.garbled.len(),
                report.garbled
            ),
        ));
        let got = report.info("kernel").unwrap_or("?");
        hc.push(host_check(
            "host-kernel-release",
            got == kernel.release,
            format!("guest runs {got}, want {}", kernel.release),
        ));
        match ssdt::decoder() {
            Ok(d) => hc.extend(crate::trap::checks(
                platform,
                &d,
                guest::DEVICE,
                &outcome.trap,
                &outcome.trap_marks,
                report
                    .records
                    .contains(&crate::console::Record::Begin("cli".into())),
                disable_idle_d3,
            )),
            Err(e) => hc.push(host_check("host-trap-decoder", false, format!("{e:#}"))),
        }
        hc.extend(interfaces_check(&kernel, &report));
        hc.extend(crate::timing::host_check(&report));
        let conformance = conformance_sets(&kernel, platform, disable_idle_d3, &report, &mut hc);
        Self {
            kernel,
            platform,
            disable_idle_d3,
            outcome,
            report,
            host_checks: hc,
            console_log,
            conformance,
        }
    }

    /// The run's platform, with `+disable_idle_d3` for the extra boot.
    pub fn label(&self) -> String {
        if self.disable_idle_d3 {
            format!("{}+disable_idle_d3", self.platform)
        } else {
            self.platform.to_string()
        }
    }

    /// Every guest and host check.
    pub fn all_checks(&self) -> impl Iterator<Item = &Check> {
        self.report.checks().chain(self.host_checks.iter())
    }

    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.all_checks().all(|c| c.passed) && self.report.checks().next().is_some()
    }
}

/// The results of a whole run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// One per kernel × platform, in run order.
    pub runs: Vec<RunResult>,
    /// Wall time of the preparation (deps, kernels, build, initramfs).
    pub prepare: Duration,
}

impl Summary {
    /// True when every run passed (and there was at least one).
    pub fn all_passed(&self) -> bool {
        !self.runs.is_empty() && self.runs.iter().all(RunResult::passed)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "vfio-pm real-kernel harness (prepare {:.1?})",
            self.prepare
        )?;
        for r in &self.runs {
            let total = r.all_checks().count();
            let failed: Vec<&Check> = r.all_checks().filter(|c| !c.passed).collect();
            writeln!(
                f,
                "  {:<26} {:<6} {:>6.1?}  {} ({} checks, {} failed)",
                r.kernel.release,
                r.label(),
                r.outcome.elapsed,
                if r.passed() { "PASS" } else { "FAIL" },
                total,
                failed.len()
            )?;
            for c in &failed {
                writeln!(f, "      {c}")?;
            }
            if !r.passed() {
                writeln!(f, "      console: {}", r.console_log.display())?;
                if r.outcome.timed_out || r.report.done().is_none() {
                    writeln!(f, "      --- console tail ---")?;
                    for l in r.outcome.console_tail(30).lines() {
                        writeln!(f, "      | {l}")?;
                    }
                    if !r.outcome.stderr.trim().is_empty() {
                        writeln!(
                            f,
                            "      --- qemu stderr ---\n      | {}",
                            r.outcome.stderr.trim()
                        )?;
                    }
                }
            }
        }
        let ok = self.runs.iter().filter(|r| r.passed()).count();
        write!(
            f,
            "{ok} of {} kernel x platform runs passed",
            self.runs.len()
        )
    }
}

/// The platform of the `disable_idle_d3` runs: [`IDLE_D3_PLATFORM`] when selected, else the
/// last selected platform.
fn idle_d3_platform(opts: &Options) -> Option<Platform> {
    if opts.platforms.contains(&IDLE_D3_PLATFORM) {
        Some(IDLE_D3_PLATFORM)
    } else {
        opts.platforms.last().copied()
    }
}

/// The phases of a normal boot on `p`: the selected ones, plus `idle-d3-rebind` on the
/// `disable_idle_d3` platform when the scenarios run and the `disable_idle_d3` runs are wanted
/// (it checks where the kernel latches the parameter and, where that is per device, runs the
/// `disable_idle_d3=1` scenarios in this boot).
pub fn phases(opts: &Options, p: Platform) -> Vec<String> {
    let mut phases = opts.phases.clone();
    if opts.idle_d3 != IdleD3Boots::Skip
        && idle_d3_platform(opts) == Some(p)
        && phases.iter().any(|ph| ph == "scenarios")
    {
        phases.push("idle-d3-rebind".into());
    }
    phases
}

/// The boots of kernel `k`: each platform, then the extra `disable_idle_d3=1` boot unless the
/// kernel's vfio-pci latches the parameter per device (then the normal boot's `idle-d3-rebind` phase
/// runs those scenarios: no boot of its own; `--idle-d3 only` still boots it).
pub fn boots(opts: &Options, k: &KernelImage) -> Vec<(Platform, bool)> {
    let mut boots: Vec<(Platform, bool)> = Vec::new();
    if opts.idle_d3 != IdleD3Boots::Only {
        boots.extend(opts.platforms.iter().map(|&p| (p, false)));
    }
    let shared = opts.idle_d3 == IdleD3Boots::Also
        && k.latches_disable_idle_d3_per_device() == Some(true)
        && opts.phases.iter().any(|ph| ph == "scenarios");
    if opts.idle_d3 != IdleD3Boots::Skip && !shared {
        boots.extend(idle_d3_platform(opts).map(|p| (p, true)));
    }
    boots
}

/// Prepares everything (packages, kernels, binaries, initramfs, SSDT) and runs the matrix
/// sequentially (TCG on few cores: parallel boots only slow each other down).
pub fn run(opts: &Options) -> Result<Summary> {
    let start = Instant::now();
    crate::deps::ensure()?;
    let kernels: Vec<KernelImage> = opts
        .kernels
        .iter()
        .map(|s| kernels::ensure(*s))
        .collect::<Result<_>>()?;
    let mut bins: Vec<GuestBinary> = vec![guest::GUEST];
    if opts.with_cli {
        bins.push(guest::CLI);
    }
    let binaries = guest::build(&bins)?;
    let work = crate::qemu_dir().join("work");
    std::fs::create_dir_all(&work)?;
    let trap_port = ssdt::trap_port()?;
    let ssdt = if opts.platforms.contains(&Platform::D3Cold) {
        Some(ssdt::build(&work)?)
    } else {
        None
    };
    let initrds: Vec<PathBuf> = kernels
        .iter()
        .map(|k| guest::initramfs(&work, k, &binaries))
        .collect::<Result<_>>()?;
    let mut summary = Summary {
        prepare: start.elapsed(),
        ..Default::default()
    };
    for (k, initrd) in kernels.iter().zip(&initrds) {
        for (p, idle_d3) in boots(opts, k) {
            let dir = crate::qemu_dir().join("runs").join(format!(
                "{}-{p}{}",
                k.release,
                if idle_d3 { "-disable_idle_d3" } else { "" }
            ));
            std::fs::create_dir_all(&dir)?;
            // The extra boot runs only the scenarios (its other phases assume idle D3).
            let append = if idle_d3 {
                format!("vfiopm.platform={p} vfiopm.phases=scenarios vfiopm.disable_idle_d3=1")
            } else {
                format!(
                    "vfiopm.platform={p} vfiopm.phases={}",
                    phases(opts, p).join(",")
                )
            };
            let spec = BootSpec {
                kernel: k.vmlinuz.clone(),
                initrd: initrd.clone(),
                append,
                acpi_table: if p == Platform::D3Cold {
                    ssdt.clone()
                } else {
                    None
                },
                trap_port,
                trap_log: dir.join("trap.log"),
                timeout: opts.timeout,
            };
            let label = if idle_d3 {
                format!("{p} with vfio-pci disable_idle_d3=1")
            } else {
                p.to_string()
            };
            eprintln!("xtask qemu: booting {} on {label}", k.release);
            let outcome = qemu::boot(&spec)?;
            let log = qemu::save_console(&dir, &outcome)?;
            let r = RunResult::judge(k.clone(), p, idle_d3, outcome, log);
            eprintln!(
                "xtask qemu: {} {label}: {} in {:.1?}",
                k.release,
                if r.passed() { "PASS" } else { "FAIL" },
                r.outcome.elapsed
            );
            summary.runs.push(r);
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel whose vfio-pci.ko imports the module-init hand-over or not.
    fn kernel(release: &str, module_init_latch: bool) -> KernelImage {
        let dir =
            std::env::temp_dir().join(format!("xtask-harness-{}-{release}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ko = dir.join("6-vfio-pci.ko");
        let mut bytes = b"\x7fELF...__versions\0".to_vec();
        if module_init_latch {
            bytes.extend_from_slice(crate::kernels::MODULE_INIT_LATCH_SYMBOL);
        }
        std::fs::write(&ko, bytes).unwrap();
        KernelImage {
            series: KernelSeries::Newest,
            package: format!("linux-image-{release}"),
            release: release.into(),
            vmlinuz: PathBuf::new(),
            modules: vec![ko],
            config: dir.join("config"),
        }
    }

    #[test]
    fn a_kernel_that_latches_disable_idle_d3_per_device_shares_its_boot() {
        let opts = Options::default();
        let old = boots(&opts, &kernel("6.12.117+deb12-amd64", true));
        assert_eq!(
            old,
            [
                (Platform::D3Hot, false),
                (Platform::D3Cold, false),
                (Platform::D3Cold, true)
            ]
        );
        let new = boots(&opts, &kernel("7.3.4+deb13-amd64", false));
        assert_eq!(new, [(Platform::D3Hot, false), (Platform::D3Cold, false)]);
        // A 6.12.y with the per-device latch backported shares its boot too.
        let backported = boots(&opts, &kernel("6.12.200+deb12-amd64", false));
        assert_eq!(backported, new);
        // An unreadable module: the extra boot, to be safe.
        let mut unreadable = kernel("7.3.9+deb13-amd64", false);
        unreadable.modules.clear();
        assert_eq!(unreadable.latches_disable_idle_d3_per_device(), None);
        assert_eq!(boots(&opts, &unreadable), old);
        // Only the D3cold boot runs the rebind phase, after the others.
        assert_eq!(
            phases(&opts, Platform::D3Cold).last().unwrap(),
            "idle-d3-rebind"
        );
        assert!(!phases(&opts, Platform::D3Hot).contains(&"idle-d3-rebind".to_string()));
        let only = Options {
            idle_d3: IdleD3Boots::Only,
            ..Options::default()
        };
        assert_eq!(
            boots(&only, &kernel("7.3.4+deb13-amd64", false)),
            [(Platform::D3Cold, true)]
        );
        let skip = Options {
            idle_d3: IdleD3Boots::Skip,
            ..Options::default()
        };
        assert_eq!(boots(&skip, &kernel("6.1.0-56-amd64", true)).len(), 2);
        assert!(!phases(&skip, Platform::D3Cold).contains(&"idle-d3-rebind".to_string()));
    }
}
