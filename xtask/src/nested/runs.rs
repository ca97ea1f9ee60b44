//! The runs of a nested boot: each a command line L1 executes in the chroot of the machine's
//! root, what L1 does beside it, and what it must show ([`Expect`]).

use super::{l2_qemu_argv, Action, ActionKind, Expect, L2Options, NestedRun, Prepared, TrapWindow};
use crate::kernels::KernelSeries;
use anyhow::{Context, Result};
use std::time::Duration;

/// The CONTROL run: stock QEMU without any agent. L2 reaches D3cold, L1 stays runtime-active
/// in D3hot (nothing asks L1's kernel for low power), L1 never runs `_OFF` while L2 idles;
/// beside it, vfio-pm's adopt takes a second device fd from QEMU and probes it.
pub fn control_run(prep: &Prepared) -> NestedRun {
    NestedRun {
        adopt: true,
        ..NestedRun::l2(
            "control",
            prep,
            &[],
            vec![
                Expect::L2Passed,
                Expect::L2TrapHasOff,
                Expect::Exit(0),
                Expect::L1IdleAll("D3hot active".into()),
                Expect::L1IdleD3ColdShare { min: 0.0, max: 0.0 },
                Expect::L1Offs {
                    window: TrapWindow::Idle,
                    min: 0,
                    max: 0,
                },
            ],
        )
    }
}

/// A run under the agent: `vfio-pm qemu` around stock QEMU, which adds its own SSDT, doorbell
/// and mailbox. L2 must behave as in the control run while L1 now reaches D3cold.
pub fn agent_run(prep: &Prepared) -> NestedRun {
    let mut argv: Vec<String> = [
        prep.cli.display().to_string(),
        "qemu".into(),
        // /run is on the read-only share in L1; /tmp is L1's tmpfs.
        "--state-dir".into(),
        "/tmp/vfio-pm-agent".into(),
        // A slow agent: _ON must still not return before the host's EXIT (L2 reads BAR0 right
        // after resuming; QEMU would die of SIGBUS on an engaged device).
        "--test-ack-delay".into(),
        "2s".into(),
        "--".into(),
    ]
    .to_vec();
    argv.extend(l2_qemu_argv(prep, &L2Options::default()));
    NestedRun {
        // The agent is the run's own process (chroot execs it): its wakeups while L2 idles.
        child_idle: true,
        ..NestedRun::bare(
            "agent",
            argv,
            vec![
                Expect::L2Passed,
                Expect::Exit(0),
                // The window opens when L2 has seen its own D3cold; L1's suspend after the agent's
                // ENTRY can trail that by a sample or two on a loaded host (runs saw 100%).
                Expect::L1IdleD3ColdShare {
                    min: 0.85,
                    max: 1.0,
                },
                Expect::L1Offs {
                    window: TrapWindow::UntilIdleEnd,
                    min: 1,
                    max: 8,
                },
                Expect::AgentIdleWakeups {
                    max: AGENT_IDLE_WAKEUPS,
                },
            ],
        )
    }
}

/// Builds one run for a boot's prepared files.
pub type RunBuilder = fn(&Prepared) -> NestedRun;

/// Every run the harness knows, by name.
pub const RUNS: &[(&str, RunBuilder)] = &[
    ("control", control_run),
    ("agent", agent_run),
    ("attach", attach_run),
];

/// The runs of a boot of `kernel` in CI: control and agent on every kernel; the attach run
/// (two L2 boots, the longest) on the newest only, to keep CI's time.
pub fn default_runs(kernel: KernelSeries) -> Vec<String> {
    let mut runs = vec!["control".to_string(), "agent".to_string()];
    if kernel == KernelSeries::V6_12 {
        runs.push("attach".into());
    }
    runs
}

/// The runs named in `names`, built for `prep`.
pub fn runs_for(names: &[String], prep: &Prepared) -> Result<Vec<NestedRun>> {
    names
        .iter()
        .map(|n| {
            RUNS.iter()
                .find(|(name, _)| name == n)
                .map(|(_, build)| build(prep))
                .with_context(|| {
                    let known: Vec<&str> = RUNS.iter().map(|(n, _)| *n).collect();
                    format!("unknown nested run {n:?} (known: {known:?})")
                })
        })
        .collect()
}

/// How often the agent may wake while L2 idles: the one-shot kernel check after the entry
/// can fall inside the window; a periodic timer would wake it every window second.
pub const AGENT_IDLE_WAKEUPS: u64 = 3;

/// L2's flood (`vfiopm.flood=`), seconds.
pub const FLOOD_SECS: u64 = 5;

