//! The laptop topology on Debian's 6.1 and 6.12 kernels: an e1000e behind a PCIe root port
//! whose `_PR0`/`_PR3` are on the port. The port must reach D3cold with the endpoint, and
//! `vfio-pm doctor`/`status` in the guest must say D3cold is reachable (see
//! `xtask::rootport`). One boot per kernel.
//!
//! Needs what the main QEMU test needs; `VFIO_PM_SKIP_QEMU=1` skips it loudly.

use std::io::Write;
use std::time::{Duration, Instant};
use xtask::KernelSeries;

fn loud(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

#[test]
fn power_resources_on_the_root_port_give_the_endpoint_d3cold() {
    if std::env::var("VFIO_PM_SKIP_QEMU").as_deref() == Ok("1") {
        loud(
            "\n*** SKIPPED: root-port QEMU test (VFIO_PM_SKIP_QEMU=1): _PR3 on a root port was \
             NOT checked against Linux 6.1/6.12 ***\n",
        );
        return;
    }
    let start = Instant::now();
    // Debian 12's kernels (the laptop case needs no newer one; keeps CI's added time to two boots).
    let series = [KernelSeries::V6_1, KernelSeries::V6_12];
    let runs = match xtask::rootport::run(&series, Duration::from_secs(120)) {
        Ok(r) => r,
        Err(e) => panic!(
            "the root-port QEMU case could not run: {e:#}\n(needs root, apt-get, \
             qemu-system-x86; set VFIO_PM_SKIP_QEMU=1 to skip it on a machine that cannot)"
        ),
    };
    let text: String = runs.iter().map(|r| r.to_string()).collect();
    loud(&format!(
        "root-port topology:\n{text}(total {:.1?})",
        start.elapsed()
    ));
    assert_eq!(runs.len(), series.len());
    assert!(runs.iter().all(|r| r.passed()), "{text}");
}
