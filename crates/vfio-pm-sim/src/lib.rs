//! # vfio-pm-sim
//!
//! (in progress)
#![deny(missing_docs)]
