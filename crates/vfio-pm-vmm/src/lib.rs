//! # vfio-pm-vmm
//!
//! The hypervisor side of VFIO runtime power management (Linux 6.1 `VFIO_DEVICE_FEATURE`
//! LOW_POWER_ENTRY / ENTRY_WITH_WAKEUP / EXIT) for passthrough PCI devices:
//!
//! - [`config`]: the VMM's device configuration (TOML), validated.
//! - [`aml`]: the SSDT with one ACPI power resource per device (`_PR0`/`_PR3`, `_ON`/`_OFF`
//!   writing a trap register) and the wake methods (`Notify (dev, 2)` from a GPE or GED).
//! - [`trap`]: the trap register encoding and its decoder.
//! - [`controller`]: guest `_OFF`/`_ON` in, VFIO low-power calls out, host wakes back to the
//!   guest as exactly one PME; anti-thrash; reset and shutdown.
//! - [`pme`]: the guest-visible side of a wake (PM capability, root port PME, GPE, GED).
//! - [`vmm`]: [`vmm::VmmPowerManager`], the thin glue a VMM calls (start here).
//! - [`guest`]: a simulated Linux guest, for tests and `vfio-pm demo`.
//!
//! The integration guide is `docs/vmm-integration.md`; `examples/minimal_vmm.rs` is a
//! complete, runnable integration on the simulated host.
//!
//! ```
//! use vfio_pm::HostDevice;
//! use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
//! use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
//! use vfio_pm_vmm::controller::{ManualClock, NullSink};
//! use vfio_pm_vmm::pme::RecordingNotifier;
//! use vfio_pm_vmm::vmm::VmmPowerManager;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = VmmConfig::from_toml_str(r#"
//!     [trap]
//!     space = "io"
//!     address = 0x440
//!     [[devices]]
//!     acpi_path = '\_SB.PCI0.S28'
//!     pci_address = "0000:00:05.0"
//!     vendor_id = 0x10de
//!     class_code = 0x030000
//!     d3cold = true
//!     gpe = 0x10
//! "#)?;
//! let host = SimHost::builder().platform(Platform::D3cold)
//!     .device(DeviceConfig::new("0000:41:00.0".parse()?)).build()?;
//! let gpu: Box<dyn HostDevice> = Box::new(host.open(host.addresses()[0])?);
//! let pmes = RecordingNotifier::new();
//! let mut vpm = VmmPowerManager::new(config, vec![gpu], Box::new(pmes.clone()),
//!     Box::new(ManualClock::new()), Box::new(NullSink))?;
//! assert_eq!(&vpm.ssdt()[..4], b"SSDT");                 // into the guest's ACPI tables
//!
//! vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x00])?;     // guest _OFF of slot 0
//! host.run_pending();                                     // host: D3cold
//! host.host_config_read(host.addresses()[0])?;            // lspci wakes the GPU
//! vpm.poll(Some(std::time::Duration::ZERO))?;             // -> one PME to the guest
//! assert_eq!(pmes.count(), 1);
//! assert!(vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x40]).is_err()); // malformed: ignored
//! vpm.on_trap_write(TrapSpace::Io, 0x440, &[0x80])?;     // guest _ON
//! assert!(!host.snapshot(host.addresses()[0])?.engaged);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod aml;
pub mod config;
pub mod controller;
pub mod guest;
pub mod pme;
pub mod trap;
pub mod vmm;
