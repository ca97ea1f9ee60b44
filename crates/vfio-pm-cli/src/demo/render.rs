//! Printing the recorded timeline and summary, as text or JSON lines.

use super::*;

/// A timeline timestamp in seconds, to 100 µs (the toggle burst is 200 µs apart).
fn t(ns: u64) -> String {
    format!("{:.4}s", ns as f64 / 1e9)
}

/// A duration as the other commands print it (`3.2s`, `120ms`).
fn human(ns: u64) -> String {
    crate::table::human(std::time::Duration::from_nanos(ns))
}

/// Terminal width the text output fits.
const WIDTH: usize = 80;

/// Hanging indent of a wrapped timeline line: under the WHAT column.
const TIMELINE_INDENT: usize = 24;

/// Wraps every line longer than [`WIDTH`] at spaces, keeping the spacing of what stays on the
/// first line. Continuation lines are indented under the WHAT column for timeline lines, else
/// four more than the line's own indent.
pub(super) fn fit(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let timeline = line.split_whitespace().next().is_some_and(|w| {
            w.strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok())
        });
        let own = line.len() - line.trim_start().len();
        let indent = " ".repeat(if timeline { TIMELINE_INDENT } else { own + 4 });
        let mut rest = line;
        let mut prefix = "";
        loop {
            let room = WIDTH - prefix.len();
            if rest.chars().count() <= room {
                out.push_str(prefix);
                out.push_str(rest);
                out.push('\n');
                break;
            }
            // The last space that fits, past the line's own indent; else the first after it
            // (a word longer than the room stays whole).
            let spaces = || {
                rest.char_indices()
                    .filter(|&(i, c)| c == ' ' && !rest[..i].trim().is_empty())
                    .map(|(i, _)| i)
            };
            let Some(cut) = spaces()
                .take_while(|&i| i <= room)
                .last()
                .or_else(|| spaces().next())
            else {
                out.push_str(prefix);
                out.push_str(rest);
                out.push('\n');
                break;
            };
            out.push_str(prefix);
            out.push_str(rest[..cut].trim_end());
            out.push('\n');
            rest = rest[cut..].trim_start();
            prefix = &indent;
        }
    }
    out
}

fn call_name(call: HostCall) -> String {
    match call {
        HostCall::Entry => "LOW_POWER_ENTRY".into(),
        HostCall::EntryWithWakeup => "LOW_POWER_ENTRY_WITH_WAKEUP".into(),
        HostCall::Exit => "LOW_POWER_EXIT".into(),
        HostCall::D3ColdAllowed(b) => format!("d3cold_allowed = {}", u8::from(b)),
        HostCall::PmcsrD3Hot => "PMCSR D3hot (fallback)".into(),
        HostCall::PmcsrD0 => "PMCSR D0 (fallback)".into(),
    }
}

fn route_text(r: &WakeRoute) -> String {
    match r {
        WakeRoute::AcpiGpe { gpe } => format!("GPE {gpe:#04x} (SCI)"),
        WakeRoute::Ged { event } => format!("GED event {event}"),
        WakeRoute::PciPme { requester_id } => format!("root port PME from {requester_id:#06x}"),
    }
}

fn outcome_text(o: &RequestOutcome) -> String {
    match o {
        RequestOutcome::Entered(v) => format!("entered ({})", name(v)),
        RequestOutcome::Exited => "exited".into(),
        RequestOutcome::AlreadyExited => "kernel already exited on the wake: no ioctl".into(),
        RequestOutcome::Deferred { until_ns } => format!("deferred until {}", t(*until_ns)),
        RequestOutcome::Coalesced => "coalesced".into(),
        RequestOutcome::Unchanged => "unchanged".into(),
        RequestOutcome::Recovered => "recovered".into(),
    }
}

