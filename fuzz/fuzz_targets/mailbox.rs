//! `cargo fuzz run --features libfuzzer mailbox` (or `cargo xtask fuzz mailbox`): see
//! [`vfio_pm_fuzz::mailbox`] for what it feeds and asserts.
#![no_main]

use cap::Cap;
use std::alloc::System;

/// Allocation beyond [`vfio_pm_fuzz::MEMORY_LIMIT`] fails, which aborts: a crash libFuzzer
/// records like any other.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, vfio_pm_fuzz::MEMORY_LIMIT);

libfuzzer_sys::fuzz_target!(|data: &[u8]| vfio_pm_fuzz::mailbox::check(data));
