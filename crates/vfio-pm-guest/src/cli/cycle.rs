//! `vfio-pm cycle`: enter and exit low power repeatedly, both variants.

use super::*;

/// Checks one element of `cycle --json`'s `cycles`.
fn cycle_problems(c: &Value, n: u64, wakeup: bool, p: Platform) -> Vec<String> {
    let mut bad = Vec::new();
    let want_variant = if wakeup { "entry_with_wakeup" } else { "entry" };
    if num(c, "/cycle") != Some(n) {
        bad.push(format!("cycle {:?} (want {n})", c.pointer("/cycle")));
    }
    if text(c, "/variant") != Some(want_variant) {
        bad.push(format!("variant {:?}", text(c, "/variant")));
    }
    if flag(c, "/ok") != Some(true) {
        bad.push(format!(
            "ok {:?}: {:?}",
            flag(c, "/ok"),
            c.pointer("/problems")
        ));
    }
    let reached = text(c, "/reached");
    if reached != Some(p.suspended_state().as_str())
        || text(c, "/runtime_status") != Some("suspended")
    {
        bad.push(format!(
            "reached {reached:?} {:?} (want {})",
            text(c, "/runtime_status"),
            suspended(p)
        ));
    }
    let wakeups = num(c, "/wakeups");
    if wakeup && wakeups != Some(1) || !wakeup && wakeups.is_some() {
        bad.push(format!("wakeups {wakeups:?}"));
    }
    if observation(c, "/after_exit") != Some(d0_active()) {
        bad.push(format!("after_exit {:?}", c.pointer("/after_exit")));
    }
    bad
}

fn check_cycle(r: &mut Reporter, name: &str, args: &[&str], count: u64, wakeup: bool, p: Platform) {
    let run = match run_cli(args) {
        Ok(run) => run,
        Err(e) => {
            r.check(name, false, e);
            return;
        }
    };
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    match parse(&run.stdout) {
        Ok(v) => {
            if flag(&v, "/ok") != Some(true) {
                bad.push(format!("ok {:?}", flag(&v, "/ok")));
            }
            let cycles = v
                .pointer("/cycles")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if cycles.len() as u64 != count {
                bad.push(format!("{} cycles (want {count})", cycles.len()));
            }
            for (i, c) in cycles.iter().enumerate() {
                for b in cycle_problems(c, i as u64 + 1, wakeup, p) {
                    bad.push(format!("cycle {}: {b}", i + 1));
                }
                r.info(
                    &format!("{name}-{}", i + 1),
                    format!(
                        "{} {} entry {} ms wake {} ms exit {} ms",
                        text(c, "/reached").unwrap_or("?"),
                        text(c, "/runtime_status").unwrap_or("?"),
                        millis(c, "/entry_ms"),
                        millis(c, "/wake_ms"),
                        millis(c, "/exit_ms"),
                    ),
                );
            }
        }
        Err(e) => bad.push(e),
    }
    r.check(
        name,
        bad.is_empty(),
        if bad.is_empty() {
            format!(
                "{count} cycle(s) to {} and back; {}",
                suspended(p),
                run.summary()
            )
        } else {
            bad.join("; ")
        },
    );
}

pub(super) fn cycle(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    check_cycle(
        r,
        "cli-cycle",
        &["cycle", &bdf, "--json"],
        1,
        false,
        ctx.platform,
    );
    back_to_unused(ctx, r, sys, "cli-cycle-back-suspended");
}

pub(super) fn cycle_wakeup(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    check_cycle(
        r,
        "cli-cycle-wakeup",
        &["cycle", &bdf, "--wakeup", "--count", "2", "--json"],
        2,
        true,
        ctx.platform,
    );
    back_to_unused(ctx, r, sys, "cli-cycle-wakeup-back-suspended");
}
