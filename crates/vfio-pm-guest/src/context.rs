//! What a phase needs to know: the device, the platform the VM was given, and the sysfs tree.
//!
//! The host harness passes its choices on the kernel command line (`vfiopm.platform=d3cold`,
//! `vfiopm.phases=checks`, optionally `vfiopm.device=0000:00:05.0`); command-line arguments of
//! the program override them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use vfio_pm::{PciAddress, PowerState, Sysfs};

/// The device the harness binds to vfio-pci (the e1000e at slot 5 of QEMU's q35 root bus).
pub const DEFAULT_DEVICE: &str = "0000:00:05.0";

/// How the VM's firmware powers the device down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// No ACPI power resources: the kernel picks D3hot.
    D3Hot,
    /// The harness's SSDT gives the device `_PR0`/`_PR3` power resources: the kernel picks D3cold.
    D3Cold,
}

impl Platform {
    /// The power state a runtime-suspended device is expected in.
    pub fn suspended_state(self) -> PowerState {
        match self {
            Self::D3Hot => PowerState::D3Hot,
            Self::D3Cold => PowerState::D3Cold,
        }
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "d3hot" => Ok(Self::D3Hot),
            "d3cold" => Ok(Self::D3Cold),
            other => Err(format!("unknown platform {other:?} (d3hot|d3cold)")),
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

/// Everything a phase runs against.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The sysfs tree (`/sys`).
    pub sysfs: Sysfs,
    /// The vfio-pci bound device under test.
    pub device: PciAddress,
    /// The platform the VM was booted with.
    pub platform: Platform,
    /// Upper bound for waiting on an asynchronous runtime suspend.
    pub suspend_timeout: Duration,
    /// The phases to run, in order.
    pub phases: Vec<String>,
}

/// The value of `key=value` on a kernel command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

impl Ctx {
    /// Builds the context from `/proc/cmdline` and the program arguments
    /// (`--platform P`, `--device BDF`, `--phases a,b`).
    pub fn from_env(args: &[String]) -> Result<Self, String> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let mut platform = cmdline_value(&cmdline, "vfiopm.platform").map(str::to_string);
        let mut device = cmdline_value(&cmdline, "vfiopm.device").map(str::to_string);
        let mut phases = cmdline_value(&cmdline, "vfiopm.phases").map(str::to_string);
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--platform" => platform = Some(value("--platform")?),
                "--device" => device = Some(value("--device")?),
                "--phases" | "--mode" => phases = Some(value("--phases")?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let platform = platform
            .ok_or("no platform: pass --platform d3hot|d3cold or vfiopm.platform= on the kernel command line")?
            .parse()?;
        let device = device
            .as_deref()
            .unwrap_or(DEFAULT_DEVICE)
            .parse()
            .map_err(|e| format!("{e}"))?;
        let phases = phases
            .as_deref()
            .unwrap_or("checks")
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Self {
            sysfs: Sysfs::default(),
            device,
            platform,
            suspend_timeout: Duration::from_secs(5),
            phases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_from_a_kernel_command_line() {
        let c = "console=ttyS0 vfiopm.platform=d3cold vfiopm.phases=checks,cli quiet";
        assert_eq!(cmdline_value(c, "vfiopm.platform"), Some("d3cold"));
        assert_eq!(cmdline_value(c, "vfiopm.phases"), Some("checks,cli"));
        assert_eq!(cmdline_value(c, "vfiopm.device"), None);
        assert_eq!(cmdline_value(c, "quiet"), None);
    }

    #[test]
    fn platform_parses_and_names_its_suspended_state() {
        assert_eq!(
            "d3cold".parse::<Platform>().unwrap().suspended_state(),
            PowerState::D3Cold
        );
        assert_eq!("d3hot".parse::<Platform>().unwrap().to_string(), "d3hot");
        assert!("d2".parse::<Platform>().is_err());
    }
}
