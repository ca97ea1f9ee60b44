//! ACPI names: validated name segments and paths.

use std::fmt;
use std::str::FromStr;

/// One 4-character ACPI name segment (`PCI0`, `S28_`), always valid: `A-Z` or `_` first, then
/// `A-Z`, `0-9` or `_`. Shorter ASL spellings are padded with `_` as ASL does (`S28` is `S28_`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameSeg([u8; 4]);

impl NameSeg {
    /// Parses one segment, padding names of 1 to 3 characters with `_`.
    pub fn new(text: &str) -> Result<Self, NameError> {
        let bytes = text.as_bytes();
        let bad = |reason: &'static str| NameError {
            segment: text.to_string(),
            reason,
        };
        if bytes.is_empty() {
            return Err(bad("is empty"));
        }
        if bytes.len() > 4 {
            return Err(bad("is longer than 4 characters"));
        }
        if bytes.iter().any(|b| b.is_ascii_lowercase()) {
            return Err(bad("has lowercase letters (ACPI names are upper case)"));
        }
        if !(bytes[0].is_ascii_uppercase() || bytes[0] == b'_') {
            return Err(bad("must start with A-Z or '_'"));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        {
            return Err(bad("may only contain A-Z, 0-9 and '_'"));
        }
        let mut seg = [b'_'; 4];
        seg[..bytes.len()].copy_from_slice(bytes);
        Ok(Self(seg))
    }

    /// A segment from bytes the caller knows are valid (generator constants).
    pub(crate) const fn from_raw(bytes: [u8; 4]) -> Self {
        Self(bytes)
    }

    /// The four bytes as they appear in AML.
    pub fn bytes(&self) -> [u8; 4] {
        self.0
    }

    /// The four characters (`S28_`).
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("____")
    }

    /// The ASL spelling: trailing `_` padding removed, as iasl prints it (`S28`, `_SB`).
    pub fn asl(&self) -> &str {
        let s = self.as_str();
        let trimmed = s.trim_end_matches('_');
        if trimmed.is_empty() {
            &s[..1]
        } else {
            trimmed
        }
    }
}

impl fmt::Debug for NameSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_str())
    }
}

impl fmt::Display for NameSeg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name segment or path is not a valid ACPI name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment:?} is not a valid 4-char ACPI name: it {reason}")]
pub struct NameError {
    /// The offending segment.
    pub segment: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// An absolute ACPI namespace path such as `\_SB.PCI0.S28`, with at least one segment below the
/// root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AcpiPath {
    segments: Vec<NameSeg>,
}

/// Why a string is not an absolute ACPI path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Relative paths are ambiguous in an SSDT.
    #[error("must be absolute (start with '\\'), e.g. \\_SB.PCI0.S28")]
    NotAbsolute,
    /// `\` alone.
    #[error("names no object (only the root)")]
    Root,
    /// A bad segment.
    #[error(transparent)]
    Segment(#[from] NameError),
    /// More segments than AML can encode.
    #[error("has {0} segments; AML allows at most 255")]
    TooLong(usize),
}

impl AcpiPath {
    /// Builds a path from segments; `None` if there are none.
    pub fn from_segments(segments: Vec<NameSeg>) -> Option<Self> {
        (!segments.is_empty() && segments.len() <= 255).then_some(Self { segments })
    }

    /// A path from segments the caller knows are 1..=255 (generator constants).
    pub(crate) fn from_raw(segments: Vec<NameSeg>) -> Self {
        Self { segments }
    }

    /// The segments below the root.
    pub fn segments(&self) -> &[NameSeg] {
        &self.segments
    }

    /// The last segment (the object's own name).
    pub fn last(&self) -> NameSeg {
        // Never empty by construction.
        self.segments.last().copied().unwrap_or(NameSeg(*b"____"))
    }

    /// The parent scope, or `None` for a child of the root.
    pub fn parent(&self) -> Option<AcpiPath> {
        (self.segments.len() > 1).then(|| Self {
            segments: self.segments[..self.segments.len() - 1].to_vec(),
        })
    }

    /// `self` with one more segment (`None` beyond 255 segments).
    pub fn child(&self, seg: NameSeg) -> Option<AcpiPath> {
        let mut segments = self.segments.clone();
        segments.push(seg);
        Self::from_segments(segments)
    }

    /// Whether `self` is a strict ancestor of `other`.
    pub fn is_ancestor_of(&self, other: &AcpiPath) -> bool {
        other.segments.len() > self.segments.len() && other.segments.starts_with(&self.segments)
    }

    /// The ASL spelling iasl prints: `\_SB.PCI0.S28`.
    pub fn asl(&self) -> String {
        let mut s = String::from("\\");
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            s.push_str(seg.asl());
        }
        s
    }
}

impl FromStr for AcpiPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, PathError> {
        let rest = s.strip_prefix('\\').ok_or(PathError::NotAbsolute)?;
        if rest.is_empty() {
            return Err(PathError::Root);
        }
        let segments = rest
            .split('.')
            .map(NameSeg::new)
            .collect::<Result<Vec<_>, _>>()?;
        if segments.len() > 255 {
            return Err(PathError::TooLong(segments.len()));
        }
        Ok(Self { segments })
    }
}

impl fmt::Display for AcpiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.asl())
    }
}

impl fmt::Debug for AcpiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AcpiPath({})", self.asl())
    }
}
