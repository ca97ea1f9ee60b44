//! # vfio-pm-vmm
//!
//! The hypervisor side of VFIO runtime power management (Linux 6.1 `VFIO_DEVICE_FEATURE`
//! LOW_POWER_ENTRY / ENTRY_WITH_WAKEUP / EXIT) for passthrough PCI devices:
//!
//! - [`config`]: the VMM's device configuration, built in code ([`config::ConfigFile::new`]) or
//!   read from TOML, validated.
//! - [`aml`]: the SSDT with one ACPI power resource per device (`_PR0`/`_PR3`, `_ON`/`_OFF`
//!   writing a trap register) and the wake methods (`Notify (dev, 2)` from a GPE or GED).
//! - [`trap`]: the trap register encoding and its decoder; [`mailbox`]: the acknowledged
//!   variant for VMMs whose trap cannot reply (stock QEMU).
//! - [`controller`]: guest `_OFF`/`_ON` in, VFIO low-power calls out, host wakes back to the
//!   guest as exactly one PME; anti-thrash; reset and shutdown.
//! - [`pme`]: the guest-visible side of a wake (PM capability, root port PME, GPE, GED).
//! - [`vmm`]: [`vmm::VmmPowerManager`], the thin glue a VMM calls (start here).
//!
//! Devices are the VMM's own: a `vfio_ioctls::VfioDevice` in the VM's container, or any VFIO
//! device fd, wrapped by `vfio_pm::KernelDevice::from_vfio_device` / `from_device_fd` as a
//! `Box<dyn vfio_pm::PowerDevice>`. Every type a VMM holds is `Send`, so the manager can sit
//! behind the lock its vCPU threads and event loop share. With the `test-utils` feature the
//! crate also offers a simulated Linux guest (`guest`) and test helpers.
//!
//! The integration guide is `docs/vmm-integration.md`; `examples/minimal_vmm.rs` is a
//! complete, runnable integration on the simulated host.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use vfio_pm::PowerDevice;
//! use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
//! use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, TrapSpace, VmmConfig};
//! use vfio_pm_vmm::pme::{Delivery, GuestNotifier, NotifyError, WakeRoute};
//! use vfio_pm_vmm::vmm::VmmPowerManager;
//!
//! /// How this VMM delivers a wake: it would raise GPE 0x10 here; the example counts.
//! #[derive(Clone, Default)]
//! struct Gpe(Arc<AtomicUsize>);
//! impl GuestNotifier for Gpe {
//!     fn notify(&self, _route: WakeRoute) -> Result<Delivery, NotifyError> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok(Delivery::Interrupt)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The configuration, in code: an NVIDIA GPU (ENTRY_WITH_WAKEUP) with D3cold at \_SB.PCI0.S28.
//! let gpu = DeviceFile {
//!     d3cold: true,
//!     gpe: Some(0x10),
//!     ..DeviceFile::new(r"\_SB.PCI0.S28", "0000:00:05.0".parse()?, 0x10de, 0x030000)
//! };
//! let config = VmmConfig::validate(&ConfigFile::new(TrapFile::io(0x440), vec![gpu]))?;
//!
//! // The host device: here simulated; a VMM wraps its own VfioDevice (KernelDevice).
//! let host = SimHost::builder().platform(Platform::D3cold)
//!     .device(DeviceConfig::new("0000:41:00.0".parse()?)).build()?;
//! let devices: Vec<Box<dyn PowerDevice>> = vec![Box::new(host.open(host.addresses()[0])?)];
//!
//! let wakes = Gpe::default();
//! let mut vpm = VmmPowerManager::new(config, devices, wakes.clone())?;
//! assert_eq!(&vpm.ssdt()[..4], b"SSDT");                 // into the guest's ACPI tables
//!
//! vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x00])?;     // guest _OFF of slot 0
//! host.run_pending();                                     // host: D3cold
//! host.host_config_read(host.addresses()[0])?;            // lspci wakes the GPU
//! vpm.poll(Some(std::time::Duration::ZERO))?;             // -> one wake to the guest
//! assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
//! assert!(vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x40]).is_err()); // malformed: ignored
//! vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x80])?;     // guest _ON
//! assert!(!host.snapshot(host.addresses()[0])?.engaged);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod aml;
pub mod config;
pub mod controller;
#[cfg(any(test, feature = "test-utils"))]
pub mod guest;
pub mod mailbox;
pub mod pme;
pub mod request;
pub mod trap;
pub mod vmm;

pub use request::{GuestRequest, PowerAction, Slot};

/// docs/vmm-integration.md, whose Rust blocks run as this crate's doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/vmm-integration.md")]
pub struct VmmIntegrationGuide;
