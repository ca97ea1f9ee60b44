//! The trap register: what the generated `_ON`/`_OFF` methods write, and the VMM-side decoder.
//!
//! # Encoding
//!
//! Every power resource method performs exactly one write of the configured width to the trap
//! register. The value (zero-extended to the access width, little endian) is:
//!
//! ```text
//!   bit 7      action: 1 = _ON (power the device up), 0 = _OFF (power it down)
//!   bit 6      reserved, always 0 (a write with it set is malformed)
//!   bits 0..5  device slot: the device's index in the configuration's `devices` (0..=63)
//!   bits 8..   reserved, always 0 (wider registers only)
//! ```
//!
//! So with a one-byte I/O port (the default), `_OFF` of slot 0 writes `0x00` and `_ON` of slot 0
//! writes `0x80`; `_ON` of slot 5 writes `0x85`. One event is one byte, which is what QEMU's
//! `isa-debugcon` records: [`TrapDecoder::decode_stream`] decodes such a capture.
//!
//! The generator ([`crate::aml`]) takes its values from [`encode`], and the decoder is
//! its inverse, so the two cannot drift.
//!
//! The power state the guest sees in the power resource's `_STA` is kept in the AML itself (a
//! `Name` updated by `_ON`/`_OFF`), so the VMM never has to answer reads of the trap register: a VMM
//! may return zeros ([`TrapDecoder::read_value`]).

use crate::config::{TrapSpace, VmmConfig};
use crate::request::{GuestRequest, PowerAction, Slot};
use vfio_pm::PciAddress;

/// Number of device slots the encoding has.
pub const MAX_SLOTS: usize = 64;
/// Bit 7: set for power on.
pub const ACTION_ON: u64 = 0x80;
/// Bit 6 and bits 8 and up: must be zero.
pub const RESERVED_MASK: u64 = !0xbf;
/// Bits 0..5: the device slot.
pub const SLOT_MASK: u64 = 0x3f;

/// The register value for `request` (see the module docs). The slot must fit the encoding
/// (`< MAX_SLOTS`, which the configuration guarantees); higher bits are masked off.
pub fn encode(request: GuestRequest) -> u64 {
    let on = match request.action {
        PowerAction::PowerOn => ACTION_ON,
        PowerAction::PowerOff => 0,
    };
    on | (u64::from(request.slot.index()) & SLOT_MASK)
}

/// A malformed trap access. Guest-controlled: never a panic, always one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrapError {
    /// An access in the other address space.
    #[error("trap access in {got:?} space, the trap register is in {expected:?} space")]
    WrongSpace {
        /// Configured space.
        expected: TrapSpace,
        /// Space of the access.
        got: TrapSpace,
    },
    /// An access that does not start at the trap register.
    #[error("trap access at {got:#x}, the trap register is at {expected:#x}")]
    WrongAddress {
        /// Configured address.
        expected: u64,
        /// Address of the access.
        got: u64,
    },
    /// An access of another width.
    #[error("trap access of {got} bytes, the trap register is {expected} bytes wide")]
    WrongWidth {
        /// Configured width.
        expected: u8,
        /// Width of the access.
        got: usize,
    },
    /// Reserved bits set.
    #[error("trap value {value:#x} has reserved bits set ({reserved:#x})")]
    ReservedBits {
        /// The value.
        value: u64,
        /// The reserved bits that were set.
        reserved: u64,
    },
    /// A slot beyond the configured devices.
    #[error("trap value {value:#x} names slot {slot}, but only {devices} devices are configured")]
    UnknownSlot {
        /// The value.
        value: u64,
        /// The slot.
        slot: u8,
        /// Configured devices.
        devices: usize,
    },
    /// A configured device without a power resource (d3cold = false): its AML never writes.
    #[error("trap value {value:#x} names slot {slot} ({address}), which has no power resource (d3cold = false)")]
    NoPowerResource {
        /// The value.
        value: u64,
        /// The slot.
        slot: u8,
        /// The device.
        address: PciAddress,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SlotInfo {
    address: PciAddress,
    d3cold: bool,
}

/// Decodes guest writes to the trap register of one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrapDecoder {
    space: TrapSpace,
    address: u64,
    width: u8,
    slots: Vec<SlotInfo>,
}

