//! Shared by the proof tests (`proof_props`, `proof_faults`): a host device wrapper that fails
//! chosen calls once, and a rig of three configured devices over the simulated host behind a
//! `VmmPowerManager` (trap register and acknowledged mailbox both served).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vfio_pm::feature::{FEATURE_MASK, FLAG_PROBE};
use vfio_pm::{Errno, HostKnob, LowPowerFeature, PciAddress, PowerDevice};
use vfio_pm_sim::{DeviceConfig, KernelVersion, Platform, SimDevice, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, TrapSpace, VmmConfig, WakeupMode};
use vfio_pm_vmm::controller::{EntryPolicy, EventLog, ManualClock};
use vfio_pm_vmm::mailbox::{Mailbox, SLOT_BYTES};
use vfio_pm_vmm::pme::{RecordingNotifier, WakeRoute};
use vfio_pm_vmm::vmm::{trap_bytes, VmmError, VmmPowerManager};
use vfio_pm_vmm::{PowerAction, Slot};

/// Every host call the controller makes, as the fault injector names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// `VFIO_DEVICE_FEATURE` PROBE of any low-power feature.
    Probe,
    /// LOW_POWER_ENTRY.
    Entry,
    /// LOW_POWER_ENTRY_WITH_WAKEUP.
    EntryWithWakeup,
    /// LOW_POWER_EXIT.
    Exit,
    /// `pread` of a region (the PMCSR fallback reads PMCSR first).
    RegionRead,
    /// `pwrite` of a region (the PMCSR fallback's write).
    RegionWrite,
    /// The `d3cold_allowed` knob.
    D3ColdKnob,
}

impl Call {
    /// All of them.
    pub const ALL: [Call; 7] = [
        Call::Probe,
        Call::Entry,
        Call::EntryWithWakeup,
        Call::Exit,
        Call::RegionRead,
        Call::RegionWrite,
        Call::D3ColdKnob,
    ];

    fn of_feature(flags: u32) -> Self {
        if flags & FLAG_PROBE != 0 {
            return Call::Probe;
        }
        match flags & FEATURE_MASK {
            f if f == LowPowerFeature::Entry.index() => Call::Entry,
            f if f == LowPowerFeature::EntryWithWakeup.index() => Call::EntryWithWakeup,
            _ => Call::Exit,
        }
    }
}

/// Every errno a host call can return (issue 11's list).
pub const ERRNOS: [Errno; 8] = [
    Errno::ENOTTY,
    Errno::EINVAL,
    Errno::EBADF,
    Errno::EIO,
    Errno::EBUSY,
    Errno::ENODEV,
    Errno::EPERM,
    Errno::EAGAIN,
];

/// What the injector was told and what it saw.
#[derive(Debug, Default)]
pub struct FaultState {
    /// The next call of this kind fails with this errno (once), without reaching the host.
    pub armed: Option<(Call, Errno)>,
    /// Faults injected so far.
    pub injected: u64,
    /// Calls that reached the simulated host and failed there, with its errno.
    pub host_errors: Vec<(Call, Errno)>,
    /// Calls that reached the simulated host.
    pub calls: u64,
}

/// A shared handle to one device's injector.
#[derive(Clone, Debug, Default)]
pub struct Faults(pub Arc<Mutex<FaultState>>);

impl Faults {
    /// The next `call` fails with `errno`.
    pub fn arm(&self, call: Call, errno: Errno) {
        self.lock().armed = Some((call, errno));
    }
    /// True while an armed fault has not fired.
    pub fn pending(&self) -> bool {
        self.lock().armed.is_some()
    }
    /// Disarms a fault that has not fired.
    pub fn disarm(&self) {
        self.lock().armed = None;
    }
    /// Locks the state.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, FaultState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn run<T>(&self, call: Call, f: impl FnOnce() -> Result<T, Errno>) -> Result<T, Errno> {
        {
            let mut s = self.lock();
            if let Some((c, errno)) = s.armed {
                if c == call {
                    s.armed = None;
                    s.injected += 1;
                    return Err(errno);
                }
            }
        }
        let r = f();
        let mut s = self.lock();
        s.calls += 1;
        if let Err(e) = r {
            s.host_errors.push((call, e));
        }
        r
    }
}

