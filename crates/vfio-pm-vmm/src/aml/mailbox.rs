//! The AML side of the acknowledged mailbox ([`crate::mailbox`] has the layout and the host
//! side): `\_SB.VPMA (slot, value, wait)`, called by every power resource's `_ON`/`_OFF`.
//!
//! ```text
//! Scope (\_SB.PCI0.SF0) {                      // the ivshmem-plain device
//!     OperationRegion (VPMC, PCI_Config, 0x18, 0x08)
//!     Field (VPMC, DWordAcc, NoLock, Preserve) { VPBL, 32, VPBH, 32 }   // BAR2
//! }
//! Method (\_SB.VPMA, 3, Serialized) {
//!     Local2 = (VPBH << 32) | (VPBL & 0xFFFFFFF0)
//!     If (Local2 == Zero) { \_SB.VPMT = Arg1  Return (Zero) }   // BAR unassigned: posted only
//!     Local2 += Arg0 << 3
//!     OperationRegion (VPMS, SystemMemory, Local2, 0x08)
//!     Field (VPMS, DWordAcc, NoLock, Preserve) { VREQ, 32, VACK, 32 }
//!     Local3 = ((((VREQ >> 8) + 1) << 8) | Arg1) & 0xFFFFFFFF   // sequence | trap value
//!     VREQ = Local3
//!     \_SB.VPMT = Arg1                                           // the doorbell
//!     If (Arg2) {                                                // _ON: wait for the reply
//!         Local4 = Zero
//!         While (Local4 < TIMEOUT) {
//!             If (VACK == Local3) { Local4 = TIMEOUT } Else { Sleep (1)  Local4++ }
//!         }
//!     }
//!     Return (Zero)
//! }
//! ```
//!
//! The BAR is read on every call, so a guest that moves the BAR (or firmware that assigns it
//! late) is followed. `Sleep (1)` sleeps at least a millisecond, so `TIMEOUT` polls wait at
//! least `ack_timeout_ms`.

use super::ops::Sleep;
use super::{rel, seg, TRAP_FIELD};
use crate::config::{AcpiPath, MailboxConfig};
use acpi_tables::aml::{
    Add, And, Arg, Else, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule,
    If, LessThan, Local, Method, One, OpRegion, OpRegionSpace, Or, Return, ShiftLeft, ShiftRight,
    Store, While, Zero,
};
use acpi_tables::Aml;

/// The mailbox method, under `\_SB`.
pub const MAILBOX_METHOD: &str = "VPMA";
/// Config space offset of BAR2 (ivshmem's shared memory).
pub const BAR2_OFFSET: u8 = 0x18;
/// Bytes per slot in the shared memory: REQ then ACK, 32 bits each.
pub const SLOT_BYTES: u8 = crate::mailbox::SLOT_BYTES as u8;

fn child(path: &AcpiPath, name: &'static str) -> Option<AcpiPath> {
    path.child(seg(name))
}

/// `Scope (mailbox) { OperationRegion (VPMC, PCI_Config, 0x18, 8) Field (...) }`.
pub(super) fn bar_fields(mb: &MailboxConfig, out: &mut Vec<u8>) {
    let offset = BAR2_OFFSET;
    let len: u8 = 8;
    let region = OpRegion::new(rel(seg("VPMC")), OpRegionSpace::PCIConfig, &offset, &len);
    let field = Field::new(
        rel(seg("VPMC")),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(seg("VPBL").bytes(), 32),
            FieldEntry::Named(seg("VPBH").bytes(), 32),
        ],
    );
    acpi_tables::aml::Scope::new(super::abs(&mb.device), vec![&region, &field]).to_aml_bytes(out);
}

/// `Method (VPMA, 3, Serialized) { ... }` (relative to `\_SB`).
pub(super) fn method(mb: &MailboxConfig) -> Vec<u8> {
    let mut out = Vec::new();
    let (Some(vpbl), Some(vpbh)) = (child(&mb.device, "VPBL"), child(&mb.device, "VPBH")) else {
        return out; // a validated device path always has room for one more segment
    };
    let doorbell = rel(seg(TRAP_FIELD));
    let vreq = rel(seg("VREQ"));
    let vack = rel(seg("VACK"));
    let (l2, l3, l4, l5, l6, l7) = (Local(2), Local(3), Local(4), Local(5), Local(6), Local(7));
    let (n3, n8, n32): (u8, u8, u8) = (3, 8, 32);
    let bar_mask: u32 = 0xffff_fff0;
    let low32: u32 = 0xffff_ffff;
    let timeout = mb.ack_timeout_ms;
    let slot_len = SLOT_BYTES;

    let hi = ShiftLeft::new(&l5, &vpbh, &n32);
    let lo = And::new(&l6, &vpbl, &bar_mask);
    let base = Or::new(&l2, &l5, &l6);
    let posted = Store::new(&doorbell, &Arg(1));
    let ret0 = Return::new(&Zero {});
    let unmapped_test = Equal::new(&l2, &Zero {});
    let unmapped = If::new(&unmapped_test, vec![&posted, &ret0]);
    let slot_off = ShiftLeft::new(&l7, &Arg(0), &n3);
    let at_slot = Add::new(&l2, &l2, &l7);
    let region = OpRegion::new(
        rel(seg("VPMS")),
        OpRegionSpace::SystemMemory,
        &l2,
        &slot_len,
    );
    let field = Field::new(
        rel(seg("VPMS")),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![
            FieldEntry::Named(seg("VREQ").bytes(), 32),
            FieldEntry::Named(seg("VACK").bytes(), 32),
        ],
    );
    let seq = ShiftRight::new(&l3, &vreq, &n8);
    let next = Add::new(&l3, &l3, &One {});
    let shifted = ShiftLeft::new(&l3, &l3, &n8);
    let with_value = Or::new(&l3, &l3, &Arg(1));
    let masked = And::new(&l3, &l3, &low32);
    let publish = Store::new(&vreq, &l3);
    let ring = Store::new(&doorbell, &Arg(1));
    let start = Store::new(&l4, &Zero {});
    let acked = Equal::new(&vack, &l3);
    let stop = Store::new(&l4, &timeout);
    let if_acked = If::new(&acked, vec![&stop]);
    let one_ms: u8 = 1;
    let nap = Sleep { msec: &one_ms };
    let count = Add::new(&l4, &l4, &One {});
    let else_wait = Else::new(vec![&nap, &count]);
    let more = LessThan::new(&l4, &timeout);
    let poll = While::new(&more, vec![&if_acked, &else_wait]);
    let wait = If::new(&Arg(2), vec![&start, &poll]);
    let method = Method::new(
        rel(seg(MAILBOX_METHOD)),
        3,
        true,
        vec![
            &hi,
            &lo,
            &base,
            &unmapped,
            &slot_off,
            &at_slot,
            &region,
            &field,
            &seq,
            &next,
            &shifted,
            &with_value,
            &masked,
            &publish,
            &ring,
            &wait,
            &ret0,
        ],
    );
    method.to_aml_bytes(&mut out);
    out
}

/// The `_ON`/`_OFF` body's call: `\_SB.VPMA (slot, value, wait)`.
pub(super) fn call(slot: u8, value: u64, wait: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let path = acpi_tables::aml::Path::new("\\_SB_.VPMA");
    let w: u8 = u8::from(wait);
    let call = acpi_tables::aml::MethodCall::new(path, vec![&slot, &value, &w]);
    call.to_aml_bytes(&mut out);
    out
}
