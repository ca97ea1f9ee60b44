//! Trap and mailbox paths, per operation.
//!
//! - trap: `VmmPowerManager::on_trap_write` of a guest `_OFF` / `_ON` (decode, controller state
//!   machine, events, the host call issued) over a no-op host device, so the host call costs
//!   nothing; the same over the simulated host, and the simulated host's call alone, so that
//!   "trap minus host call" can be read off either way.
//! - mailbox: `VmmPowerManager::serve_mailbox` of one pending request (what the QEMU
//!   integration does per doorbell), against a floor of the two file syscalls it needs (one
//!   `pread` of the slots, one `pwrite` of the reply).
//! - timer floor: two back-to-back `Instant::now()` (included in every per-operation sample).
//!
//! Run: `cargo bench -p vfio-pm-vmm --bench trap`.

mod support;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Instant;
use support::{addr, iters, ns_since, ratio, Summary};
use vfio_pm::{Errno, HostKnob, LowPower, PciAddress, PowerDevice};
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig, WakeupMode};
use vfio_pm_vmm::controller::EntryPolicy;
use vfio_pm_vmm::mailbox::{Mailbox, SLOT_BYTES};
use vfio_pm_vmm::pme::RecordingNotifier;
use vfio_pm_vmm::vmm::{trap_bytes, VmmPowerManager};
use vfio_pm_vmm::{PowerAction, Slot};

/// A host device whose every call succeeds at once (PROBE: every feature supported).
struct NoopDevice(PciAddress);

impl PowerDevice for NoopDevice {
    fn address(&self) -> PciAddress {
        self.0
    }
    fn device_feature(&self, _argsz: u32, _flags: u32, _payload: &[u8]) -> Result<(), Errno> {
        Ok(())
    }
    fn region_read(&self, _region: u32, _offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        Ok(buf.len())
    }
    fn region_write(&self, _region: u32, _offset: u64, data: &[u8]) -> Result<usize, Errno> {
        Ok(data.len())
    }
    fn set_host_knob(&self, _knob: HostKnob) -> Result<(), Errno> {
        Ok(())
    }
}

fn config(wakeup: bool, mailbox: bool) -> VmmConfig {
    let mut trap = TrapFile::io(0x440);
    if mailbox {
        trap.mailbox = Some(r"\_SB.PCI0.S40".into());
    }
    let dev = DeviceFile {
        d3cold: true,
        wakeup: if wakeup {
            WakeupMode::default()
        } else {
            WakeupMode::Never
        },
        gpe: wakeup.then_some(0x10),
        ..DeviceFile::new(
            r"\_SB.PCI0.S28",
            "0000:00:05.0".parse().unwrap(),
            0x8086,
            0x020000,
        )
    };
    VmmConfig::validate(&ConfigFile::new(trap, vec![dev])).unwrap()
}

fn manager(dev: Box<dyn PowerDevice>, wakeup: bool, mailbox: bool) -> VmmPowerManager {
    let mut b = VmmPowerManager::builder(config(wakeup, mailbox))
        .min_residency(std::time::Duration::ZERO)
        .notifier(RecordingNotifier::new());
    if wakeup {
        b.device_settings(Slot(0)).unwrap().entry = EntryPolicy::WithWakeup;
    }
    b.build(vec![dev]).unwrap()
}

fn trap_ops(vpm: &mut VmmPowerManager, samples: usize) -> Summary {
    let c = vpm.config();
    let off = trap_bytes(c.trap(), &c.devices()[0], PowerAction::PowerOff);
    let on = trap_bytes(c.trap(), &c.devices()[0], PowerAction::PowerOn);
    let port = c.trap().address;
    let space = c.trap().space;
    let mut out = Vec::with_capacity(samples * 2);
    for _ in 0..samples {
        for bytes in [&off, &on] {
            let t = Instant::now();
            let r = vpm.on_trap_write(space, port, bytes);
            out.push(ns_since(t));
            r.unwrap();
        }
    }
    Summary::of(out)
}

fn sim_host() -> SimHost {
    SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new(addr(0)))
        .build()
        .unwrap()
}

