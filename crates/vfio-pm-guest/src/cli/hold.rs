//! `vfio-pm hold`: low power held until a signal, both variants, SIGINT early and late.

use super::*;

/// What a finished `hold` printed, judged: entered first, exited last (in D0 active).
fn hold_shape(
    run: &Run,
    events: &[Value],
    garbage: &[String],
    variant: &str,
    p: Platform,
) -> Vec<String> {
    let mut bad = Vec::new();
    if run.code != Some(0) {
        bad.push(run.summary());
    }
    if !garbage.is_empty() {
        bad.push(format!("non-JSON lines {garbage:?}"));
    }
    match events.first() {
        Some(e) if event(e) == "entered" && text(e, "/variant") == Some(variant) => {}
        other => bad.push(format!("first line {other:?}, want entered ({variant})")),
    }
    if !events.iter().any(is_suspended_state(p)) {
        bad.push(format!("no state line with {}", suspended(p)));
    }
    match events.last() {
        Some(e) if event(e) == "exited" && observation(e, "/state") == Some(d0_active()) => {}
        other => bad.push(format!("last line {other:?}, want exited in D0 active")),
    }
    bad
}

fn hold_events(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| match event(e) {
            "state" => format!(
                "state {}",
                observation(e, "/state").map_or("?".into(), |o| o.to_string())
            ),
            "wake" => format!(
                "wake x{} rearmed {}",
                num(e, "/count").unwrap_or(0),
                flag(e, "/rearmed").unwrap_or(false)
            ),
            "exited" => format!("exited wakes {}", num(e, "/wakes").unwrap_or(0)),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn hold(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let run = Streaming::spawn(&["hold", &bdf, "--for", "2s", "--json"]);
    let (run, events, garbage) = match run {
        Ok(s) => s.finish(RUN_LIMIT),
        Err(e) => {
            r.check("cli-hold", false, e);
            return;
        }
    };
    let mut bad = hold_shape(&run, &events, &garbage, "entry", ctx.platform);
    if events.iter().any(|e| event(e) == "wake") {
        bad.push("a wake line without --wakeup".into());
    }
    if run.took < Duration::from_secs(2) {
        bad.push(format!("ended after {:.2?}, before --for 2s", run.took));
    }
    r.check(
        "cli-hold",
        bad.is_empty(),
        format!("[{}] {}", hold_events(&events), bad.join("; ")),
    );
    back_to_unused(ctx, r, sys, "cli-hold-back-suspended");
}

/// `hold --wakeup` while this program reads the device's config space through sysfs: that wakes
/// a D3cold device (the CLI sees the eventfd and re-arms) but not a D3hot one. A second process
/// cannot open the group that `hold` holds, so sysfs is the only host-side access available.
pub(super) fn hold_wakeup(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let mut s = match Streaming::spawn(&["hold", &bdf, "--wakeup", "--for", "4s", "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-wakeup", false, e);
            return;
        }
    };
    let mut bad = Vec::new();
    if s.wait_for(Duration::from_millis(3500), is_suspended_state(p)) {
        bad.extend(config_read_while_held(r, sys, &mut s, p));
    } else {
        bad.push(format!(
            "no suspended state line within 3.5 s: {:?}",
            s.seen
        ));
    }
    let (run, events, garbage) = s.finish(RUN_LIMIT);
    bad.extend(hold_shape(&run, &events, &garbage, "entry_with_wakeup", p));
    bad.extend(wake_line_problems(&events, p));
    r.check(
        "cli-hold-wakeup-config-read",
        bad.is_empty(),
        format!("[{}] {}", hold_events(&events), bad.join("; ")),
    );
    back_to_unused(ctx, r, sys, "cli-hold-wakeup-back-suspended");
}

/// A host config read while `hold --wakeup` holds the suspended device: on d3hot it must not
/// resume the device; on d3cold it wakes it, `hold` prints a wake line and re-arms.
fn config_read_while_held(
    r: &mut Reporter,
    sys: &SysfsDevice,
    s: &mut Streaming,
    p: Platform,
) -> Vec<String> {
    let mut bad = Vec::new();
    match sys.read_config() {
        Ok(c) if c.len() >= 2 && c[..2] == [0x86, 0x80] => {}
        Ok(c) => bad.push(format!(
            "sysfs config read gave {:02x?}",
            &c[..c.len().min(4)]
        )),
        Err(e) => bad.push(format!("sysfs config read: {e}")),
    }
    match p {
        Platform::D3Hot => {
            // The read must not have resumed the device.
            let held = observe_held(sys, Duration::from_millis(300));
            if held.as_ref() != Ok(&suspended(p)) {
                bad.push(format!("after the config read: {held:?}"));
            }
        }
        Platform::D3Cold => {
            // hold samples every 100 ms, so its state lines may miss the short D0 between
            // the wake and the re-arm: sysfs shows the re-arm while hold still runs.
            if !s.wait_for(Duration::from_secs(2), |v| event(v) == "wake") {
                bad.push("no wake line within 2 s of the sysfs config read".into());
            }
            let (o, took) = wait_suspended(sys, Duration::from_secs(2));
            let running = matches!(s.child.try_wait(), Ok(None));
            r.info(
                "cli-hold-wakeup-rearmed",
                format!("{o:?} {took:?} after the wake line, hold running {running}"),
            );
            if o.as_ref() != Ok(&suspended(p)) || !running {
                bad.push(format!(
                    "not suspended again while hold runs: {o:?} after {took:?}, running {running}"
                ));
            }
        }
    }
    bad
}

/// What the wake lines and the exit line of `hold --wakeup` say against the platform: d3cold
/// wakes (each re-armed, counted in the exit line), d3hot none.
fn wake_line_problems(events: &[Value], p: Platform) -> Vec<String> {
    let mut bad = Vec::new();
    let wakes: Vec<&Value> = events.iter().filter(|e| event(e) == "wake").collect();
    let total: u64 = wakes.iter().filter_map(|w| num(w, "/count")).sum();
    let exited_wakes = events.last().and_then(|e| num(e, "/wakes"));
    match p {
        Platform::D3Cold => {
            if wakes.is_empty() {
                bad.push("no wake line after the sysfs config read".into());
            }
            if !wakes.iter().all(|w| flag(w, "/rearmed") == Some(true)) {
                bad.push("a wake that was not re-armed".into());
            }
            if exited_wakes != Some(total) {
                bad.push(format!("exited wakes {exited_wakes:?}, wake lines {total}"));
            }
        }
        Platform::D3Hot => {
            if !wakes.is_empty() || exited_wakes != Some(0) {
                bad.push(format!(
                    "D3hot woke on a sysfs config read: {} wake lines, exited wakes {exited_wakes:?}",
                    wakes.len()
                ));
            }
        }
    }
    bad
}

pub(super) fn hold_sigint(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let p = ctx.platform;
    let bdf = ctx.device.to_string();
    let mut s = match Streaming::spawn(&["hold", &bdf, "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-sigint", false, e);
            return;
        }
    };
    let settled = s.wait_for(Duration::from_secs(3), is_suspended_state(p));
    let mut bad = Vec::new();
    if !settled {
        bad.push(format!("no suspended state line within 3 s: {:?}", s.seen));
    }
    let wait = Duration::from_millis(1500).saturating_sub(s.start.elapsed());
    std::thread::sleep(wait);
    let pid = s.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
        bad.push(format!("kill SIGINT: {}", std::io::Error::last_os_error()));
    }
    let (run, events, garbage) = s.finish(Duration::from_secs(10));
    bad.extend(hold_shape(&run, &events, &garbage, "entry", p));
    r.check(
        "cli-hold-sigint-clean-exit",
        bad.is_empty(),
        format!(
            "[{}] {} {}",
            hold_events(&events),
            run.summary(),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-hold-sigint-back-suspended");
}

/// True once `pid` blocks SIGINT (`SigBlk` in `/proc/PID/status` has bit 1 set).
fn blocks_sigint(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigBlk:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|m| m & (1 << (libc::SIGINT - 1)) != 0)
}

