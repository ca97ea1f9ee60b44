//! Target `pm_config`: guest accesses to the emulated PCI PM capability ([`PmCapability`]), the
//! root port's PME registers ([`RootPortPme`]), the ACPI GPE block ([`GpeBlock`]) and the GED
//! event register ([`GedEvents`]), interleaved with host-side wakes and resets.
//!
//! Every step is checked against a small reference model written from the specifications (PCI
//! PM 1.2 §3.2 for the capability, PCIe Base §7.5.3.12-14 for Root Control/Status, ACPI §4.8.1
//! for GPE status/enable), so the invariants are:
//!
//! - an access is accepted exactly when its width is 1, 2 or 4 and it lies inside the register
//!   block; otherwise the [`RegisterError`] describes the access, and nothing changes;
//! - read-only bits never change (Cap ID, next pointer, PMC, No_Soft_Reset, reserved and Data
//!   bits, Root Capabilities, PME Pending and the requester ID as far as the guest goes);
//! - PME_Status (PMCSR bit 15) and Root Status PME Status are write-1-to-clear: a guest write
//!   never sets them, writing 1 clears them, writing 0 leaves them; a cleared root port status
//!   loads the next queued requester;
//! - PowerState takes only D0 and D3hot (D1/D2 writes are discarded), and the write outcome
//!   reports exactly the changes made;
//! - reads of any width equal the little-endian composition of the byte reads;
//! - the root port's pending queue stays bounded ([`ROOT_PME_QUEUE_LEN`]) and without duplicates.

use arbitrary::{Result, Unstructured};
use std::collections::VecDeque;
use vfio_pm_vmm::pme::{
    GedEvents, GpeBlock, PciPowerState, PmCapability, PmCapabilityConfig, PmWriteOutcome,
    RegisterError, RootPmeOutcome, RootPortPme, PMC_PME_D0, PMC_PME_D3COLD, PMC_PME_D3HOT,
    PM_CAP_ID, PM_CAP_LEN, ROOT_CONTROL_OFFSET, ROOT_PME_QUEUE_LEN,
};

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = cap_config(&mut u) else {
        return;
    };
    let mut rig = Rig::new(config);
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else {
            return;
        };
        rig.apply(op);
        rig.compare();
    }
}

fn cap_config(u: &mut Unstructured) -> Result<PmCapabilityConfig> {
    Ok(PmCapabilityConfig {
        next_ptr: u.arbitrary()?,
        pme_support: u.arbitrary()?,
        no_soft_reset: u.arbitrary()?,
    })
}

#[derive(Debug)]
enum Op {
    PmRead {
        offset: usize,
        width: usize,
    },
    PmWrite {
        offset: usize,
        width: usize,
        value: u32,
    },
    PmSignal,
    PmReset,
    RootRead {
        offset: usize,
        width: usize,
    },
    RootWrite {
        offset: usize,
        width: usize,
        value: u32,
    },
    RootMessage(u16),
    RootReset,
    GpeClear(u64),
    GpeEnable(u64),
    GpeSet(u16),
    GedSet(u32),
    GedTake,
}

fn width(u: &mut Unstructured) -> Result<usize> {
    if u.ratio(7, 8)? {
        Ok(*u.choose(&[1usize, 2, 4])?)
    } else {
        Ok(*u.choose(&[0usize, 3, 5, 8, usize::MAX])?)
    }
}

/// An offset near `base..base + len`, sometimes anywhere.
fn offset(u: &mut Unstructured, base: usize, len: usize) -> Result<usize> {
    if u.ratio(1, 16)? {
        return u.arbitrary();
    }
    Ok((base + u.int_in_range(0..=len + 3)?).saturating_sub(2))
}