/// A simulated host device whose calls can be made to fail once.
pub struct FaultyDevice {
    /// The device.
    pub inner: SimDevice,
    /// Its injector.
    pub faults: Faults,
}

impl PowerDevice for FaultyDevice {
    fn address(&self) -> PciAddress {
        self.inner.address()
    }
    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        self.faults.run(Call::of_feature(flags), || {
            self.inner.device_feature(argsz, flags, payload)
        })
    }
    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.faults.run(Call::RegionRead, || {
            self.inner.region_read(region, offset, buf)
        })
    }
    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        self.faults.run(Call::RegionWrite, || {
            self.inner.region_write(region, offset, data)
        })
    }
    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        self.faults
            .run(Call::D3ColdKnob, || self.inner.set_host_knob(knob))
    }
}

/// Slot of the NVIDIA GPU: ENTRY_WITH_WAKEUP, GPE 0x10.
pub const GPU: usize = 0;
/// Slot of the NIC without wake plumbing: plain ENTRY.
pub const NIC: usize = 1;
/// Slot of a NIC armed for wakes (ENTRY_WITH_WAKEUP forced), GPE 0x12.
pub const WNIC: usize = 2;
/// Devices in the rig.
pub const DEVICES: usize = 3;
/// Offset of the simulated device's PM capability in its config space (e1000e-like header).
pub const SIM_PM_CAP: u8 = 0xc8;

/// Host address of slot `i`.
pub fn host_addr(i: usize) -> PciAddress {
    PciAddress::new(0, 0x41, i as u8, 0).unwrap()
}

/// The wake route of slot `i`, if it is armed for wakes.
pub fn route(i: usize) -> Option<WakeRoute> {
    match i {
        GPU => Some(WakeRoute::AcpiGpe { gpe: 0x10 }),
        WNIC => Some(WakeRoute::AcpiGpe { gpe: 0x12 }),
        _ => None,
    }
}

fn config() -> VmmConfig {
    let mut trap = TrapFile::io(0x440);
    trap.mailbox = Some(r"\_SB.PCI0.S40".into());
    let gpu = DeviceFile {
        d3cold: true,
        pme_support: true,
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
    let wnic = DeviceFile {
        d3cold: true,
        pme_support: true,
        gpe: Some(0x12),
        ..DeviceFile::new(
            r"\_SB.PCI0.S38",
            "0000:00:07.0".parse().unwrap(),
            0x8086,
            0x020000,
        )
    };
    VmmConfig::validate(&ConfigFile::new(trap, vec![gpu, nic, wnic])).unwrap()
}

/// Everything a proof test drives or inspects.
pub struct Rig {
    /// The simulated host.
    pub host: SimHost,
    /// The manager under test.
    pub vpm: VmmPowerManager,
    /// Guest notifications (GPE routes).
    pub notes: RecordingNotifier,
    /// The controller's events.
    pub log: EventLog,
    /// The controller's clock.
    pub clock: ManualClock,
    /// One injector per slot.
    pub faults: Vec<Faults>,
    /// The mailbox's backing file and host side.
    pub mailbox: Mailbox,
    shm: std::path::PathBuf,
    _dir: tempfile::TempDir,
    seq: u32,
}

/// Options of [`build`].
#[derive(Clone, Copy, Debug)]
pub struct RigOptions {
    /// Kernel the host impersonates (5.19: no low-power features, PMCSR fallback).
    pub kernel: KernelVersion,
    /// Anti-thrash residency.
    pub min_residency: Duration,
    /// A fault armed before the manager is built (PROBE, the D3cold knob).
    pub build_fault: Option<(usize, Call, Errno)>,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            kernel: KernelVersion::V6_1,
            min_residency: Duration::ZERO,
            build_fault: None,
        }
    }
}

/// A D3cold host with [`DEVICES`] devices and the manager over them. Fails as the manager's
/// build fails (the faults are returned so a test can rebuild).
pub fn build(opts: RigOptions) -> Result<Rig, (VmmError, SimHost)> {
    let config = config();
    let mut b = SimHost::builder()
        .platform(Platform::D3cold)
        .kernel(opts.kernel);
    for i in 0..DEVICES {
        b = b.device(DeviceConfig::new(host_addr(i)));
    }
    let host = b.build().unwrap();
    build_on(host, config, opts)
}

