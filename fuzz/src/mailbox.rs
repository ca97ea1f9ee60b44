//! Target `mailbox`: the acknowledged mailbox's shared memory ([`Mailbox`]), which the guest
//! writes: any file content, any slot count, then the host's scans and replies.
//!
//! Invariants:
//!
//! - opening refuses exactly a file shorter than the slots need; the slot count is capped at
//!   [`MAX_SLOTS`];
//! - a scan reads every slot's `REQ`/`ACK` words as the little-endian bytes the guest wrote,
//!   and the pending slots are exactly those whose words differ;
//! - replying to a pending request makes that slot, and only that slot, stop pending; a reply to
//!   a slot beyond the mailbox is an error and changes nothing;
//! - the trap value a request carries decodes, through the configuration's decoder, to the
//!   request it names or to a typed error: never a panic.

use arbitrary::{Result, Unstructured};
use std::path::Path;
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, VmmConfig};
use vfio_pm_vmm::mailbox::{Mailbox, SlotWords, MAILBOX_BYTES, SLOT_BYTES};
use vfio_pm_vmm::trap::{encode, TrapDecoder, MAX_SLOTS};
use vfio_pm_vmm::Slot;

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((slots, content)) = layout(&mut u) else {
        return;
    };
    let Ok(dir) = crate::sysfs::scratch_dir() else {
        return;
    };
    let path = dir.path().join("mailbox");
    if std::fs::write(&path, &content).is_err() {
        return;
    }
    let opened = Mailbox::open(&path, slots);
    let need = slots.min(MAX_SLOTS) * SLOT_BYTES;
    let Ok(mb) = opened else {
        assert!(
            content.len() < need,
            "a {}-byte file refused for {slots} slots",
            content.len()
        );
        return;
    };
    assert!(
        content.len() >= need,
        "a {}-byte file accepted for {slots} slots",
        content.len()
    );
    assert_eq!(mb.slots(), slots.min(MAX_SLOTS));
    let decoder = decoder(mb.slots());
    let _ = replies(&mut u, &mb, &path, &decoder);
}

fn layout(u: &mut Unstructured) -> Result<(usize, Vec<u8>)> {
    let slots = if u.ratio(1, 16)? {
        u.arbitrary::<u16>()? as usize
    } else {
        u.int_in_range(0..=MAX_SLOTS)?
    };
    let len = if u.ratio(7, 8)? {
        MAILBOX_BYTES as usize
    } else {
        u.int_in_range(0..=MAILBOX_BYTES as usize + 8)?
    };
    let mut content = vec![0u8; len];
    let given = u.bytes(u.len().min(len))?;
    content[..given.len()].copy_from_slice(given);
    Ok((slots, content))
}

/// A decoder for `slots` devices, every one with a power resource.
fn decoder(slots: usize) -> TrapDecoder {
    let devices = (0..slots.max(1))
        .map(|i| {
            let address = vfio_pm::PciAddress::new(0, (i / 32) as u8, (i % 32) as u8, 0)
                .expect("device number below 32");
            DeviceFile {
                d3cold: true,
                wakeup: vfio_pm_vmm::config::WakeupMode::Never,
                ..DeviceFile::new(&format!("\\_SB.PCI0.D{i:03}"), address, 0x10de, 0x030000)
            }
        })
        .collect();
    let config = VmmConfig::validate(&ConfigFile::new(TrapFile::io(0x440), devices))
        .expect("a generated configuration validates");
    TrapDecoder::new(&config)
}

fn words_in(file: &[u8], slots: usize) -> Vec<SlotWords> {
    file[..slots * SLOT_BYTES]
        .chunks_exact(SLOT_BYTES)
        .map(|c| SlotWords {
            req: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            ack: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect()
}

fn replies(u: &mut Unstructured, mb: &Mailbox, path: &Path, dec: &TrapDecoder) -> Result<()> {
    loop {
        let file = std::fs::read(path).expect("the mailbox file is readable");
        let want = words_in(&file, mb.slots());
        let all = mb.read_all().expect("a scan of an open mailbox");
        assert_eq!(all, want, "scan differs from the bytes");
        let pending = mb.pending().expect("a scan of an open mailbox");
        let want_pending: Vec<(Slot, SlotWords)> = want
            .iter()
            .enumerate()
            .filter(|(_, w)| w.req != w.ack)
            .map(|(i, w)| (Slot(i as u32), *w))
            .collect();
        assert_eq!(pending, want_pending);
        for (_, w) in &pending {
            assert!(w.pending());
            if let Ok(req) = dec.decode_value(w.trap_value()) {
                assert_eq!(encode(req), w.trap_value());
                assert!(req.slot.index() < MAX_SLOTS as u32);
            }
        }
        if u.is_empty() {
            return Ok(());
        }
        let slot = Slot(if u.ratio(7, 8)? {
            u.int_in_range(0..=mb.slots() as u32)?
        } else {
            u.arbitrary()?
        });
        let req: u32 = match pending.iter().find(|(s, _)| *s == slot) {
            Some((_, w)) if u.ratio(3, 4)? => w.req,
            _ => u.arbitrary()?,
        };
        let result = mb.acknowledge(slot, req);
        let after = words_in(&std::fs::read(path).expect("readable"), mb.slots());
        if (slot.index() as usize) < mb.slots() {
            assert!(result.is_ok(), "{result:?}");
            for (i, (a, b)) in want.iter().zip(&after).enumerate() {
                if i == slot.index() as usize {
                    assert_eq!((b.req, b.ack), (a.req, req), "slot {i}");
                } else {
                    assert_eq!(a, b, "a reply to {slot} changed slot {i}");
                }
            }
        } else {
            assert!(
                result.is_err(),
                "a reply to {slot} beyond {} slots",
                mb.slots()
            );
            assert_eq!(after, want);
        }
    }
}
