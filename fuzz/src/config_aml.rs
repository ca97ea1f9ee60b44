//! Target `config_aml`: the VMM's TOML configuration ([`VmmConfig::from_toml_str`]) through to
//! the SSDT ([`aml::build_ssdt`]).
//!
//! Invariants, for any text:
//!
//! - parsing and validation return a [`ConfigError`](vfio_pm_vmm::config::ConfigError), never
//!   panic;
//! - a configuration that validates survives a round trip through its file form
//!   ([`ConfigFile`] serialized back to TOML gives the same [`VmmConfig`]);
//! - its table has the SSDT header the configuration asks for (signature, revision 2, OEM ids),
//!   a length field equal to its size and a checksum that sums to 0, and is the same table when
//!   built twice;
//! - its AML body is well formed: [`walk`] decodes every object the generator emits, every
//!   package length and element count tiles its contents exactly, and every name is a valid
//!   name string;
//! - the objects match the configuration: one power resource per D3cold device, one trap
//!   `OperationRegion` at the configured address, width and space (plus the mailbox's two
//!   regions and its method when a mailbox is configured), one GPE method per device woken
//!   through a GPE.

use crate::text;
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::{ConfigFile, RouteKind, TrapSpace, VmmConfig};

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let Ok(config) = VmmConfig::from_toml_str(text) else {
        return;
    };
    round_trips(text, &config);
    let table = aml::build_ssdt(&config);
    check_header(&config, &table);
    assert_eq!(
        table,
        aml::build_ssdt(&config),
        "the SSDT is not deterministic"
    );
    let objects = walk(&table[36..]).unwrap_or_else(|e| panic!("malformed AML: {e}"));
    check_objects(&config, &objects);
}

/// The file form, serialized back to TOML, validates to the same configuration.
fn round_trips(text: &str, config: &VmmConfig) {
    let file: ConfigFile = toml::from_str(text).expect("validated text deserializes");
    let again = toml::to_string(&file).expect("a configuration file serializes");
    let back = VmmConfig::from_toml_str(&again)
        .unwrap_or_else(|e| panic!("round trip refused: {e}\n{again}"));
    assert_eq!(&back, config, "round trip through\n{again}");
}

fn check_header(config: &VmmConfig, t: &[u8]) {
    assert!(t.len() >= 36, "table shorter than its header");
    assert_eq!(&t[..4], b"SSDT");
    let length = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    assert_eq!(length as usize, t.len(), "length field");
    assert_eq!(t[8], aml::SSDT_REVISION, "revision");
    let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    assert_eq!(sum, 0, "checksum");
    let ids = config.table();
    assert_eq!(&t[10..16], &ids.oem_id);
    assert_eq!(&t[16..24], &ids.oem_table_id);
    assert_eq!(&t[24..28], &ids.oem_revision.to_le_bytes());
}

fn check_objects(config: &VmmConfig, found: &Objects) {
    let resources = config
        .devices()
        .iter()
        .filter(|d| d.power_resource.is_some())
        .count();
    assert_eq!(found.power_resources.len(), resources, "power resources");
    for d in config.devices() {
        if let Some(pr) = &d.power_resource {
            assert!(
                found.power_resources.contains(&pr.last().bytes()),
                "no PowerResource {}",
                pr.asl()
            );
        }
    }
    let trap = config.trap();
    let space = match trap.space {
        TrapSpace::Io => 1,
        TrapSpace::Mmio => 0,
    };
    let trap_regions: Vec<&Region> = found
        .regions
        .iter()
        .filter(|r| &r.name == b"VPMR")
        .collect();
    assert_eq!(
        trap_regions,
        [&Region {
            name: *b"VPMR",
            space,
            offset: Some(trap.address),
            length: Some(u64::from(trap.width))
        }]
    );
    // The mailbox adds its BAR2 window (PCI_Config 0x18, 8 bytes) and its per-call slot region.
    let others = found.regions.len() - trap_regions.len();
    if config.mailbox().is_some() {
        assert_eq!(others, 2, "{:?}", found.regions);
        assert!(found.regions.iter().any(|r| &r.name == b"VPMC"
            && r.space == 2
            && r.offset == Some(u64::from(aml::BAR2_OFFSET))
            && r.length == Some(8)));
        assert!(found.methods.contains(b"VPMA"), "no mailbox method");
    } else {
        assert_eq!(others, 0, "{:?}", found.regions);
    }
    let gpe_methods = found
        .methods
        .iter()
        .filter(|m| m[0] == b'_' && (m[1] == b'E' || m[1] == b'L'))
        .filter(|m| m[2..].iter().all(|c| c.is_ascii_hexdigit()))
        .count();
    let gpe_devices = config
        .devices()
        .iter()
        .filter(|d| d.has_wake() && d.route == RouteKind::Gpe && d.gpe.is_some())
        .count();
    assert_eq!(gpe_methods, gpe_devices, "GPE methods");
}

