//! The simulated host's transitions per second (it bounds what the property tests explore).
//!
//! - ENTRY / EXIT cycle: LOW_POWER_ENTRY, the kernel's idle check (suspend to D3cold),
//!   LOW_POWER_EXIT (resume): 3 transitions.
//! - wake cycle: ENTRY_WITH_WAKEUP, suspend, a host config read (resume, eventfd signalled),
//!   the eventfd read: 3 transitions.
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench sim`.

mod support;

use std::time::Instant;
use support::{addr, iters};
use vfio_pm::LowPower;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn host() -> SimHost {
    SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(addr(0)))
        .build()
        .unwrap()
}

fn main() {
    let cycles = iters(200_000, 100);
    println!(
        "simulated host; {cycles} cycles each; loadavg {}",
        support::loadavg()
    );
    let h = host();
    let dev = h.open(addr(0)).unwrap();
    let t = Instant::now();
    for _ in 0..cycles {
        dev.enter_low_power().unwrap();
        h.run_pending();
        dev.exit_low_power().unwrap();
        h.take_events();
    }
    let entry_exit = cycles as f64 / t.elapsed().as_secs_f64();

    let h = host();
    let dev = h.open(addr(0)).unwrap();
    let wake = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = Instant::now();
    for _ in 0..cycles {
        dev.enter_low_power_with_wakeup(&wake).unwrap();
        h.run_pending();
        h.host_config_read(addr(0)).unwrap();
        assert_eq!(wake.read().unwrap(), 1);
        h.take_events();
    }
    let wakes = cycles as f64 / t.elapsed().as_secs_f64();
    println!("| cycle | cycles/s | transitions/s |\n|---|---|---|");
    println!(
        "| ENTRY, suspend, EXIT | {entry_exit:.0} | {:.0} |",
        entry_exit * 3.0
    );
    println!(
        "| ENTRY_WITH_WAKEUP, suspend, host wake | {wakes:.0} | {:.0} |",
        wakes * 3.0
    );
}
