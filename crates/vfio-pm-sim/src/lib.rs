//! # vfio-pm-sim
//!
//! An executable, deterministic model of the Linux kernel's vfio-pci runtime power management
//! (Part 1 of 5.19 and the 6.1 `VFIO_DEVICE_FEATURE` LOW_POWER_ENTRY / ENTRY_WITH_WAKEUP /
//! EXIT), implementing the same [`vfio_pm::ConformanceDevice`] seam as the real-kernel backend.
//!
//! - [`SimHost`] (built with [`SimHost::builder`]): platform with or without D3cold, kernel
//!   version, and one or more devices ([`DeviceConfig`]: `disable_idle_d3`, reset, INTx,
//!   resume failure, PM capability, dev_set).
//! - [`SimDevice`]: an opened device fd, faithful call for call: the ioctl wrapper resumes
//!   the device before any argument check, the feature validation order and errnos, the
//!   runtime-PM usage count, asynchronous suspend (it happens when you call
//!   [`ConformanceDevice::settle`](vfio_pm::ConformanceDevice::settle) or [`SimHost::run_pending`]: nothing sleeps), one-shot wakeup
//!   signalling on a real resume, region access, mmap faults
//!   ([`ConformanceDevice::bar_mmap_access`](vfio_pm::ConformanceDevice::bar_mmap_access)), host sysfs
//!   paths, reset and close.
//! - Eventfds are real: the ENTRY_WITH_WAKEUP payload carries an eventfd number of this
//!   process; the model validates it like the kernel (EINVAL / EBADF), keeps a reference and
//!   writes 1 to it on a wake.
//! - [`Event`]: a structured trace of every transition ([`SimHost::events`]).
//! - [`scenario`]: the scenario format, the backend-generic runner and the outcome trace;
//!   [`run_on_model`] runs one on a fresh model host ([`run_on_model_with`]: any kernel
//!   version and options; [`model_outcomes`]: every outcome a racy scenario allows);
//!   [`scenario::BUILTIN`] embeds the workspace's scenario files.
//!
//! ```
//! use std::os::fd::AsRawFd;
//! use std::time::Duration;
//! use vfio_pm::{ConformanceDevice, LowPower, PowerState, RuntimeStatus};
//! use vfio_pm_sim::{Platform, SimHost, DEFAULT_ADDRESS};
//! use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let host = SimHost::builder().platform(Platform::D3cold).build()?;
//! let dev = host.open(DEFAULT_ADDRESS)?;              // resumes the unused device: D0 active
//! let wake = EventFd::new(EFD_NONBLOCK)?;
//! dev.enter_low_power_with_wakeup(&wake)?;
//! let now = dev.settle(Duration::from_secs(1))?;       // the kernel suspends asynchronously
//! assert_eq!(now.power_state, PowerState::D3Cold);
//! assert!(wake.read().is_err(), "no wake yet: the counter is 0");
//!
//! dev.host_config_read()?;                             // lspci on a D3cold device resumes it
//! assert_eq!(wake.read()?, 1);                         // ... which signals the eventfd once
//! let now = dev.settle(Duration::from_secs(1))?;
//! assert_eq!(now.runtime_status, RuntimeStatus::Active); // one-shot: low power was left
//! # Ok(()) }
//! ```
//!
//! ## Modelling choices (where the kernel sources leave room)
//! - Transitions are instantaneous: runtime status is only ever `active` or `suspended`.
//! - A `settle` runs every queued idle check of the host; suspend never happens otherwise.
//! - After close, the fd calls answer EBADF but the sysfs-side calls (`observe`, `settle`,
//!   `host_config_read`, `set_host_knob`) keep working, as they do on `KernelDevice`.
//! - `device_feature` clamps `argsz` to the header plus payload, exactly as
//!   `vfio_pm::feature::device_feature` does before calling the real kernel, so both backends
//!   see the same request.
//! - Config space is an e1000e-like header; only the command register and PMCSR are
//!   writable. The PMC advertises neither D1 nor D2, so PMCSR D1/D2 writes are ignored.
//!   Out-of-range config access answers EFAULT (`vfio_config_do_rw`); BARs other than BAR0
//!   answer EINVAL.
//! - A device without a PM capability on a D3hot platform runtime-suspends but stays in D0
//!   (`pci_target_state`).
//! - Resume failure leaves the device suspended (in its D3 state) and every resume EIO; a
//!   resume failure injected while `power/control=on` keeps that reference.
//! - Hot reset takes every device sharing the caller's `dev_set` id (or the caller alone).
#![deny(missing_docs)]