/// An `OperationRegion` the walker found.
#[derive(Debug, PartialEq, Eq)]
pub struct Region {
    /// Its name segment.
    pub name: [u8; 4],
    /// `RegionSpace` byte (0 SystemMemory, 1 SystemIO).
    pub space: u8,
    /// Offset, when given as an integer (the mailbox's per-call region is computed).
    pub offset: Option<u64>,
    /// Length, when given as an integer.
    pub length: Option<u64>,
}

/// What [`walk`] found in an AML body.
#[derive(Debug, Default)]
pub struct Objects {
    /// Name segments of every `PowerResource`.
    pub power_resources: Vec<[u8; 4]>,
    /// Every `OperationRegion`.
    pub regions: Vec<Region>,
    /// Name segments of every `Method`, with their argument counts.
    pub methods: Vec<[u8; 4]>,
    /// Argument count of each method in `methods`.
    arg_counts: Vec<u8>,
}

/// Decodes an AML term list made of the objects vfio-pm's generator emits (`Scope`, `Device`,
/// `PowerResource`, `Method` and calls of methods declared before, `Name`, `OperationRegion`,
/// `Field`, `External`, `If`/`Else`, `While`, `Store`, `Return`, `Notify`, `Sleep`, `Add`,
/// `And`, `Or`, shifts, `LEqual`, `LLess`, integers, packages, strings, args, locals and name
/// strings), checking
/// that every package length and element count is consistent. An opcode outside that set is
/// an error too: the generator has no business emitting it.
pub fn walk(body: &[u8]) -> Result<Objects, String> {
    let mut objects = Objects::default();
    let mut r = Reader { b: body, pos: 0 };
    r.term_list(body.len(), &mut objects, 0)?;
    Ok(objects)
}

