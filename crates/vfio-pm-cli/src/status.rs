//! `vfio-pm status`: the power picture of the host's PCI devices.

use crate::table;
use anyhow::Result;
use serde::Serialize;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::residency::{uptime, D3Split, Residency};
use vfio_pm::{DeviceReport, PciAddress, Sysfs};

/// Reports for `wanted` (all devices when empty), vfio-bound first, then by address.
pub fn reports(sysfs: &Sysfs, wanted: &[PciAddress]) -> Result<Vec<DeviceReport>> {
    let mut out = Vec::new();
    if wanted.is_empty() {
        for d in sysfs.devices()? {
            out.push(d.report());
        }
    } else {
        // The same device may be named twice (`00:05.0 0000:00:05.0`): listed once.
        let unique: std::collections::BTreeSet<PciAddress> = wanted.iter().copied().collect();
        for a in unique {
            out.push(sysfs.device(a)?.report());
        }
    }
    out.sort_by_key(|r| (!r.is_vfio(), r.address));
    Ok(out)
}

/// A report with its since-boot residency, as `status --json` prints it.
#[derive(Serialize)]
struct StatusEntry<'a> {
    #[serde(flatten)]
    report: &'a DeviceReport,
    residency: Residency,
}

fn duration_or_unknown(d: Option<Duration>) -> String {
    d.map(table::human).unwrap_or_else(|| "?".into())
}

fn d3cold_column(r: &Residency) -> String {
    match r.d3_split {
        // The kernel does not split suspended time; `watch` can.
        D3Split::Unknown => "?".into(),
        D3Split::InferredNoD3cold => "never".into(),
    }
}

pub fn run(sysfs: &Sysfs, wanted: &[PciAddress], json: bool) -> Result<ExitCode> {
    let reports = reports(sysfs, wanted)?;
    let since_boot = uptime();
    let entries: Vec<StatusEntry> = reports
        .iter()
        .map(|report| StatusEntry {
            report,
            residency: Residency::from_report(report, since_boot),
        })
        .collect();
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&entries)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let (r, res) = (e.report, &e.residency);
            vec![
                r.address.to_string(),
                format!("{}:{}", r.vendor.display(), r.device.display()),
                r.class.display(),
                r.driver.display(),
                r.power_state.display(),
                r.runtime_status.display(),
                duration_or_unknown(res.d0),
                duration_or_unknown(res.d3),
                res.suspended_share
                    .map(|s| format!("{:.0}%", 100.0 * s))
                    .unwrap_or_else(|| "?".into()),
                d3cold_column(res),
            ]
        })
        .collect();
    crate::out::write(format_args!(
        "{}",
        table::render(
            &[
                "DEVICE",
                "ID",
                "CLASS",
                "DRIVER",
                "STATE",
                "RUNTIME",
                "ACTIVE",
                "SUSPENDED",
                "SHARE",
                "D3COLD",
            ],
            &rows
        )
    ))?;
    // Counters that cannot be right are said so, not silently shown as `?`.
    for e in &entries {
        if let Some(why) = &e.residency.counter_error {
            eprintln!("vfio-pm: {}: residency not shown: {why}", e.report.address);
        }
    }
    // A legend for people; scripts reading a pipe get the table alone.
    if std::io::stdout().is_terminal()
        && entries
            .iter()
            .any(|e| e.residency.d3_split == D3Split::Unknown)
    {
        crate::outln!(
            "\nACTIVE is D0 time and SUSPENDED is D3hot+D3cold time since boot (kernel counters). \
             The kernel does not split D3hot from D3cold (D3COLD ?): `vfio-pm watch` attributes it; \
             \"never\" means the slot cannot reach D3cold, so all of it was D3hot."
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
