//! # vfio-pm-fuzz
//!
//! The invariant checks behind vfio-pm's coverage-guided fuzz targets, one module per target:
//! everything a guest or a file controls.
//!
//! | target | input | module |
//! |---|---|---|
//! | `trap` | guest writes to the trap register | [`trap`] |
//! | `mailbox` | the acknowledged mailbox's shared memory, which the guest writes | [`mailbox`] |
//! | `pm_config` | guest accesses to the PM capability, root port PME registers, GPE block | [`pm_config`] |
//! | `config_aml` | the VMM's TOML configuration, through to the SSDT | [`config_aml`] |
//! | `scenario` | scenario text, run on the simulated host | [`scenario`] |
//! | `sysfs` | sysfs file contents (power state, runtime status, residency counters) | [`sysfs`] |
//! | `qemu_args` | the QEMU command line `vfio-pm qemu` analyses | [`qemu_args`] |
//! | `vmm_exits` | the guest's VM exits into the VMM glue, with host events on the simulated host | [`vmm_exits`] |
//!
//! Each `check` function takes the fuzzer's bytes, drives the code under test and panics when an
//! invariant does not hold (never on bad input: bad input must come back as a typed error). The
//! `cargo fuzz` targets in `fuzz/fuzz_targets/` call them, and so does the corpus replay test
//! (`fuzz/tests/replay.rs`, plain `cargo test`), over the hand-written seeds
//! (`fuzz/seeds/<target>/`), the minimized corpus (`fuzz/corpus/<target>/`) and the crash
//! reproducers (`fuzz/artifacts/<target>/`). How to run them: `docs/fuzzing.md`.
#![deny(missing_docs)]

pub mod config_aml;
pub mod mailbox;
pub mod pm_config;
pub mod qemu_args;
pub mod scenario;
pub mod sysfs;
pub mod trap;
pub mod vmm_exits;

use std::path::{Path, PathBuf};

// vfio-pm-cli's QEMU command line analysis, compiled from the CLI's own source files (the CLI
// is a binary crate: there is no library to link, and these three modules use nothing of it
// but each other, as `super::args` and `super::opts`). The `qemu_args` target fuzzes them.
#[allow(dead_code, missing_docs)]
#[path = "../../crates/vfio-pm-cli/src/qemu/args.rs"]
mod args;
#[allow(dead_code, missing_docs)]
#[path = "../../crates/vfio-pm-cli/src/qemu/opts.rs"]
mod opts;
#[allow(dead_code, missing_docs)]
#[path = "../../crates/vfio-pm-cli/src/qemu/plan.rs"]
mod plan;

/// Bytes the code under test may have allocated at once (live, not cumulative) before an
/// allocation fails and the process aborts: the "no unbounded allocation" invariant. The fuzz
/// targets and the replay test install [`cap::Cap`] with this limit as the global allocator
/// (libFuzzer's own `-malloc_limit_mb` needs a sanitizer runtime, which these builds lack).
pub const MEMORY_LIMIT: usize = 256 << 20;

/// One fuzz target.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// The `cargo fuzz` target name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`).
    pub name: &'static str,
    /// Longest input the fuzzer generates (libFuzzer `-max_len`); the replay test refuses
    /// longer corpus files so that the corpus stays what the fuzzer can reach.
    pub max_len: usize,
    /// The check: panics when an invariant does not hold.
    pub check: fn(&[u8]),
    /// What the target feeds and asserts, in one line.
    pub what: &'static str,
}

/// Every target, in the order CI runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "trap",
        max_len: 1024,
        check: trap::check,
        what: "trap register writes: a decoded write is one the decoder claims and re-encodes to the bytes written",
    },
    Target {
        name: "mailbox",
        max_len: 4200,
        check: mailbox::check,
        what: "the acknowledged mailbox's guest-written memory: scans read what the guest wrote, replies change only their slot",
    },
    Target {
        name: "pm_config",
        max_len: 2048,
        check: pm_config::check,
        what: "PM capability, root port PME and GPE registers: RW1C status, read-only bits, against a reference model",
    },
    Target {
        name: "config_aml",
        max_len: 4096,
        check: config_aml::check,
        what: "TOML configuration to SSDT: typed errors, valid header, length and checksum, well-formed AML",
    },
    Target {
        name: "scenario",
        max_len: 4096,
        check: scenario::check,
        what: "scenario text parsed and run on the simulated host: typed errors, one trace line per step that parses back",
    },
    Target {
        name: "sysfs",
        max_len: 2048,
        check: sysfs::check,
        what: "sysfs file contents: reports, observations, residency and the tracker agree with the files and never panic",
    },
    Target {
        name: "qemu_args",
        max_len: 4096,
        check: qemu_args::check,
        what: "the QEMU command line of vfio-pm qemu: a faithful walk, typed errors, plans that name only what the command line has",
    },
    Target {
        name: "vmm_exits",
        max_len: 2048,
        check: vmm_exits::check,
        what: "guest VM exits into VmmPowerManager on the simulated host: guest errors are guest errors, teardown leaves nothing engaged",
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// The `fuzz/` directory (this crate).
pub fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `fuzz/seeds/<target>`: inputs written by hand (the example configuration, the project's
/// scenarios), the fuzzer's starting points.
pub fn seeds_dir(target: &str) -> PathBuf {
    fuzz_dir().join("seeds").join(target)
}

/// `fuzz/corpus/<target>`: the inputs the fuzzer found that add coverage beyond the seeds,
/// minimized (`cargo xtask fuzz --merge`), kept in the repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    fuzz_dir().join("corpus").join(target)
}

/// `fuzz/artifacts/<target>`: crash reproducers kept in the repository as regression inputs.
pub fn artifacts_dir(target: &str) -> PathBuf {
    fuzz_dir().join("artifacts").join(target)
}

/// The regular files directly in `dir`, sorted by name; none when it does not exist.
pub fn inputs_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Text for targets whose input is text: the bytes as UTF-8, or `None` (the fuzzer's mutations
/// quickly learn to stay valid; a file that is not UTF-8 is refused by a `read_to_string`
/// before the parser ever sees it).
pub fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
