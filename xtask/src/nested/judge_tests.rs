//! Tests of the parent module.
use super::*;
use crate::kernels::KernelSeries;
use crate::qemu::TrapMark;
use std::time::Duration;

fn run(expect: Vec<Expect>) -> NestedRun {
    NestedRun {
        name: "control".into(),
        argv: vec!["qemu-system-x86_64".into()],
        timeout: Duration::from_secs(10),
        adopt: true,
        l2_trap: Some("/tmp/t".into()),
        actions: Vec::new(),
        forward_json: false,
        child_idle: false,
        expect,
    }
}

fn outcome(console: &str, trap: &[u8], marks: &[(&str, usize)]) -> BootOutcome {
    BootOutcome {
        console: console.into(),
        stderr: String::new(),
        timed_out: false,
        status: None,
        elapsed: Duration::from_secs(1),
        trap: trap.to_vec(),
        trap_marks: marks
            .iter()
            .map(|(n, l)| TrapMark {
                name: n.to_string(),
                trap_len: *l,
            })
            .collect(),
    }
}

const CONSOLE: &str = "VFIOPM INFO kernel 6.12.1\n\
    VFIOPM INFO run-begin control\n\
    VFIOPM SAMPLE control 10 D3cold suspended\n\
    VFIOPM SAMPLE control 900 D0 active\n\
    VFIOPM GUEST control CHECK l2-idle-d3cold PASS D3cold suspended\n\
    VFIOPM GUEST control INFO nested idle-begin\n\
    VFIOPM WINDOW control 1000 begin\n\
    VFIOPM SAMPLE control 1100 D3hot active\n\
    VFIOPM SAMPLE control 1350 D3hot active\n\
    VFIOPM SAMPLE control 1600 D3cold suspended\n\
    VFIOPM SAMPLE control 1850 D3hot active\n\
    VFIOPM GUEST control INFO nested idle-end\n\
    VFIOPM WINDOW control 2000 end\n\
    VFIOPM CHECK control.adopt-probe PASS probe ok\n\
    VFIOPM GUEST control CHECK l2-idle-held PASS held\n\
    VFIOPM GUEST control CHECK l2-config-read-resuspends PASS ok\n\
    VFIOPM GUEST control DONE pass=3 fail=0\n\
    VFIOPM SAMPLE control 3000 D3cold suspended\n\
    VFIOPM INFO control.exit 0\n\
    VFIOPM INFO control.elapsed-ms 3000\n\
    VFIOPM INFO control.l2-trap 80008000\n\
    VFIOPM CHECK control.finished PASS exited with 0\n\
    VFIOPM INFO run-end control\n\
    VFIOPM DONE pass=2 fail=0\n";

#[test]
fn judges_samples_windows_and_traps_of_a_run() {
    let d = crate::ssdt::decoder().unwrap();
    // L0: boot _ON, L1's _OFF (unused), _ON (QEMU opened), then inside the idle window
    // one _OFF/_ON pair, then the final _OFF.
    let trap = [0x80, 0x00, 0x80, 0x00, 0x80, 0x00];
    let marks = [
        ("control.start", 2),
        ("control.idle-begin", 3),
        ("control.idle-end", 5),
        ("control.end", 6),
    ];
    let o = outcome(CONSOLE, &trap, &marks);
    let report = GuestReport::parse(CONSOLE);
    let r = judge_run(
        &run(vec![
            Expect::L2Passed,
            Expect::L2TrapHasOff,
            Expect::Exit(0),
            Expect::L1IdleAll("D3hot active".into()),
            Expect::L1IdleD3ColdShare { min: 0.2, max: 0.3 },
            Expect::L1Offs {
                window: TrapWindow::Idle,
                min: 1,
                max: 1,
            },
            Expect::L1Offs {
                window: TrapWindow::Run,
                min: 2,
                max: 2,
            },
        ]),
        &report,
        &o,
        &d,
    );
    let verdict = |n: &str| r.checks.iter().find(|c| c.name == n).map(|c| c.passed);
    assert_eq!(r.idle_samples(), 4);
    assert_eq!(r.idle_d3cold_share, Some(0.25));
    assert_eq!(r.l0_idle_trap, "-+");
    assert_eq!(r.l2_trap, "+-+-");
    assert_eq!(r.elapsed_ms, Some(3000));
    assert_eq!(r.l2.done(), Some((3, 0)));
    for ok in [
        "control.ran",
        "control.adopt-probe",
        "control.finished",
        "control.idle-window",
        "control.l2-passed",
        "control.l2-trap-off",
        "control.exit-0",
        "control.l1-idle-d3cold-share",
        "control.l1-offs-idle",
        "control.l1-offs-run",
    ] {
        assert_eq!(verdict(ok), Some(true), "{ok}: {:?}", r.checks);
    }
    // One D3cold sample among the idle ones: not all D3hot active.
    assert_eq!(verdict("control.l1-idle-all-D3hot-active"), Some(false));
    assert!(!r.passed());
}