fn event_text(ev: &Event) -> Option<(&'static str, String)> {
    Some(match ev {
        Event::DeviceAdded { address, variant } => (
            "ctl",
            format!("added host {address}, variant {}", name(variant)),
        ),
        Event::DeviceRemoved => ("ctl", "removed".into()),
        Event::Guest { .. } => return None, // the guest line says it
        Event::GuestRejected { action, reason } => (
            "ctl",
            format!("guest {} rejected: {}", name(action), name(reason)),
        ),
        Event::HostCall { call, result, .. } => {
            let r = match result {
                CallResult::Ok => "ok".to_string(),
                CallResult::Err { errno, desc } => format!("error {errno} ({desc})"),
            };
            ("host", format!("{} -> {r}", call_name(*call)))
        }
        Event::Power { from, to } => ("power", format!("{} -> {}", name(from), name(to))),
        Event::HostWake { epoch, count } => (
            "wake",
            format!("host wake: kernel resumed the device, eventfd = {count} (arming #{epoch})"),
        ),
        Event::PmeDelivered { route, delivery } => (
            "pme",
            format!(
                "PME delivered via {} ({}), PME_Status set",
                route_text(route),
                name(delivery)
            ),
        ),
        Event::PmeFailed { route } => ("pme", format!("PME FAILED via {}", route_text(route))),
        Event::PmeSuppressed { reason, count, .. } => (
            "pme",
            format!("PME suppressed ({}, eventfd = {count})", name(reason)),
        ),
        Event::SpuriousWake => ("wake", "spurious (eventfd empty)".into()),
        Event::Deferred { until_ns } => (
            "ctl",
            format!("_OFF deferred until {} (anti-thrash)", t(*until_ns)),
        ),
        Event::DeferredRun => ("ctl", "deferred _OFF runs now".into()),
        Event::Coalesced => ("ctl", "_ON cancelled the deferred _OFF (coalesced)".into()),
        Event::Fallback { reason, .. } => ("ctl", format!("D3hot fallback ({})", name(reason))),
        Event::DeviceFailed { call, errno } => (
            "ctl",
            format!("DEVICE FAILED: {} errno {errno}", call_name(*call)),
        ),
        Event::DeviceRecovered => ("ctl", "device recovered".into()),
        Event::VmReset => ("ctl", "VM reset: out of low power, guest sees it on".into()),
        Event::AdoptedLowPower => ("ctl", "low power taken over, no host call".into()),
    })
}

fn trap_text(step: &GuestStep) -> String {
    let bytes: Vec<String> = step.trap.data.iter().map(|b| format!("{b:02x}")).collect();
    let space = match step.trap.space {
        TrapSpace::Io => "io",
        TrapSpace::Mmio => "mmio",
    };
    let why = match step.reason {
        Reason::Idle => "idle",
        Reason::Use => "needed",
        Reason::Wake => "Notify(dev, 2)",
    };
    let pme = if step.pme_status_seen {
        ", PME_Status seen+cleared"
    } else {
        ""
    };
    format!(
        "{} ({why}{pme}): trap {space} {:#x} <- [{}] => {}",
        step.action,
        step.trap.address,
        bytes.join(" "),
        outcome_text(&step.outcome)
    )
}

fn dev_name(out: &Output, dev: usize) -> &str {
    out.specs.get(dev).map_or("-", |s| s.name.as_str())
}

/// `writeln!` into the output buffer (writing to a `String` cannot fail).
macro_rules! w {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($a:tt)*) => {{
        let _ = writeln!($o, $($a)*);
    }};
}

