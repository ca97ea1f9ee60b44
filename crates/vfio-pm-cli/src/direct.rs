//! `probe`, `cycle` and `hold`: diagnostics that open a device no VMM holds.

use anyhow::{Context, Result};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use serde::Serialize;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vfio_pm::iommufd::Interface;
use vfio_pm::{
    ConformanceDevice, EventFd, KernelDevice, LowPower, PciAddress, PowerDevice, PowerObservation,
    PowerState, RuntimeStatus, Support, Sysfs, CONFIG_REGION,
};

/// Opens `bdf` through its group, or through its cdev and an iommufd (`--iommufd`).
fn open(sysfs: &Sysfs, bdf: PciAddress, via: Interface) -> Result<KernelDevice> {
    match via {
        Interface::Group => KernelDevice::open(sysfs, bdf).map_err(anyhow::Error::from),
        Interface::Iommufd => KernelDevice::open_iommufd(sysfs, bdf).map_err(anyhow::Error::from),
    }
    .with_context(|| format!("cannot open {bdf}"))
}

fn wake_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).context("cannot create an eventfd")
}

/// Reads and resets an eventfd counter; 0 when nothing was signalled (the eventfd is
/// non-blocking). Any other read error is an error, not a zero count.
fn take_count(efd: &EventFd) -> Result<u64> {
    match efd.read() {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e).context("reading the wakeup eventfd"),
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Polls until `done(observation)` or `timeout`; returns the last observation and the time taken.
fn wait_for(
    dev: &KernelDevice,
    timeout: Duration,
    done: impl Fn(&PowerObservation) -> bool,
) -> Result<(PowerObservation, Duration, bool)> {
    let start = Instant::now();
    loop {
        let o = dev
            .observe()
            .context("cannot read the device's power state")?;
        if done(&o) {
            return Ok((o, start.elapsed(), true));
        }
        if start.elapsed() >= timeout {
            return Ok((o, start.elapsed(), false));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Serialize)]
struct ProbeOut {
    address: PciAddress,
    #[serde(flatten)]
    support: Support,
}

pub fn probe(sysfs: &Sysfs, bdf: PciAddress, via: Interface, json: bool) -> Result<ExitCode> {
    let dev = open(sysfs, bdf, via)?;
    let support = dev.probe_low_power()?;
    if json {
        crate::outln!(
            "{}",
            serde_json::to_string(&ProbeOut {
                address: bdf,
                support
            })?
        )?;
    } else {
        let yn = |b| if b { "yes" } else { "no" };
        crate::outln!("{bdf}:")?;
        crate::outln!("  LOW_POWER_ENTRY              {}", yn(support.entry))?;
        crate::outln!(
            "  LOW_POWER_ENTRY_WITH_WAKEUP  {}",
            yn(support.entry_with_wakeup)
        )?;
        crate::outln!("  LOW_POWER_EXIT               {}", yn(support.exit))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct CycleOut {
    cycle: u32,
    variant: &'static str,
    reached: PowerState,
    runtime_status: RuntimeStatus,
    entry_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    wake_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wakeups: Option<u64>,
    exit_ms: f64,
    after_exit: PowerObservation,
    ok: bool,
    problems: Vec<String>,
}

fn suspended(o: &PowerObservation) -> bool {
    o.runtime_status == RuntimeStatus::Suspended
}

fn active_d0(o: &PowerObservation) -> bool {
    o.runtime_status == RuntimeStatus::Active && o.power_state == PowerState::D0
}

fn one_cycle(dev: &KernelDevice, n: u32, wakeup: bool, timeout: Duration) -> Result<CycleOut> {
    let efd = wake_eventfd()?;
    let mut problems = Vec::new();
    let t0 = Instant::now();
    if wakeup {
        dev.enter_low_power_with_wakeup(&efd)?;
    } else {
        dev.enter_low_power()?;
    }
    let (reached, _, ok) = wait_for(dev, timeout, suspended)?;
    let entry = t0.elapsed();
    if !ok {
        problems.push(format!(
            "not suspended after {}: {reached}",
            crate::table::human(timeout)
        ));
    } else if !reached.power_state.is_d3() {
        problems.push(format!("suspended but in {}", reached.power_state));
    }
    let (mut wake_ms, mut wakeups) = (None, None);
    if wakeup {
        // A host-side access: a read of the config region wakes the device from D3hot and D3cold.
        let t1 = Instant::now();
        let mut buf = [0u8; 4];
        dev.region_read(CONFIG_REGION, 0, &mut buf)
            .context("config region read")?;
        let (woke, took, ok) = wait_for(dev, timeout, active_d0)?;
        wake_ms = Some(ms(t1.elapsed().max(took)));
        let fired = take_count(&efd)?;
        wakeups = Some(fired);
        if !ok {
            problems.push(format!("host access did not wake the device: {woke}"));
        }
        if reached.runtime_status == RuntimeStatus::Suspended && fired != 1 {
            problems.push(format!(
                "wakeup eventfd fired {fired} times, expected exactly once"
            ));
        }
    }
    let t2 = Instant::now();
    dev.exit_low_power()?;
    let (after_exit, _, ok) = wait_for(dev, timeout, active_d0)?;
    let exit = t2.elapsed();
    if !ok {
        problems.push(format!("not back in D0 after exit: {after_exit}"));
    }
    if wakeup {
        let late = take_count(&efd)?;
        if late != 0 {
            problems.push(format!("eventfd fired {late} more time(s) after the wake"));
        }
    }
    Ok(CycleOut {
        cycle: n,
        variant: if wakeup { "entry_with_wakeup" } else { "entry" },
        reached: reached.power_state,
        runtime_status: reached.runtime_status,
        entry_ms: ms(entry),
        wake_ms,
        wakeups,
        exit_ms: ms(exit),
        after_exit,
        ok: problems.is_empty(),
        problems,
    })
}

pub fn cycle(
    sysfs: &Sysfs,
    bdf: PciAddress,
    via: Interface,
    wakeup: bool,
    count: u32,
    timeout: Duration,
    json: bool,
) -> Result<ExitCode> {
    let dev = open(sysfs, bdf, via)?;
    let support = dev.probe_low_power()?;
    let needed = if wakeup {
        support.entry_with_wakeup
    } else {
        support.entry
    };
    anyhow::ensure!(
        needed && support.exit,
        "{bdf}: the kernel does not offer {} (probe: {support:?}); Linux 6.1+ with vfio-pci is needed",
        if wakeup { "LOW_POWER_ENTRY_WITH_WAKEUP" } else { "LOW_POWER_ENTRY" }
    );
    let mut all_ok = true;
    let mut cycles = Vec::new();
    for n in 1..=count {
        let c = one_cycle(&dev, n, wakeup, timeout)?;
        all_ok &= c.ok;
        if !json {
            let wake = match (c.wake_ms, c.wakeups) {
                (Some(w), Some(k)) => format!(", woken by host access in {w:.1} ms (eventfd x{k})"),
                _ => String::new(),
            };
            crate::outln!(
                "cycle {}: {} {} in {:.1} ms{wake}, exit to {} in {:.1} ms{}",
                c.cycle,
                c.reached,
                c.runtime_status,
                c.entry_ms,
                c.after_exit,
                c.exit_ms,
                if c.ok { "" } else { "  FAILED" }
            )?;
            for p in &c.problems {
                crate::outln!("  problem: {p}")?;
            }
        }
        cycles.push(c);
    }
    if json {
        crate::outln!(
            "{}",
            serde_json::json!({"address": bdf, "support": support, "cycles": cycles, "ok": all_ok})
        )?;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum HoldEvent {
    Entered {
        t_ms: f64,
        variant: &'static str,
    },
    State {
        t_ms: f64,
        state: PowerObservation,
        previous_for_ms: f64,
    },
    Wake {
        t_ms: f64,
        count: u64,
        rearmed: bool,
    },
    Exited {
        t_ms: f64,
        state: PowerObservation,
        wakes: u64,
        suspended_ms: f64,
    },
}

/// Prints one event; an error when stdout is gone (which ends the hold).
fn emit(json: bool, e: &HoldEvent) -> Result<()> {
    if json {
        return crate::outln!("{}", serde_json::to_string(e)?);
    }
    match e {
        HoldEvent::Entered { t_ms, variant } => {
            crate::outln!("{:>9.1}s  entered low power ({variant})", t_ms / 1e3)
        }
        HoldEvent::State {
            t_ms,
            state,
            previous_for_ms,
        } if *previous_for_ms == 0.0 => crate::outln!("{:>9.1}s  {state}", t_ms / 1e3),
        HoldEvent::State {
            t_ms,
            state,
            previous_for_ms,
        } => crate::outln!(
            "{:>9.1}s  {state}  (previous state lasted {})",
            t_ms / 1e3,
            crate::table::human(Duration::from_micros((*previous_for_ms * 1e3) as u64))
        ),
        HoldEvent::Wake {
            t_ms,
            count,
            rearmed,
        } => crate::outln!(
            "{:>9.1}s  WAKE: host-side access woke the device (eventfd x{count}){}",
            t_ms / 1e3,
            if *rearmed { ", re-armed" } else { "" }
        ),
        HoldEvent::Exited {
            t_ms,
            state,
            wakes,
            suspended_ms,
        } => crate::outln!(
            "{:>9.1}s  exited low power: {state}; {wakes} wake(s), suspended {}",
            t_ms / 1e3,
            crate::table::human(Duration::from_micros((*suspended_ms * 1e3) as u64))
        ),
    }
}

/// The last observed state, how long it has lasted, and the suspended total.
struct StateLog {
    last: PowerObservation,
    since: Instant,
    suspended_for: Duration,
}

impl StateLog {
    fn start(first: PowerObservation, json: bool, t_ms: f64) -> Result<Self> {
        emit(
            json,
            &HoldEvent::State {
                t_ms,
                state: first.clone(),
                previous_for_ms: 0.0,
            },
        )?;
        Ok(Self {
            last: first,
            since: Instant::now(),
            suspended_for: Duration::ZERO,
        })
    }

    /// Prints a line when `now` differs from the last state.
    fn update(&mut self, now: PowerObservation, json: bool, t_ms: f64) -> Result<()> {
        if now == self.last {
            return Ok(());
        }
        if self.last.runtime_status == RuntimeStatus::Suspended {
            self.suspended_for += self.since.elapsed();
        }
        emit(
            json,
            &HoldEvent::State {
                t_ms,
                state: now.clone(),
                previous_for_ms: ms(self.since.elapsed()),
            },
        )?;
        self.last = now;
        self.since = Instant::now();
        Ok(())
    }

    /// Total time seen suspended, including the current stretch.
    fn finish(self) -> Duration {
        let current = if self.last.runtime_status == RuntimeStatus::Suspended {
            self.since.elapsed()
        } else {
            Duration::ZERO
        };
        self.suspended_for + current
    }
}

pub fn hold(
    sysfs: &Sysfs,
    bdf: PciAddress,
    via: Interface,
    wakeup: bool,
    duration: Option<Duration>,
    interval: Duration,
    json: bool,
) -> Result<ExitCode> {
    // Ctrl-C and SIGTERM arrive on a signalfd polled beside the wake eventfd, so the loop always
    // reaches the clean exit below. Blocked before opening: a Ctrl-C during the open (about
    // 100 ms) stays pending and ends the hold cleanly instead of killing the process.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("cannot block SIGINT/SIGTERM")?;
    let sigfd = SignalFd::new(&mask).context("cannot create a signalfd")?;
    let dev = open(sysfs, bdf, via)?;
    let efd = wake_eventfd()?;
    let start = Instant::now();
    let t = || ms(start.elapsed());
    let arm = || -> Result<()> {
        if wakeup {
            dev.enter_low_power_with_wakeup(&efd)?;
        } else {
            dev.enter_low_power()?;
        }
        Ok(())
    };
    arm()?;
    let variant = if wakeup { "entry_with_wakeup" } else { "entry" };
    emit(json, &HoldEvent::Entered { t_ms: t(), variant })?;
    let mut log = StateLog::start(dev.observe()?, json, t())?;
    let mut wakes = 0u64;
    loop {
        if duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let wait = duration
            .map(|d| d.saturating_sub(start.elapsed()).min(interval))
            .unwrap_or(interval);
        let timeout = PollTimeout::from(wait.as_millis().min(u16::MAX as u128) as u16);
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, timeout).or_else(|e| {
            if e == nix::errno::Errno::EINTR {
                Ok(0)
            } else {
                Err(e)
            }
        })?;
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            break;
        }
        // The wake eventfd is non-blocking: a zero counter reads as nothing to report.
        let count = take_count(&efd)?;
        if count > 0 {
            wakes += count;
            // Show the wake's D0 before re-arming: sampling alone would miss it.
            log.update(dev.observe()?, json, t())?;
            // The kernel left low power when it signalled (one-shot); ask again.
            let rearmed = arm().is_ok();
            emit(
                json,
                &HoldEvent::Wake {
                    t_ms: t(),
                    count,
                    rearmed,
                },
            )?;
        }
        log.update(dev.observe()?, json, t())?;
    }
    let suspended_for = log.finish();
    dev.exit_low_power()?;
    // EXIT on a suspended, armed device signals the eventfd itself: that is our own doing.
    take_count(&efd)?;
    let (state, _, _) = wait_for(&dev, Duration::from_secs(2), active_d0)?;
    emit(
        json,
        &HoldEvent::Exited {
            t_ms: t(),
            state,
            wakes,
            suspended_ms: ms(suspended_for),
        },
    )?;
    Ok(ExitCode::SUCCESS)
}
