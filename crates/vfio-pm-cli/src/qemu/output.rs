//! What the agent prints: a line per guest request, host call and host transition (or a JSON
//! object per line), and a residency summary per device on exit.

use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};
use vfio_pm::{PciAddress, PowerState};
use vfio_pm_vmm::controller::{CallResult, DeviceStats, Event, HostCall, HostPower, TimedEvent};
use vfio_pm_vmm::PowerAction;

use super::timed::CallTime;

/// Lines about guest requests (and malformed guest words) printed per second at most: a guest
/// decides how often it asks, so what it makes the agent print is bounded; host calls and
/// transitions are bounded by the anti-thrash residency and always printed.
pub const GUEST_LINES_PER_SEC: u32 = 20;

/// Prints to stdout; a closed pipe ends printing quietly, never the agent.
pub struct Printer {
    json: bool,
    start: Instant,
    hosts: Vec<PciAddress>,
    broken: bool,
    guest_lines: GuestLineBudget,
}

/// The per-second budget of guest-driven lines.
struct GuestLineBudget {
    window: Instant,
    used: u32,
    dropped: u64,
}

/// True for the events a guest can cause at will (each of its requests).
fn guest_driven(event: &Event) -> bool {
    matches!(
        event,
        Event::Guest { .. }
            | Event::GuestRejected { .. }
            | Event::Coalesced
            | Event::Deferred { .. }
            | Event::DeferredRun
    )
}

fn call_name(call: HostCall) -> String {
    match call {
        HostCall::Entry => "LOW_POWER_ENTRY".into(),
        HostCall::EntryWithWakeup => "LOW_POWER_ENTRY_WITH_WAKEUP".into(),
        HostCall::Exit => "LOW_POWER_EXIT".into(),
        HostCall::D3ColdAllowed(b) => format!("d3cold_allowed = {}", u8::from(b)),
        HostCall::PmcsrD3Hot => "PMCSR D3hot".into(),
        HostCall::PmcsrD0 => "PMCSR D0".into(),
    }
}

fn power_name(p: HostPower) -> &'static str {
    match p {
        HostPower::Active => "active",
        HostPower::LowPower => "low power",
        HostPower::Armed => "low power (wakeup armed)",
        HostPower::WokenByHost => "woken by the host",
        HostPower::D3HotFallback => "D3hot (fallback)",
        HostPower::Failed => "FAILED",
    }
}

/// The human form of an event, `None` for the ones only JSON shows.
fn describe(event: &Event) -> Option<String> {
    Some(match event {
        Event::Guest { action } => match action {
            PowerAction::PowerOn => "guest _ON".into(),
            PowerAction::PowerOff => "guest _OFF".into(),
        },
        Event::HostCall { call, result, .. } => match result {
            CallResult::Ok => format!("{} ok", call_name(*call)),
            CallResult::Err { desc, errno } => {
                format!("{} FAILED: {desc} (errno {errno})", call_name(*call))
            }
        },
        Event::Power { from, to } => format!("host: {} -> {}", power_name(*from), power_name(*to)),
        Event::Deferred { until_ns } => {
            format!(
                "entry postponed to {:.3}s (anti-thrash)",
                *until_ns as f64 / 1e9
            )
        }
        Event::DeferredRun => "postponed entry runs".into(),
        Event::Coalesced => "_OFF/_ON coalesced: the host saw neither".into(),
        Event::DeviceFailed { call, errno } => {
            format!("device FAILED in {} (errno {errno})", call_name(*call))
        }
        Event::DeviceRecovered => "device recovered".into(),
        Event::GuestRejected { action, reason } => format!("guest {action:?} rejected: {reason:?}"),
        Event::AdoptedLowPower => "host: low power taken over (engaged before this agent)".into(),
        _ => return None,
    })
}

impl Printer {
    /// `hosts[slot]` names each managed device.
    pub fn new(json: bool, start: Instant, hosts: Vec<PciAddress>) -> Self {
        Self {
            json,
            start,
            hosts,
            broken: false,
            guest_lines: GuestLineBudget {
                window: start,
                used: 0,
                dropped: 0,
            },
        }
    }

    /// Whether one more guest-driven line fits this second's budget; when a new second starts,
    /// says how many the last ones dropped.
    pub fn guest_line_allowed(&mut self) -> bool {
        let now = Instant::now();
        if now.duration_since(self.guest_lines.window) >= Duration::from_secs(1) {
            self.guest_lines.window = now;
            self.guest_lines.used = 0;
            self.flush_dropped();
        }
        if self.guest_lines.used < GUEST_LINES_PER_SEC {
            self.guest_lines.used += 1;
            true
        } else {
            self.guest_lines.dropped += 1;
            false
        }
    }

