//! The nested real-kernel test: for Debian's 6.1 and 6.12 kernels, one boot of a real host
//! kernel (L1) in QEMU that runs the machine's own QEMU with a real guest (L2) on the
//! passed-through e1000e (see `xtask::nested`). Every run of every boot must pass; the figures
//! (L1's D3cold share while L2 idles, wall times) are printed.
//!
//! Needs what the other QEMU test needs (root, apt-get, QEMU). `VFIO_PM_SKIP_QEMU=1` skips it
//! loudly, like that test.

use std::io::Write;
use std::time::Instant;

fn loud(text: &str) {
    let _ = std::io::stderr().write_all(format!("{text}\n").as_bytes());
}

#[test]
fn stock_qemu_in_a_real_host_kernel_with_a_real_guest() {
    if std::env::var("VFIO_PM_SKIP_QEMU").as_deref() == Ok("1") {
        loud(
            "\n*** SKIPPED: nested real-kernel QEMU test (VFIO_PM_SKIP_QEMU=1): QEMU in a real \
             host kernel was NOT checked ***\n",
        );
        return;
    }
    let start = Instant::now();
    let opts = xtask::nested::NestedOptions::default();
    let summary = match xtask::nested::run(&opts) {
        Ok(s) => s,
        Err(e) => panic!(
            "the nested QEMU harness could not run: {e:#}\n(needs root, apt-get, \
             qemu-system-x86; VFIO_PM_SKIP_QEMU=1 skips this test on a machine that cannot)"
        ),
    };
    loud(&format!(
        "{summary}\n(nested total {:.1?})",
        start.elapsed()
    ));
    assert_eq!(summary.boots.len(), opts.kernels.len(), "{summary}");
    assert!(summary.all_passed(), "nested checks failed:\n{summary}");
    for b in &summary.boots {
        let control = b.run("control").expect("every boot has the control run");
        // The control run's figures are what the agent's runs are measured against.
        loud(&format!(
            "{} control: L1 D3cold share while L2 idles {:.0}% over {} samples (stock QEMU, no \
             agent); L2 trap {}; run {:.1}s of L1's clock, boot {:.1?}",
            b.kernel.release,
            control.idle_d3cold_share.unwrap_or(f64::NAN) * 100.0,
            control.idle_samples(),
            control.l2_trap,
            control.elapsed_ms.unwrap_or(0) as f64 / 1000.0,
            b.outcome.elapsed,
        ));
        let share = |r: &str| {
            b.run(r)
                .and_then(|r| r.idle_d3cold_share)
                .map_or("-".to_string(), |s| format!("{:.0}%", s * 100.0))
        };
        let resume = |r: &str| b.run(r).map(|r| r.resume_ms.clone()).unwrap_or_default();
        let exits = b
            .run("attach")
            .map(|r| r.exit_ioctl_ms())
            .unwrap_or_default();
        loud(&format!(
            "{} figures: L1 D3cold share while L2 idles: stock QEMU {}, vfio-pm qemu {}, \
             attach {}; L2's _ON round trip (ms): stock QEMU (posted, no EXIT) {:?}, vfio-pm \
             qemu with a 2 s test delay {:?}, attach {:?}; bare LOW_POWER_EXIT ioctl in L1 \
             (ms) {:.1?}",
            b.kernel.release,
            share("control"),
            share("agent"),
            share("attach"),
            resume("control"),
            resume("agent"),
            resume("attach"),
            exits,
        ));
        for name in [
            "control.adopt-probe",
            "control.adopt-qemu-keeps-running",
            "control.l1-offs-idle",
        ] {
            assert!(
                control.checks.iter().any(|c| c.name == name && c.passed),
                "{}: {name} missing or failed\n{summary}",
                b.kernel.release
            );
        }
        if b.kernel.series == xtask::kernels::KernelSeries::V6_12 {
            assert!(
                b.run("attach").is_some_and(|r| r.passed()),
                "6.12 runs the attach run\n{summary}"
            );
        }
    }
}