fn build_on(
    host: SimHost,
    config: VmmConfig,
    opts: RigOptions,
) -> Result<Rig, (VmmError, SimHost)> {
    let faults: Vec<Faults> = (0..DEVICES).map(|_| Faults::default()).collect();
    if let Some((i, call, errno)) = opts.build_fault {
        faults[i].arm(call, errno);
    }
    let devices: Vec<Box<dyn PowerDevice>> = (0..DEVICES)
        .map(|i| {
            Box::new(FaultyDevice {
                inner: host.open(host_addr(i)).unwrap(),
                faults: faults[i].clone(),
            }) as Box<dyn PowerDevice>
        })
        .collect();
    let notes = RecordingNotifier::new();
    let log = EventLog::new();
    let clock = ManualClock::new();
    let mut builder = VmmPowerManager::builder(config)
        .min_residency(opts.min_residency)
        .notifier(notes.clone())
        .clock(clock.clone())
        .events(log.clone());
    let w = builder.device_settings(Slot(WNIC as u32)).unwrap();
    w.entry = EntryPolicy::WithWakeup;
    for i in 0..DEVICES {
        // The controller writes PMCSR itself in the D3hot fallback (5.19 host).
        builder.device_settings(Slot(i as u32)).unwrap().host_pm_cap = Some(SIM_PM_CAP);
    }
    let vpm = match builder.build(devices) {
        Ok(v) => v,
        Err(e) => return Err((e, host)),
    };
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("shm");
    let mailbox = Mailbox::create(&shm, DEVICES).unwrap();
    Ok(Rig {
        host,
        vpm,
        notes,
        log,
        clock,
        faults,
        mailbox,
        shm,
        _dir: dir,
        seq: 0,
    })
}

impl Rig {
    /// The guest's trap write for `action` of slot `i`, as the AML makes it.
    pub fn trap(
        &mut self,
        i: usize,
        action: PowerAction,
    ) -> Result<vfio_pm_vmm::vmm::TrapOutcome, VmmError> {
        let config = self.vpm.config();
        let bytes = trap_bytes(config.trap(), &config.devices()[i], action);
        let addr = config.trap().address;
        self.vpm.on_trap_write(TrapSpace::Io, addr, &bytes)
    }

    /// The guest's mailbox request for `action` of slot `i`, then the host side serves the
    /// mailbox. Returns the controller's result for that request.
    pub fn mailbox_request(
        &mut self,
        i: usize,
        action: PowerAction,
    ) -> Result<vfio_pm_vmm::vmm::TrapOutcome, VmmError> {
        let config = self.vpm.config();
        let value = trap_bytes(config.trap(), &config.devices()[i], action)[0];
        self.seq = self.seq.wrapping_add(1) & 0x00ff_ffff;
        let word = self.seq << 8 | u32::from(value);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.shm)
            .unwrap();
        f.write_all_at(&word.to_le_bytes(), (i * SLOT_BYTES) as u64)
            .unwrap();
        let mut replies = self.vpm.serve_mailbox(&self.mailbox).unwrap();
        assert_eq!(replies.len(), 1, "one pending request");
        let reply = replies.pop().unwrap();
        assert_eq!(reply.req, word);
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, (i * SLOT_BYTES + 4) as u64)
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), word, "acknowledged");
        reply.result
    }

    /// The model's snapshot of slot `i`.
    pub fn snap(&self, i: usize) -> vfio_pm_sim::DeviceSnapshot {
        self.host.snapshot(host_addr(i)).unwrap()
    }

    /// Guest notifications delivered for slot `i`.
    pub fn notified(&self, i: usize) -> usize {
        route(i).map_or(0, |r| self.notes.count_for(r))
    }

    /// The guest-visible PMCSR of slot `i`.
    pub fn pmcsr(&self, i: usize) -> u16 {
        self.vpm
            .on_pm_config_read(Slot(i as u32), vfio_pm_vmm::pme::PMCSR_OFFSET, 2)
            .unwrap() as u16
    }
}
