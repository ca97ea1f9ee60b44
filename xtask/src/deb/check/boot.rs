//! The exporter unit as systemd runs it: the root is booted with its own systemd as PID 1
//! (systemd-nspawn `--boot`), a oneshot unit runs `boot-check.sh` after multi-user.target,
//! which starts the *installed* `vfio-pm-exporter.service`, records the kernel's view of the
//! sandboxed process and scrapes it on the root's loopback, twice (as shipped, and with
//! `--all-devices` through a drop-in that leaves the hardening alone), then powers the root off.
//! This module installs that unit and judges what the script wrote.

use super::{check, Root};
use crate::console::Check;
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

/// The script, embedded so that the root gets exactly this file.
const SCRIPT: &str = include_str!("boot-check.sh");
const SCRIPT_PATH: &str = "/usr/local/lib/vfio-pm-check/boot-check.sh";
/// The test-only oneshot unit that runs the script (only ever written into the throwaway copy).
const CHECK_UNIT: &str = "vfio-pm-package-check.service";
/// The packaged unit under test.
const UNIT: &str = "vfio-pm-exporter.service";
const UNIT_PATH: &str = "/usr/lib/systemd/system/vfio-pm-exporter.service";
/// Where the script writes its results, inside the root.
const OUT: &str = "/var/lib/vfio-pm-check";
/// Boot, two exporter starts and power-off take a few seconds; this is only the hang limit.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// The highest `systemd-analyze security` exposure accepted for the exporter ("OK" or better;
/// the unit as written scores 1.5 on systemd 252): a weakened sandbox fails the test.
pub const MAX_EXPOSURE: f64 = 2.0;

/// The port of the unit's `ExecStart=... --listen ADDR:PORT`.
pub fn listen_port(unit: &str) -> Option<u16> {
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart="))?;
    let mut words = exec.split_whitespace();
    words.find(|w| *w == "--listen")?;
    words.next()?.rsplit(':').next()?.parse().ok()
}

/// The oneshot unit that runs the script and powers the root off, whatever the script did.
fn check_unit(port: u16) -> String {
    format!(
        "[Unit]\n\
         Description=vfio-pm package check (test only)\n\
         After=multi-user.target\n\
         SuccessAction=poweroff-force\n\
         FailureAction=poweroff-force\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/bin/bash {SCRIPT_PATH} {UNIT} {port}\n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn install_check_unit(root: &Root, port: u16) -> Result<()> {
    let script = root.host_path(SCRIPT_PATH);
    fs::create_dir_all(script.parent().context("script path")?)?;
    fs::write(&script, SCRIPT)?;
    let unit = root.host_path(&format!("/etc/systemd/system/{CHECK_UNIT}"));
    fs::write(&unit, check_unit(port))?;
    let wants = root.host_path("/etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        format!("/etc/systemd/system/{CHECK_UNIT}"),
        wants.join(CHECK_UNIT),
    )
    .context("enabling the check unit")?;
    Ok(())
}

/// `power_state` of every PCI device of this machine (the root sees the same sysfs).
pub fn host_power_states(sysfs: &Path) -> BTreeMap<String, Option<String>> {
    let Ok(entries) = fs::read_dir(sysfs.join("bus/pci/devices")) else {
        return BTreeMap::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| {
            let state = fs::read_to_string(e.path().join("power_state"))
                .ok()
                .map(|s| s.trim().to_string());
            (e.file_name().to_string_lossy().into_owned(), state)
        })
        .collect()
}

/// Boots the root and judges the exporter's two runs.
pub fn exporter_under_systemd(root: &Root) -> Result<Vec<Check>> {
    let unit_text = fs::read_to_string(root.host_path(UNIT_PATH))
        .with_context(|| format!("the package did not install {UNIT_PATH}"))?;
    let port = listen_port(&unit_text).context("no --listen ADDR:PORT in the unit's ExecStart")?;
    install_check_unit(root, port)?;
    let sysfs = Path::new("/sys");
    let before = host_power_states(sysfs);
    let ran = root.boot(BOOT_TIMEOUT)?;
    let after = host_power_states(sysfs);
    let out = root.host_path(OUT);
    let done = out.join("done").is_file();
    let booted = done && ran.success();
    let status = ran
        .status
        .map_or("killed at the timeout".into(), |s| s.to_string());
    let detail = if booted {
        format!("booted, ran the check unit and powered off by itself: {status}")
    } else {
        let tail: Vec<&str> = ran.stdout.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "{status}; results complete: {done}; console tail:\n{}",
            tail.join("\n")
        )
    };
    let mut checks = vec![check("boot", booted, detail)];
    if !done {
        return Ok(checks);
    }
    let read = |name: &str| fs::read_to_string(out.join(name)).unwrap_or_default();
    for round in ["default", "all-devices"] {
        checks.push(started(
            round,
            &read(&format!("{round}.start-rc")),
            &read(&format!("{round}.show")),
        ));
        checks.push(credentials(round, &read(&format!("{round}.proc-status"))));
        checks.push(mounts(round, &read(&format!("{round}.mountinfo"))));
        checks.push(scraped(
            round,
            &read(&format!("{round}.scrape-rc")),
            &read(&format!("{round}.metrics")),
        ));
    }
    checks.push(devices(&read("all-devices.metrics"), &before, &after));
    checks.push(exposure(&read("security")));
    checks.push(check(
        "exporter-journal",
        read("journal").contains("listening on http://"),
        read("journal")
            .lines()
            .filter(|l| l.contains("vfio-pm["))
            .collect::<Vec<_>>()
            .join(" | "),
    ));
    Ok(checks)
}

