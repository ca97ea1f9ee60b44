//! Wake path latency: host wake signalled → guest notification readable, per wake, with 1,
//! 64, 1024 and 4096 devices on one controller thread, wakes landing on random devices.
//!
//! - floor: a bare eventfd ping-pong between two threads (thread A writes, thread B blocked in
//!   `read` writes back, A blocked in `read` wakes): the least any cross-thread forwarder costs.
//! - sim floor: the same with the simulated host's wake as the signal (A calls
//!   `host_config_read` on a suspended, armed device; B is a bare forwarder reading the wakeup
//!   eventfd and writing the "irqfd"). The controller's figure includes the same host work.
//! - controller: `Controller::run` on its own thread over every device, its notifier writing
//!   the irqfd; A calls `host_config_read` on a random armed device and blocks on the irqfd.
//!   Between samples (untimed) the guest's `_ON`/`_OFF` re-arms the woken device.
//! - controller, direct signal: the same controller, but A writes the armed device's wakeup
//!   eventfd itself, as the kernel's `eventfd_signal` does, so no simulated host work is in
//!   the timed path: this is the figure the goal (p99 at most 2x the floor) is about.
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench wake`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;
use support::{addr, iters, ns_since, ratio, us, Rng, Summary};
use vfio_pm::{LowPower, PowerDevice};
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, DeviceSettings, Event, EventSink, HostPower, MonotonicClock,
    TimedEvent,
};
use vfio_pm_vmm::pme::{Delivery, GuestNotifier, NotifyError, WakeRoute};
use vfio_pm_vmm::{GuestRequest, Slot};
use vmm_sys_util::eventfd::EventFd;

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

/// A bare thread that writes `output` each time `input` is read: the least any cross-thread
/// forwarder costs.
struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Forwarder {
    fn start(input: &EventFd, output: &EventFd) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (i, o, s) = (
            input.try_clone().unwrap(),
            output.try_clone().unwrap(),
            stop.clone(),
        );
        let thread = thread::spawn(move || loop {
            i.read().unwrap();
            if s.load(Ordering::Acquire) {
                return;
            }
            o.write(1).unwrap();
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

/// Two threads, two blocking eventfds.
fn floor(samples: usize) -> Summary {
    let ping = blocking_eventfd();
    let pong = blocking_eventfd();
    let echo = Forwarder::start(&ping, &pong);
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        ping.write(1).unwrap();
        pong.read().unwrap();
        out.push(ns_since(t));
    }
    echo.stop(&ping);
    Summary::of(out)
}

/// The simulated host's wake as the signal (a random one of `n` devices, armed with a plain
/// eventfd each time), a bare forwarder on the other thread.
fn sim_floor(n: usize, samples: usize, rng: &mut Rng) -> (Summary, Summary) {
    let host = sim_host(n);
    let devs: Vec<_> = (0..n).map(|i| host.open(addr(i)).unwrap()).collect();
    let wake = blocking_eventfd();
    let irq = blocking_eventfd();
    let forwarder = Forwarder::start(&wake, &irq);
    let mut out = Vec::with_capacity(samples);
    let mut calls = Vec::with_capacity(samples);
    for _ in 0..samples {
        let d = rng.below(n);
        devs[d].enter_low_power_with_wakeup(&wake).unwrap();
        host.run_pending();
        host.take_events();
        let t = Instant::now();
        host.host_config_read(addr(d)).unwrap();
        calls.push(ns_since(t));
        irq.read().unwrap();
        out.push(ns_since(t));
    }
    forwarder.stop(&wake);
    (Summary::of(out), Summary::of(calls))
}

fn sim_host(n: usize) -> SimHost {
    let mut b = SimHost::builder().platform(Platform::D3cold);
    for i in 0..n {
        b = b.device(DeviceConfig::new(addr(i)));
    }
    b.build().unwrap()
}

/// A controller over `n` devices of a simulated host, every one armed by a guest `_OFF`; its
/// notifier writes `irq`, and `armed` counts re-armings.
struct ArmedRig {
    host: SimHost,
    ctl: Controller,
    slots: Vec<Slot>,
    irq: EventFd,
    armed: EventFd,
}

fn armed_rig(n: usize) -> ArmedRig {
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
    ArmedRig {
        host,
        ctl,
        slots,
        irq,
        armed,
    }
}

/// The controller on its own thread over `n` armed devices.
fn controller(n: usize, samples: usize, rng: &mut Rng) -> (Summary, Summary) {
    let ArmedRig {
        host,
        ctl,
        slots,
        irq,
        armed,
    } = armed_rig(n);
    host.run_pending();
    let handle = ctl.handle();
    let runner = thread::spawn(move || {
        let mut ctl = ctl;
        ctl.run().map(|_| ctl)
    });
    let mut out = Vec::with_capacity(samples);
    let mut calls = Vec::with_capacity(samples);
    for _ in 0..samples {
        let i = rng.below(n);
        let t = Instant::now();
        host.host_config_read(addr(i)).unwrap();
        calls.push(ns_since(t));
        assert_eq!(irq.read().unwrap(), 1, "one notification per wake");
        out.push(ns_since(t));
        // Untimed: the guest resumes the device and idles it again.
        handle.submit(GuestRequest::power_on(slots[i])).unwrap();
        handle.submit(GuestRequest::power_off(slots[i])).unwrap();
        armed.read().unwrap();
        host.run_pending();
        host.take_events();
    }
    handle.stop().unwrap();
    let ctl = runner.join().unwrap().unwrap();
    let delivered: u64 = slots
        .iter()
        .map(|&s| ctl.stats(s).unwrap().pme_delivered)
        .sum();
    assert_eq!(delivered, samples as u64);
    (Summary::of(out), Summary::of(calls))
}

/// Writes 1 to the eventfd `raw` (a device's wakeup eventfd, owned by the controller).
fn signal(raw: std::os::fd::RawFd) {
    use std::io::Write;
    // SAFETY: `raw` is the wakeup eventfd of a device of the controller that the runner thread
    // owns until after the last sample; the borrow ends within this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
    let mut f = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    f.write_all(&1u64.to_ne_bytes()).unwrap();
}

/// The controller on its own thread over `n` armed devices, woken by a direct eventfd write.
fn controller_direct(n: usize, samples: usize, rng: &mut Rng) -> Summary {
    let ArmedRig {
        host: _host,
        ctl,
        slots,
        irq,
        armed,
    } = armed_rig(n);
    let fds: Vec<_> = slots.iter().map(|&s| ctl.wake_fd(s).unwrap()).collect();
    let handle = ctl.handle();
    let runner = thread::spawn(move || {
        let mut ctl = ctl;
        ctl.run().map(|_| ctl)
    });
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let i = rng.below(n);
        let t = Instant::now();
        signal(fds[i]);
        assert_eq!(irq.read().unwrap(), 1, "one notification per wake");
        out.push(ns_since(t));
        // Untimed: the guest resumes the device and idles it again.
        handle.submit(GuestRequest::power_on(slots[i])).unwrap();
        handle.submit(GuestRequest::power_off(slots[i])).unwrap();
        armed.read().unwrap();
    }
    handle.stop().unwrap();
    let ctl = runner.join().unwrap().unwrap();
    let delivered: u64 = slots
        .iter()
        .map(|&s| ctl.stats(s).unwrap().pme_delivered)
        .sum();
    assert_eq!(delivered, samples as u64);
    Summary::of(out)
}

fn row(name: &str, s: Summary, floor: Summary, sim: Option<Summary>, call: Option<Summary>) {
    let vs_sim = sim.map_or(" | ".into(), |f| {
        format!("{:.2} | {:.2}", ratio(s.p50, f.p50), ratio(s.p99, f.p99))
    });
    println!(
        "| {name} | {} | {} | {} | {:.2} | {:.2} | {vs_sim} | {} |",
        us(s.p50),
        us(s.p99),
        us(s.max),
        ratio(s.p50, floor.p50),
        ratio(s.p99, floor.p99),
        call.map_or(String::new(), |c| us(c.p50)),
    );
}

/// The better of two floor runs, percentile by percentile (the machine's noise only ever adds).
fn best(a: Summary, b: Summary) -> Summary {
    Summary {
        p50: a.p50.min(b.p50),
        p99: a.p99.min(b.p99),
        max: a.max.min(b.max),
        mean: a.mean.min(b.mean),
        n: a.n + b.n,
    }
}

fn main() {
    let samples = iters(4000, 20);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    println!(
        "wake path, host signal -> guest notification readable; {samples} samples each; loadavg {}",
        support::loadavg()
    );
    let before = floor(samples);
    let mut rows = Vec::new();
    for n in [1usize, 64, 1024, 4096] {
        rows.push((
            n,
            sim_floor(n, samples, &mut rng),
            controller(n, samples, &mut rng),
            controller_direct(n, samples, &mut rng),
        ));
    }
    let after = floor(samples);
    let f = best(before, after);
    println!("| path | p50 µs | p99 µs | max µs | p50 / floor | p99 / floor | p50 / sim floor | p99 / sim floor | host call p50 µs |");
    println!("|---|---|---|---|---|---|---|---|---|");
    row("floor: eventfd ping-pong, before", before, f, None, None);
    row("floor: eventfd ping-pong, after", after, f, None, None);
    for (n, (sf, sf_call), (c, c_call), direct) in rows {
        row(
            &format!("sim floor, {n} devices"),
            sf,
            f,
            None,
            Some(sf_call),
        );
        row(
            &format!("controller, {n} devices"),
            c,
            f,
            Some(sf),
            Some(c_call),
        );
        row(
            &format!("controller, direct signal, {n} devices"),
            direct,
            f,
            None,
            None,
        );
    }
    println!("(floor = the better of the two ping-pong runs, per percentile)");
}
