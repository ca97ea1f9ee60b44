//! Conformance scenarios: a small text format ([`Scenario::parse`]), a runner generic over the
//! backend ([`run`]), and the outcome trace ([`Trace`], compared with `==`; [`diff`] prints a
//! mismatch side by side).
//!
//! This module depends on nothing but `vfio-pm` (and std), so the same runner drives the
//! model ([`crate::SimDevice`]) and the real kernel (`vfio_pm::KernelDevice`, e.g. inside a
//! QEMU guest).
//!
//! # Format
//! One step per line; `#` starts a comment; blank lines are ignored. A comment's "Outcome N"
//! is item N of docs/kernel-behaviour.md, *Expected outcomes*; an italic section name or "the
//! table" names a section of that file. Directives:
//!
//! | line | meaning |
//! |---|---|
//! | `platform any` / `platform d3hot` / `platform d3cold` | which platforms the scenario applies to (default any) |
//! | `module disable_idle_d3=1` | the scenario is for a host whose vfio-pci was loaded with `disable_idle_d3=1` (the model builds its device with it; a guest runs it only on such a boot, and only such scenarios) |
//! | `timing-sensitive` | the outcome on a real kernel depends on winning a race with the asynchronous suspend |
//!
//! Steps (each may end with `nosettle`: the runner then records the power state as
//! `unsettled` instead of waiting for the kernel's asynchronous work, so the next step follows
//! immediately):
//!
//! | step | call |
//! |---|---|
//! | `open` | the factory (group open + get device fd); EBUSY-like errors are recorded |
//! | `reopen` | `close` (if open) then `open` |
//! | `close` | [`ConformanceDevice::close`](vfio_pm::ConformanceDevice::close) |
//! | `settle` | nothing (the runner settles after every step) |
//! | `feature FLAGS [argsz=N] [efd=NAME] [fd=-1\|badfd\|file\|N] [reserved=N] [payload=HEX]` | VFIO_DEVICE_FEATURE |
//! | `ioctl` | another device ioctl (VFIO_DEVICE_GET_INFO) |
//! | `config-read` | host sysfs config read (`lspci -xxx`) |
//! | `region-read config\|bar0\|N OFFSET LEN` | `pread` on a region |
//! | `region-write config\|bar0\|N OFFSET HEXBYTES` | `pwrite` on a region |
//! | `mmap-touch bar0\|N` | [`ConformanceDevice::bar_mmap_access`](vfio_pm::ConformanceDevice::bar_mmap_access): touches the device's mapping of the region (the kernel backend maps it on first use and keeps it until close); result `ok` or `SIGBUS` |
//! | `pmcsr D0\|D1\|D2\|D3hot` | guest PMCSR write: finds the PM capability by walking the capability list through the config region, writes PM cap + 4 |
//! | `pmcsr read` | reads the PMCSR state bits the same way; result `ok=D0` .. `ok=D3hot` |
//! | `knob control=on\|auto`, `knob d3cold=0\|1` | sysfs `power/control`, `d3cold_allowed` |
//! | `reset` | VFIO_DEVICE_RESET |
//!
//! FLAGS are `|`-separated: `GET`, `SET`, `PROBE`, `ENTRY` (3), `WAKEUP` (4), `EXIT` (5),
//! numbers (`200`, `0xffff`) and bits (`1<<19`). `argsz` defaults to 8 + payload length; a
//! payload (8 bytes: eventfd number, reserved) is sent when `efd=`, `fd=` or `reserved=` is
//! given. `efd=NAME` names an eventfd the runner creates (non-blocking) for the whole run.
//!
//! # Trace
//! After every step the runner records the step, its result (`ok`, `ok=VALUE` or an errno
//! name such as `EINVAL`), every named eventfd's counter (read and reset), and
//! `power_state runtime_status` after settling.

mod parse;
mod run;
mod trace;

pub use parse::{
    Fd, FeatureStep, Knob, ParseError, Platforms, PmcsrStep, Region, Scenario, ScenarioError, Step,
    StepKind,
};
pub use run::{run, run_with, RunOptions, BAD_FD};
pub use trace::{diff, Trace, TraceLine, TraceParseError};

/// The workspace's `scenarios/*.scn` files as `(name, text)`, sorted by name, embedded at
/// build time (so a guest binary carries them without any file).
pub const BUILTIN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// Parses every [`BUILTIN`] scenario.
pub fn builtin() -> Result<Vec<Scenario>, ParseError> {
    BUILTIN
        .iter()
        .map(|(name, text)| Scenario::parse(name, text))
        .collect()
}
