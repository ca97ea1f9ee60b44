//! `vfio-pm demo`: the whole hypervisor-side chain on the simulated host with a simulated
//! Linux guest, on a virtual clock (deterministic for a seed, no root, no hardware).
//!
//! The chain: guest idles a device → its power resource's `_OFF` writes the trap register →
//! `VmmPowerManager::on_trap_write` → the controller's LOW_POWER_ENTRY(_WITH_WAKEUP) → the
//! simulated kernel runtime-suspends the device to D3cold → a host-side access (`lspci`)
//! resumes it → for the wakeup variant the eventfd fires → exactly one PME (GPE) to the guest
//! → the guest's `Notify (dev, 2)` handler resumes the device through `_ON`.
//!
//! Everything is computed first ([`run_scenario`]); printing happens afterwards.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice, PowerState};
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::controller::{
    CallResult, Event, EventLog, HostCall, ManualClock, RequestOutcome, TimedEvent,
};
use vfio_pm_vmm::guest::{GuestInbox, GuestStep, Reason, SimulatedGuest};
use vfio_pm_vmm::pme::WakeRoute;
use vfio_pm_vmm::vmm::{SsdtSummary, VmmPowerManager};
use vfio_pm_vmm::Slot;

mod fleet;
mod render;
mod timeline;

use fleet::{config_toml, specs};
use render::{fit, print_json, print_text};
use timeline::run_scenario;

/// Arguments of `vfio-pm demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print the raw events, one JSON object per line, then the summary.
    #[arg(long)]
    json: bool,
    /// Number of passthrough devices (3: GPU, its HDMI audio, a NIC; 4: + an NVMe drive the
    /// host keeps out of D3cold; more: extra NICs).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=16))]
    devices: u8,
    /// Seed of the guest's idle and busy times (same seed, same output).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the demo's VMM configuration (TOML for `vfio-pm aml`) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Anti-thrash minimum residency used by the demo (the controller's default).
const MIN_RESIDENCY: Duration = vfio_pm_vmm::controller::DEFAULT_MIN_RESIDENCY;
/// `_OFF`/`_ON` pairs in the toggle burst.
const BURST_PAIRS: u32 = 25;

/// One passthrough device of the demo.
#[derive(Clone, Debug, Serialize)]
struct Spec {
    name: String,
    what: &'static str,
    vendor: u16,
    device: u16,
    class: u32,
    guest: PciAddress,
    host: PciAddress,
    acpi_path: String,
    root_port: Option<&'static str>,
    declare: bool,
    pme_support: bool,
    gpe: u8,
    /// The host refuses D3cold for it (`d3cold_allowed` = 0): it stops at D3hot.
    host_d3cold: bool,
}

/// One timeline record.
#[derive(Clone, Debug)]
enum Rec {
    Phase(String),
    Guest {
        at_ns: u64,
        dev: usize,
        step: GuestStep,
    },
    Ctl {
        dev: usize,
        ev: TimedEvent,
    },
    HostAccess {
        at_ns: u64,
        dev: usize,
    },
    HostState {
        at_ns: u64,
        dev: usize,
        from: PowerState,
        to: PowerState,
    },
    Note(String),
}

/// Per-device summary.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct DeviceSummary {
    device: String,
    host_bdf: String,
    variant: String,
    d0_ns: u64,
    d3hot_ns: u64,
    d3cold_ns: u64,
    entries: u64,
    exits: u64,
    host_wakes: u64,
    pme_delivered: u64,
    pme_suppressed: u64,
    deferred: u64,
    coalesced: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Summary {
    seed: u64,
    total_ns: u64,
    ssdt_bytes: usize,
    ssdt: String,
    engaged_after_reset: usize,
    devices: Vec<DeviceSummary>,
}

struct Output {
    specs: Vec<Spec>,
    variants: Vec<String>,
    records: Vec<(bool, Rec)>,
    summary: Summary,
}

/// The snake_case name serde gives a value (`entry_with_wakeup`).
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

/// Runs `vfio-pm demo`.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let mut text = String::new();
    if args.print_config {
        text = config_toml(&specs(args.devices));
    } else if args.json {
        let out = run_scenario(args.devices, args.seed)?;
        print_json(&mut text, &out)?;
    } else {
        let out = run_scenario(args.devices, args.seed)?;
        let mut wide = String::new();
        print_text(&mut wide, &out, args.devices);
        text = fit(&wide);
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_count_has_a_valid_configuration() {
        for n in 3..=16 {
            let toml = config_toml(&specs(n));
            let c = VmmConfig::from_toml_str(&toml).unwrap_or_else(|e| panic!("{n}: {e}\n{toml}"));
            assert_eq!(c.devices().len(), usize::from(n));
        }
    }

    #[test]
    fn scenario_is_deterministic_and_ends_clean() {
        let a = run_scenario(4, 7).unwrap();
        let b = run_scenario(4, 7).unwrap();
        assert_eq!(a.summary.devices, b.summary.devices);
        assert_eq!(a.summary.engaged_after_reset, 0);
        let gpu = &a.summary.devices[0];
        assert_eq!(gpu.variant, "entry_with_wakeup");
        assert_eq!(gpu.host_wakes, 3);
        assert_eq!(gpu.pme_delivered, 3);
        assert_eq!(gpu.coalesced, u64::from(BURST_PAIRS));
        let nvme = &a.summary.devices[3];
        assert!(nvme.d3hot_ns > 0 && nvme.d3cold_ns == 0);
        for d in &a.summary.devices[1..] {
            assert_eq!(d.pme_delivered, 0, "{}", d.device);
        }
    }
}
