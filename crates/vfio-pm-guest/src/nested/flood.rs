//! The flood step of the `nested-guest` phase (`vfiopm.flood=SECS` on L2's kernel command
//! line): a hostile guest that bypasses its AML and drives the acknowledged mailbox
//! ([`vfio_pm_vmm::mailbox`]) and its doorbell directly, as fast as it can.
//!
//! For the window it writes slot 0's `REQ` with valid `_ON`/`_OFF` words, the sequence advanced
//! each time exactly as `\_SB.VPMA` advances it (`(REQ >> 8) + 1`), and rings the doorbell after
//! each write; every [`HOSTILE_EVERY`]-th write is a hostile one instead ([`Hostile`]). At the
//! end it leaves the mailbox consistent with what L2's kernel believes (the device is off): one
//! last valid `_OFF`, rung, and waited for until the host has acknowledged it.
//!
//! Checks: `l2-flood-mailbox`, `l2-flood-doorbell`, `l2-flood-acked`,
//! `l2-flood-device-still-d3cold`; one line
//! `VFIOPM INFO nested flood secs=S mailbox_writes=N doorbell_writes=M hostile_words=K`.

use crate::checks::observe_stable;
use crate::context::cmdline_value;
use crate::report::Reporter;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant};
use vfio_pm::{PowerState, RuntimeStatus, SysfsDevice};
use vfio_pm_vmm::mailbox::{MAILBOX_BYTES, SLOT_BYTES};
use vfio_pm_vmm::trap::{self, ACTION_ON, SLOT_MASK};
use vfio_pm_vmm::{GuestRequest, PowerAction, Slot};

/// The longest flood accepted.
pub const MAX_FLOOD: Duration = Duration::from_secs(30);
/// ivshmem's PCI vendor (Red Hat / virtio) ...
pub const IVSHMEM_VENDOR: u16 = 0x1af4;
/// ... and device ID (`ivshmem-plain`, QEMU's docs/specs/ivshmem-spec.rst).
pub const IVSHMEM_DEVICE: u16 = 0x1110;
/// The doorbell's I/O port: `vfio-pm qemu --trap-port`'s default, the port of the harness's
/// SSDT (examples/qemu-e1000e.toml).
pub const DOORBELL_PORT: u16 = 0x440;
/// Every this many writes, one is hostile.
pub const HOSTILE_EVERY: u64 = 8;
/// The byte offset of a slot's `ACK` word (after its `REQ`).
pub const ACK_OFFSET: usize = 4;
/// How long the host may take to acknowledge the final `_OFF`.
const ACK_LIMIT: Duration = Duration::from_secs(20);
/// The SSDT's only slot (the passed-through device).
const SLOT: u32 = 0;

/// The flood's length from the kernel command line: `vfiopm.flood=SECS`, at most
/// [`MAX_FLOOD`]; zero (no flood) when absent or not a number.
pub fn flood_secs(cmdline: &str) -> Duration {
    cmdline_value(cmdline, "vfiopm.flood")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::ZERO)
        .min(MAX_FLOOD)
}

/// The request word after `prev` for trap value `value`, as `\_SB.VPMA` computes it:
/// `(((prev >> 8) + 1) << 8 | value) & 0xFFFFFFFF` (the sequence wraps at 24 bits).
pub fn next_req(prev: u32, value: u8) -> u32 {
    ((prev >> 8).wrapping_add(1) << 8) | u32::from(value)
}

/// The trap value of `_ON` (`on`) or `_OFF` of slot 0 ([`trap::encode`]).
pub fn slot0_value(on: bool) -> u8 {
    let action = if on {
        PowerAction::PowerOn
    } else {
        PowerAction::PowerOff
    };
    // encode() keeps bit 7 and bits 0-5: always a byte.
    trap::encode(GuestRequest {
        slot: Slot(SLOT),
        action,
    }) as u8
}

/// The word that ends the flood: a valid `_OFF` of slot 0 after `prev`, matching L2's kernel's
/// belief that the idle device is off.
pub fn restore_word(prev: u32) -> u32 {
    next_req(prev, slot0_value(false))
}