#[test]
fn hex_of_the_l2_trap() {
    assert_eq!(hex_bytes("8000"), Some(vec![0x80, 0]));
    assert_eq!(hex_bytes("-"), Some(vec![]));
    for bad in ["800", "zz", "8é"] {
        assert_eq!(hex_bytes(bad), None, "{bad}");
    }
}

#[test]
fn a_boot_without_its_runs_fails_loudly() {
    let kernel = KernelImage {
        series: KernelSeries::V6_12,
        package: "linux-image-6.12.1".into(),
        release: "6.12.1".into(),
        vmlinuz: "/nonexistent".into(),
        modules: Vec::new(),
        config: "/nonexistent".into(),
    };
    let console = "VFIOPM INFO kernel 6.12.1\nVFIOPM DONE pass=1 fail=0\n";
    let b = NestedBoot::judge(
        kernel.clone(),
        &[run(vec![Expect::L2Passed])],
        outcome(console, &[0x80], &[]),
        "/x".into(),
    );
    assert!(!b.passed());
    let r = b.run("control").unwrap();
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "control.ran" && !c.passed));
    assert!(r
        .checks
        .iter()
        .any(|c| c.name == "control.l2-passed" && !c.passed));
    // The full console passes the boot checks.
    let b = NestedBoot::judge(
        kernel,
        &[run(vec![Expect::L2Passed])],
        outcome(
            CONSOLE,
            &[0x80, 0],
            &[("control.idle-begin", 1), ("control.idle-end", 1)],
        ),
        "/x".into(),
    );
    assert!(
        b.host_checks.iter().all(|c| c.passed),
        "{:?}",
        b.host_checks
    );
    assert!(b.passed(), "{b}");
}

#[test]
fn judges_the_agent_lines_flood_reboot_and_idle_cost() {
    let console = "VFIOPM INFO run-begin control\n\
        VFIOPM GUEST control INFO nested idle-begin\n\
        VFIOPM INFO control.agent-idle wakeups=1 cpu_ticks=0 window_ms=8000\n\
        VFIOPM GUEST control INFO nested idle-end\n\
        VFIOPM AGENT control {\"t\":1.0,\"device\":\"0000:00:05.0\",\"note\":\"the guest wants it off: low power is still engaged (taken over)\"}\n\
        VFIOPM AGENT control {\"t\":2.0,\"device\":\"0000:00:05.0\",\"call\":\"LOW_POWER_EXIT\",\"took_ms\":12.5}\n\
        VFIOPM GUEST control INFO nested flood secs=5 mailbox_writes=90000 doorbell_writes=50000 hostile_words=900\n\
        VFIOPM GUEST control INFO nested resume-ms 40\n\
        VFIOPM GUEST control INFO nested boot 2\n\
        VFIOPM GUEST control CHECK l2-reboot-bar-read-after-resume PASS D0\n\
        VFIOPM AGENT control {\"call\":\"LOW_POWER_ENTRY\",\"t\":3.0,\"took_ms\":0.2}\n\
        VFIOPM AGENT control {\"call\":\"LOW_POWER_ENTRY\",\"t\":3.1,\"took_ms\":0.2}\n\
        VFIOPM AGENT control {\"call\":\"LOW_POWER_ENTRY\",\"t\":3.3,\"took_ms\":0.2}\n\
        VFIOPM AGENT control {\"device\":\"0000:00:05.0\",\"summary\":{\"entries\":30}}\n\
        VFIOPM AGENT control not json\n\
        VFIOPM INFO run-end control\n";
    let d = crate::ssdt::decoder().unwrap();
    let report = GuestReport::parse(console);
    let expect = vec![
        Expect::AgentIdleWakeups { max: 3 },
        Expect::L2Rebooted,
        Expect::AgentSaid("still engaged".into()),
        Expect::FloodBounded {
            min_residency_ms: 100,
        },
    ];
    let r = judge_run(&run(expect), &report, &outcome(console, &[], &[]), &d);
    let verdict = |n: &str| r.checks.iter().find(|c| c.name == n).map(|c| c.passed);
    for ok in [
        "control.agent-idle-wakeups",
        "control.l2-rebooted",
        "control.agent-said",
        "control.flood-bounded",
    ] {
        assert_eq!(verdict(ok), Some(true), "{ok}: {:?}", r.checks);
    }
    assert_eq!(r.exit_ioctl_ms(), [12.5]);
    assert_eq!(r.resume_ms, [40]);
    assert_eq!(r.agent.len(), 6, "the line that is not JSON is dropped");
    // Two entries 50 ms apart, too many wakeups.
    let worse = console
        .replace("\"t\":3.1,", "\"t\":3.05,")
        .replace("wakeups=1", "wakeups=9");
    let report = GuestReport::parse(&worse);
    let r = judge_run(
        &run(vec![
            Expect::AgentIdleWakeups { max: 3 },
            Expect::FloodBounded {
                min_residency_ms: 100,
            },
            Expect::AgentSaid("never said".into()),
        ]),
        &report,
        &outcome(&worse, &[], &[]),
        &d,
    );
    assert!(r
        .checks
        .iter()
        .filter(|c| c.name.starts_with("control.agent-") || c.name == "control.flood-bounded")
        .all(|c| !c.passed));
}
