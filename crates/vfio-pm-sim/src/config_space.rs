//! The device's PCI config space as seen through the VFIO config region: an e1000e-like
//! header and capability list, with the PM capability's virtualization
//! (`vfio_pm_config_write` in drivers/vfio/pci/vfio_pci_config.c; docs/kernel-behaviour.md,
//! *Reset, PMCSR, SR-IOV*).
//!
//! Simplified: only the command register and PMCSR are writable; every other write is dropped
//! (vfio-pci virtualizes most of the header; the scenarios only write PMCSR).

use vfio_pm::PowerState;

/// Size of a PCIe config space.
pub(crate) const CONFIG_SIZE: usize = 4096;
/// Where the PM capability sits (as in QEMU's e1000e).
pub(crate) const PM_CAP_OFFSET: usize = 0xc8;
const COMMAND: usize = 0x04;
const COMMAND_MEMORY: u16 = 1 << 1;
const PMCSR_STATE_MASK: u16 = 0x3;
const PMCSR_PME_ENABLE: u16 = 1 << 8;
const PMCSR_PME_STATUS: u16 = 1 << 15;

/// A write to PMCSR asked for this power state (the state bits, 0..=3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PmcsrRequest(pub(crate) u8);

/// The config space bytes plus where PMCSR is.
#[derive(Clone, Debug)]
pub(crate) struct ConfigSpace {
    bytes: Vec<u8>,
    pmcsr: Option<usize>,
}

impl ConfigSpace {
    /// An e1000e (8086:10d3) with capabilities MSI-X (0xa0) → PM (0xc8, optional) → MSI (0xd0)
    /// → PCIe (0xe0), memory decoding enabled as after `pci_enable_device`.
    pub(crate) fn e1000e(pm_capability: bool) -> Self {
        let mut b = vec![0u8; CONFIG_SIZE];
        put16(&mut b, 0x00, 0x8086);
        put16(&mut b, 0x02, 0x10d3);
        put16(&mut b, COMMAND, 0x0006); // memory + bus master
        put16(&mut b, 0x06, 0x0010); // capability list
        b[0x0b] = 0x02; // network controller
        put32(&mut b, 0x10, 0xfebc_0000); // BAR0, 32-bit memory
        b[0x34] = 0xa0;
        // MSI-X
        b[0xa0] = 0x11;
        b[0xa1] = if pm_capability { 0xc8 } else { 0xd0 };
        if pm_capability {
            b[PM_CAP_OFFSET] = 0x01;
            b[PM_CAP_OFFSET + 1] = 0xd0;
            put16(&mut b, PM_CAP_OFFSET + 2, 0x0022); // PM 1.1, DSI; PME_Support virtualized 0
        }
        // MSI
        b[0xd0] = 0x05;
        b[0xd1] = 0xe0;
        // PCI Express
        b[0xe0] = 0x10;
        b[0xe1] = 0x00;
        Self {
            bytes: b,
            pmcsr: pm_capability.then_some(PM_CAP_OFFSET + 4),
        }
    }

    /// Whether offset..offset+len lies inside config space (else the kernel says EFAULT).
    pub(crate) fn in_range(offset: u64, len: usize) -> bool {
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= CONFIG_SIZE as u64)
    }

    /// Reads `buf.len()` bytes at `offset` (in range). PMCSR state bits come from the
    /// hardware state `power`; PME_En and PME_Status read as 0 (virtualized, Part 1).
    pub(crate) fn read(&self, offset: usize, buf: &mut [u8], power: &PowerState) {
        let mut view = self.bytes.clone();
        if let Some(p) = self.pmcsr {
            let mut v = get16(&view, p) & !(PMCSR_STATE_MASK | PMCSR_PME_ENABLE | PMCSR_PME_STATUS);
            v |= state_bits(power);
            put16(&mut view, p, v);
        }
        if let Some(src) = view.get(offset..offset + buf.len()) {
            buf.copy_from_slice(src);
        }
    }

    /// Writes `data` at `offset` (in range), chunked like `vfio_pci_config_rw` (naturally
    /// aligned 4/2/1-byte accesses). Returns the PMCSR state request if a chunk starts at PMCSR.
    pub(crate) fn write(&mut self, offset: usize, data: &[u8]) -> Option<PmcsrRequest> {
        let mut request = None;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let n = if rest.len() >= 4 && pos % 4 == 0 {
                4
            } else if rest.len() >= 2 && pos % 2 == 0 {
                2
            } else {
                1
            };
            let (chunk, tail) = rest.split_at(n);
            if Some(pos) == self.pmcsr {
                request = Some(PmcsrRequest(chunk[0] & PMCSR_STATE_MASK as u8));
            }
            for (i, byte) in chunk.iter().enumerate() {
                let at = pos + i;
                if at == COMMAND || at == COMMAND + 1 {
                    self.bytes[at] = *byte;
                }
            }
            pos += n;
            rest = tail;
        }
        request
    }

    /// The (virtual) command register's memory-decode bit.
    pub(crate) fn memory_enabled(&self) -> bool {
        get16(&self.bytes, COMMAND) & COMMAND_MEMORY != 0
    }
}

/// PMCSR state bits for a power state.
fn state_bits(power: &PowerState) -> u16 {
    match power {
        PowerState::D1 => 1,
        PowerState::D2 => 2,
        PowerState::D3Hot | PowerState::D3Cold => 3,
        _ => 0,
    }
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pmcsr_reads_hardware_state_and_hides_pme_bits() {
        let mut c = ConfigSpace::e1000e(true);
        let p = PM_CAP_OFFSET + 4;
        assert_eq!(c.write(p, &[0x03, 0x81]), Some(PmcsrRequest(3)));
        let mut buf = [0u8; 2];
        c.read(p, &mut buf, &PowerState::D3Hot);
        assert_eq!(u16::from_le_bytes(buf), 3);
        c.read(p, &mut buf, &PowerState::D0);
        assert_eq!(u16::from_le_bytes(buf), 0);
        // A write starting inside PMCSR's high byte is not a PMCSR state write.
        assert_eq!(c.write(p + 1, &[0x03]), None);
    }

    #[test]
    fn command_register_controls_memory_decode() {
        let mut c = ConfigSpace::e1000e(false);
        assert!(c.memory_enabled());
        c.write(COMMAND, &[0x04, 0x00]);
        assert!(!c.memory_enabled());
        assert!(ConfigSpace::in_range(4095, 1));
        assert!(!ConfigSpace::in_range(4095, 2));
        assert!(!ConfigSpace::in_range(u64::MAX, 2));
    }
}
