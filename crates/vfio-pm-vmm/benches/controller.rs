//! Wake → PME path of the controller vs a floor measured in the same run.
//!
//! Floor: for the same number of registered eventfds, one `epoll_wait` batch, then per
//! signalled fd an eventfd read and an irqfd write (the syscalls any wake forwarder makes).
//! Controller: the same batch through `Controller::poll_once` (eventfd read, state machine,
//! typed event, `GuestNotifier` writing an irqfd), devices on the simulated host.
//! Run: `cargo bench -p vfio-pm-vmm --bench controller`.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use vfio_pm::PciAddress;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, DeviceSettings, ManualClock, NullSink, Slot,
};
use vfio_pm_vmm::pme::{Delivery, GuestNotifier, NotifyError, WakeRoute};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Wakes per measured batch.
const BATCH: usize = 64;

fn addr(i: usize) -> PciAddress {
    PciAddress::new(0, 1 + (i / 256) as u8, ((i % 256) / 8) as u8, (i % 8) as u8).unwrap()
}

struct IrqfdNotifier(EventFd);

impl GuestNotifier for IrqfdNotifier {
    fn notify(&self, _route: WakeRoute) -> Result<Delivery, NotifyError> {
        self.0.write(1).map_err(NotifyError::Irqfd)?;
        Ok(Delivery::Interrupt)
    }
}

fn floor(n: usize, rounds: usize) -> Duration {
    let epoll = Epoll::new().unwrap();
    let fds: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
        .collect();
    for (i, fd) in fds.iter().enumerate() {
        epoll
            .ctl(
                ControlOperation::Add,
                fd.as_raw_fd(),
                EpollEvent::new(EventSet::IN, i as u64),
            )
            .unwrap();
    }
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let mut events = vec![EpollEvent::default(); 256];
    let k = BATCH.min(n);
    let mut total = Duration::ZERO;
    for r in 0..rounds {
        for j in 0..k {
            fds[(r * 7 + j * 13) % n].write(1).unwrap();
        }
        let t = Instant::now();
        let mut handled = 0;
        while handled < k {
            let got = epoll.wait(0, &mut events).unwrap();
            for e in &events[..got] {
                let _ = fds[e.data() as usize].read();
                irqfd.write(1).unwrap();
                handled += 1;
            }
        }
        total += t.elapsed();
        let _ = irqfd.read();
    }
    total / (rounds * k) as u32
}

fn controller(n: usize, rounds: usize) -> Duration {
    let mut b = SimHost::builder().platform(Platform::D3cold);
    for i in 0..n {
        b = b.device(DeviceConfig::new(addr(i)));
    }
    let host = b.build().unwrap();
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let irq_reader = irqfd.try_clone().unwrap();
    let mut ctl = Controller::new(
        ControllerConfig::default(),
        Box::new(IrqfdNotifier(irqfd)),
        Box::new(ManualClock::new()),
        Box::new(NullSink),
    )
    .unwrap();
    let slots: Vec<Slot> = (0..n)
        .map(|i| {
            let mut s =
                DeviceSettings::new(0x10de, None, 0x030000, Some(WakeRoute::Ged { event: 0 }));
            s.min_residency = Duration::ZERO;
            ctl.add_device(Box::new(host.open(addr(i)).unwrap()), s)
                .unwrap()
        })
        .collect();
    for &s in &slots {
        ctl.power_off(s).unwrap();
    }
    host.run_pending();
    let k = BATCH.min(n);
    let mut total = Duration::ZERO;
    for r in 0..rounds {
        let woken: Vec<usize> = (0..k).map(|j| (r * 7 + j * 13) % n).collect();
        for &i in &woken {
            host.host_config_read(addr(i)).unwrap();
        }
        let t = Instant::now();
        let mut handled = 0;
        while handled < k {
            handled += ctl.poll_once(Some(Duration::ZERO)).unwrap();
        }
        total += t.elapsed();
        assert_eq!(irq_reader.read().unwrap(), k as u64, "one PME per wake");
        // Untimed: the guest turns the woken devices on and off again.
        for &i in &woken {
            ctl.power_on(slots[i]).unwrap();
            ctl.power_off(slots[i]).unwrap();
        }
        host.run_pending();
    }
    total / (rounds * k) as u32
}

fn main() {
    // `cargo test --benches` passes --bench-less args; keep that run short.
    let quick = std::env::args().any(|a| a == "--test");
    let rounds = if quick { 2 } else { 200 };
    println!("wake -> guest notification, per wake, batches of {BATCH} (ns)");
    println!(
        "{:>8} {:>12} {:>14} {:>8}",
        "devices", "floor", "controller", "ratio"
    );
    for n in [1usize, 100, 1000, 4000] {
        // Floor measured before and after (best of both): warms caches, bounds noise.
        let f1 = floor(n, rounds * 4);
        let c = controller(n, rounds);
        let f = f1.min(floor(n, rounds * 4));
        println!(
            "{:>8} {:>12} {:>14} {:>8.2}",
            n,
            f.as_nanos(),
            c.as_nanos(),
            c.as_nanos() as f64 / f.as_nanos().max(1) as f64
        );
    }
}
