//! The acknowledged mailbox: a trap with a reply that stock QEMU can carry.
//!
//! A posted trap write (an I/O port QEMU's `isa-debugcon` forwards to a chardev) cannot tell the
//! guest when the host has acted, but `_ON` must not return before the host's LOW_POWER_EXIT has
//! finished: while low power is engaged the kernel answers an access to the device's BAR mmap
//! with SIGBUS (`vfio_pci_mmap_fault` in drivers/vfio/pci/vfio_pci_core.c), which kills the VMM.
//! So each power resource method also writes a request word into shared memory (the BAR2 of an
//! `ivshmem-plain` device, backed by a file the VMM side can read), rings the doorbell, and
//! `_ON` polls the reply word until the host has copied the request into it
//! ([`crate::aml`] generates `\_SB.VPMA`).
//!
//! Layout: slot `n` owns bytes `8n..8n+8` of the shared memory: `REQ` then `ACK`, 32-bit little
//! endian. `REQ = sequence << 8 | trap value` ([`crate::trap`] encoding of the request), the
//! sequence incremented by every call; the host writes `ACK = REQ` once it has handled the
//! request. The state is in memory, not in the doorbell, so a doorbell lost while the host side
//! was down is found by the next scan, and only the latest request of a slot matters.
//!
//! The memory is the guest's: every word is validated, and [`Mailbox`] reads and writes it
//! with `pread`/`pwrite` on the backing file (the page cache pages QEMU maps), never through a
//! mapping.

use crate::request::Slot;
use crate::trap::MAX_SLOTS;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Bytes per slot: `REQ`, `ACK`.
pub const SLOT_BYTES: usize = 8;
/// Size of the shared memory object: one page (ivshmem wants a power of two).
pub const MAILBOX_BYTES: u64 = 4096;

/// One slot's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotWords {
    /// What the guest last asked (`sequence << 8 | trap value`).
    pub req: u32,
    /// What the host last acknowledged.
    pub ack: u32,
}

impl SlotWords {
    /// The trap value carried by the request (low byte).
    pub fn trap_value(&self) -> u64 {
        u64::from(self.req & 0xff)
    }

    /// True when the guest waits for (or has not yet seen) a reply.
    pub fn pending(&self) -> bool {
        self.req != self.ack
    }
}

/// The host side of the shared memory: the backing file of QEMU's memory backend.
#[derive(Debug)]
pub struct Mailbox {
    file: File,
    slots: usize,
}

impl Mailbox {
    /// Creates (or empties) the backing file at `path`, [`MAILBOX_BYTES`] of zeros, mode 0600:
    /// before QEMU starts.
    pub fn create(path: &Path, slots: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.set_len(MAILBOX_BYTES)?;
        Ok(Self::with_file(file, slots))
    }

    /// Opens an existing backing file, keeping what the guest wrote (attaching to a running
    /// QEMU, or a restarted agent). A file shorter than the mailbox is refused.
    pub fn open(path: &Path, slots: usize) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let need = (slots.min(MAX_SLOTS) * SLOT_BYTES) as u64;
        if file.metadata()?.len() < need {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is shorter than the {need}-byte mailbox", path.display()),
            ));
        }
        Ok(Self::with_file(file, slots))
    }

    fn with_file(file: File, slots: usize) -> Self {
        Self {
            file,
            slots: slots.min(MAX_SLOTS),
        }
    }

    /// The slots this mailbox serves (the configured devices, at most [`MAX_SLOTS`]).
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Both words of every slot, in one read.
    pub fn read_all(&self) -> io::Result<Vec<SlotWords>> {
        let mut buf = vec![0u8; self.slots * SLOT_BYTES];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(buf
            .chunks_exact(SLOT_BYTES)
            .map(|c| SlotWords {
                req: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                ack: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect())
    }

    /// The slots whose request waits for a reply, with their words.
    pub fn pending(&self) -> io::Result<Vec<(Slot, SlotWords)>> {
        Ok(self
            .read_all()?
            .into_iter()
            .enumerate()
            .filter(|(_, w)| w.pending())
            .map(|(i, w)| (Slot(i as u32), w))
            .collect())
    }

    /// Replies to `req` of `slot` (`ACK = req`): the guest's `_ON` stops waiting.
    pub fn acknowledge(&self, slot: Slot, req: u32) -> io::Result<()> {
        let i = slot.index() as usize;
        if i >= self.slots {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{slot} is outside the {}-slot mailbox", self.slots),
            ));
        }
        self.file
            .write_all_at(&req.to_le_bytes(), (i * SLOT_BYTES + 4) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_req(path: &Path, slot: usize, req: u32) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(&req.to_le_bytes(), (slot * SLOT_BYTES) as u64)
            .unwrap();
    }

    #[test]
    fn requests_are_pending_until_acknowledged_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm");
        let mb = Mailbox::create(&path, 3).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), MAILBOX_BYTES);
        assert!(mb.pending().unwrap().is_empty());
        write_req(&path, 2, 0x0000_0182); // sequence 1, _ON of slot 2
        let p = mb.pending().unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, Slot(2));
        assert_eq!(p[0].1.trap_value(), 0x82);
        // A restarted host side finds the same request.
        let again = Mailbox::open(&path, 3).unwrap();
        assert_eq!(again.pending().unwrap(), p);
        again.acknowledge(Slot(2), 0x182).unwrap();
        assert!(mb.pending().unwrap().is_empty());
        assert!(mb.acknowledge(Slot(3), 1).is_err());
    }

    #[test]
    fn a_short_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shm");
        std::fs::write(&path, [0u8; 8]).unwrap();
        assert!(Mailbox::open(&path, 4).is_err());
        assert!(Mailbox::open(&path, 1).is_ok());
    }
}