impl TrapDecoder {
    /// A decoder for `config`'s trap register and devices.
    pub fn new(config: &VmmConfig) -> Self {
        let trap = config.trap();
        Self {
            space: trap.space,
            address: trap.address,
            width: trap.width,
            slots: config
                .devices()
                .iter()
                .map(|d| SlotInfo {
                    address: d.pci_address,
                    d3cold: d.d3cold,
                })
                .collect(),
        }
    }

    /// The trap register's space.
    pub fn space(&self) -> TrapSpace {
        self.space
    }

    /// The trap register's port or address.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// The trap register's width in bytes.
    pub fn width(&self) -> u8 {
        self.width
    }

    /// Whether an access at `addr` touches the trap register at all (for a VMM's bus dispatch).
    pub fn claims(&self, space: TrapSpace, addr: u64, len: usize) -> bool {
        let end = addr.saturating_add(len.max(1) as u64 - 1);
        let last = self.address + u64::from(self.width) - 1;
        space == self.space && addr <= last && end >= self.address
    }

    /// The PCI address of a slot's device.
    pub fn pci_address(&self, slot: Slot) -> Option<PciAddress> {
        self.slots.get(slot.index() as usize).map(|s| s.address)
    }

    /// Decodes one guest write: `space` and `addr` of the access, `data` the bytes written (little
    /// endian, its length is the access width).
    pub fn decode(
        &self,
        space: TrapSpace,
        addr: u64,
        data: &[u8],
    ) -> Result<GuestRequest, TrapError> {
        if space != self.space {
            return Err(TrapError::WrongSpace {
                expected: self.space,
                got: space,
            });
        }
        if addr != self.address {
            return Err(TrapError::WrongAddress {
                expected: self.address,
                got: addr,
            });
        }
        if data.len() != usize::from(self.width) {
            return Err(TrapError::WrongWidth {
                expected: self.width,
                got: data.len(),
            });
        }
        let value = data
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        self.decode_value(value)
    }

    /// Decodes a register value (space, address and width already checked by the caller).
    pub fn decode_value(&self, value: u64) -> Result<GuestRequest, TrapError> {
        let reserved = value & RESERVED_MASK;
        if reserved != 0 {
            return Err(TrapError::ReservedBits { value, reserved });
        }
        let slot = (value & SLOT_MASK) as u8;
        let info = self
            .slots
            .get(usize::from(slot))
            .ok_or(TrapError::UnknownSlot {
                value,
                slot,
                devices: self.slots.len(),
            })?;
        if !info.d3cold {
            return Err(TrapError::NoPowerResource {
                value,
                slot,
                address: info.address,
            });
        }
        let action = if value & ACTION_ON != 0 {
            PowerAction::PowerOn
        } else {
            PowerAction::PowerOff
        };
        Ok(GuestRequest {
            slot: Slot(u32::from(slot)),
            action,
        })
    }

    /// Decodes a capture of consecutive writes (for example the file QEMU's `isa-debugcon` writes):
    /// the bytes are split into width-sized little-endian values. A trailing partial value is a
    /// [`TrapError::WrongWidth`].
    pub fn decode_stream(&self, bytes: &[u8]) -> Vec<Result<GuestRequest, TrapError>> {
        let width = usize::from(self.width.max(1));
        bytes
            .chunks(width)
            .map(|chunk| {
                if chunk.len() != width {
                    return Err(TrapError::WrongWidth {
                        expected: self.width,
                        got: chunk.len(),
                    });
                }
                let value = chunk
                    .iter()
                    .rev()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                self.decode_value(value)
            })
            .collect()
    }

    /// What a guest read of the trap register returns: always 0 (the AML keeps the power state in
    /// a `Name`, it never reads the register).
    pub fn read_value(&self) -> u64 {
        0
    }
}
