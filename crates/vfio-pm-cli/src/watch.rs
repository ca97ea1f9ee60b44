//! `vfio-pm watch`: follow devices' power state and runtime status, print each transition, and
//! a residency summary at the end (Ctrl-C, SIGTERM, `--count` or `--for`).
//!
//! Devices may appear and disappear while watching (hot-plug, bind, unbind): each gets a line,
//! never an error exit. Without explicit addresses the set of vfio-bound devices is re-scanned at
//! every interval.

use crate::table;
use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use serde_json::{json, Value};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};
use vfio_pm::residency::{ResidencyTracker, Sample, TrackerSummary};
use vfio_pm::{DeviceReport, PciAddress, Sysfs};

/// Options of `vfio-pm watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Devices to follow; default: every vfio-bound device, re-scanned at each interval.
    pub bdf: Vec<PciAddress>,
    /// How often to sample sysfs.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print JSON, one object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after N changes (transitions, devices appearing or leaving).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// Blocks SIGINT and SIGTERM in this thread (and threads it spawns later) and returns a
/// signalfd that reports them, so loops can poll for a clean shutdown.
pub fn shutdown_signals() -> Result<SignalFd> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("cannot block SIGINT/SIGTERM")?;
    SignalFd::new(&mask).context("cannot create a signalfd")
}

/// Waits up to `timeout` for a shutdown signal; true when one arrived.
pub fn wait_for_signal(sigfd: &SignalFd, timeout: Duration) -> Result<bool> {
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(false),
        Err(e) => return Err(e).context("poll on the signalfd"),
    }
    Ok(fds[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN)))
}

/// The set of devices to follow right now, with their reports.
fn candidates(sysfs: &Sysfs, wanted: &[PciAddress]) -> Result<BTreeMap<PciAddress, DeviceReport>> {
    let mut out = BTreeMap::new();
    if wanted.is_empty() {
        for d in sysfs.devices()? {
            let r = d.report();
            if r.is_vfio() {
                out.insert(r.address, r);
            }
        }
    } else {
        for a in wanted {
            if let Ok(d) = sysfs.device(*a) {
                out.insert(*a, d.report());
            }
        }
    }
    Ok(out)
}

struct Followed {
    tracker: ResidencyTracker,
    driver: String,
}

struct Watcher<'a> {
    sysfs: &'a Sysfs,
    args: &'a WatchArgs,
    start: Instant,
    followed: BTreeMap<PciAddress, Followed>,
    /// Residency of devices that left, for the summary.
    left: Vec<(PciAddress, TrackerSummary)>,
    changes: u64,
    listing_failed: bool,
    /// Stdout is gone.
    closed: Cell<bool>,
}

fn state_text(s: Option<&Sample>) -> String {
    s.map(|s| s.observation.to_string())
        .unwrap_or_else(|| "? (power_state or runtime_status unreadable)".into())
}