/// The simulated host's ENTRY / EXIT alone, alternating.
fn sim_calls(samples: usize) -> Summary {
    let host = sim_host();
    let dev = host.open(addr(0)).unwrap();
    let mut out = Vec::with_capacity(samples * 2);
    for _ in 0..samples {
        let t = Instant::now();
        dev.enter_low_power().unwrap();
        out.push(ns_since(t));
        let t = Instant::now();
        dev.exit_low_power().unwrap();
        out.push(ns_since(t));
    }
    Summary::of(out)
}

fn mailbox_ops(dev: Box<dyn PowerDevice>, samples: usize) -> (Summary, Summary) {
    let mut vpm = manager(dev, false, true);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shm");
    let mb = Mailbox::create(&path, 1).unwrap();
    let guest = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let c = vpm.config();
    let values = [
        trap_bytes(c.trap(), &c.devices()[0], PowerAction::PowerOff)[0],
        trap_bytes(c.trap(), &c.devices()[0], PowerAction::PowerOn)[0],
    ];
    let mut served = Vec::with_capacity(samples * 2);
    let mut seq = 0u32;
    for _ in 0..samples {
        for v in values {
            seq += 1;
            let word = seq << 8 | u32::from(v);
            guest.write_all_at(&word.to_le_bytes(), 0).unwrap();
            let t = Instant::now();
            let replies = vpm.serve_mailbox(&mb).unwrap();
            served.push(ns_since(t));
            assert_eq!(replies.len(), 1);
            replies[0].result.as_ref().unwrap();
        }
    }
    // Floor: the syscalls a serve needs, on the same file.
    let mut floor = Vec::with_capacity(samples * 2);
    let mut buf = [0u8; SLOT_BYTES];
    for _ in 0..samples * 2 {
        let t = Instant::now();
        guest.read_exact_at(&mut buf, 0).unwrap();
        guest.write_all_at(&buf[..4], 4).unwrap();
        floor.push(ns_since(t));
    }
    (Summary::of(served), Summary::of(floor))
}

fn timer_floor(samples: usize) -> Summary {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        out.push(ns_since(t));
    }
    Summary::of(out)
}

fn row(name: &str, s: Summary, floor: Option<Summary>) {
    let r = floor.map_or(" | ".into(), |f| {
        format!("{:.2} | {:.2}", ratio(s.p50, f.p50), ratio(s.p99, f.p99))
    });
    println!(
        "| {name} | {} | {} | {} | {} | {r} |",
        s.p50, s.p99, s.max, s.mean
    );
}

fn main() {
    let samples = iters(100_000, 50);
    println!(
        "trap and mailbox paths, per operation (_OFF and _ON alternating); {} samples each; loadavg {}",
        samples * 2,
        support::loadavg()
    );
    println!("| path | p50 ns | p99 ns | max ns | mean ns | p50 / floor | p99 / floor |");
    println!("|---|---|---|---|---|---|---|");
    let timer = timer_floor(samples);
    row("timer floor (Instant::now pair)", timer, None);
    let noop = || Box::new(NoopDevice(addr(0))) as Box<dyn PowerDevice>;
    let plain = trap_ops(&mut manager(noop(), false, false), samples);
    row("trap, no-op host, ENTRY / EXIT", plain, None);
    let wake = trap_ops(&mut manager(noop(), true, false), samples);
    row("trap, no-op host, ENTRY_WITH_WAKEUP / EXIT", wake, None);
    let sim = sim_calls(samples);
    row("simulated host call alone (ENTRY / EXIT)", sim, None);
    let host = sim_host();
    let dev: Box<dyn PowerDevice> = Box::new(host.open(addr(0)).unwrap());
    let on_sim = trap_ops(&mut manager(dev, false, false), samples);
    row("trap over the simulated host", on_sim, None);
    println!(
        "| trap over the simulated host minus the host call alone (p50) | {} | | | | | |",
        on_sim.p50.saturating_sub(sim.p50)
    );
    let (mb, mb_floor) = mailbox_ops(noop(), samples);
    row("mailbox floor (pread slots + pwrite reply)", mb_floor, None);
    row("serve_mailbox, 1 pending, no-op host", mb, Some(mb_floor));
}
