//! # vfio-pm-vmm
//!
//! The hypervisor side of VFIO runtime power management.
#![deny(missing_docs)]

pub mod aml;
pub mod config;
pub mod controller;
pub mod guest;
pub mod pme;
pub mod trap;
pub mod vmm;