impl Watcher<'_> {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Writes to stdout; a reader that went away (`watch | head`) ends the watch quietly.
    fn out(&self, args: std::fmt::Arguments) {
        let mut stdout = std::io::stdout().lock();
        if stdout.write_fmt(args).and_then(|_| stdout.flush()).is_err() {
            self.closed.set(true);
        }
    }

    fn emit(&self, bdf: Option<PciAddress>, event: &str, text: String, mut fields: Value) {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if self.args.json {
            // Common fields first, then the event's own.
            let mut obj = serde_json::Map::new();
            obj.insert("time".into(), json!(time));
            obj.insert("t_s".into(), json!(secs(self.now())));
            if let Some(b) = bdf {
                obj.insert("bdf".into(), json!(b));
            }
            obj.insert("event".into(), json!(event));
            if let Value::Object(own) = fields.take() {
                obj.extend(own);
            }
            self.out(format_args!("{}\n", Value::Object(obj)));
        } else {
            let who = bdf.map(|b| b.to_string()).unwrap_or_else(|| "-".into());
            self.out(format_args!("{time}  {who}  {text}\n"));
        }
    }

    fn tick(&mut self, first: bool) -> Result<()> {
        let now = self.now();
        let Some(found) = self.list(first)? else {
            return Ok(());
        };
        self.forget_gone(&found, now);
        self.follow_present(&found, now, first);
        Ok(())
    }

    /// The devices to follow now; `None` (reported once) while listing fails after the first
    /// look. A bad root on the first look is the user's error.
    fn list(&mut self, first: bool) -> Result<Option<BTreeMap<PciAddress, DeviceReport>>> {
        Ok(match candidates(self.sysfs, &self.args.bdf) {
            Ok(found) => {
                if self.listing_failed {
                    self.listing_failed = false;
                    self.emit(
                        None,
                        "recovered",
                        "device listing works again".into(),
                        json!({}),
                    );
                }
                Some(found)
            }
            // A bad root on the first look is the user's error; later it is a passing fault.
            Err(e) if first => return Err(e),
            Err(e) => {
                if !self.listing_failed {
                    self.listing_failed = true;
                    let msg = format!("{e:#}");
                    self.emit(
                        None,
                        "error",
                        format!("cannot list devices: {msg}"),
                        json!({ "error": msg }),
                    );
                }
                None
            }
        })
    }

    /// Devices that left: report and keep their residency summary.
    fn forget_gone(&mut self, found: &BTreeMap<PciAddress, DeviceReport>, now: Duration) {
        let gone: Vec<PciAddress> = self
            .followed
            .keys()
            .filter(|a| !found.contains_key(a))
            .copied()
            .collect();
        for a in gone {
            let Some(f) = self.followed.remove(&a) else {
                continue;
            };
            let (reason, driver) = match self.sysfs.device(a) {
                Err(_) => ("removed".to_string(), None),
                Ok(d) => {
                    let drv = d.driver().display();
                    (
                        format!("unbound from {} (driver now {drv})", f.driver),
                        Some(drv),
                    )
                }
            };
            let last = f.tracker.current(now);
            let (state, for_) = (state_text(last.map(|l| l.0)), last.map(|l| l.1));
            let for_text = for_
                .map(|d| format!(" after {} in {state}", table::human(d)))
                .unwrap_or_default();
            self.emit(
                Some(a),
                "gone",
                format!("gone: {reason}{for_text}"),
                json!({
                    "reason": if driver.is_some() { "unbound" } else { "removed" },
                    "driver": driver,
                    "last_state": last.map(|l| &l.0.observation),
                    "previous_for_s": for_.map(secs),
                }),
            );
            self.changes += 1;
            self.left.push((a, f.tracker.summary()));
        }
    }

    /// Devices present: new ones, and transitions of the known ones.
    fn follow_present(
        &mut self,
        found: &BTreeMap<PciAddress, DeviceReport>,
        now: Duration,
        first: bool,
    ) {
        for (a, r) in found {
            let sample = Sample::from_report(r);
            let driver = r.driver.display();
            match self.followed.get_mut(a) {
                None => {
                    let mut tracker = ResidencyTracker::new();
                    if let Some(s) = &sample {
                        tracker.observe(now, s);
                    }
                    let (event, verb) = if first {
                        ("present", "present")
                    } else {
                        ("appeared", "appeared")
                    };
                    self.emit(
                        Some(*a),
                        event,
                        format!("{verb}: {} ({driver})", state_text(sample.as_ref())),
                        json!({
                            "state": sample.as_ref().map(|s| &s.observation),
                            "driver": driver,
                        }),
                    );
                    if !first {
                        self.changes += 1;
                    }
                    self.followed.insert(*a, Followed { tracker, driver });
                }
                Some(f) => {
                    f.driver = driver;
                    let Some(s) = sample else { continue };
                    let Some(t) = f.tracker.observe(now, &s) else {
                        continue;
                    };
                    let wake = if t.wake { "  [wake]" } else { "" };
                    let text = format!(
                        "{} -> {}  after {}{wake}",
                        t.from,
                        t.to,
                        table::human(t.previous_for)
                    );
                    let fields = json!({
                        "from": t.from,
                        "to": t.to,
                        "previous_for_s": secs(t.previous_for),
                        "wake": t.wake,
                    });
                    self.emit(Some(*a), "transition", text, fields);
                    self.changes += 1;
                }
            }
        }
    }

    fn summary(&mut self) {
        let now = self.now();
        let mut all: Vec<(PciAddress, TrackerSummary, bool)> = self
            .followed
            .iter()
            // The last state held until the stop.
            .map(|(a, f)| (*a, f.tracker.summary_at(now), true))
            .collect();
        all.extend(self.left.drain(..).map(|(a, s)| (a, s, false)));
        all.sort_by_key(|(a, _, _)| *a);
        if self.args.json {
            for (a, s, present) in &all {
                let mut v = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
                if let Some(o) = v.as_object_mut() {
                    o.insert("present".into(), json!(present));
                }
                self.emit(Some(*a), "summary", String::new(), v);
            }
            return;
        }
        self.out(format_args!(
            "\nresidency while watching ({}; D0 from the kernel's active time, suspended time \
             attributed to the D3 state sampled; wakes include those proven from the counters):\n",
            table::human(now)
        ));
        let pct = |d: Duration, w: Duration| {
            if w.is_zero() {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * d.as_secs_f64() / w.as_secs_f64())
            }
        };
        let rows: Vec<Vec<String>> = all
            .iter()
            .map(|(a, s, present)| {
                let o = &s.observed;
                let total = o.total();
                vec![
                    a.to_string(),
                    table::human(s.watched),
                    format!("{} {}", table::human(o.d0), pct(o.d0, total)),
                    format!("{} {}", table::human(o.d3hot), pct(o.d3hot, total)),
                    format!("{} {}", table::human(o.d3cold), pct(o.d3cold, total)),
                    s.transitions.to_string(),
                    if s.missed_wakes > 0 {
                        format!("{} ({} between samples)", s.wakes, s.missed_wakes)
                    } else {
                        s.wakes.to_string()
                    },
                    match (&s.last, present) {
                        (Some(l), true) => l.to_string(),
                        (Some(l), false) => format!("gone (was {l})"),
                        (None, true) => "?".into(),
                        (None, false) => "gone".into(),
                    },
                ]
            })
            .collect();
        self.out(format_args!(
            "{}",
            table::render(
                &[
                    "DEVICE",
                    "WATCHED",
                    "D0",
                    "D3HOT",
                    "D3COLD",
                    "TRANSITIONS",
                    "WAKES",
                    "LAST"
                ],
                &rows
            )
        ));
        for (a, s, _) in &all {
            if s.counter_jumps > 0 {
                self.out(format_args!(
                    "{a}: the kernel counters grew faster than the clock {} time(s) (a reset or a bad read): that time was attributed to the state sampled\n",
                    s.counter_jumps
                ));
            }
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

pub fn run(sysfs: &Sysfs, args: WatchArgs) -> Result<ExitCode> {
    if args.interval.is_zero() {
        anyhow::bail!("--interval must be more than zero");
    }
    let sigfd = shutdown_signals()?;
    let mut w = Watcher {
        sysfs,
        args: &args,
        start: Instant::now(),
        followed: BTreeMap::new(),
        left: Vec::new(),
        changes: 0,
        listing_failed: false,
        closed: Cell::new(false),
    };
    w.tick(true)?;
    if w.followed.is_empty() {
        let what = if args.bdf.is_empty() {
            "no vfio-bound devices yet; watching for new ones".to_string()
        } else {
            "none of the devices is present yet; watching for them".to_string()
        };
        w.emit(None, "idle", what, json!({}));
    }
    loop {
        if w.closed.get() || crate::out::stdout_closed() {
            return Ok(ExitCode::SUCCESS);
        }
        if args.count.is_some_and(|n| w.changes >= n) {
            break;
        }
        let elapsed = w.now();
        if args.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        let wait = args
            .duration
            .map(|d| d.saturating_sub(elapsed).min(args.interval))
            .unwrap_or(args.interval);
        if wait_for_signal(&sigfd, wait)? {
            break;
        }
        w.tick(false)?;
    }
    w.summary();
    Ok(ExitCode::SUCCESS)
}
