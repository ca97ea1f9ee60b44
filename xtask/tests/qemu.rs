//! The real-kernel harness as a test: Debian's 6.1 and 6.12 kernels and Debian's newest
//! (trixie-backports or sid, resolved by name) × D3hot and D3cold platforms, plus the
//! `disable_idle_d3=1` scenarios on D3cold: an extra boot with vfio-pci loaded so for kernels
//! that latch the parameter at module init (6.1, 6.12), the normal boot's `idle-d3-rebind`
//! phase for kernels that latch it per device (7.3); every guest and host check must pass.
//!
//! Needs root (apt-get, kernel downloads), QEMU and network access to Debian's archive the first
//! time. When those are unavailable the test FAILS with the reason, unless `VFIO_PM_SKIP_QEMU=1`,
//! which skips it loudly. The boots run one after the other inside this single test.

use std::io::Write;
use std::time::Instant;

/// Writes to the real stderr: `eprintln!` output of a passing test is captured and never shown,
/// and a skip or the summary must not be silent.
fn loud(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

#[test]
fn vfio_pm_on_real_kernels_in_qemu() {
    if std::env::var("VFIO_PM_SKIP_QEMU").as_deref() == Ok("1") {
        loud(
            "\n*** SKIPPED: real-kernel QEMU test (VFIO_PM_SKIP_QEMU=1): vfio-pm was NOT checked \
             against Linux 6.1/6.12/newest ***\n",
        );
        return;
    }
    let start = Instant::now();
    let summary = match xtask::run(&xtask::Options::default()) {
        Ok(s) => s,
        Err(e) => panic!(
            "the real-kernel QEMU harness could not run: {e:#}\n\
             (needs root, apt-get, qemu-system-x86; set VFIO_PM_SKIP_QEMU=1 to skip this test \
             on a machine that cannot run it)"
        ),
    };
    loud(&format!(
        "{summary}\nmodel vs kernel:\n{}\n{}(total {:.1?})",
        xtask::conformance::report(&summary),
        xtask::timing::table(&summary),
        start.elapsed()
    ));
    let kernels = xtask::KernelSeries::ALL.len();
    // The normal D3cold boots that also ran the disable_idle_d3=1 scenarios (rebound device).
    let shared = summary
        .runs
        .iter()
        .filter(|r| !r.disable_idle_d3 && r.conformance.iter().any(|c| c.disable_idle_d3))
        .count();
    assert!(
        shared >= 1,
        "the newest kernel latches disable_idle_d3 per device and shares its boot\n{summary}"
    );
    assert_eq!(
        summary.runs.iter().filter(|r| r.disable_idle_d3).count(),
        kernels - shared,
        "one disable_idle_d3=1 boot per kernel that latches it at module init\n{summary}"
    );
    assert_eq!(
        summary.runs.len(),
        2 * kernels + kernels - shared,
        "{summary}"
    );
    for r in summary
        .runs
        .iter()
        .filter(|r| !r.disable_idle_d3 && r.platform == xtask::Platform::D3Cold)
    {
        let c = r
            .host_checks
            .iter()
            .find(|c| c.name == "host-disable-idle-d3-latch");
        assert!(
            c.is_some_and(|c| c.passed),
            "{}: the disable_idle_d3 latch check is missing or failed: {c:?}\n{summary}",
            r.kernel.release
        );
    }
    assert!(
        summary.all_passed(),
        "real-kernel checks failed:\n{summary}"
    );
    for r in summary.runs.iter().filter(|r| !r.disable_idle_d3) {
        // The check list must not silently shrink: every run reports the full sequence.
        let n = r.report.checks().count();
        assert!(
            n >= 45,
            "{} {}: only {n} guest checks\n{summary}",
            r.kernel.release,
            r.platform
        );
    }
    for r in summary.runs.iter().filter(|r| !r.disable_idle_d3) {
        // The CLI phase ran in full on every run, and on d3cold the trap oracle judged the
        // bytes the guest's calls of vfio-pm's generated _ON/_OFF wrote.
        let cli = r
            .report
            .checks()
            .filter(|c| c.name.starts_with("cli-"))
            .count();
        assert!(
            cli >= 25,
            "{} {}: only {cli} cli checks\n{summary}",
            r.kernel.release,
            r.platform
        );
        // The informational timings were measured and parse (their values are not judged).
        let timing = r
            .host_checks
            .iter()
            .find(|c| c.name == "host-timing-figures");
        assert!(
            timing.is_some_and(|c| c.passed),
            "{} {}: timing figures missing or malformed: {timing:?}\n{summary}",
            r.kernel.release,
            r.platform
        );
        // The controller phase (vfio-pm-vmm driving the real kernel) ran in full too.
        let ctl = r
            .report
            .checks()
            .filter(|c| c.name.starts_with("ctl-"))
            .count();
        assert!(
            ctl >= 18,
            "{} {}: only {ctl} controller checks\n{summary}",
            r.kernel.release,
            r.platform
        );
        if r.platform == xtask::Platform::D3Cold {
            for name in [
                "host-trap-decodes",
                "host-trap-slot0-is-the-device",
                "host-trap-alternates",
                "host-trap-off-while-guest-d3cold",
            ] {
                let c = r.host_checks.iter().find(|c| c.name == name);
                assert!(
                    c.is_some_and(|c| c.passed),
                    "{} d3cold: {name} missing or failed: {c:?}\n{summary}",
                    r.kernel.release
                );
                loud(&format!(
                    "{} d3cold trap: {}",
                    r.kernel.release,
                    c.map_or("", |c| c.detail.as_str())
                ));
            }
        }
    }
    // Model vs kernel: every scenario ran on every run and agreed (a difference already
    // failed `all_passed` through its host check, with the side-by-side diff), and the
    // committed table is the one this run produces.
    let conf = xtask::conformance::runs(&summary);
    assert_eq!(
        conf.len(),
        3 * kernels,
        "a run did not report the scenarios phase\n{summary}"
    );
    // Every disable_idle_d3 scenario applies to the extra boot's platform.
    let idle_d3_scenarios = vfio_pm_sim::scenario::builtin()
        .expect("the embedded scenarios parse")
        .iter()
        .filter(|s| s.disable_idle_d3)
        .count();
    assert!(idle_d3_scenarios >= 2, "{idle_d3_scenarios}");
    for c in &conf {
        let (agree, differ, _) = c.counts();
        let want = if c.disable_idle_d3 {
            idle_d3_scenarios
        } else {
            45
        };
        assert!(
            differ == 0 && agree >= want,
            "{} {}: {agree} scenarios agree, {differ} differ or are incomplete\n{summary}",
            c.kernel,
            c.platform
        );
    }
    let table = xtask::conformance::table(&conf);
    let generated = xtask::conformance::generated_path();
    let _ = std::fs::write(&generated, &table);
    let committed = std::fs::read_to_string(xtask::conformance::doc_path()).unwrap_or_default();
    assert!(
        committed == table,
        "docs/conformance.md differs from the table this run produced ({}): run \
         `cargo xtask conformance` and commit it",
        generated.display()
    );
}