impl Op {
    fn arbitrary(u: &mut Unstructured) -> Result<Op> {
        let root = ROOT_CONTROL_OFFSET;
        Ok(match u.int_in_range(0..=12u8)? {
            0 => Op::PmRead {
                offset: offset(u, 0, PM_CAP_LEN)?,
                width: width(u)?,
            },
            1..=3 => Op::PmWrite {
                offset: offset(u, 0, PM_CAP_LEN)?,
                width: width(u)?,
                value: u.arbitrary()?,
            },
            4 => Op::PmSignal,
            5 => {
                if u.ratio(1, 4)? {
                    Op::PmReset
                } else {
                    Op::PmSignal
                }
            }
            6 => Op::RootRead {
                offset: offset(u, root, 8)?,
                width: width(u)?,
            },
            7 => Op::RootWrite {
                offset: offset(u, root, 8)?,
                width: width(u)?,
                value: u.arbitrary()?,
            },
            8 => {
                // Requesters from a small range (duplicates, queue order), sometimes a flood to
                // fill the pending queue.
                if u.ratio(1, 32)? {
                    Op::RootReset
                } else {
                    Op::RootMessage(u.int_in_range(0..=300u16)?)
                }
            }
            9 => Op::GpeClear(u.arbitrary()?),
            10 => Op::GpeEnable(u.arbitrary()?),
            11 => {
                if u.arbitrary()? {
                    Op::GpeSet(u.int_in_range(0..=80u16)?)
                } else {
                    Op::GedSet(u.int_in_range(0..=80u32)?)
                }
            }
            _ => {
                if u.arbitrary()? {
                    Op::GedTake
                } else {
                    Op::GpeSet(u.arbitrary()?)
                }
            }
        })
    }
}

/// Whether an access of `width` at `offset` fits a `len`-byte block, and the error it gets if
/// not (width is checked first, as in the implementation's contract: a bad width is a
/// [`RegisterError::BadWidth`] wherever it is).
fn expected_access(offset: usize, width: usize, len: usize) -> Result<(), RegisterError> {
    if !matches!(width, 1 | 2 | 4) {
        return Err(RegisterError::BadWidth(width));
    }
    match offset.checked_add(width) {
        Some(end) if end <= len => Ok(()),
        _ => Err(RegisterError::OutOfRange { offset, width, len }),
    }
}

/// The PM capability as PCI PM 1.2 describes it.
#[derive(Debug)]
struct PmModel {
    config: PmCapabilityConfig,
    d3hot: bool,
    pme_en: bool,
    pme_status: bool,
}

impl PmModel {
    fn pmc(&self) -> u16 {
        // Version 1.2, no D1/D2, PME_Support only for the states the capability implements.
        0x3 | (self.config.pme_support & (PMC_PME_D0 | PMC_PME_D3HOT | PMC_PME_D3COLD))
    }

    fn bytes(&self) -> [u8; PM_CAP_LEN] {
        let pmc = self.pmc().to_le_bytes();
        let csr_lo = if self.d3hot { 3 } else { 0 } | if self.config.no_soft_reset { 8 } else { 0 };
        let csr_hi = u8::from(self.pme_en) | if self.pme_status { 0x80 } else { 0 };
        [
            PM_CAP_ID,
            self.config.next_ptr,
            pmc[0],
            pmc[1],
            csr_lo,
            csr_hi,
            0,
            0,
        ]
    }

    fn state(&self) -> PciPowerState {
        if self.d3hot {
            PciPowerState::D3Hot
        } else {
            PciPowerState::D0
        }
    }

    fn write(&mut self, offset: usize, width: usize, value: u32) -> PmWriteOutcome {
        let mut out = PmWriteOutcome::default();
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            match offset + i {
                4 => {
                    let old = self.state();
                    match b & 3 {
                        0 => self.d3hot = false,
                        3 => self.d3hot = true,
                        _ => {} // D1/D2 not supported: the write completes, nothing changes
                    }
                    if self.state() != old {
                        out.power_state = Some((old, self.state()));
                    }
                }
                5 => {
                    let en = b & 1 != 0;
                    if en != self.pme_en {
                        out.pme_enable = Some(en);
                    }
                    self.pme_en = en;
                    if b & 0x80 != 0 && self.pme_status {
                        self.pme_status = false; // RW1C
                        out.pme_status_cleared = true;
                    }
                }
                _ => {} // read-only
            }
        }
        out
    }
}