/// `systemctl start` succeeded and systemd reports the service running as a dynamic user.
fn started(round: &str, start_rc: &str, show: &str) -> Check {
    let props: BTreeMap<&str, &str> = show.lines().filter_map(|l| l.split_once('=')).collect();
    let ok = start_rc.trim() == "0"
        && props.get("ActiveState") == Some(&"active")
        && props.get("SubState") == Some(&"running")
        && props.get("DynamicUser") == Some(&"yes");
    let shown: Vec<String> = [
        "ActiveState",
        "SubState",
        "DynamicUser",
        "User",
        "ProtectSystem",
        "ProtectHome",
        "PrivateDevices",
    ]
    .iter()
    .map(|k| format!("{k}={}", props.get(k).unwrap_or(&"?")))
    .collect();
    check(
        &format!("exporter-{round}-started"),
        ok,
        format!("systemctl start: {}; {}", start_rc.trim(), shown.join(" ")),
    )
}

/// The kernel's view of the running exporter: an unprivileged uid, no capabilities, no new
/// privileges, a seccomp filter.
pub fn credentials(round: &str, status: &str) -> Check {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let uids = field("Uid:");
    let unprivileged = uids.len() == 4 && uids.iter().all(|u| *u == uids[0] && *u != "0");
    let no_caps =
        field("CapEff:") == ["0000000000000000"] && field("CapPrm:") == ["0000000000000000"];
    let nnp = field("NoNewPrivs:") == ["1"];
    let seccomp = field("Seccomp:") == ["2"];
    check(
        &format!("exporter-{round}-credentials"),
        unprivileged && no_caps && nnp && seccomp,
        format!(
            "uid {:?}, CapEff {:?}, NoNewPrivs {:?}, Seccomp {:?}",
            uids,
            field("CapEff:"),
            field("NoNewPrivs:"),
            field("Seccomp:")
        ),
    )
}

/// The options of the mount that is visible at `point` in a /proc/PID/mountinfo (the last
/// entry for it: later mounts cover earlier ones).
pub fn mount_options<'a>(mountinfo: &'a str, point: &str) -> Option<&'a str> {
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 5 && f[4] == point).then(|| f[5])
    })
}