mod config;
mod config_space;
mod device;
mod error;
mod eventfd;
mod events;
mod host;
mod platform;
mod rpm;
pub mod scenario;
mod state;
mod vfio;

pub use config::{DeviceConfig, DEFAULT_ADDRESS};
pub use device::SimDevice;
pub use error::SimError;
pub use events::Event;
pub use host::{DeviceSnapshot, IntxStatus, SimHost, SimHostBuilder};
pub use platform::{KernelVersion, Platform, UnknownPlatform};
pub use vfio::MmapAccess;

/// Runs `scenario` on a fresh model host with one default device on `platform` (kernel 6.1;
/// vfio-pci's `disable_idle_d3` as the scenario's `module` header says):
/// the model's side of a model-vs-kernel comparison.
pub fn run_on_model(scenario: &scenario::Scenario, platform: Platform) -> scenario::Trace {
    run_on_model_with(
        scenario,
        platform,
        KernelVersion::V6_1,
        &scenario::RunOptions::default(),
    )
}

/// Runs `scenario` on a fresh model host with one default device on `platform`, impersonating
/// `kernel`, with `options` (e.g. [`scenario::RunOptions::suspend_wins`]). The device is built
/// with [`DeviceConfig::disable_idle_d3`] when the scenario says `module disable_idle_d3=1`.
pub fn run_on_model_with(
    scenario: &scenario::Scenario,
    platform: Platform,
    kernel: KernelVersion,
    options: &scenario::RunOptions,
) -> scenario::Trace {
    let host = SimHost::builder()
        .platform(platform)
        .kernel(kernel)
        .device(DeviceConfig::default().disable_idle_d3(scenario.disable_idle_d3))
        .build()
        .unwrap_or_else(|_| SimHost::new(platform));
    scenario::run_with(
        scenario,
        &mut || {
            host.open(DEFAULT_ADDRESS)
                .map(|d| Box::new(d) as Box<dyn vfio_pm::ConformanceDevice>)
                .map_err(|e| e.errno())
        },
        options,
    )
}

/// At most this many `nosettle` steps are enumerated by [`model_outcomes`] (2^N runs).
pub const MAX_RACE_STEPS: u32 = 6;

/// Every outcome the model allows for `scenario` on `platform` and `kernel`, without
/// duplicates. The first is the default schedule (every `nosettle` step is followed by the
/// next step before any asynchronous suspend). For a `timing-sensitive` scenario the others
/// are the traces where the asynchronous suspend won the race after some of its `nosettle`
/// steps (every combination of the first [`MAX_RACE_STEPS`]): a real kernel may legitimately
/// produce any of them. Other scenarios have exactly one outcome.
pub fn model_outcomes(
    scenario: &scenario::Scenario,
    platform: Platform,
    kernel: KernelVersion,
) -> Vec<scenario::Trace> {
    let races = if scenario.timing_sensitive {
        let n = scenario.steps.iter().filter(|s| !s.settle).count();
        u32::try_from(n).unwrap_or(u32::MAX).min(MAX_RACE_STEPS)
    } else {
        0
    };
    let mut out: Vec<scenario::Trace> = Vec::new();
    for suspend_wins in 0..(1u64 << races) {
        let options = scenario::RunOptions {
            suspend_wins,
            ..Default::default()
        };
        let t = run_on_model_with(scenario, platform, kernel, &options);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}