/// The root port's PME registers as the PCIe Base spec describes them.
#[derive(Debug, Default)]
struct RootModel {
    /// Root Control bits 3:0 (SERR enables, PME Interrupt Enable); the rest is RO 0.
    control: u16,
    status: bool,
    requester: u16,
    pending: VecDeque<u16>,
    dropped: u64,
}

impl RootModel {
    fn ie(&self) -> bool {
        self.control & 0x8 != 0
    }

    fn bytes(&self) -> [u8; 8] {
        let c = self.control.to_le_bytes();
        let r = self.requester.to_le_bytes();
        let s = u8::from(self.status) | if self.pending.is_empty() { 0 } else { 2 };
        [c[0], c[1], 0, 0, r[0], r[1], s, 0]
    }

    fn message(&mut self, id: u16) -> RootPmeOutcome {
        if !self.status {
            self.status = true;
            self.requester = id;
            return if self.ie() {
                RootPmeOutcome::Interrupt
            } else {
                RootPmeOutcome::Latched
            };
        }
        if self.requester == id || self.pending.contains(&id) {
            RootPmeOutcome::Duplicate
        } else if self.pending.len() >= ROOT_PME_QUEUE_LEN {
            self.dropped += 1;
            RootPmeOutcome::Dropped
        } else {
            self.pending.push_back(id);
            RootPmeOutcome::Queued
        }
    }

    /// A guest write; true when the root port raises its PME interrupt.
    fn write(&mut self, rel: usize, width: usize, value: u32) -> bool {
        let was_ie = self.ie();
        let mut clear = false;
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            match rel + i {
                0 => self.control = u16::from(b & 0xf),
                6 => clear |= b & 1 != 0,
                _ => {}
            }
        }
        let mut interrupt = false;
        if clear && self.status {
            self.status = false;
            self.requester = 0;
            if let Some(next) = self.pending.pop_front() {
                self.status = true;
                self.requester = next;
                interrupt = self.ie();
            }
        }
        interrupt || (!was_ie && self.ie() && self.status)
    }
}

struct Rig {
    pm: PmCapability,
    pm_model: PmModel,
    root: RootPortPme,
    root_model: RootModel,
    gpe: GpeBlock,
    gpe_model: (u64, u64),
    ged: GedEvents,
    ged_model: u64,
}

fn le(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .rev()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
}

