//! AML objects that `acpi_tables` 0.2.1 lacks or gets wrong, written against its public [`Aml`]
//! trait.
//!
//! * [`PowerResource`]: `acpi_tables::aml::PowerResource` emits its opcode bytes swapped
//!   (`0x84 0x5B`); `iasl -d` rejects such a table and real kernels misplace the methods.
//! * [`External`] and [`ExternalBlock`]: not in `acpi_tables`.
//! * [`AcpiPath`] and [`NameSeg`] implement [`Aml`] here, encoding their already validated
//!   segments directly. `acpi_tables::aml::Path::new` panics on a malformed name; the generator
//!   still calls it (`abs`, `rel` and the `\_GPE`/`\_SB_` scopes in `aml/mod.rs`), but only
//!   with validated segments or constants, never with text it has not checked.

use crate::config::{AcpiPath, NameSeg};
use acpi_tables::{Aml, AmlSink};

/// `ExtOpPrefix`.
pub const EXT_OP_PREFIX: u8 = 0x5b;
/// `PowerResOp` (after [`EXT_OP_PREFIX`]).
pub const POWER_RES_OP: u8 = 0x84;
/// `ExternalOp`.
pub const EXTERNAL_OP: u8 = 0x15;
/// `IfOp`.
pub const IF_OP: u8 = 0xa0;
/// `ZeroOp`.
pub const ZERO_OP: u8 = 0x00;
/// `RootChar`.
pub const ROOT_CHAR: u8 = b'\\';
/// `DualNamePrefix`.
pub const DUAL_NAME_PREFIX: u8 = 0x2e;
/// `MultiNamePrefix`.
pub const MULTI_NAME_PREFIX: u8 = 0x2f;
/// `ObjectType` of a device in an `External` declaration (`DeviceObj`).
pub const OBJECT_TYPE_DEVICE: u8 = 0x06;

/// Encodes an ACPI `PkgLength` for a package whose contents after the `PkgLength` are `len` bytes
/// long: the encoded length counts itself. `None` above the format's limit of 2^28 - 1.
pub fn pkg_length(len: usize) -> Option<Vec<u8>> {
    // One byte holds 0..=63 (6 bits); n+1 bytes hold 4 + 8n bits.
    for extra in 0..=3usize {
        let total = len + 1 + extra;
        let fits = if extra == 0 {
            total <= 0x3f
        } else {
            total < 1usize << (4 + 8 * extra)
        };
        if fits {
            if extra == 0 {
                return Some(vec![total as u8]);
            }
            let mut out = Vec::with_capacity(1 + extra);
            out.push(((extra as u8) << 6) | (total & 0x0f) as u8);
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return Some(out);
        }
    }
    None
}

/// Writes `opcode bytes`, `PkgLength` and `body`. Tables that would need a package above 256 MiB
/// cannot come from a validated configuration (at most 64 devices); if one did, the length is
/// clamped rather than panicking, and the table fails `iasl -d` loudly.
fn emit_package(sink: &mut dyn AmlSink, opcode: &[u8], body: &[u8]) {
    sink.vec(opcode);
    let len = pkg_length(body.len()).unwrap_or_else(|| vec![0xff, 0xff, 0xff, 0xff]);
    sink.vec(&len);
    sink.vec(body);
}

impl Aml for NameSeg {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.bytes());
    }
}

impl Aml for AcpiPath {
    /// `\` then the segments, with `DualNamePrefix` / `MultiNamePrefix` as needed.
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(ROOT_CHAR);
        let segs = self.segments();
        match segs.len() {
            0 | 1 => {}
            2 => sink.byte(DUAL_NAME_PREFIX),
            n => {
                sink.byte(MULTI_NAME_PREFIX);
                // AcpiPath never has more than 255 segments.
                sink.byte(u8::try_from(n).unwrap_or(u8::MAX));
            }
        }
        for seg in segs {
            seg.to_aml_bytes(sink);
        }
    }
}

/// `PowerResource (Name, SystemLevel, ResourceOrder) { ... }`, encoded as
/// `0x5B 0x84 PkgLength NameString SystemLevel(byte) ResourceOrder(word) TermList`.
pub struct PowerResource<'a> {
    /// The resource's name (in the enclosing scope).
    pub name: NameSeg,
    /// Deepest system sleep state in which the resource must stay on (0 = S0).
    pub system_level: u8,
    /// Order in which the OS turns resources on (ascending) and off (descending).
    pub resource_order: u16,
    /// `_STA`, `_ON`, `_OFF` and any other objects.
    pub children: Vec<&'a dyn Aml>,
}

impl Aml for PowerResource<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        let mut body = Vec::new();
        self.name.to_aml_bytes(&mut body);
        body.push(self.system_level);
        body.extend_from_slice(&self.resource_order.to_le_bytes());
        for child in &self.children {
            child.to_aml_bytes(&mut body);
        }
        emit_package(sink, &[EXT_OP_PREFIX, POWER_RES_OP], &body);
    }
}

/// `External (Path, ObjectType)`: `0x15 NameString ObjectType ArgumentCount`.
pub struct External<'a> {
    /// The declared object.
    pub path: &'a AcpiPath,
    /// Its object type ([`OBJECT_TYPE_DEVICE`]).
    pub object_type: u8,
    /// Argument count (methods only; 0 otherwise).
    pub argument_count: u8,
}

impl Aml for External<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(EXTERNAL_OP);
        self.path.to_aml_bytes(sink);
        sink.byte(self.object_type);
        sink.byte(self.argument_count);
    }
}

/// The `If (Zero) { External ... }` block iasl wraps `External` declarations in, so that an
/// interpreter that does not know `ExternalOp` skips them. Emitting the same form makes the table
/// byte-identical to iasl's recompilation of its disassembly.
pub struct ExternalBlock<'a> {
    /// The declarations, in order.
    pub externals: Vec<External<'a>>,
}

impl Aml for ExternalBlock<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        if self.externals.is_empty() {
            return;
        }
        let mut body = vec![ZERO_OP];
        for e in &self.externals {
            e.to_aml_bytes(&mut body);
        }
        emit_package(sink, &[IF_OP], &body);
    }
}

/// Raw, already encoded AML bytes.
pub struct Raw(pub Vec<u8>);

impl Aml for Raw {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// `SleepOp` (after [`EXT_OP_PREFIX`]).
pub const SLEEP_OP: u8 = 0x22;

/// `Sleep (msec)`: `0x5B 0x22 MsecTime`. Not in `acpi_tables`.
pub struct Sleep<'a> {
    /// Milliseconds (a TermArg).
    pub msec: &'a dyn Aml,
}

impl Aml for Sleep<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.byte(EXT_OP_PREFIX);
        sink.byte(SLEEP_OP);
        self.msec.to_aml_bytes(sink);
    }
}
