//! `vfio-pm-guest` (library part): runs inside the QEMU harness's guest (see `cargo xtask qemu`) against the real
//! kernel and prints results as `VFIOPM ...` lines on the console (protocol: [`report`]).
//!
//! Usage: `vfio-pm-guest [--phases checks[,...]] [--platform d3hot|d3cold] [--device BDF]`;
//! defaults come from the kernel command line (`vfiopm.phases=`, `vfiopm.platform=`,
//! `vfiopm.device=`). Exit status 0 when every check passed.
//!
//! Adding a phase (the CLI checks, the scenario runner): write `fn(&Ctx, &mut Reporter)` in a
//! module and add one row to [`PHASES`]; the host harness collects every `VFIOPM` line
//! generically (`TRACE` lines per scenario included) and needs no change.

#![deny(missing_docs)]

pub mod checks;
pub mod cli;
pub mod context;
pub mod controller;
pub mod interfaces;
pub mod nested;
pub mod rebind;
pub mod report;
pub mod scenarios;
pub mod timing;
pub mod tour;

use context::Ctx;
use report::Reporter;

/// A phase: a name (as given in `--phases`) and the function that runs it.
pub type Phase = (&'static str, fn(&Ctx, &mut Reporter));

/// Every phase this program knows, in the order documentation lists them.
pub const PHASES: &[Phase] = &[
    ("checks", checks::run),
    ("scenarios", scenarios::run),
    ("cli", cli::run),
    ("controller", controller::run),
    ("timing", timing::run),
    ("idle-d3-rebind", rebind::run),
    ("tour", tour::run),
    ("nested", nested::run),
    ("nested-guest", nested::l2::run),
];

/// Runs the phases selected by `args` and the kernel command line, prints the results and
/// returns the exit status (0 when every check passed).
pub fn run(args: &[String]) -> i32 {
    let mut r = Reporter::new();
    match Ctx::from_env(args) {
        Ok(ctx) => {
            r.info("kernel", kernel_release());
            r.info("platform", ctx.platform);
            r.info("device", ctx.device);
            for name in &ctx.phases {
                match PHASES.iter().find(|(n, _)| n == name) {
                    Some((n, run)) => {
                        r.begin(n);
                        run(&ctx, &mut r);
                        r.end(n);
                    }
                    None => {
                        let known: Vec<&str> = PHASES.iter().map(|(n, _)| *n).collect();
                        r.check(
                            &format!("phase-{name}"),
                            false,
                            format!("unknown phase; known: {known:?}"),
                        );
                    }
                }
            }
        }
        Err(e) => {
            r.check("arguments", false, e);
        }
    }
    r.done();
    if r.failed() == 0 {
        0
    } else {
        1
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
