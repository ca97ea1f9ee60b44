//! ASL text through ACPICA's `iasl` (Debian/Ubuntu package `acpica-tools`).
//!
//! [`disassemble`] writes the table to a fresh temporary directory, runs `iasl -d table.aml` there
//! and returns the `table.dsl` it produces; [`compile_asl`] does the reverse. Both return
//! [`AmlToolError::Missing`] (saying to install acpica-tools) when `iasl` is not on `PATH`.
//! `iasl` reports problems on stdout; [`IaslOutput::problems`] extracts the error and warning lines.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why an ACPICA tool could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum AmlToolError {
    /// The tool is not installed.
    #[error("{tool} not found on PATH: install acpica-tools (e.g. apt-get install acpica-tools)")]
    Missing {
        /// `iasl` or `acpiexec`.
        tool: &'static str,
    },
    /// Temporary files could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The tool ran but failed or produced no output file.
    #[error("{tool} failed ({status}):\n{log}")]
    Failed {
        /// The tool.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// Its stdout and stderr.
        log: String,
    },
}

/// What iasl produced and said.
#[derive(Debug, Clone)]
pub struct IaslOutput<T> {
    /// The output file's contents.
    pub output: T,
    /// iasl's stdout followed by its stderr.
    pub log: String,
}

impl<T> IaslOutput<T> {
    /// The lines of the log that report errors, warnings or corrupt AML (empty when clean).
    pub fn problems(&self) -> Vec<String> {
        problems(&self.log)
    }
}

/// The lines of an iasl log that report errors, warnings or corrupt AML. Summary lines such as
/// "Compilation successful. 0 Errors, 0 Warnings" do not count.
pub fn problems(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            let summary = lower.contains("0 errors, 0 warnings");
            !summary
                && (lower.contains("error")
                    || lower.contains("warning")
                    || lower.contains("corrupt")
                    || lower.contains("unresolved")
                    || lower.contains("failure")
                    || lower.contains("exception"))
        })
        .map(str::to_string)
        .collect()
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, AmlToolError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut last = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("vfio-pm-aml-{}-{nanos}-{n}", std::process::id()));
            match std::fs::create_dir(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(AmlToolError::Io {
                        what: format!("creating {}", dir.display()),
                        source: e,
                    })
                }
            }
        }
        Err(AmlToolError::Io {
            what: "creating a temporary directory".into(),
            source: last.unwrap_or_else(|| std::io::Error::from(ErrorKind::AlreadyExists)),
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, data: &[u8]) -> Result<(), AmlToolError> {
    std::fs::write(path, data).map_err(|e| AmlToolError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })
}

/// Runs `iasl args...` in `dir` and reads `output` from it.
fn run_iasl(dir: &Path, args: &[&str], output: &str) -> Result<IaslOutput<Vec<u8>>, AmlToolError> {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => AmlToolError::Missing { tool: "iasl" },
            _ => AmlToolError::Io {
                what: "running iasl".into(),
                source: e,
            },
        })?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = |log: String| AmlToolError::Failed {
        tool: "iasl",
        status: out.status.to_string(),
        log,
    };
    if !out.status.success() {
        return Err(failed(log));
    }
    match std::fs::read(dir.join(output)) {
        Ok(output) => Ok(IaslOutput { output, log }),
        Err(_) => Err(failed(log)),
    }
}

/// Disassembles a table with `iasl -d`: the ASL text and iasl's log.
pub fn disassemble_full(table: &[u8]) -> Result<IaslOutput<String>, AmlToolError> {
    let dir = TempDir::new()?;
    write(&dir.0.join("table.aml"), table)?;
    let r = run_iasl(&dir.0, &["-d", "table.aml"], "table.dsl")?;
    Ok(IaslOutput {
        output: String::from_utf8_lossy(&r.output).into_owned(),
        log: r.log,
    })
}

/// Disassembles a table with `iasl -d` and returns the ASL text (the `vfio-pm aml --dsl` output).
pub fn disassemble(table: &[u8]) -> Result<String, AmlToolError> {
    disassemble_full(table).map(|r| r.output)
}

/// Compiles ASL text with `iasl`: the table bytes and iasl's log.
pub fn compile_asl(asl: &str) -> Result<IaslOutput<Vec<u8>>, AmlToolError> {
    let dir = TempDir::new()?;
    write(&dir.0.join("table.asl"), asl.as_bytes())?;
    run_iasl(&dir.0, &["table.asl"], "table.aml")
}