    /// Says how many guest-driven lines were not printed (rate limit), if any.
    pub fn flush_dropped(&mut self) {
        let n = std::mem::take(&mut self.guest_lines.dropped);
        if n > 0 {
            self.note(
                None,
                &format!(
                    "{n} more guest request lines not printed (at most {GUEST_LINES_PER_SEC} a second)"
                ),
            );
        }
    }

    /// How long one low-power SET took (the ioctl alone).
    pub fn call_time(&mut self, call: &CallTime) {
        let ms = call.took.as_secs_f64() * 1e3;
        if self.json {
            let line = json!({
                "t": self.elapsed(),
                "device": call.device.to_string(),
                "call": call.feature.name(),
                "took_ms": ms,
            })
            .to_string();
            self.emit(&line);
        } else {
            self.note(
                Some(call.device),
                &format!("{} took {ms:.2} ms", call.feature.name()),
            );
        }
    }

    fn emit(&mut self, line: &str) {
        if self.broken {
            return;
        }
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            self.broken = true;
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// A line about the agent itself (or about one device: `device`).
    pub fn note(&mut self, device: Option<PciAddress>, text: &str) {
        let line = if self.json {
            json!({"t": self.elapsed(), "device": device.map(|d| d.to_string()), "note": text})
                .to_string()
        } else {
            let who = device.map(|d| format!("{d}  ")).unwrap_or_default();
            format!("{:8.1}s  {who}{text}", self.elapsed())
        };
        self.emit(&line);
    }

    /// The controller's events.
    pub fn events(&mut self, events: &[TimedEvent]) {
        for ev in events {
            if guest_driven(&ev.event) && !self.guest_line_allowed() {
                continue;
            }
            let host = self.hosts.get(ev.slot.index() as usize).copied();
            if self.json {
                let line = json!({
                    "t": self.elapsed(),
                    "device": host.map(|h| h.to_string()),
                    "slot": ev.slot,
                    "event": ev.event,
                })
                .to_string();
                self.emit(&line);
            } else if let Some(text) = describe(&ev.event) {
                self.note(host, &text);
            }
        }
    }

    /// What the kernel reports for a device some time after an entry or exit.
    pub fn kernel_state(&mut self, host: PciAddress, state: &str) {
        if self.json {
            let line = json!({"t": self.elapsed(), "device": host.to_string(), "kernel": state})
                .to_string();
            self.emit(&line);
        } else {
            self.note(Some(host), &format!("kernel: {state}"));
        }
    }

    /// The residency summary of one device.
    pub fn summary(&mut self, host: PciAddress, s: &Summary) {
        let total = s.wall.as_secs_f64().max(1e-9);
        let low = Duration::from_nanos(s.stats.residency(HostPower::LowPower)).as_secs_f64();
        if self.json {
            let line = json!({
                "device": host.to_string(),
                "summary": {
                    "wall_s": total,
                    "low_power_s": low,
                    "kernel_suspended_s": s.kernel_suspended.map(|d| d.as_secs_f64()),
                    "d3cold_seen": s.d3cold_seen,
                    "entries": s.stats.entries,
                    "exits": s.stats.exits,
                    "coalesced": s.stats.coalesced,
                    "errors": s.stats.errors,
                }
            })
            .to_string();
            self.emit(&line);
        } else {
            let kernel = s
                .kernel_suspended
                .map(|d| format!(", kernel runtime-suspended {:.1}s", d.as_secs_f64()))
                .unwrap_or_default();
            let cold = if s.d3cold_seen {
                ", seen in D3cold"
            } else {
                ""
            };
            let line = format!(
                "{host}: low power {low:.1}s of {total:.1}s ({:.0}%){kernel}{cold}; {} entries, {} exits, {} coalesced, {} errors",
                100.0 * low / total,
                s.stats.entries,
                s.stats.exits,
                s.stats.coalesced,
                s.stats.errors
            );
            self.emit(&line);
        }
    }
}

/// One device's residency over the agent's life.
pub struct Summary {
    /// The agent's run time with the device under control.
    pub wall: Duration,
    /// The controller's counters and residency.
    pub stats: DeviceStats,
    /// The kernel's `power/runtime_suspended_time` delta, if readable.
    pub kernel_suspended: Option<Duration>,
    /// Whether a kernel check ever read `power_state` D3cold.
    pub d3cold_seen: bool,
}

/// True for D3cold.
pub fn is_d3cold(p: &PowerState) -> bool {
    matches!(p, PowerState::D3Cold)
}