pub(super) fn print_text(o: &mut String, out: &Output, devices: u8) {
    let s = &out.summary;
    w!(
        o,
        "vfio-pm demo: simulated host (D3cold platform, kernel 6.1) + simulated Linux guest, \
         {devices} devices, seed {}, virtual clock",
        s.seed
    );
    w!(o, "{}", s.ssdt);
    w!(
        o,
        "  (see it: vfio-pm demo --print-config > demo.toml && vfio-pm aml demo.toml --dsl)"
    );
    w!(o);
    w!(
        o,
        "{:<6} {:<13} {:<13} {:<10} {:<7} VARIANT",
        "DEVICE",
        "GUEST BDF",
        "HOST BDF",
        "ID",
        "CLASS",
    );
    w!(o, "{:<6} ACPI NODE, WAKE: what it is", "");
    for (sp, v) in out.specs.iter().zip(&out.variants) {
        w!(
            o,
            "{:<6} {:<13} {:<13} {:04x}:{:04x}  {:06x}  {v}",
            sp.name,
            sp.guest.to_string(),
            sp.host.to_string(),
            sp.vendor,
            sp.device,
            sp.class,
        );
        w!(
            o,
            "{:<6} {}, GPE {:#04x}: {}",
            "",
            sp.acpi_path,
            sp.gpe,
            sp.what
        );
    }
    w!(o);
    w!(o, "{:>8}  {:<6} {:<6} WHAT", "TIME", "DEVICE", "KIND");
    for (quiet, r) in &out.records {
        if *quiet {
            continue;
        }
        match r {
            Rec::Phase(text) => w!(o, "\n== {text}"),
            Rec::Note(text) => w!(o, "   {text}"),
            Rec::Guest { at_ns, dev, step } => w!(
                o,
                "{:>8}  {:<6} {:<6} {}",
                t(*at_ns),
                dev_name(out, *dev),
                "guest",
                trap_text(step)
            ),
            Rec::Ctl { dev, ev } => {
                if let Some((kind, text)) = event_text(&ev.event) {
                    w!(
                        o,
                        "{:>8}  {:<6} {:<6} {text}",
                        t(ev.at_ns),
                        dev_name(out, *dev),
                        kind
                    );
                }
            }
            Rec::HostAccess { at_ns, dev } => w!(
                o,
                "{:>8}  {:<6} {:<6} lspci: config read through sysfs",
                t(*at_ns),
                dev_name(out, *dev),
                "host"
            ),
            Rec::HostState {
                at_ns,
                dev,
                from,
                to,
            } => w!(
                o,
                "{:>8}  {:<6} {:<6} power_state {} -> {}",
                t(*at_ns),
                dev_name(out, *dev),
                "state",
                from.as_str(),
                to.as_str()
            ),
        }
    }
    w!(o);
    w!(
        o,
        "Residency and counters (virtual time {}; engaged after reset: {})",
        human(s.total_ns),
        s.engaged_after_reset
    );
    w!(
        o,
        "{:<6} {:<13} {:<18} {:>7} {:>7} {:>7}",
        "DEVICE",
        "HOST BDF",
        "VARIANT",
        "D0",
        "D3HOT",
        "D3COLD"
    );
    for d in &s.devices {
        w!(
            o,
            "{:<6} {:<13} {:<18} {:>7} {:>7} {:>7}",
            d.device,
            d.host_bdf,
            d.variant,
            human(d.d0_ns),
            human(d.d3hot_ns),
            human(d.d3cold_ns),
        );
    }
    w!(o);
    w!(
        o,
        "{:<6} {:>7} {:>5} {:>5} {:>4} {:>10} {:>8} {:>9}",
        "DEVICE",
        "ENTRIES",
        "EXITS",
        "WAKES",
        "PMES",
        "SUPPRESSED",
        "DEFERRED",
        "COALESCED"
    );
    for d in &s.devices {
        w!(
            o,
            "{:<6} {:>7} {:>5} {:>5} {:>4} {:>10} {:>8} {:>9}",
            d.device,
            d.entries,
            d.exits,
            d.host_wakes,
            d.pme_delivered,
            d.pme_suppressed,
            d.deferred,
            d.coalesced
        );
    }
}

pub(super) fn print_json(o: &mut String, out: &Output) -> Result<()> {
    for (_, r) in &out.records {
        let v = match r {
            Rec::Phase(text) => json!({"type": "phase", "text": text}),
            Rec::Note(text) => json!({"type": "note", "text": text}),
            Rec::Guest { at_ns, dev, step } => json!({
                "type": "guest", "at_ns": at_ns, "device": dev_name(out, *dev), "step": step,
            }),
            Rec::Ctl { dev, ev } => {
                let mut v = serde_json::to_value(ev)?;
                if let Value::Object(m) = &mut v {
                    m.insert("type".into(), json!("event"));
                    m.insert("device".into(), json!(dev_name(out, *dev)));
                }
                v
            }
            Rec::HostAccess { at_ns, dev } => json!({
                "type": "host_access", "at_ns": at_ns, "device": dev_name(out, *dev),
                "access": "config_read",
            }),
            Rec::HostState {
                at_ns,
                dev,
                from,
                to,
            } => json!({
                "type": "host_state", "at_ns": at_ns, "device": dev_name(out, *dev),
                "from": from.as_str(), "to": to.as_str(),
            }),
        };
        w!(o, "{}", serde_json::to_string(&v)?);
    }
    let mut v = serde_json::to_value(&out.summary)?;
    if let Value::Object(m) = &mut v {
        m.insert("type".into(), json!("summary"));
    }
    w!(o, "{}", serde_json::to_string(&v)?);
    Ok(())
}
