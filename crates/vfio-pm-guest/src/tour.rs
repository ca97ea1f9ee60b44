//! The `tour` phase: runs the `vfio-pm` commands a reader of the README would, with human
//! output, inside the real guest, and prints every output line as `VFIOPM TRACE tour <line>` so
//! that `cargo xtask tour` can write docs/cli.md from real output.
//!
//! Each command is also a check: it must exit with the status its documentation promises.

use crate::context::{Ctx, Platform};
use crate::report::Reporter;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLI: &str = "/bin/vfio-pm";

/// The trace "scenario" name the tour's lines are printed under.
pub const TRACE_NAME: &str = "tour";

/// Runs the tour.
pub fn run(ctx: &Ctx, r: &mut Reporter) {
    let bdf = ctx.device.to_string();
    let doctor_code = match ctx.platform {
        Platform::D3Cold => 0,
        Platform::D3Hot => 1,
    };
    let steps: Vec<(Vec<&str>, i32, Option<Duration>)> = vec![
        (vec!["status"], 0, None),
        (vec!["doctor", &bdf], doctor_code, None),
        (vec!["probe", &bdf], 0, None),
        (vec!["cycle", &bdf], 0, None),
        (vec!["cycle", &bdf, "--wakeup", "--count", "2"], 0, None),
        // A host-side sysfs config read one second in wakes a D3cold device: hold re-arms.
        (
            vec!["hold", &bdf, "--wakeup", "--for", "3s"],
            0,
            Some(Duration::from_secs(1)),
        ),
        (
            vec!["watch", &bdf, "--interval", "50ms", "--for", "2s"],
            0,
            Some(Duration::from_millis(700)),
        ),
    ];
    for (args, want, poke_after) in steps {
        let shown = format!("$ vfio-pm {}", args.join(" "));
        r.trace(TRACE_NAME, &shown);
        let child = Command::new(CLI)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                r.check(
                    &format!("tour {}", args[0]),
                    false,
                    format!("cannot start: {e}"),
                );
                continue;
            }
        };
        if let Some(after) = poke_after {
            std::thread::sleep(after);
            let config = ctx.sysfs.device_dir(ctx.device).join("config");
            let _ = std::fs::read(config);
        }
        match child.wait_with_output() {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stderr).lines())
                {
                    r.trace(TRACE_NAME, line);
                }
                r.trace(TRACE_NAME, "");
                let code = out.status.code().unwrap_or(-1);
                r.check(
                    &format!("tour {}", args[0..2.min(args.len())].join(" ")),
                    code == want,
                    format!("exit {code} (want {want})"),
                );
            }
            Err(e) => {
                r.check(&format!("tour {}", args[0]), false, format!("wait: {e}"));
            }
        }
    }
}
