//! Hostile guest: `_ON`/`_OFF` as fast as it can through the trap register for 10 s, on the
//! simulated host with the real clock and the default anti-thrash residency (100 ms), while
//! the VMM's event loop runs between writes (wakes, postponed entries, the host's suspends).
//!
//! Figures: trap writes made, host transitions (ENTRY and EXIT calls the host saw) against
//! the bound the residency allows (one entry per residency: `elapsed / min_residency + 1`),
//! and the VMM thread's responsiveness: the longest trap write and event loop turn.
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench hostile` (a smoke run of 0.2 s otherwise).

mod support;

use std::time::{Duration, Instant};
use support::{addr, ns_since, us, Summary};
use vfio_pm::PowerDevice;
use vfio_pm_sim::{DeviceConfig, Event as SimEvent, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig, WakeupMode};
use vfio_pm_vmm::controller::DEFAULT_MIN_RESIDENCY;
use vfio_pm_vmm::pme::RecordingNotifier;
use vfio_pm_vmm::vmm::{trap_bytes, VmmPowerManager};
use vfio_pm_vmm::{PowerAction, Slot};

fn config() -> VmmConfig {
    let gpu = DeviceFile {
        d3cold: true,
        gpe: Some(0x10),
        ..DeviceFile::new(
            r"\_SB.PCI0.S28",
            "0000:00:05.0".parse().unwrap(),
            0x10de,
            0x030000,
        )
    };
    let nic = DeviceFile {
        d3cold: true,
        wakeup: WakeupMode::Never,
        ..DeviceFile::new(
            r"\_SB.PCI0.S30",
            "0000:00:06.0".parse().unwrap(),
            0x8086,
            0x020000,
        )
    };
    VmmConfig::validate(&ConfigFile::new(TrapFile::io(0x440), vec![gpu, nic])).unwrap()
}

/// A simulated host with the two configured devices and the manager over it.
fn rig() -> (SimHost, VmmPowerManager, RecordingNotifier) {
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(addr(0)))
        .device(DeviceConfig::new(addr(1)))
        .build()
        .unwrap();
    let devs: Vec<Box<dyn PowerDevice>> = (0..2)
        .map(|i| Box::new(host.open(addr(i)).unwrap()) as Box<dyn PowerDevice>)
        .collect();
    let notes = RecordingNotifier::new();
    let vpm = VmmPowerManager::builder(config())
        .notifier(notes.clone())
        .build(devs)
        .unwrap();
    (host, vpm, notes)
}

/// What the flood measured.
#[derive(Default)]
struct Flood {
    trap_ns: Vec<u64>,
    loop_ns: Vec<u64>,
    host_entries: u64,
    host_exits: u64,
    elapsed: Duration,
}

/// The guest's `_OFF`/`_ON` of both devices, round robin, for `run`; the VMM's event loop and
/// the host's suspends every 64 writes.
fn flood(host: &SimHost, vpm: &mut VmmPowerManager, run: Duration) -> Flood {
    let c = vpm.config();
    let port = c.trap().address;
    let space = c.trap().space;
    let writes: Vec<Vec<u8>> = (0..2)
        .flat_map(|i| {
            [PowerAction::PowerOff, PowerAction::PowerOn]
                .map(|a| trap_bytes(c.trap(), &c.devices()[i], a))
        })
        .collect();
    let mut f = Flood::default();
    let start = Instant::now();
    let mut k = 0usize;
    while start.elapsed() < run {
        let t = Instant::now();
        vpm.on_trap_write(space, port, &writes[k % writes.len()])
            .unwrap();
        f.trap_ns.push(ns_since(t));
        k += 1;
        if k % 64 == 0 {
            let t = Instant::now();
            vpm.poll_pending().unwrap();
            f.loop_ns.push(ns_since(t));
            host.run_pending();
            for e in host.take_events() {
                if let SimEvent::Engaged { engaged, .. } = e {
                    if engaged {
                        f.host_entries += 1;
                    } else {
                        f.host_exits += 1;
                    }
                }
            }
        }
    }
    f.elapsed = start.elapsed();
    f
}

fn main() {
    let run = if support::full_run() {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(200)
    };
    let (host, mut vpm, notes) = rig();
    let f = flood(&host, &mut vpm, run);
    let bound = (f.elapsed.as_nanos() / DEFAULT_MIN_RESIDENCY.as_nanos()) as u64 + 1;
    println!(
        "hostile guest, {:.1} s, 2 devices, min_residency {} ms; loadavg {}",
        f.elapsed.as_secs_f64(),
        DEFAULT_MIN_RESIDENCY.as_millis(),
        support::loadavg()
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| trap writes | {} ({:.0}/s) |",
        f.trap_ns.len(),
        f.trap_ns.len() as f64 / f.elapsed.as_secs_f64()
    );
    for i in 0..2 {
        let s = vpm.stats(Slot(i)).unwrap();
        println!(
            "| device {i}: entries / exits / coalesced / deferred | {} / {} / {} / {} (entry bound {bound}) |",
            s.entries, s.exits, s.coalesced, s.deferred
        );
        assert!(
            s.entries <= bound,
            "device {i}: {} entries > {bound}",
            s.entries
        );
    }
    println!(
        "| host saw: engaged / disengaged transitions | {} / {} (bound {} each) |",
        f.host_entries,
        f.host_exits,
        2 * bound
    );
    assert!(f.host_entries <= 2 * bound);
    let slow = f.trap_ns.iter().filter(|&&ns| ns > 100_000).count();
    println!("| trap writes over 100 µs | {slow} |");
    let t = Summary::of(f.trap_ns);
    println!(
        "| trap write p50 / p99 / max | {} / {} / {} µs |",
        us(t.p50),
        us(t.p99),
        us(t.max)
    );
    let l = Summary::of(f.loop_ns);
    println!(
        "| event loop turn p50 / p99 / max | {} / {} / {} µs |",
        us(l.p50),
        us(l.p99),
        us(l.max)
    );
    println!(
        "| guest notifications (no host wake happened) | {} |",
        notes.count()
    );
    assert_eq!(notes.count(), 0, "no notification without a host wake");
    let report = vpm.shutdown();
    assert!(report.failed.is_empty());
    assert!((0..2).all(|i| !host.snapshot(addr(i)).unwrap().engaged));
}
