//! The scenario text format (see the [module docs](super)).

use crate::platform::Platform;
use std::path::Path;

/// Which platforms a scenario applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platforms {
    /// Both.
    Any,
    /// Only this one.
    Only(Platform),
}

/// A parsed scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (the file name without `.scn`).
    pub name: String,
    /// Which platforms it applies to.
    pub platforms: Platforms,
    /// True when its kernel outcome depends on racing the asynchronous suspend.
    pub timing_sensitive: bool,
    /// The vfio-pci module parameter `disable_idle_d3` the scenario is written for (header
    /// `module disable_idle_d3=1`; default 0). It runs only on a host loaded that way.
    pub disable_idle_d3: bool,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The named eventfds, in order of first mention.
    pub eventfds: Vec<String>,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// 1-based line number in the scenario text.
    pub line: usize,
    /// The step as written, comment removed and whitespace collapsed.
    pub text: String,
    /// What to do.
    pub kind: StepKind,
    /// Whether the runner settles after it (false with `nosettle`).
    pub settle: bool,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Open the device through the factory.
    Open,
    /// Close (if open) and open again.
    Reopen,
    /// Close the device fd.
    Close,
    /// Only settle and observe.
    Settle,
    /// VFIO_DEVICE_FEATURE.
    Feature(FeatureStep),
    /// Another device ioctl.
    Ioctl,
    /// Host sysfs config read.
    ConfigRead,
    /// `pread` on a region.
    RegionRead {
        /// The region.
        region: Region,
        /// Offset in the region.
        offset: u64,
        /// Bytes to read.
        len: usize,
    },
    /// `pwrite` on a region.
    RegionWrite {
        /// The region.
        region: Region,
        /// Offset in the region.
        offset: u64,
        /// Bytes to write.
        data: Vec<u8>,
    },
    /// Touch an `mmap` of a region (BAR); result `ok` or `SIGBUS`.
    MmapTouch {
        /// The region.
        region: Region,
    },
    /// Guest PMCSR access through the config region.
    Pmcsr(PmcsrStep),
    /// A sysfs knob write.
    Knob(Knob),
    /// VFIO_DEVICE_RESET.
    Reset,
}

/// The arguments of a `feature` step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureStep {
    /// The flags word.
    pub flags: u32,
    /// argsz, or None for 8 + payload length.
    pub argsz: Option<u32>,
    /// The eventfd field of the payload; None (and no reserved/payload) = no payload.
    pub fd: Option<Fd>,
    /// The reserved field.
    pub reserved: Option<u32>,
    /// Raw payload bytes, replacing the fd/reserved payload.
    pub payload: Option<Vec<u8>>,
}

/// The eventfd field of a WITH_WAKEUP payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fd {
    /// A named eventfd created by the runner.
    EventFd(String),
    /// An fd number that is not open.
    Bad,
    /// An open fd that is not an eventfd (a directory).
    File,
    /// A literal number (e.g. -1).
    Number(i32),
}

/// A region of the device fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// The config space region.
    Config,
    /// BAR0.
    Bar0,
    /// Any region index.
    Index(u32),
}

impl Region {
    /// The VFIO region index.
    pub fn index(self) -> u32 {
        match self {
            Region::Config => vfio_pm::CONFIG_REGION,
            Region::Bar0 => vfio_pm::BAR0_REGION,
            Region::Index(n) => n,
        }
    }
}

/// A `pmcsr` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmcsrStep {
    /// Write these state bits (0 = D0 .. 3 = D3hot).
    Write(u8),
    /// Read the state bits.
    Read,
}

/// A `knob` step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    /// `power/control`: `auto` = true, `on` = false.
    Control(bool),
    /// `d3cold_allowed`.
    D3cold(bool),
}

/// A syntax error in scenario text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{scenario}:{line}: {message}")]
pub struct ParseError {
    /// The scenario's name.
    pub scenario: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Why scenarios could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Reading a file or directory failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not parse.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl Scenario {
    /// Parses scenario text. Never panics; the first error is returned with its line.
    pub fn parse(name: &str, text: &str) -> Result<Scenario, ParseError> {
        let mut sc = Scenario {
            name: name.to_string(),
            platforms: Platforms::Any,
            timing_sensitive: false,
            disable_idle_d3: false,
            steps: Vec::new(),
            eventfds: Vec::new(),
        };
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let err = |message: String| ParseError {
                scenario: name.to_string(),
                line,
                message,
            };
            let content = raw.split('#').next().unwrap_or("");
            let mut words: Vec<&str> = content.split_whitespace().collect();
            if words.is_empty() {
                continue;
            }
            let mut settle = true;
            if words.last() == Some(&"nosettle") {
                settle = false;
                words.pop();
            }
            let Some((&cmd, args)) = words.split_first() else {
                return Err(err("`nosettle` needs a step".into()));
            };
            if sc.directive(cmd, args).map_err(err)? {
                continue;
            }
            let kind = parse_step(cmd, args, &mut sc.eventfds).map_err(err)?;
            let text = if settle {
                words.join(" ")
            } else {
                format!("{} nosettle", words.join(" "))
            };
            sc.steps.push(Step {
                line,
                text,
                kind,
                settle,
            });
        }
        Ok(sc)
    }