/// The agent's anti-thrash residency (`vfio-pm qemu --min-residency` default), ms.
pub const MIN_RESIDENCY_MS: u64 = 100;

/// The attach run's idle window: long enough for a config read and an agent restart.
pub const ATTACH_IDLE_SECS: u64 = 14;

/// The attach run's script (`sh -c SCRIPT sh CLI QEMU ARGS...`): `print-args` for the command
/// line, QEMU started with what it printed, and a supervisor that (re)starts `vfio-pm qemu
/// attach --json` for QEMU's pid as long as QEMU runs (as `Restart=always` would), writing
/// each agent's pid to `ATTACH_PIDFILE`; the agents write to stderr, away from QEMU's console
/// on stdout (both are read line by line). Exits with QEMU's status.
pub const ATTACH_SCRIPT: &str = r#"set -u
cli=$1; shift
dir=/tmp/vfio-pm-attach
"$cli" qemu print-args --name nested --state-dir "$dir" -- "$@" > "$dir.args" || exit 90
while IFS= read -r a; do set -- "$@" "$a"; done < "$dir.args"
"$@" &
q=$!
(
  while kill -0 "$q" 2>/dev/null; do
    "$cli" qemu attach --name nested --state-dir "$dir" --pid "$q" --json >&2 &
    echo $! > /tmp/attach-agent.pid
    wait $!
    echo "{\"supervisor\":\"agent exited with $?\"}" >&2
    sleep 2
  done
) &
s=$!
wait "$q"
rc=$?
wait "$s"
exit $rc
"#;

/// Where the attach run's supervisor writes the agent's pid (L1's `/tmp`).
pub const ATTACH_PIDFILE: &str = "/tmp/attach-agent.pid";

/// The ATTACH run: QEMU started by someone else (a script, as libvirt would) with the
/// arguments of `vfio-pm qemu print-args`, served by `vfio-pm qemu attach` under a supervisor.
/// While L2 idles, L1 reads its device's config space (the device wakes and suspends again,
/// L2 notices nothing) and kills the agent with SIGKILL; the restarted agent takes the engaged
/// device over from the kernel. Then L2 floods the doorbell and the mailbox for
/// [`FLOOD_SECS`], resumes the device and reads its BAR, reboots, and after the reboot uses the
/// device again.
pub fn attach_run(prep: &Prepared) -> NestedRun {
    let l2 = L2Options {
        idle_secs: ATTACH_IDLE_SECS,
        cmdline: format!("vfiopm.flood={FLOOD_SECS} vfiopm.reboot=1"),
        reboot: true,
    };
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        ATTACH_SCRIPT.into(),
        "sh".into(),
        prep.cli.display().to_string(),
    ];
    argv.extend(l2_qemu_argv(prep, &l2));
    let at = |ms: u64, what: ActionKind| Action {
        after: "idle-begin".into(),
        delay: Duration::from_millis(ms),
        what,
    };
    NestedRun {
        // Two L2 boots.
        timeout: Duration::from_secs(900),
        actions: vec![
            at(2000, ActionKind::ConfigRead),
            at(5000, ActionKind::Kill(ATTACH_PIDFILE.into())),
            // The agent is gone (its supervisor waits 2 s): low power must still be engaged.
            at(6000, ActionKind::ConfigRead),
            // After the new agent took the device over.
            at(11000, ActionKind::ConfigRead),
        ],
        forward_json: true,
        ..NestedRun::bare(
            "attach",
            argv,
            vec![
                Expect::L2Passed,
                Expect::L2Rebooted,
                Expect::Exit(0),
                // The config read wakes L1's device for a moment (a sample may see it).
                Expect::L1IdleD3ColdShare {
                    min: 0.75,
                    max: 1.0,
                },
                // The entry, each config read's wake, the restarted agent's start-up.
                Expect::L1Offs {
                    window: TrapWindow::UntilIdleEnd,
                    min: 1,
                    max: 12,
                },
                Expect::AgentSaid("low power is still engaged".into()),
                Expect::FloodBounded {
                    min_residency_ms: MIN_RESIDENCY_MS,
                },
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attach_script_is_valid_sh() {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", ATTACH_SCRIPT])
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn ci_runs_attach_on_the_newest_kernel_only() {
        assert_eq!(default_runs(KernelSeries::V6_1), ["control", "agent"]);
        assert_eq!(
            default_runs(KernelSeries::V6_12),
            ["control", "agent", "attach"]
        );
        let known: Vec<&str> = RUNS.iter().map(|(n, _)| *n).collect();
        for r in default_runs(KernelSeries::V6_12) {
            assert!(known.contains(&r.as_str()));
        }
    }
}
