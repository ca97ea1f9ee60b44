//! Memory per managed device, measured, and start-up time.
//!
//! A counting global allocator (this binary only) tracks the bytes live on the heap. A
//! controller built with N devices minus an empty one, divided by N, is what each managed
//! device costs the VMM's heap (the host devices themselves are opened, and counted, before).
//! Kernel objects (one eventfd and one epoll item per device) are not on the heap and not in
//! the figure. The manager (`VmmPowerManager`: configuration, SSDT, PM capabilities) is
//! measured the same way at its maximum of 64 trap slots.
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench memory`.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{addr, timed};
use vfio_pm::PowerDevice;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig};
use vfio_pm_vmm::controller::{
    Controller, ControllerConfig, DeviceSettings, MonotonicClock, NullSink,
};
use vfio_pm_vmm::pme::{RecordingNotifier, WakeRoute};
use vfio_pm_vmm::vmm::VmmPowerManager;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn host_devices(n: usize) -> (SimHost, Vec<Box<dyn PowerDevice>>) {
    let mut b = SimHost::builder().platform(Platform::D3cold);
    for i in 0..n {
        b = b.device(DeviceConfig::new(addr(i)));
    }
    let host = b.build().unwrap();
    let devs = (0..n)
        .map(|i| Box::new(host.open(addr(i)).unwrap()) as Box<dyn PowerDevice>)
        .collect();
    (host, devs)
}

/// Heap bytes held by a controller with `devs` added, and the time it took to build it.
fn controller_bytes(
    host: &SimHost,
    devs: Vec<Box<dyn PowerDevice>>,
) -> (usize, Duration, Controller) {
    let before = live();
    let (ctl, took) = timed(|| {
        let mut ctl = Controller::new(
            ControllerConfig::default(),
            Box::new(RecordingNotifier::new()),
            Box::new(MonotonicClock::new()),
            Box::new(NullSink),
        )
        .unwrap();
        let mut s = DeviceSettings::new(0x10de, None, 0x030000, Some(WakeRoute::Ged { event: 0 }));
        s.d3cold = Some(true);
        for d in devs {
            ctl.add_device(d, s).unwrap();
        }
        ctl
    });
    // The simulated host's own trace of those calls is the model's memory, not the VMM's.
    drop(host.take_events());
    (live() - before, took, ctl)
}

fn config(n: usize) -> VmmConfig {
    let devices = (0..n)
        .map(|i| DeviceFile {
            d3cold: true,
            gpe: Some(0x10 + i as i64),
            ..DeviceFile::new(
                &format!(r"\_SB.PCI0.S{i:02X}"),
                addr(0x100 + i),
                0x10de,
                0x030000,
            )
        })
        .collect();
    VmmConfig::validate(&ConfigFile::new(TrapFile::io(0x440), devices)).unwrap()
}

fn manager_bytes(n: usize) -> usize {
    let (_host, devs) = host_devices(n);
    drop(_host.take_events());
    let config = config(n);
    let before = live();
    let vpm = VmmPowerManager::builder(config)
        .notifier(RecordingNotifier::new())
        .build(devs)
        .unwrap();
    drop(_host.take_events());
    let bytes = live() - before;
    drop(vpm);
    bytes
}

fn main() {
    let n = if support::full_run() { 4096 } else { 64 };
    println!("memory per managed device; loadavg {}", support::loadavg());
    let (h0, empty) = host_devices(0);
    let (base, _, _c0) = controller_bytes(&h0, empty);
    let (h, devs) = host_devices(n);
    drop(h.take_events());
    let (with_n, took, ctl) = controller_bytes(&h, devs);
    assert_eq!(ctl.len(), n);
    let per = (with_n - base) as f64 / n as f64;
    println!("| what | figure |\n|---|---|");
    println!("| controller, empty | {base} B |");
    println!("| controller, {n} devices | {with_n} B |");
    println!(
        "| per device (controller) | {per:.0} B ({:.2} of the 2 KiB goal) |",
        per / 2048.0
    );
    println!(
        "| start-up: controller + {n} devices (PROBE, d3cold knob, epoll add each) | {:.2} ms ({:.2} µs per device) |",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / n as f64
    );
    let one = manager_bytes(1);
    let max = manager_bytes(64);
    let per_mgr = (max - one) as f64 / 63.0;
    println!("| VmmPowerManager, 1 device | {one} B |");
    println!("| VmmPowerManager, 64 devices | {max} B |");
    println!(
        "| per device (manager: + configuration, SSDT, PM capability) | {per_mgr:.0} B ({:.2} of 2 KiB) |",
        per_mgr / 2048.0
    );
}
