//! The acknowledged mailbox over the simulated host: what the guest's `\_SB.VPMA` writes into
//! shared memory, served by the manager. `_OFF` engages, `_ON` exits before the reply is
//! written, malformed words are answered and ignored, a flood stays within the anti-thrash
//! bound, and requests made while the host side was away are found on start.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use vfio_pm::PowerDevice;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig};
use vfio_pm_vmm::controller::{ManualClock, RequestOutcome};
use vfio_pm_vmm::mailbox::{Mailbox, SLOT_BYTES};
use vfio_pm_vmm::pme::RecordingNotifier;
use vfio_pm_vmm::vmm::VmmPowerManager;
use vfio_pm_vmm::{PowerAction, Slot};

struct Rig {
    host: SimHost,
    vpm: VmmPowerManager,
    clock: ManualClock,
    _dir: tempfile::TempDir,
    shm: std::path::PathBuf,
    mb: Mailbox,
    seq: u32,
}

fn rig() -> Rig {
    let mut trap = TrapFile::io(0x440);
    trap.mailbox = Some(r"\_SB.PCI0.S40".into());
    let nic = DeviceFile {
        d3cold: true,
        wakeup: vfio_pm_vmm::config::WakeupMode::Never,
        ..DeviceFile::new(
            r"\_SB.PCI0.S30",
            "0000:00:06.0".parse().unwrap(),
            0x8086,
            0x020000,
        )
    };
    let config = VmmConfig::validate(&ConfigFile::new(trap, vec![nic])).unwrap();
    assert!(config.mailbox().is_some());
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new("0000:41:00.0".parse().unwrap()))
        .build()
        .unwrap();
    let dev: Box<dyn PowerDevice> = Box::new(host.open(host.addresses()[0]).unwrap());
    let clock = ManualClock::new();
    let vpm = VmmPowerManager::builder(config)
        .notifier(RecordingNotifier::new())
        .clock(clock.clone())
        .build(vec![dev])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("shm");
    let mb = Mailbox::create(&shm, 1).unwrap();
    Rig {
        host,
        vpm,
        clock,
        _dir: dir,
        shm,
        mb,
        seq: 0,
    }
}

/// What `\_SB.VPMA` does to the shared memory: REQ = sequence << 8 | value.
fn guest_writes(shm: &Path, slot: usize, word: u32) {
    let f = OpenOptions::new().write(true).open(shm).unwrap();
    f.write_all_at(&word.to_le_bytes(), (slot * SLOT_BYTES) as u64)
        .unwrap();
}

fn ack(shm: &Path, slot: usize) -> u32 {
    let f = OpenOptions::new().read(true).open(shm).unwrap();
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, (slot * SLOT_BYTES + 4) as u64)
        .unwrap();
    u32::from_le_bytes(b)
}

impl Rig {
    fn request(&mut self, value: u8) -> u32 {
        self.seq += 1;
        let word = self.seq << 8 | u32::from(value);
        guest_writes(&self.shm, 0, word);
        word
    }
    fn engaged(&self) -> bool {
        self.host
            .snapshot(self.host.addresses()[0])
            .unwrap()
            .engaged
    }
}

#[test]
fn off_engages_on_exits_and_each_reply_follows_the_host_call() {
    let mut r = rig();
    let off = r.request(0x00);
    let replies = r.vpm.serve_mailbox(&r.mb).unwrap();
    assert_eq!(replies.len(), 1);
    let out = replies[0].result.as_ref().unwrap();
    assert_eq!(out.request.action, PowerAction::PowerOff);
    assert!(matches!(out.outcome, RequestOutcome::Entered(_)));
    assert!(r.engaged());
    assert_eq!(ack(&r.shm, 0), off, "the reply copies the request");
    // Nothing pending: a second serve (another doorbell) does nothing.
    assert!(r.vpm.serve_mailbox(&r.mb).unwrap().is_empty());

    r.clock.advance(Duration::from_secs(1));
    let on = r.request(0x80);
    let replies = r.vpm.serve_mailbox(&r.mb).unwrap();
    assert_eq!(
        replies[0].result.as_ref().unwrap().outcome,
        RequestOutcome::Exited
    );
    assert!(!r.engaged(), "EXIT happened before the reply");
    assert_eq!(ack(&r.shm, 0), on);
}

#[test]
fn malformed_words_are_answered_and_change_nothing() {
    let mut r = rig();
    // Reserved bit 6, a value naming slot 5 in slot 0's place, a slot without a device.
    for value in [0x40u8, 0x05, 0x85] {
        let word = r.request(value);
        let replies = r.vpm.serve_mailbox(&r.mb).unwrap();
        assert_eq!(replies.len(), 1, "{value:#x}");
        let e = replies[0].result.as_ref().unwrap_err();
        assert!(e.is_guest_error(), "{value:#x}: {e}");
        assert_eq!(ack(&r.shm, 0), word, "answered, so the guest does not wait");
        assert!(!r.engaged());
    }
    assert_eq!(r.vpm.stats(Slot(0)).unwrap().entries, 0);
}

#[test]
fn a_flood_of_requests_stays_within_the_anti_thrash_bound() {
    let mut r = rig();
    // 10,000 alternating requests with no time passing: the first _OFF engages, every later
    // _OFF is postponed (min residency) and cancelled by the next _ON.
    for i in 0..10_000u32 {
        r.request(if i % 2 == 0 { 0x00 } else { 0x80 });
        r.vpm.serve_mailbox(&r.mb).unwrap();
    }
    let s = r.vpm.stats(Slot(0)).unwrap();
    assert!(s.entries <= 1 && s.exits <= 1, "{s:?}");
    assert!(!r.engaged(), "the last request was _ON");
}

#[test]
fn a_request_made_while_the_host_side_was_away_is_served_on_start() {
    let mut r = rig();
    let off = r.request(0x00);
    // The agent restarts: a new Mailbox over the same file finds the request.
    let reopened = Mailbox::open(&r.shm, 1).unwrap();
    let replies = r.vpm.serve_mailbox(&reopened).unwrap();
    assert_eq!(replies.len(), 1);
    assert!(r.engaged());
    assert_eq!(ack(&r.shm, 0), off);
}