/// What a hostile write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hostile {
    /// Slot 0's `REQ` with the reserved bit 6 set in its trap value.
    ReservedBit,
    /// Slot 0's `REQ` naming a slot the configuration does not have (1..=63).
    UnknownSlot,
    /// A word in a slot the SSDT does not have (slots 1.. of the page, also past
    /// [`vfio_pm_vmm::trap::MAX_SLOTS`]).
    ForeignSlot,
    /// Garbage in slot 0's `ACK` (the host's word).
    AckScribble,
}

const HOSTILE_KINDS: [Hostile; 4] = [
    Hostile::ReservedBit,
    Hostile::UnknownSlot,
    Hostile::ForeignSlot,
    Hostile::AckScribble,
];

/// One write of the flood: `value` at byte `offset` of the shared page, then `doorbell` to the
/// trap port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxWrite {
    /// Byte offset in the page (a multiple of 4).
    pub offset: usize,
    /// The 32-bit word written (little endian, as the AML's DWord field).
    pub value: u32,
    /// The byte rung on the doorbell afterwards.
    pub doorbell: u8,
    /// `None` for a valid request.
    pub hostile: Option<Hostile>,
}

/// Generates the flood's writes: valid slot-0 requests alternating `_ON`/`_OFF`, and every
/// [`HOSTILE_EVERY`]-th write a hostile one (the kinds in turn).
#[derive(Debug)]
pub struct WordGen {
    step: u64,
    on: bool,
    rng: fastrand::Rng,
}

impl WordGen {
    /// A generator whose garbage comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            step: 0,
            on: true,
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// The next write, given slot 0's current `REQ` (the sequence continues from whatever is
    /// there, as the AML's does).
    pub fn next(&mut self, req: u32) -> MailboxWrite {
        self.step += 1;
        if self.step % HOSTILE_EVERY == 0 {
            let kind = HOSTILE_KINDS[((self.step / HOSTILE_EVERY) % 4) as usize];
            return self.hostile(kind, req);
        }
        let value = slot0_value(self.on);
        self.on = !self.on;
        MailboxWrite {
            offset: 0,
            value: next_req(req, value),
            doorbell: value,
            hostile: None,
        }
    }

    fn hostile(&mut self, kind: Hostile, req: u32) -> MailboxWrite {
        let (offset, value, doorbell) = match kind {
            Hostile::ReservedBit => {
                let v = 0x40 | (self.rng.u8(..) & (ACTION_ON as u8 | SLOT_MASK as u8));
                (0, next_req(req, v), v)
            }
            Hostile::UnknownSlot => {
                let slot = self.rng.u8(1..=SLOT_MASK as u8);
                let v = (self.rng.u8(..) & ACTION_ON as u8) | slot;
                (0, next_req(req, v), v)
            }
            Hostile::ForeignSlot => {
                let slots = MAILBOX_BYTES as usize / SLOT_BYTES;
                let slot = self.rng.usize(1..slots);
                let half = self.rng.usize(..2) * ACK_OFFSET;
                (slot * SLOT_BYTES + half, self.rng.u32(..), self.rng.u8(..))
            }
            Hostile::AckScribble => (ACK_OFFSET, self.rng.u32(..), self.rng.u8(..)),
        };
        MailboxWrite {
            offset,
            value,
            doorbell,
            hostile: Some(kind),
        }
    }
}

/// Whether sysfs `vendor` and `device` texts (`0x1af4\n`) name an ivshmem device.
pub fn is_ivshmem(vendor: &str, device: &str) -> bool {
    let id = |s: &str| u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok();
    id(vendor) == Some(IVSHMEM_VENDOR) && id(device) == Some(IVSHMEM_DEVICE)
}