    /// Applies a header directive (`platform`, `module`, `timing-sensitive`); false when
    /// `cmd` is a step.
    fn directive(&mut self, cmd: &str, args: &[&str]) -> Result<bool, String> {
        match (cmd, args) {
            ("platform", [p]) => {
                self.platforms = match *p {
                    "any" | "both" => Platforms::Any,
                    other => Platforms::Only(other.parse().map_err(|e| format!("{e}"))?),
                };
            }
            ("module", [kv]) => {
                self.disable_idle_d3 = match *kv {
                    "disable_idle_d3=1" => true,
                    "disable_idle_d3=0" => false,
                    other => {
                        return Err(format!(
                            "module: expected disable_idle_d3=0|1, got {other:?}"
                        ))
                    }
                };
            }
            ("timing-sensitive", []) => {
                self.timing_sensitive = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads and parses one `.scn` file; the name is the file stem.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Scenario::parse(&name, &text)?)
    }

    /// Every `*.scn` file of a directory, sorted by file name.
    pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
        let io = |source| ScenarioError::Io {
            path: dir.display().to_string(),
            source,
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "scn") {
                paths.push(path);
            }
        }
        paths.sort();
        paths.iter().map(|p| Scenario::from_file(p)).collect()
    }

    /// Whether the scenario applies to `platform`.
    pub fn applies_to(&self, platform: Platform) -> bool {
        match self.platforms {
            Platforms::Any => true,
            Platforms::Only(p) => p == platform,
        }
    }
}

fn parse_feature(flags: &str, rest: &[&str]) -> Result<FeatureStep, String> {
    let mut f = FeatureStep {
        flags: parse_flags(flags)?,
        argsz: None,
        fd: None,
        reserved: None,
        payload: None,
    };
    for arg in rest {
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, got {arg:?}"))?;
        match key {
            "argsz" => f.argsz = Some(parse_u32(value)?),
            "efd" => {
                let ok = !value.is_empty()
                    && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !ok {
                    return Err(format!("bad eventfd name {value:?}"));
                }
                f.fd = Some(Fd::EventFd(value.to_string()));
            }
            "fd" => {
                f.fd =
                    Some(match value {
                        "badfd" => Fd::Bad,
                        "file" => Fd::File,
                        n => Fd::Number(n.parse::<i32>().map_err(|_| {
                            format!("fd: expected badfd, file or a number, got {n:?}")
                        })?),
                    })
            }
            "reserved" => f.reserved = Some(parse_u32(value)?),
            "payload" => f.payload = Some(parse_hex(value)?),
            other => return Err(format!("unknown feature argument {other:?}")),
        }
    }
    Ok(f)
}

/// Parses `SET|4`, `PROBE|SET|GET|3`, `0x20003`, `SET|3|1<<19`, `SET|WAKEUP`.
fn parse_flags(text: &str) -> Result<u32, String> {
    let mut flags = 0u32;
    for part in text.split('|') {
        let v = match part.to_ascii_uppercase().as_str() {
            "GET" => vfio_pm::feature::FLAG_GET,
            "SET" => vfio_pm::feature::FLAG_SET,
            "PROBE" => vfio_pm::feature::FLAG_PROBE,
            "ENTRY" => 3,
            "WAKEUP" | "ENTRY_WITH_WAKEUP" => 4,
            "EXIT" => 5,
            _ => match part.split_once("<<") {
                Some((base, shift)) => {
                    let shift = parse_u32(shift)?;
                    parse_u32(base)?
                        .checked_shl(shift)
                        .filter(|_| shift < 32)
                        .ok_or_else(|| format!("shift out of range in {part:?}"))?
                }
                None => parse_u32(part)?,
            },
        };
        flags |= v;
    }
    Ok(flags)
}

fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    r.map_err(|_| format!("expected a number, got {text:?}"))
}

fn parse_u32(text: &str) -> Result<u32, String> {
    u32::try_from(parse_u64(text)?).map_err(|_| format!("{text:?} does not fit in 32 bits"))
}

fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let t = text.strip_prefix("0x").unwrap_or(text);
    if t.is_empty() || t.len() % 2 != 0 || t.len() > 2 * 4096 {
        return Err(format!(
            "expected an even number of hex digits, got {text:?}"
        ));
    }
    (0..t.len())
        .step_by(2)
        .map(|i| {
            t.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("bad hex {text:?}"))
        })
        .collect()
}