/// Nesting limit of the walker (the generator nests at most a handful of levels).
const MAX_DEPTH: usize = 32;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {:#x} of the body", self.pos))
    }

    fn byte(&mut self) -> Result<u8, String> {
        match self.b.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.err("unexpected end"),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn le(&mut self, n: usize) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(self.byte()?) << (8 * i);
        }
        Ok(v)
    }

    /// A `PkgLength`; returns the end offset of the package (the length counts itself).
    fn pkg_end(&mut self, limit: usize) -> Result<usize, String> {
        let start = self.pos;
        let lead = self.byte()?;
        let extra = usize::from(lead >> 6);
        let len = if extra == 0 {
            usize::from(lead & 0x3f)
        } else {
            if lead & 0x30 != 0 {
                return self.err("PkgLength lead byte with bits 4-5 set");
            }
            let mut len = usize::from(lead & 0x0f);
            for i in 0..extra {
                len |= usize::from(self.byte()?) << (4 + 8 * i);
            }
            len
        };
        let end = start + len;
        if len < 1 + extra || end > limit {
            return self.err(&format!("PkgLength {len} outside its enclosing package"));
        }
        Ok(end)
    }

    fn name_seg(&mut self) -> Result<[u8; 4], String> {
        let mut s = [0u8; 4];
        for (i, c) in s.iter_mut().enumerate() {
            *c = self.byte()?;
            let ok = c.is_ascii_uppercase() || *c == b'_' || (i > 0 && c.is_ascii_digit());
            if !ok {
                return self.err("invalid NameSeg character");
            }
        }
        Ok(s)
    }

    /// A `NameString`; returns its last segment (or `None` for the null name).
    fn name_string(&mut self) -> Result<Option<[u8; 4]>, String> {
        if self.peek() == Some(b'\\') {
            self.pos += 1;
        } else {
            while self.peek() == Some(b'^') {
                self.pos += 1;
            }
        }
        let count = match self.peek() {
            Some(0x00) => {
                self.pos += 1;
                return Ok(None);
            }
            Some(0x2e) => {
                self.pos += 1;
                2
            }
            Some(0x2f) => {
                self.pos += 1;
                let n = self.byte()?;
                if n == 0 {
                    return self.err("MultiNamePrefix with no segments");
                }
                usize::from(n)
            }
            _ => 1,
        };
        let mut last = [0u8; 4];
        for _ in 0..count {
            last = self.name_seg()?;
        }
        Ok(Some(last))
    }

    fn starts_name(b: u8) -> bool {
        b == b'\\' || b == b'^' || b == b'_' || b.is_ascii_uppercase() || b == 0x2e || b == 0x2f
    }

    /// A `TermArg` (or data object); returns its value when it is an integer constant.
    fn term_arg(&mut self, limit: usize, depth: usize) -> Result<Option<u64>, String> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        let Some(op) = self.peek() else {
            return self.err("missing operand");
        };
        if Self::starts_name(op) {
            self.name_string()?;
            return Ok(None);
        }
        self.pos += 1;
        Ok(match op {
            0x00 => Some(0),
            0x01 => Some(1),
            0xff => Some(u64::MAX),
            0x0a => Some(self.le(1)?),
            0x0b => Some(self.le(2)?),
            0x0c => Some(self.le(4)?),
            0x0e => Some(self.le(8)?),
            0x0d => {
                while self.byte()? != 0 {}
                None
            }
            0x60..=0x6e => None, // Local0-7, Arg0-6
            0x12 => {
                let end = self.pkg_end(limit)?;
                let count = self.byte()?;
                for _ in 0..count {
                    self.term_arg(end, depth + 1)?;
                }
                if self.pos != end {
                    return self.err("Package elements do not fill its PkgLength");
                }
                None
            }
            0x93 | 0x95 => {
                // LEqual, LLess
                self.term_arg(limit, depth + 1)?;
                self.term_arg(limit, depth + 1)?;
                None
            }
            0x72 | 0x79 | 0x7a | 0x7b | 0x7d => {
                self.term_arg(limit, depth + 1)?;
                self.term_arg(limit, depth + 1)?;
                self.target()?;
                None
            }
            _ => return self.err(&format!("unexpected operand opcode {op:#04x}")),
        })
    }

    fn term_list(&mut self, end: usize, out: &mut Objects, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return self.err("nesting too deep");
        }
        while self.pos < end {
            self.term(end, out, depth)?;
        }
        if self.pos != end {
            return self.err("object runs past the end of its package");
        }
        Ok(())
    }

    /// One object of a term list, ending at or before `limit`.
    fn term(&mut self, limit: usize, out: &mut Objects, depth: usize) -> Result<(), String> {
        if self.peek().is_some_and(Self::starts_name) {
            // A statement that is a name is a call of a method declared earlier in the table.
            let name = self.name_string()?.ok_or("null name as a statement")?;
            let Some(i) = out.methods.iter().position(|m| *m == name) else {
                return self.err("a name that is no declared method, as a statement");
            };
            for _ in 0..out.arg_counts[i] {
                self.term_arg(limit, depth + 1)?;
            }
            return Ok(());
        }
        let op = self.byte()?;
        match op {
            0x10 | 0xa0 | 0xa1 | 0xa2 | 0x14 => {
                let end = self.pkg_end(limit)?;
                match op {
                    0x10 => {
                        self.name_string()?;
                    }
                    0xa0 | 0xa2 => {
                        self.term_arg(end, depth + 1)?; // If / While predicate
                    }
                    0xa1 => {} // Else
                    _ => {
                        let name = self.name_string()?.ok_or("Method without a name")?;
                        let flags = self.byte()?;
                        out.methods.push(name);
                        out.arg_counts.push(flags & 7);
                    }
                }
                self.term_list(end, out, depth + 1)
            }
            0x08 => {
                self.name_string()?;
                self.term_arg(limit, depth + 1).map(drop)
            }
            0x15 => {
                self.name_string()?;
                self.le(2).map(drop) // ObjectType, ArgumentCount
            }
            0x70 => {
                self.term_arg(limit, depth + 1)?;
                self.super_name()
            }
            // Add, ShiftLeft, ShiftRight, And, Or: Operand Operand Target.
            0x72 | 0x79 | 0x7a | 0x7b | 0x7d => {
                self.term_arg(limit, depth + 1)?;
                self.term_arg(limit, depth + 1)?;
                self.target()
            }
            0xa4 => self.term_arg(limit, depth + 1).map(drop),
            0x86 => {
                self.super_name()?;
                self.term_arg(limit, depth + 1).map(drop)
            }
            0x5b => self.ext_term(limit, out, depth),
            _ => self.err(&format!("unexpected opcode {op:#04x}")),
        }
    }

    /// A `Target`: a SuperName or the null name (result discarded).
    fn target(&mut self) -> Result<(), String> {
        if self.peek() == Some(0x00) {
            self.pos += 1;
            return Ok(());
        }
        self.super_name()
    }

    fn super_name(&mut self) -> Result<(), String> {
        match self.peek() {
            Some(0x60..=0x6e) => {
                self.pos += 1;
                Ok(())
            }
            Some(b) if Self::starts_name(b) => self.name_string().map(drop),
            _ => self.err("expected a SuperName"),
        }
    }

    fn ext_term(&mut self, limit: usize, out: &mut Objects, depth: usize) -> Result<(), String> {
        let op = self.byte()?;
        match op {
            0x80 => {
                let name = self
                    .name_string()?
                    .ok_or("OperationRegion without a name")?;
                let space = self.byte()?;
                let offset = self.term_arg(limit, depth + 1)?;
                let length = self.term_arg(limit, depth + 1)?;
                out.regions.push(Region {
                    name,
                    space,
                    offset,
                    length,
                });
                Ok(())
            }
            0x81 => {
                // Field: its field list is a sequence of NameSeg + PkgLength-coded bit widths.
                let end = self.pkg_end(limit)?;
                self.name_string()?;
                self.byte()?; // FieldFlags
                while self.pos < end {
                    self.name_seg()?;
                    let bits_start = self.pos;
                    let lead = self.byte()?;
                    for _ in 0..(lead >> 6) {
                        self.byte()?;
                    }
                    if self.pos > end || bits_start == self.pos {
                        return self.err("field entry runs past its Field");
                    }
                }
                if self.pos != end {
                    return self.err("field list does not fill its PkgLength");
                }
                Ok(())
            }
            0x82 | 0x84 => {
                let end = self.pkg_end(limit)?;
                let name = self
                    .name_string()?
                    .ok_or("Device/PowerResource without a name")?;
                if op == 0x84 {
                    out.power_resources.push(name);
                    self.le(3)?; // SystemLevel, ResourceOrder
                }
                self.term_list(end, out, depth + 1)
            }
            0x22 => self.term_arg(limit, depth + 1).map(drop), // Sleep
            _ => self.err(&format!("unexpected extended opcode 0x5b {op:#04x}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> VmmConfig {
        let seed = crate::seeds_dir("config_aml").join("many-devices.toml");
        let text = std::fs::read_to_string(seed).unwrap();
        VmmConfig::from_toml_str(&text).unwrap()
    }

    #[test]
    fn the_walker_finds_the_generated_objects() {
        let config = example();
        let table = aml::build_ssdt(&config);
        let found = walk(&table[36..]).unwrap();
        assert_eq!(found.power_resources.len(), 4, "{found:?}");
        assert!(found.power_resources.contains(b"PWRB"));
        assert_eq!(found.regions.len(), 1);
        // _STA/_ON_/_OFF per resource plus the level-triggered GPE methods.
        assert!(found.methods.contains(b"_L10") && found.methods.contains(b"_ON_"));
        check_objects(&config, &found);
    }

    #[test]
    fn the_walker_rejects_a_broken_package_length_or_name() {
        let table = aml::build_ssdt(&example());
        let body = &table[36..];
        // The first object is If (Zero) { External ... }: a PkgLength one byte short leaves an
        // External cut in half; one byte long runs into the next object's opcode.
        for delta in [-1i16, 1] {
            let mut b = body.to_vec();
            assert_eq!(b[0], 0xa0);
            b[1] = (i16::from(b[1]) + delta) as u8;
            assert!(walk(&b).is_err(), "PkgLength {delta:+} accepted");
        }
        let mut b = body.to_vec();
        let at = b.windows(4).position(|w| w == b"PWRB").unwrap();
        b[at] = b'a'; // lower case is not a NameSeg character
        assert!(walk(&b).is_err());
        assert!(walk(&body[..body.len() - 1]).is_err(), "a truncated body");
    }
}