impl Rig {
    fn new(config: PmCapabilityConfig) -> Self {
        Self {
            pm: PmCapability::new(config),
            pm_model: PmModel {
                config,
                d3hot: false,
                pme_en: false,
                pme_status: false,
            },
            root: RootPortPme::new(),
            root_model: RootModel::default(),
            gpe: GpeBlock::new(),
            gpe_model: (0, 0),
            ged: GedEvents::new(),
            ged_model: 0,
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::PmRead { offset, width } => {
                let got = self.pm.read(offset, width);
                let want = expected_access(offset, width, PM_CAP_LEN)
                    .map(|()| le(&self.pm_model.bytes()[offset..offset + width]));
                assert_eq!(got, want, "PM read {offset:#x}/{width}");
            }
            Op::PmWrite {
                offset,
                width,
                value,
            } => {
                let status_before = self.pm.pme_status();
                let got = self.pm.write(offset, width, value);
                let want = expected_access(offset, width, PM_CAP_LEN)
                    .map(|()| self.pm_model.write(offset, width, value));
                assert_eq!(got, want, "PM write {offset:#x}/{width} {value:#x}");
                assert!(
                    status_before || !self.pm.pme_status(),
                    "a guest write set PME_Status"
                );
            }
            Op::PmSignal => {
                let asserted = self.pm.signal_pme();
                self.pm_model.pme_status = true;
                assert_eq!(asserted, self.pm_model.pme_en);
            }
            Op::PmReset => {
                self.pm.reset();
                let config = self.pm_model.config;
                self.pm_model = PmModel {
                    config,
                    d3hot: false,
                    pme_en: false,
                    pme_status: false,
                };
            }
            Op::RootRead { offset, width } => {
                let got = self.root.read(offset, width);
                let want = root_access(offset, width)
                    .map(|rel| le(&self.root_model.bytes()[rel..rel + width]));
                assert_eq!(got, want, "root port read {offset:#x}/{width}");
            }
            Op::RootWrite {
                offset,
                width,
                value,
            } => {
                let status_before = self.root.root_status() & (1 << 16) != 0;
                let got = self.root.write(offset, width, value);
                let want =
                    root_access(offset, width).map(|rel| self.root_model.write(rel, width, value));
                assert_eq!(got, want, "root port write {offset:#x}/{width} {value:#x}");
                let status_after = self.root.root_status() & (1 << 16) != 0;
                // RW1C: a write sets PME Status only by loading a queued requester.
                assert!(
                    status_before || !status_after,
                    "a guest write set PME Status"
                );
            }
            Op::RootMessage(id) => {
                let got = self.root.pme_message(id);
                assert_eq!(got, self.root_model.message(id), "PME message from {id:#x}");
            }
            Op::RootReset => {
                self.root.reset();
                self.root_model = RootModel::default();
            }
            Op::GpeClear(bits) => {
                self.gpe.clear_status(bits);
                self.gpe_model.0 &= !bits;
            }
            Op::GpeEnable(bits) => {
                self.gpe.set_enable(bits);
                self.gpe_model.1 = bits;
            }
            Op::GpeSet(gpe) => {
                let want = (gpe < 64).then(|| {
                    self.gpe_model.0 |= 1 << gpe;
                    self.gpe_model.1 & (1 << gpe) != 0
                });
                assert_eq!(self.gpe.set_status(gpe), want, "GPE {gpe}");
            }
            Op::GedSet(event) => {
                let ok = event < 64;
                if ok {
                    self.ged_model |= 1 << event;
                }
                assert_eq!(self.ged.set(event), ok, "GED event {event}");
            }
            Op::GedTake => {
                assert_eq!(self.ged.take(), std::mem::take(&mut self.ged_model));
            }
        }
    }

    /// After every step: every byte and every register as the model says.
    fn compare(&self) {
        let want = self.pm_model.bytes();
        for (i, b) in want.iter().enumerate() {
            assert_eq!(self.pm.read(i, 1), Ok(u32::from(*b)), "PM byte {i}");
        }
        assert_eq!(self.pm.pmc(), self.pm_model.pmc());
        assert_eq!(self.pm.pmcsr(), u16::from_le_bytes([want[4], want[5]]));
        assert_eq!(self.pm.power_state(), self.pm_model.state());
        assert_eq!(self.pm.pme_enabled(), self.pm_model.pme_en);
        assert_eq!(self.pm.pme_status(), self.pm_model.pme_status);

        let want = self.root_model.bytes();
        for (i, b) in want.iter().enumerate() {
            let got = self.root.read(ROOT_CONTROL_OFFSET + i, 1);
            assert_eq!(got, Ok(u32::from(*b)), "root port byte {i}");
        }
        assert_eq!(self.root.root_control(), self.root_model.control);
        assert_eq!(self.root.root_status(), le(&want[4..8]));
        assert_eq!(self.root.dropped(), self.root_model.dropped);
        assert!(self.root_model.pending.len() <= ROOT_PME_QUEUE_LEN);

        assert_eq!((self.gpe.status(), self.gpe.enable()), self.gpe_model);
    }
}

/// The offset within the 8-byte Root Control..Root Status block, or the error the access gets.
fn root_access(offset: usize, width: usize) -> Result<usize, RegisterError> {
    let len = ROOT_CONTROL_OFFSET + 8;
    let out_of_range = RegisterError::OutOfRange { offset, width, len };
    let Some(rel) = offset.checked_sub(ROOT_CONTROL_OFFSET) else {
        return Err(out_of_range);
    };
    match expected_access(rel, width, 8) {
        Ok(()) => Ok(rel),
        Err(RegisterError::OutOfRange { .. }) => Err(out_of_range),
        Err(e) => Err(e),
    }
}
