//! `vfio-pm doctor`, on the unused device and while another process holds it.

use super::*;

fn doctor_check<'a>(v: &'a Value, id: &str) -> Option<&'a Value> {
    v.pointer("/checks")?
        .as_array()?
        .iter()
        .find(|c| text(c, "/id") == Some(id))
}

/// Doctor's per-platform verdict: exit code, reachability, expected idle state, `_PR3` check.
fn doctor_verdict(run: &Run, v: &Value, p: Platform) -> Vec<String> {
    let mut bad = Vec::new();
    let (code, reachable, idle, pr3) = match p {
        Platform::D3Cold => (0, true, "D3cold", "pass"),
        Platform::D3Hot => (1, false, "D3hot", "fail"),
    };
    if run.code != Some(code) {
        bad.push(format!("exit {:?} (want {code})", run.code));
    }
    if flag(v, "/d3cold_reachable") != Some(reachable) {
        bad.push(format!(
            "d3cold_reachable {:?}",
            flag(v, "/d3cold_reachable")
        ));
    }
    if text(v, "/expected_idle_state") != Some(idle) {
        bad.push(format!(
            "expected_idle_state {:?} (want {idle})",
            text(v, "/expected_idle_state")
        ));
    }
    let fpr = doctor_check(v, "firmware_power_resources");
    if fpr.and_then(|c| text(c, "/verdict")) != Some(pr3) {
        bad.push(format!("firmware_power_resources {fpr:?} (want {pr3})"));
    }
    bad
}

pub(super) fn doctor(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["doctor", &bdf, "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-doctor", false, e);
            return;
        }
    };
    let mut bad = Vec::new();
    let mut ks = String::new();
    match parse(&run.stdout) {
        Ok(v) => {
            bad.extend(doctor_verdict(&run, &v, ctx.platform));
            let k = doctor_check(&v, "kernel_support");
            ks = k
                .and_then(|c| text(c, "/detail"))
                .unwrap_or("?")
                .to_string();
            if k.and_then(|c| text(c, "/verdict")) != Some("pass") || !ks.starts_with("probed") {
                bad.push(format!("kernel_support {k:?} (want pass, probed)"));
            }
            // The interfaces the doctor reports are the ones the library finds in sysfs.
            let i = doctor_check(&v, "vfio_interfaces");
            let want = ctx
                .sysfs
                .device(ctx.device)
                .map(|d| vfio_pm::iommufd::interfaces(&ctx.sysfs, &d).to_string());
            if i.and_then(|c| text(c, "/detail")) != want.as_deref().ok() {
                bad.push(format!("vfio_interfaces {i:?} (want {want:?})"));
            }
        }
        Err(e) => bad.push(e),
    }
    r.check(
        "cli-doctor",
        bad.is_empty(),
        format!(
            "{}; kernel_support: {ks}; {}",
            run.summary(),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-doctor-back-suspended");
}

/// `doctor` while this program holds the device open in low power: it must infer kernel support
/// from the version (the group is busy) and leave the device exactly as it was.
pub(super) fn doctor_while_held(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let dev = match KernelDevice::open(&ctx.sysfs, ctx.device) {
        Ok(d) => d,
        Err(e) => {
            r.check("cli-doctor-held-open", false, e);
            return;
        }
    };
    if let Err(e) = dev.enter_low_power() {
        r.check("cli-doctor-held-entry", false, e);
        return;
    }
    let (before, took) = wait_suspended(sys, ctx.suspend_timeout);
    if !r.check(
        "cli-doctor-held-suspended",
        before.as_ref() == Ok(&suspended(p)),
        format!("{before:?} after {took:?} (held by this program, ENTRY)"),
    ) {
        let _ = dev.exit_low_power();
        return;
    }
    let active_before = sys.report().runtime_active_ms.known().copied();
    let run = run_cli(&["doctor", &bdf, "--json"]);
    let after = observe_stable(sys);
    let held_after = observe_held(sys, Duration::from_millis(300));
    let active_after = sys.report().runtime_active_ms.known().copied();
    let mut bad = Vec::new();
    match &run {
        Ok(run) => match parse(&run.stdout) {
            Ok(v) => {
                bad.extend(doctor_verdict(run, &v, p));
                let k = doctor_check(&v, "kernel_support");
                let detail = k.and_then(|c| text(c, "/detail")).unwrap_or("?");
                r.info("cli-doctor-held-kernel-support", detail);
                if k.and_then(|c| text(c, "/verdict")) != Some("pass")
                    || !detail.contains("inferred from kernel")
                    || !detail.contains("held")
                {
                    bad.push(format!("kernel_support {k:?} (want pass, inferred, held)"));
                }
            }
            Err(e) => bad.push(e),
        },
        Err(e) => bad.push(e.clone()),
    }
    r.check(
        "cli-doctor-held-infers",
        bad.is_empty(),
        format!(
            "{}; {}",
            run.as_ref().map(Run::summary).unwrap_or_default(),
            bad.join("; ")
        ),
    );
    let want = suspended(p);
    r.check(
        "cli-doctor-held-undisturbed",
        after.as_ref() == Ok(&want)
            && held_after.as_ref() == Ok(&want)
            && active_before.is_some()
            && active_before == active_after,
        format!(
            "before {before:?}, after {after:?} then {held_after:?} (want {want}); \
             runtime_active_time {active_before:?} -> {active_after:?} ms (must not grow)"
        ),
    );
    let got = dev.exit_low_power();
    r.check("cli-doctor-held-exit", got.is_ok(), format!("{got:?}"));
    drop(dev);
    back_to_unused(ctx, r, sys, "cli-doctor-held-back-suspended");
}
