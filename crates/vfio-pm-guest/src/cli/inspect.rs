//! Read-only commands: the firmware behind the unused state, `probe`, `status`, and bad input.

use super::*;

fn read_firmware(sys: &SysfsDevice, rel: &str) -> String {
    std::fs::read_to_string(sys.dir().join("firmware_node").join(rel))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("<{rel}: {e}>"))
}

/// The unused device's state and where it comes from: `_PR3` power resources that the kernel
/// turned off (d3cold), or none at all (d3hot).
pub(super) fn firmware(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    if !back_to_unused(ctx, r, sys, "cli-unused-suspended") {
        return;
    }
    let report = sys.report();
    let pr3 = report.power_resources_d3hot.known().cloned();
    match ctx.platform {
        Platform::D3Hot => {
            r.check(
                "cli-firmware-no-pr3",
                pr3.as_ref().map_or(true, |v| v.is_empty()),
                format!("power_resources_D3hot: {pr3:?}"),
            );
        }
        Platform::D3Cold => {
            r.check(
                "cli-firmware-pr3",
                pr3.as_ref().is_some_and(|v| !v.is_empty()),
                format!(
                    "power_resources_D3hot: {pr3:?}; power_resources_D0: {:?}",
                    report.power_resources_d0.known()
                ),
            );
            let real = read_firmware(sys, "real_power_state");
            r.check(
                "cli-firmware-real-power-state-d3cold",
                real == "D3cold",
                format!(
                    "firmware_node/real_power_state {real:?} (the resource's _STA says off), \
                     firmware_node/power_state {:?}",
                    read_firmware(sys, "power_state")
                ),
            );
            // The trap window: the host reads the trap port's length at both marks.
            r.info("trap-mark", "begin");
            let held = observe_held(sys, TRAP_WINDOW);
            let real_after = read_firmware(sys, "real_power_state");
            r.info("trap-mark", "end");
            let want = suspended(ctx.platform);
            r.check(
                "cli-trap-window-d3cold",
                held.as_ref() == Ok(&want) && real_after == "D3cold",
                format!(
                    "{held:?} for {TRAP_WINDOW:?} (want {want}), real_power_state {real_after:?}"
                ),
            );
            // Let the console line reach the host before the next power-on.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

pub(super) fn probe(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["probe", &bdf, "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-probe", false, e);
            return;
        }
    };
    let detail = format!("{}; {}", run.stdout.trim(), run.summary());
    let ok = run.code == Some(0)
        && parse(&run.stdout).is_ok_and(|v| {
            text(&v, "/address") == Some(&bdf)
                && ["/entry", "/entry_with_wakeup", "/exit"]
                    .iter()
                    .all(|p| flag(&v, p) == Some(true))
        });
    r.check("cli-probe-all-supported", ok, detail);
    back_to_unused(ctx, r, sys, "cli-probe-back-suspended");
}

/// `probe --iommufd`: where the kernel offers cdev + iommufd it probes like `probe`; where it
/// does not (Debian's kernels), it fails with status 2 and names the missing kernel option.
pub(super) fn probe_iommufd(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let offered = vfio_pm::iommufd::interfaces(&ctx.sysfs, sys).cdev_iommufd();
    let run = match run_cli(&["probe", &bdf, "--iommufd", "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-probe-iommufd", false, e);
            return;
        }
    };
    let ok = if offered {
        run.code == Some(0)
            && parse(&run.stdout).is_ok_and(|v| flag(&v, "/entry_with_wakeup") == Some(true))
    } else {
        run.code == Some(2) && run.stderr.contains("CONFIG_VFIO_DEVICE_CDEV")
    };
    r.check(
        "cli-probe-iommufd",
        ok,
        format!("cdev+iommufd offered: {offered}; {}", run.summary()),
    );
    back_to_unused(ctx, r, sys, "cli-probe-iommufd-back-suspended");
}

pub(super) fn status(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = match run_cli(&["status", "--json"]) {
        Ok(run) => run,
        Err(e) => {
            r.check("cli-status", false, e);
            return;
        }
    };
    let now = observe_stable(sys);
    let driver = sys.driver().display();
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    let entry = parse(&run.stdout).map(|v| {
        v.as_array()
            .and_then(|a| a.iter().find(|e| text(e, "/address") == Some(&bdf)))
            .cloned()
    });
    match (&entry, &now) {
        (Ok(Some(e)), Ok(o)) => {
            let got = observation(e, "");
            if text(e, "/driver") != Some("vfio-pci") || driver != "vfio-pci" {
                bad.push(format!("driver {:?}, sysfs {driver}", text(e, "/driver")));
            }
            if got.as_ref() != Some(o) {
                bad.push(format!("status says {got:?}, sysfs {o}"));
            }
            if *o != suspended(ctx.platform) {
                bad.push(format!("sysfs {o}, want {}", suspended(ctx.platform)));
            }
        }
        (Ok(None), _) => bad.push(format!("no entry for {bdf}")),
        (Err(e), _) => bad.push(e.clone()),
        (_, Err(e)) => bad.push(format!("observe: {e}")),
    }
    r.check(
        "cli-status-agrees-with-sysfs",
        bad.is_empty(),
        format!(
            "{bdf}: {:?} {:?}; {}",
            entry
                .as_ref()
                .ok()
                .and_then(|e| e.as_ref())
                .and_then(|e| text(e, "/driver")),
            now,
            bad.join("; ")
        ),
    );
}

pub(super) fn bad_input(r: &mut Reporter) {
    for (name, bdf, want) in [
        (
            "cli-probe-missing-device",
            MISSING,
            format!("no PCI device {MISSING}"),
        ),
        (
            "cli-probe-not-vfio",
            HOST_BRIDGE,
            "not vfio-pci".to_string(),
        ),
    ] {
        match run_cli(&["probe", bdf, "--json"]) {
            Ok(run) => {
                r.check(
                    name,
                    run.code == Some(2)
                        && run.stderr.contains(&want)
                        && run.stdout.trim().is_empty(),
                    format!("{} (want exit 2 and {want:?})", run.summary()),
                );
            }
            Err(e) => {
                r.check(name, false, e);
            }
        }
    }
}