/// The first ivshmem device under `devices` (`/sys/bus/pci/devices`).
pub fn find_ivshmem(devices: &Path) -> Result<PathBuf, String> {
    let entries = std::fs::read_dir(devices).map_err(|e| format!("{}: {e}", devices.display()))?;
    let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    dirs.sort();
    dirs.into_iter()
        .find(|d| {
            let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
            is_ivshmem(&read("vendor"), &read("device"))
        })
        .ok_or_else(|| {
            format!(
                "no ivshmem-plain device ({IVSHMEM_VENDOR:04x}:{IVSHMEM_DEVICE:04x}) under {}: \
                 the flood needs the mailbox of `vfio-pm qemu`",
                devices.display()
            )
        })
}

/// A shared read-write mapping of the mailbox page (ivshmem's BAR2 through sysfs `resource2`).
struct SharedPage {
    ptr: NonNull<std::ffi::c_void>,
}

/// The mapping's length.
const PAGE: usize = MAILBOX_BYTES as usize;

impl SharedPage {
    fn map(dev: &Path) -> Result<Self, String> {
        let path = dev.join("resource2");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size < MAILBOX_BYTES {
            return Err(format!(
                "{} has {size} bytes, the mailbox needs {MAILBOX_BYTES}",
                path.display()
            ));
        }
        let len = std::num::NonZeroUsize::new(PAGE).ok_or("page size")?;
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        // SAFETY: FFI. A new shared mapping of the first page of BAR2 at an address the kernel
        // chooses; only accessed through `read`/`write` below (bounds-checked) and unmapped in
        // `drop`.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| format!("mmap {}: {e}", path.display()))?;
        Ok(Self { ptr })
    }

    fn word(&self, offset: usize) -> Option<*mut u32> {
        (offset % 4 == 0 && offset + 4 <= PAGE).then(|| {
            self.ptr
                .as_ptr()
                .cast::<u8>()
                .wrapping_add(offset)
                .cast::<u32>()
        })
    }

    fn read(&self, offset: usize) -> Option<u32> {
        let p = self.word(offset)?;
        // SAFETY: `p` is 4-byte aligned and inside the live PAGE-byte mapping (checked by
        // `word`); the guest's memory may change under us, hence volatile.
        Some(u32::from_le(unsafe { std::ptr::read_volatile(p) }))
    }

    fn write(&self, offset: usize, value: u32) -> bool {
        let Some(p) = self.word(offset) else {
            return false;
        };
        // SAFETY: as in `read`; the mapping is writable (PROT_WRITE, MAP_SHARED).
        unsafe { std::ptr::write_volatile(p, value.to_le()) };
        true
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: FFI; the mapping made in `map`, unmapped once, not used afterwards.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, PAGE) };
    }
}

/// Counts of one flood.
#[derive(Debug, Default)]
struct Counts {
    mailbox: u64,
    doorbell: u64,
    hostile: u64,
}

/// Rings `value` on the doorbell port through `/dev/port`.
fn ring(port: &File, value: u8) -> std::io::Result<()> {
    port.write_all_at(&[value], u64::from(DOORBELL_PORT))
}

/// The flood proper, for `secs`; a doorbell error ends it early.
fn flood(page: &SharedPage, port: &File, secs: Duration) -> (Counts, Option<String>) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut gen = WordGen::new(seed);
    let mut n = Counts::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        let req = page.read(0).unwrap_or(0);
        let w = gen.next(req);
        if page.write(w.offset, w.value) {
            n.mailbox += 1;
            n.hostile += u64::from(w.hostile.is_some());
        }
        if let Err(e) = ring(port, w.doorbell) {
            return (
                n,
                Some(format!("doorbell 0x{DOORBELL_PORT:x} via /dev/port: {e}")),
            );
        }
        n.doorbell += 1;
    }
    (n, None)
}