/// One step line: `cmd` and its arguments. A `feature` step's named eventfd is added to
/// `eventfds` (in order of first mention).
fn parse_step(cmd: &str, args: &[&str], eventfds: &mut Vec<String>) -> Result<StepKind, String> {
    Ok(match (cmd, args) {
        ("open", []) => StepKind::Open,
        ("reopen", []) => StepKind::Reopen,
        ("close", []) => StepKind::Close,
        ("settle", []) => StepKind::Settle,
        ("ioctl", []) => StepKind::Ioctl,
        ("config-read", []) => StepKind::ConfigRead,
        ("reset", []) => StepKind::Reset,
        ("feature", [flags, rest @ ..]) => {
            let f = parse_feature(flags, rest)?;
            if let Some(Fd::EventFd(name)) = &f.fd {
                if !eventfds.contains(name) {
                    eventfds.push(name.clone());
                }
            }
            StepKind::Feature(f)
        }
        ("region-read", [r, off, len]) => StepKind::RegionRead {
            region: parse_region(r)?,
            offset: parse_u64(off)?,
            len: usize::try_from(parse_u64(len)?)
                .ok()
                .filter(|&l| l <= 1 << 20)
                .ok_or_else(|| format!("length {len} too large (max 1 MiB)"))?,
        },
        ("region-write", [r, off, hex]) => StepKind::RegionWrite {
            region: parse_region(r)?,
            offset: parse_u64(off)?,
            data: parse_hex(hex)?,
        },
        ("mmap-touch", [r]) => StepKind::MmapTouch {
            region: parse_region(r)?,
        },
        ("pmcsr", [what]) => StepKind::Pmcsr(match what.to_ascii_lowercase().as_str() {
            "d0" => PmcsrStep::Write(0),
            "d1" => PmcsrStep::Write(1),
            "d2" => PmcsrStep::Write(2),
            "d3hot" | "d3" => PmcsrStep::Write(3),
            "read" => PmcsrStep::Read,
            other => return Err(format!("pmcsr: unknown state {other:?}")),
        }),
        ("knob", [kv]) => StepKind::Knob(match *kv {
            "control=on" => Knob::Control(false),
            "control=auto" => Knob::Control(true),
            "d3cold=0" => Knob::D3cold(false),
            "d3cold=1" => Knob::D3cold(true),
            other => return Err(format!("knob: unknown setting {other:?}")),
        }),
        (cmd, args) => {
            return Err(format!(
                "unknown step or wrong arguments: {cmd} {}",
                args.join(" ")
            ))
        }
    })
}

fn parse_region(text: &str) -> Result<Region, String> {
    match text {
        "config" => Ok(Region::Config),
        "bar0" => Ok(Region::Bar0),
        n => parse_u32(n)
            .map(Region::Index)
            .map_err(|_| format!("region: expected config, bar0 or an index, got {n:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sketch_from_the_brief() {
        let sc = Scenario::parse(
            "20",
            "# 20: WITH_WAKEUP, suspended, EXIT signals once\nplatform any\nopen\n\
             feature SET|4 efd=A     # comment\nsettle\nfeature SET|5\n",
        )
        .unwrap();
        assert_eq!(sc.platforms, Platforms::Any);
        assert_eq!(sc.eventfds, ["A"]);
        assert_eq!(sc.steps.len(), 4);
        assert_eq!(sc.steps[1].text, "feature SET|4 efd=A");
        assert_eq!(sc.steps[1].line, 4);
        let StepKind::Feature(f) = &sc.steps[1].kind else {
            panic!("not a feature step")
        };
        assert_eq!(f.flags, 0x20004);
        assert_eq!(f.fd, Some(Fd::EventFd("A".into())));
    }

    #[test]
    fn flags_accept_names_numbers_and_shifts() {
        assert_eq!(parse_flags("PROBE|SET|GET|3"), Ok(0x70003));
        assert_eq!(parse_flags("SET|3|1<<19"), Ok(0x20003 | 1 << 19));
        assert_eq!(parse_flags("set|wakeup"), Ok(0x20004));
        assert_eq!(parse_flags("0xffff"), Ok(0xffff));
        assert!(parse_flags("1<<32").is_err());
        assert!(parse_flags("SET|").is_err());
        assert!(parse_flags("0x1_0000_0000").is_err());
    }

    #[test]
    fn errors_carry_the_line_and_nosettle_is_recorded() {
        let e = Scenario::parse("x", "open\n\nfeature SET|3 argsz=q\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().starts_with("x:3:"), "{e}");
        let sc = Scenario::parse("x", "platform d3cold\nfeature SET|4 efd=A nosettle\n").unwrap();
        assert!(!sc.steps[0].settle);
        assert_eq!(sc.steps[0].text, "feature SET|4 efd=A nosettle");
        assert!(sc.applies_to(Platform::D3cold) && !sc.applies_to(Platform::D3hot));
        assert!(Scenario::parse("x", "nosettle").is_err());
        assert!(Scenario::parse("x", "platform d4").is_err());
        assert!(Scenario::parse("x", "module nointxmask=1").is_err());
        let sc = Scenario::parse("x", "module disable_idle_d3=1\nopen\n").unwrap();
        assert!(sc.disable_idle_d3 && sc.steps.len() == 1);
        assert!(!Scenario::parse("x", "open\n").unwrap().disable_idle_d3);
    }
}
