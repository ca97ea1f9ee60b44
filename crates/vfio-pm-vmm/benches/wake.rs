//! Wake path latency: host wake signalled → guest notification readable, per wake, with 1,
//! 64, 1024 and 4096 devices on one controller thread, wakes landing on random devices.
//!
//! Paths, all measured in one interleaved loop per device count (sample i of each path, in a
//! rotating order, before sample i + 1 of any), so every path sees the same mix of machine
//! states and the ratios compare like with like:
//!
//! - floor: a bare eventfd ping-pong between two threads (the bench thread writes, a forwarder
//!   blocked in `read` writes back, the bench thread blocked in `read` wakes): the least any
//!   cross-thread forwarder costs.
//! - controller, direct signal: `Controller::run` on its own thread over every device, its
//!   notifier writing the irqfd; the bench thread writes a random armed device's wakeup eventfd,
//!   as the kernel's `eventfd_signal` does, and blocks on the irqfd. The goal (p99 at most 2x the
//!   floor at 4096 devices) is about this path.
//! - sim floor: the simulated host's wake as the signal (`host_config_read` on a suspended,
//!   armed device of a second simulated host) and a bare forwarder to the irqfd.
//! - controller, sim signal: the same controller, woken by `host_config_read`; its figure holds
//!   the same simulated host work as the sim floor.
//!
//! Between samples (untimed) the guest's `_ON`/`_OFF` re-arms the woken device.
//!
//! Each table is one placement of the two threads (`support::affinity::Regime`): both on one
//! CPU, where a wake is a local context switch and the software cost shows (the goal is judged
//! here), and on two CPUs, where a wake is an IPI, through the hypervisor in a VM whose waiting
//! vCPU halted (informational: it measures the host).
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench wake`.

mod support;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;
use support::affinity::{self, Regime};
use support::{addr, iters, ns_since, ratio, us, Rng, Summary};
use vfio_pm::{LowPower, PowerDevice};
use vfio_pm_sim::{DeviceConfig, Platform, SimDevice, SimHost};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, ControllerError, ControllerHandle, DeviceSettings, Event,
    EventSink, HostPower, MonotonicClock, TimedEvent,
};
use vfio_pm_vmm::pme::{Delivery, GuestNotifier, NotifyError, WakeRoute};
use vfio_pm_vmm::{GuestRequest, Slot};
use vmm_sys_util::eventfd::EventFd;

/// The device counts of the tables.
const DEVICE_COUNTS: [usize; 4] = [1, 64, 1024, 4096];

/// The VMM's notifier: writes the guest's interrupt eventfd.
struct IrqfdNotifier(EventFd);

impl GuestNotifier for IrqfdNotifier {
    fn notify(&self, _route: WakeRoute) -> Result<Delivery, NotifyError> {
        self.0.write(1).map_err(NotifyError::Irqfd)?;
        Ok(Delivery::Interrupt)
    }
}

/// Tells the bench thread that a device is armed again (untimed re-arm).
struct ArmedSignal(EventFd);

impl EventSink for ArmedSignal {
    fn record(&mut self, ev: &TimedEvent) {
        if let Event::Power {
            to: HostPower::Armed,
            ..
        } = ev.event
        {
            let _ = self.0.write(1);
        }
    }
}

fn blocking_eventfd() -> EventFd {
    EventFd::new(0).unwrap()
}

/// A bare thread, pinned as the regime's woken side, that writes `output` each time `input` is
/// read: the least any cross-thread forwarder costs.
struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Forwarder {
    fn start(input: &EventFd, output: &EventFd, regime: Regime) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (i, o, s) = (
            input.try_clone().unwrap(),
            output.try_clone().unwrap(),
            stop.clone(),
        );
        let thread = thread::spawn(move || {
            regime.pin_worker();
            loop {
                i.read().unwrap();
                if s.load(Ordering::Acquire) {
                    return;
                }
                o.write(1).unwrap();
            }
        });
        Self { stop, thread }
    }

    /// Stops the thread (`input` is written once more to wake it).
    fn stop(self, input: &EventFd) {
        self.stop.store(true, Ordering::Release);
        input.write(1).unwrap();
        self.thread.join().unwrap();
    }
}

/// The floor: two threads, two blocking eventfds.
struct PingPong {
    ping: EventFd,
    pong: EventFd,
    echo: Forwarder,
}

impl PingPong {
    fn start(regime: Regime) -> Self {
        let (ping, pong) = (blocking_eventfd(), blocking_eventfd());
        let echo = Forwarder::start(&ping, &pong, regime);
        Self { ping, pong, echo }
    }

    fn sample(&self) -> u64 {
        let t = Instant::now();
        self.ping.write(1).unwrap();
        self.pong.read().unwrap();
        ns_since(t)
    }

    fn stop(self) {
        self.echo.stop(&self.ping);
    }
}

fn sim_host(n: usize) -> SimHost {
    let mut b = SimHost::builder().platform(Platform::D3cold);
    for i in 0..n {
        b = b.device(DeviceConfig::new(addr(i)));
    }
    b.build().unwrap()
}

/// The sim floor: `n` simulated devices, each armed with one plain eventfd before its sample,
/// and a bare forwarder from that eventfd to the "irqfd".
struct SimFloor {
    host: SimHost,
    devs: Vec<SimDevice>,
    wake: EventFd,
    irq: EventFd,
    forwarder: Forwarder,
}

impl SimFloor {
    fn start(n: usize, regime: Regime) -> Self {
        let host = sim_host(n);
        let devs = (0..n).map(|i| host.open(addr(i)).unwrap()).collect();
        let (wake, irq) = (blocking_eventfd(), blocking_eventfd());
        let forwarder = Forwarder::start(&wake, &irq, regime);
        Self {
            host,
            devs,
            wake,
            irq,
            forwarder,
        }
    }

    /// (signal → irq readable, the host call alone) for device `d`.
    fn sample(&self, d: usize) -> (u64, u64) {
        self.devs[d]
            .enter_low_power_with_wakeup(&self.wake)
            .unwrap();
        self.host.run_pending();
        self.host.take_events();
        let t = Instant::now();
        self.host.host_config_read(addr(d)).unwrap();
        let call = ns_since(t);
        self.irq.read().unwrap();
        (ns_since(t), call)
    }

    fn stop(self) {
        self.forwarder.stop(&self.wake);
    }
}

/// A controller over `n` devices of a simulated host, every one armed by a guest `_OFF`,
/// running on its own thread pinned as the regime's woken side. Its notifier writes `irq`, and
/// `armed` counts re-armings.
///
/// One per signal kind: for the sim signal the simulated host runs its pending suspends after
/// each re-arm (its config read resumes only a suspended device); for the direct signal it must
/// not, or the simulated kernel would hold a suspended device that the direct write never
/// resumed, and its next ioctl's resume would signal again.
struct RunningController {
    host: SimHost,
    sim_suspends: bool,
    handle: ControllerHandle,
    slots: Vec<Slot>,
    wake_fds: Vec<RawFd>,
    irq: EventFd,
    armed: EventFd,
    runner: thread::JoinHandle<Result<Controller, ControllerError>>,
}

impl RunningController {
    fn start(n: usize, regime: Regime, sim_suspends: bool) -> Self {
        let host = sim_host(n);
        let irq = blocking_eventfd();
        let armed = blocking_eventfd();
        let mut ctl = Controller::new(
            ControllerConfig::default(),
            Box::new(IrqfdNotifier(irq.try_clone().unwrap())),
            Box::new(MonotonicClock::new()),
            Box::new(ArmedSignal(armed.try_clone().unwrap())),
        )
        .unwrap();
        let mut settings =
            DeviceSettings::new(0x10de, None, 0x030000, Some(WakeRoute::Ged { event: 0 }));
        settings.min_residency = std::time::Duration::ZERO;
        let slots: Vec<Slot> = (0..n)
            .map(|i| {
                let dev: Box<dyn PowerDevice> = Box::new(host.open(addr(i)).unwrap());
                ctl.add_device(dev, settings).unwrap()
            })
            .collect();
        for &s in &slots {
            ctl.power_off(s).unwrap();
        }
        assert_eq!(armed.read().unwrap(), n as u64);
        if sim_suspends {
            host.run_pending();
        }
        let wake_fds = slots.iter().map(|&s| ctl.wake_fd(s).unwrap()).collect();
        let handle = ctl.handle();
        let runner = thread::spawn(move || {
            regime.pin_worker();
            let mut ctl = ctl;
            ctl.run().map(|_| ctl)
        });
        Self {
            host,
            sim_suspends,
            handle,
            slots,
            wake_fds,
            irq,
            armed,
            runner,
        }
    }

    /// Device `i` woken by a direct write of its wakeup eventfd.
    fn sample_direct(&self, i: usize) -> u64 {
        let t = Instant::now();
        signal(self.wake_fds[i]);
        assert_eq!(self.irq.read().unwrap(), 1, "one notification per wake");
        let took = ns_since(t);
        self.rearm(i);
        took
    }

    /// Device `i` woken by the simulated host (a config read): (total, the host call alone).
    fn sample_sim(&self, i: usize) -> (u64, u64) {
        let t = Instant::now();
        self.host.host_config_read(addr(i)).unwrap();
        let call = ns_since(t);
        assert_eq!(self.irq.read().unwrap(), 1, "one notification per wake");
        let took = ns_since(t);
        self.rearm(i);
        (took, call)
    }

    /// Untimed: the guest resumes device `i` and idles it again.
    fn rearm(&self, i: usize) {
        self.handle
            .submit(GuestRequest::power_on(self.slots[i]))
            .unwrap();
        self.handle
            .submit(GuestRequest::power_off(self.slots[i]))
            .unwrap();
        self.armed.read().unwrap();
        if self.sim_suspends {
            self.host.run_pending();
        }
        self.host.take_events();
    }

    /// Stops the controller and checks it delivered exactly `wakes` notifications.
    fn stop(self, wakes: usize) {
        self.handle.stop().unwrap();
        let ctl = self.runner.join().unwrap().unwrap();
        let delivered: u64 = self
            .slots
            .iter()
            .map(|&s| ctl.stats(s).unwrap().pme_delivered)
            .sum();
        assert_eq!(delivered, wakes as u64, "one notification per wake");
    }
}

/// Writes 1 to the eventfd `raw` (a device's wakeup eventfd, owned by the controller).
fn signal(raw: RawFd) {
    use std::io::Write;
    // SAFETY: `raw` is the wakeup eventfd of a device of the controller that the runner thread
    // owns until after the last sample; the borrow ends within this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    let mut f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    f.write_all(&1u64.to_ne_bytes()).unwrap();
}

/// One device count's figures, every path sampled in the same interleaved loop.
struct Row {
    n: usize,
    floor: Summary,
    direct: Summary,
    sim_floor: Summary,
    sim_floor_call: Summary,
    sim_signal: Summary,
    sim_signal_call: Summary,
}

/// Measures every path over `n` devices in `regime`, `samples` each, interleaved.
fn measure(n: usize, samples: usize, regime: Regime, rng: &mut Rng) -> Row {
    let floor = PingPong::start(regime);
    let sim = SimFloor::start(n, regime);
    let direct = RunningController::start(n, regime, false);
    let ctl = RunningController::start(n, regime, true);
    // The samples, in `Row`'s field order: floor, direct, sim floor (total, host call),
    // sim signal (total, host call).
    let [mut t_floor, mut t_direct, mut t_sim, mut c_sim, mut t_ctl, mut c_ctl]: [Vec<u64>; 6] =
        std::array::from_fn(|_| Vec::with_capacity(samples));
    for i in 0..samples {
        // A rotating order, so no path always follows the same one.
        for k in 0..4 {
            match (i + k) % 4 {
                0 => t_floor.push(floor.sample()),
                1 => t_direct.push(direct.sample_direct(rng.below(n))),
                2 => {
                    let (t, c) = sim.sample(rng.below(n));
                    t_sim.push(t);
                    c_sim.push(c);
                }
                _ => {
                    let (t, c) = ctl.sample_sim(rng.below(n));
                    t_ctl.push(t);
                    c_ctl.push(c);
                }
            }
        }
    }
    floor.stop();
    sim.stop();
    direct.stop(samples);
    ctl.stop(samples);
    Row {
        n,
        floor: Summary::of(t_floor),
        direct: Summary::of(t_direct),
        sim_floor: Summary::of(t_sim),
        sim_floor_call: Summary::of(c_sim),
        sim_signal: Summary::of(t_ctl),
        sim_signal_call: Summary::of(c_ctl),
    }
}

/// "p50 / p99 / max" in µs.
fn cell(s: Summary) -> String {
    format!("{} / {} / {}", us(s.p50), us(s.p99), us(s.max))
}

/// "p50 ratio · p99 ratio".
fn ratios(s: Summary, floor: Summary) -> String {
    format!(
        "{:.2} · {:.2}",
        ratio(s.p50, floor.p50),
        ratio(s.p99, floor.p99)
    )
}

fn print_table(regime: Regime, rows: &[Row]) {
    println!("\n{}", regime.describe());
    println!();
    println!("| devices | floor: ping-pong µs | controller, direct signal µs | direct / floor | sim floor µs | controller, sim signal µs | sim signal / sim floor | host call p50 µs, sim floor · controller |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} · {} |",
            r.n,
            cell(r.floor),
            cell(r.direct),
            ratios(r.direct, r.floor),
            cell(r.sim_floor),
            cell(r.sim_signal),
            ratios(r.sim_signal, r.sim_floor),
            us(r.sim_floor_call.p50),
            us(r.sim_signal_call.p50),
        );
    }
    println!("(µs cells: p50 / p99 / max; ratio cells: p50 · p99; every path of a row sampled in one interleaved loop)");
}

/// The goal's verdict: direct-signal p99 over the floor's p99 at 4096 devices, same CPU.
fn verdict(results: &[(Regime, Vec<Row>)]) -> String {
    let at_4096 = |want: fn(&Regime) -> bool| {
        results
            .iter()
            .filter(|(r, _)| want(r))
            .flat_map(|(_, rows)| rows.iter().filter(|row| row.n == 4096))
            .map(|row| ratio(row.direct.p99, row.floor.p99))
            .next()
    };
    if let Some(x) = at_4096(|r| matches!(r, Regime::SameCpu { .. })) {
        let met = if x <= 2.0 { "MET" } else { "NOT MET" };
        return format!("goal p99 <= 2x floor at 4096 (same CPU): {met} (ratio {x:.2})");
    }
    let x = at_4096(|_| true).unwrap_or(f64::NAN);
    format!("goal p99 <= 2x floor at 4096 (same CPU): NOT DECIDED (threads unpinned, ratio {x:.2} in mixed regimes)")
}

fn main() {
    let samples = iters(4000, 20);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!(
        "wake path, host signal -> guest notification readable; {samples} samples per path and device count; loadavg at start {}",
        support::loadavg()
    );
    let allowed = affinity::allowed_cpus().unwrap_or_default();
    let (regimes, warning) = Regime::available();
    if let Some(w) = warning {
        let msg = format!("!!! thread pinning limited: {w}");
        eprintln!("{msg}");
        println!("{msg}");
    }
    let mut results = Vec::new();
    for regime in regimes {
        regime.pin_signaller();
        let rows: Vec<Row> = DEVICE_COUNTS
            .iter()
            .map(|&n| measure(n, samples, regime, &mut rng))
            .collect();
        print_table(regime, &rows);
        results.push((regime, rows));
    }
    if !allowed.is_empty() {
        let _ = affinity::pin_to(&allowed);
    }
    let smoke = if support::full_run() {
        ""
    } else {
        " [smoke run, tiny counts: not a measurement]"
    };
    println!("\n{}{smoke}", verdict(&results));
    println!("loadavg at end {}", support::loadavg());
}