/// ProtectSystem=strict and ProtectKernelTunables=yes as the process sees them: `/`, `/sys` and
/// `/proc/sys` read-only; ProtectHome=yes: `/home` and `/root` covered.
pub fn mounts(round: &str, mountinfo: &str) -> Check {
    let ro = |point: &str| {
        mount_options(mountinfo, point).is_some_and(|o| o.split(',').any(|x| x == "ro"))
    };
    let read_only = ["/", "/sys", "/proc/sys"].map(|p| (p, ro(p)));
    let covered = ["/home", "/root"].map(|p| (p, mount_options(mountinfo, p).is_some()));
    check(
        &format!("exporter-{round}-read-only-system"),
        read_only.iter().chain(&covered).all(|(_, ok)| *ok),
        format!("read-only: {read_only:?}; covered: {covered:?}"),
    )
}

/// The scrape answered 200 with this build's info and no sysfs read errors.
fn scraped(round: &str, rc: &str, metrics: &str) -> Check {
    let build = format!(
        "vfio_pm_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let ok = rc.trim() == "0"
        && metrics.starts_with("HTTP/1.")
        && metrics.lines().any(|l| l.trim() == build)
        && metrics
            .lines()
            .any(|l| l.trim() == "vfio_pm_scrape_errors_total 0");
    check(
        &format!("exporter-{round}-scraped"),
        ok,
        format!(
            "scrape rc {}; {} metric lines; first line {:?}",
            rc.trim(),
            metrics
                .lines()
                .filter(|l| l.starts_with("vfio_pm_"))
                .count(),
            metrics.lines().next().unwrap_or("")
        ),
    )
}

/// `(bdf, state)` of every `vfio_pm_device_power_state{...} 1` line.
pub fn current_states(metrics: &str) -> Vec<(String, String)> {
    let label = |l: &str, name: &str| {
        let start = l.find(&format!("{name}=\""))? + name.len() + 2;
        let len = l[start..].find('"')?;
        Some(l[start..start + len].to_string())
    };
    metrics
        .lines()
        .filter(|l| l.starts_with("vfio_pm_device_power_state{") && l.ends_with("} 1"))
        .filter_map(|l| Some((label(l, "bdf")?, label(l, "state")?)))
        .collect()
}

/// With `--all-devices`, every PCI device of the machine is exported with exactly one current
/// power state, the one sysfs shows outside the sandbox (compared where it did not change
/// during the boot).
pub fn devices(
    metrics: &str,
    before: &BTreeMap<String, Option<String>>,
    after: &BTreeMap<String, Option<String>>,
) -> Check {
    let seen = current_states(metrics);
    let mut problems = Vec::new();
    for (bdf, state) in before {
        let exported: Vec<&str> = seen
            .iter()
            .filter(|(b, _)| b == bdf)
            .map(|(_, s)| s.as_str())
            .collect();
        match (exported.as_slice(), state, after.get(bdf)) {
            ([one], Some(s), Some(Some(a))) if s == a && one != s => {
                problems.push(format!("{bdf}: exported {one}, sysfs {s}"))
            }
            ([_], _, _) => {}
            (many, _, _) => problems.push(format!("{bdf}: {} current states", many.len())),
        }
    }
    check(
        "exporter-reads-every-device",
        !before.is_empty() && problems.is_empty(),
        format!(
            "{} PCI devices on this machine, {} exported; {problems:?}",
            before.len(),
            seen.len()
        ),
    )
}

/// `systemd-analyze security`'s overall exposure for the unit, at most [`MAX_EXPOSURE`].
pub fn exposure(security: &str) -> Check {
    let level = security
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split_once(": "))
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    check(
        "exporter-exposure",
        level.is_some_and(|l| l <= MAX_EXPOSURE),
        format!("systemd-analyze security: {level:?} (at most {MAX_EXPOSURE})"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_port_comes_from_exec_start() {
        let unit = "[Service]\nExecStart=/usr/bin/vfio-pm exporter --listen 127.0.0.1:9860 --interval 1s\n";
        assert_eq!(listen_port(unit), Some(9860));
        assert_eq!(listen_port("ExecStart=/usr/bin/vfio-pm exporter\n"), None);
        assert_eq!(listen_port("ExecStart=/x --listen [::1]:19\n"), Some(19));
    }

    #[test]
    fn the_shipped_unit_names_its_port() {
        let unit = include_str!("../../../../deploy/vfio-pm-exporter.service");
        assert_eq!(listen_port(unit), Some(9860));
    }

    #[test]
    fn credentials_want_all_four_of_them() {
        let good = "Uid:\t61234\t61234\t61234\t61234\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        assert!(credentials("t", good).passed);
        for bad in [
            good.replace("61234\t61234\t61234\t61234", "0\t0\t0\t0"),
            good.replace("CapEff:\t0000000000000000", "CapEff:\t00000000fcecbfff"),
            good.replace("NoNewPrivs:\t1", "NoNewPrivs:\t0"),
            good.replace("Seccomp:\t2", "Seccomp:\t0"),
            String::new(),
        ] {
            assert!(!credentials("t", &bad).passed, "{bad}");
        }
    }

    #[test]
    fn the_last_mount_at_a_point_counts() {
        let info = "\
22 1 0:20 / / rw,relatime - ext4 /dev/vda rw
23 22 0:21 / /sys rw,nosuid - sysfs sysfs rw
30 22 0:20 / / ro,relatime - ext4 /dev/vda rw
31 30 0:21 / /sys ro,nosuid - sysfs sysfs rw
32 30 0:22 / /proc/sys ro - proc proc rw
33 30 0:23 / /home ro - tmpfs tmpfs rw
34 30 0:23 / /root ro - tmpfs tmpfs rw
";
        assert_eq!(mount_options(info, "/"), Some("ro,relatime"));
        assert!(mounts("t", info).passed);
        let writable = info.replace("31 30 0:21 / /sys ro,nosuid", "31 30 0:21 / /sys rw,nosuid");
        assert!(!mounts("t", &writable).passed);
        assert!(!mounts("t", "").passed);
    }

    #[test]
    fn devices_must_each_show_one_current_state_matching_sysfs() {
        let metrics = "\
vfio_pm_device_power_state{bdf=\"0000:00:00.0\",vendor=\"8086\",state=\"D0\"} 1
vfio_pm_device_power_state{bdf=\"0000:00:00.0\",vendor=\"8086\",state=\"D3hot\"} 0
vfio_pm_device_power_state{bdf=\"0000:00:01.0\",vendor=\"1af4\",state=\"D3hot\"} 1
";
        let host = |b: &str| -> BTreeMap<String, Option<String>> {
            [("0000:00:00.0", "D0"), ("0000:00:01.0", b)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), Some(v.to_string())))
                .collect()
        };
        assert!(devices(metrics, &host("D3hot"), &host("D3hot")).passed);
        // A state that changed during the boot is not compared.
        assert!(devices(metrics, &host("D0"), &host("D3hot")).passed);
        assert!(!devices(metrics, &host("D0"), &host("D0")).passed);
        let mut more = host("D3hot");
        more.insert("0000:00:02.0".into(), Some("D0".into()));
        assert!(
            !devices(metrics, &more, &more).passed,
            "an unexported device"
        );
        assert!(!devices(metrics, &BTreeMap::new(), &BTreeMap::new()).passed);
    }

    #[test]
    fn exposure_is_parsed_and_bounded() {
        let ok =
            "✓ UMask= ...\n\n→ Overall exposure level for vfio-pm-exporter.service: 1.5 OK :-)\n";
        assert!(exposure(ok).passed);
        assert!(!exposure(&ok.replace("1.5 OK", "4.9 OK")).passed);
        assert!(!exposure("").passed);
    }
}