/// The final valid `_OFF`, rung and waited for: `Ok(time)` when `ACK == REQ` within the bound.
fn restore(page: &SharedPage, port: &File) -> Result<Duration, String> {
    let word = restore_word(page.read(0).unwrap_or(0));
    page.write(0, word);
    ring(port, slot0_value(false)).map_err(|e| format!("doorbell: {e}"))?;
    let start = Instant::now();
    loop {
        let ack = page.read(ACK_OFFSET).unwrap_or(!word);
        if ack == word {
            return Ok(start.elapsed());
        }
        if start.elapsed() > ACK_LIMIT {
            return Err(format!(
                "REQ {word:#010x}, ACK {ack:#010x} after {ACK_LIMIT:?} (no host acknowledged)"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the step for `secs` (non-zero) against the idle device `sys`.
pub fn run(sys: &SysfsDevice, r: &mut Reporter, secs: Duration) {
    let page = find_ivshmem(Path::new("/sys/bus/pci/devices"))
        .and_then(|dev| SharedPage::map(&dev).map(|p| (dev, p)));
    let (dev, page) = match page {
        Ok(p) => p,
        Err(e) => {
            r.check("l2-flood-mailbox", false, e);
            return;
        }
    };
    r.check(
        "l2-flood-mailbox",
        true,
        format!("{}/resource2 mapped ({PAGE} bytes)", dev.display()),
    );
    let port = match std::fs::OpenOptions::new().write(true).open("/dev/port") {
        Ok(f) => f,
        Err(e) => {
            r.check("l2-flood-doorbell", false, format!("/dev/port: {e}"));
            return;
        }
    };
    let (n, err) = flood(&page, &port, secs);
    r.check(
        "l2-flood-doorbell",
        err.is_none(),
        err.unwrap_or_else(|| format!("{} rings of port 0x{DOORBELL_PORT:x}", n.doorbell)),
    );
    let acked = restore(&page, &port);
    r.check(
        "l2-flood-acked",
        acked.is_ok(),
        match &acked {
            Ok(t) => format!("final _OFF acknowledged after {t:.1?}"),
            Err(e) => e.clone(),
        },
    );
    r.info(
        "nested",
        format!(
            "flood secs={} mailbox_writes={} doorbell_writes={} hostile_words={}",
            secs.as_secs(),
            n.mailbox,
            n.doorbell,
            n.hostile
        ),
    );
    let now = observe_stable(sys);
    r.check(
        "l2-flood-device-still-d3cold",
        now.as_ref().is_ok_and(|o| {
            o.power_state == PowerState::D3Cold && o.runtime_status == RuntimeStatus::Suspended
        }),
        format!("{now:?} (want D3cold suspended: L2's runtime PM undisturbed)"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_pm_vmm::config::VmmConfig;
    use vfio_pm_vmm::trap::{TrapDecoder, TrapError, MAX_SLOTS};

    /// The harness's configuration: one device (slot 0) with power resources, trap port 0x440.
    fn decoder() -> TrapDecoder {
        let text = include_str!("../../../../examples/qemu-e1000e.toml");
        TrapDecoder::new(&VmmConfig::from_toml_str(text).unwrap())
    }

    #[test]
    fn the_flood_length_comes_from_the_command_line_clamped() {
        assert_eq!(flood_secs("quiet"), Duration::ZERO);
        assert_eq!(flood_secs("vfiopm.flood=5 quiet"), Duration::from_secs(5));
        assert_eq!(flood_secs("vfiopm.flood=3600"), MAX_FLOOD);
        assert_eq!(flood_secs("vfiopm.flood=-1"), Duration::ZERO);
        assert_eq!(flood_secs("vfiopm.flood=x vfiopm.floods=9"), Duration::ZERO);
    }

    #[test]
    fn the_doorbell_is_the_configured_trap_port() {
        assert_eq!(decoder().address(), u64::from(DOORBELL_PORT));
        assert_eq!(decoder().width(), 1);
    }

    #[test]
    fn the_sequence_advances_as_the_aml_does_and_wraps_at_24_bits() {
        assert_eq!(next_req(0, 0x80), 0x180);
        assert_eq!(next_req(0x0000_0180, 0x00), 0x200);
        assert_eq!(next_req(0x1234_56c5, 0x80), 0x1234_5780);
        assert_eq!(next_req(0xffff_ff80, 0x00), 0x0000_0000);
        assert_eq!(restore_word(0x0000_0a80), 0x0000_0b00);
    }

    #[test]
    fn valid_words_are_slot0_on_off_alternating_with_advancing_sequence() {
        let d = decoder();
        let mut g = WordGen::new(7);
        let mut req = 0u32;
        let mut last_on = None;
        let mut valid = 0;
        for _ in 0..200 {
            let w = g.next(req);
            if w.hostile.is_some() {
                if w.offset == 0 {
                    req = w.value;
                }
                continue;
            }
            valid += 1;
            assert_eq!(w.offset, 0);
            assert_eq!(w.value >> 8, (req >> 8) + 1, "sequence advanced");
            assert_eq!((w.value & 0xff) as u8, w.doorbell);
            let got = d.decode_value(u64::from(w.value & 0xff)).unwrap();
            assert_eq!(got.slot, Slot(0));
            let on = got.action == PowerAction::PowerOn;
            assert_ne!(Some(on), last_on, "alternates");
            last_on = Some(on);
            req = w.value;
        }
        assert_eq!(valid, 200 - 200 / HOSTILE_EVERY);
    }

    #[test]
    fn hostile_words_are_what_they_claim() {
        let d = decoder();
        let mut g = WordGen::new(42);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4000 {
            let w = g.next(0x0000_0500);
            let Some(kind) = w.hostile else { continue };
            seen.insert(format!("{kind:?}"));
            assert!(w.offset % 4 == 0 && w.offset + 4 <= PAGE);
            match kind {
                Hostile::ReservedBit => {
                    assert_eq!((w.offset, w.value >> 8), (0, 6));
                    let e = d.decode_value(u64::from(w.value & 0xff));
                    assert!(matches!(e, Err(TrapError::ReservedBits { .. })), "{e:?}");
                }
                Hostile::UnknownSlot => {
                    assert_eq!((w.offset, w.value >> 8), (0, 6));
                    let e = d.decode_value(u64::from(w.value & 0xff));
                    assert!(matches!(e, Err(TrapError::UnknownSlot { .. })), "{e:?}");
                    assert_eq!(e, d.decode_value(u64::from(w.doorbell)));
                }
                Hostile::ForeignSlot => {
                    let slot = w.offset / SLOT_BYTES;
                    assert!((1..PAGE / SLOT_BYTES).contains(&slot));
                    assert!(d.pci_address(Slot(slot as u32)).is_none());
                }
                Hostile::AckScribble => assert_eq!(w.offset, ACK_OFFSET),
            }
        }
        assert_eq!(seen.len(), 4, "every kind: {seen:?}");
        // Foreign slots reach past the encoding's 64 too.
        let mut g = WordGen::new(1);
        let far = (0..20000)
            .map(|_| g.next(0))
            .filter(|w| w.hostile == Some(Hostile::ForeignSlot))
            .any(|w| w.offset / SLOT_BYTES >= MAX_SLOTS);
        assert!(far);
    }

    #[test]
    fn ivshmem_is_recognised_by_its_ids() {
        assert!(is_ivshmem("0x1af4\n", "0x1110\n"));
        assert!(!is_ivshmem("0x1af4\n", "0x1000\n"));
        assert!(!is_ivshmem("0x8086\n", "0x1110\n"));
        assert!(!is_ivshmem("", "garbage"));
    }

    #[test]
    fn find_ivshmem_scans_a_sysfs_like_tree() {
        let dir = tempfile::tempdir().unwrap();
        let dev = |name: &str, v: &str, d: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("vendor"), v).unwrap();
            std::fs::write(p.join("device"), d).unwrap();
        };
        dev("0000:00:06.0", "0x8086\n", "0x10d3\n");
        assert!(find_ivshmem(dir.path()).unwrap_err().contains("no ivshmem"));
        dev("0000:00:1e.0", "0x1af4\n", "0x1110\n");
        assert_eq!(
            find_ivshmem(dir.path()).unwrap(),
            dir.path().join("0000:00:1e.0")
        );
        assert!(find_ivshmem(&dir.path().join("missing")).is_err());
    }
}
