//! `vfio-pm status`: the power picture of the host's PCI devices.

use crate::table;
use anyhow::Result;
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::{DeviceReport, PciAddress, Sysfs};

/// Reports for `wanted` (all devices when empty), vfio-bound first, then by address.
pub fn reports(sysfs: &Sysfs, wanted: &[PciAddress]) -> Result<Vec<DeviceReport>> {
    let mut out = Vec::new();
    if wanted.is_empty() {
        for d in sysfs.devices()? {
            out.push(d.report());
        }
    } else {
        for a in wanted {
            out.push(sysfs.device(*a)?.report());
        }
    }
    out.sort_by_key(|r| (!r.is_vfio(), r.address));
    Ok(out)
}

fn suspended_share(r: &DeviceReport) -> String {
    match (r.runtime_active_ms.known(), r.runtime_suspended_ms.known()) {
        (Some(&a), Some(&s)) if a + s > 0 => format!("{:.0}%", 100.0 * s as f64 / (a + s) as f64),
        _ => "?".into(),
    }
}

pub fn run(sysfs: &Sysfs, wanted: &[PciAddress], json: bool) -> Result<ExitCode> {
    let reports = reports(sysfs, wanted)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.address.to_string(),
                format!("{}:{}", r.vendor.display(), r.device.display()),
                r.class.display(),
                r.driver.display(),
                r.power_state.display(),
                r.runtime_status.display(),
                r.runtime_suspended_ms
                    .known()
                    .map(|ms| table::human(Duration::from_millis(*ms)))
                    .unwrap_or_else(|| "?".into()),
                suspended_share(r),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "DEVICE",
                "ID",
                "CLASS",
                "DRIVER",
                "STATE",
                "RUNTIME",
                "SUSPENDED",
                "SHARE"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}
