//! `vfio-pm doctor`: prints the diagnosis of [`vfio_pm::doctor`].

use anyhow::Result;
use std::process::ExitCode;
use vfio_pm::doctor::{diagnose, KernelSupport, Verdict};
use vfio_pm::{PciAddress, Sysfs};

pub fn run(sysfs: &Sysfs, bdf: PciAddress, json: bool, no_open: bool) -> Result<ExitCode> {
    let mode = if no_open {
        KernelSupport::InferFromVersion
    } else {
        KernelSupport::Probe
    };
    let d = diagnose(sysfs, bdf, mode)?;
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&d)?)?;
    } else {
        crate::outln!("{bdf}:")?;
        for c in &d.checks {
            let mark = match c.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Warn => "warn",
                Verdict::Unknown => "?   ",
            };
            crate::outln!("  [{mark}] {:<26} {}", c.id, c.detail)?;
            if let Some(fix) = &c.fix {
                crate::outln!("         fix: {fix}")?;
            }
        }
        if d.d3cold_reachable {
            crate::outln!("verdict: D3cold is reachable when the device is idle")?;
        } else {
            crate::outln!(
                "verdict: D3cold is NOT reachable; an idle device is expected to reach {}",
                d.expected_idle_state
            )?;
        }
    }
    Ok(if d.d3cold_reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