/// SIGINT as soon as `hold` blocks it, i.e. while it is still opening the device: the signal must
/// stay pending and end the hold cleanly (entered, exited, exit 0), not kill the process.
pub(super) fn hold_early_sigint(ctx: &Ctx, r: &mut Reporter, sys: &SysfsDevice) {
    let bdf = ctx.device.to_string();
    let s = match Streaming::spawn(&["hold", &bdf, "--json"]) {
        Ok(s) => s,
        Err(e) => {
            r.check("cli-hold-early-sigint", false, e);
            return;
        }
    };
    let pid = s.child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !blocks_sigint(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(200));
    }
    let blocked_after = s.start.elapsed();
    let mut bad = Vec::new();
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    if unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) } != 0 {
        bad.push(format!("kill SIGINT: {}", std::io::Error::last_os_error()));
    }
    let (run, events, garbage) = s.finish(Duration::from_secs(10));
    if run.code != Some(0) || !garbage.is_empty() {
        bad.push(format!("{} {garbage:?}", run.summary()));
    }
    if events.first().map(event) != Some("entered") {
        bad.push(format!("first line {:?}", events.first()));
    }
    match events.last() {
        Some(e) if event(e) == "exited" && observation(e, "/state") == Some(d0_active()) => {}
        other => bad.push(format!("last line {other:?}, want exited in D0 active")),
    }
    r.check(
        "cli-hold-early-sigint-clean-exit",
        bad.is_empty(),
        format!(
            "SIGINT {blocked_after:.2?} after start (signals blocked); [{}] {}",
            hold_events(&events),
            bad.join("; ")
        ),
    );
    back_to_unused(ctx, r, sys, "cli-hold-early-sigint-back-suspended");
}
