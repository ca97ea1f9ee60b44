//! Shared by the bench targets: run length, percentiles, the simulated host's addresses.
#![allow(dead_code)]

pub mod affinity;

use std::time::{Duration, Instant};
use vfio_pm::PciAddress;

/// `cargo bench` passes `--bench`; any other run (`cargo test --benches`, clippy's checks)
/// is a smoke run with tiny counts.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `full` when benchmarking, `quick` otherwise.
pub fn iters(full: usize, quick: usize) -> usize {
    if full_run() {
        full
    } else {
        quick
    }
}

/// Host address of device `i` (up to 64 Ki devices).
pub fn addr(i: usize) -> PciAddress {
    PciAddress::new(
        (i >> 13) as u16,
        (i >> 5) as u8,
        ((i >> 3) & 0x1f) as u8,
        (i & 7) as u8,
    )
    .unwrap()
}

/// Percentiles of a sample, in ns.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Mean.
    pub mean: u64,
    /// Samples.
    pub n: usize,
}

impl Summary {
    /// Of `samples` (ns).
    pub fn of(mut samples: Vec<u64>) -> Self {
        assert!(!samples.is_empty());
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Self {
            p50: at(0.50),
            p99: at(0.99),
            max: *samples.last().unwrap(),
            mean: samples.iter().sum::<u64>() / samples.len() as u64,
            n: samples.len(),
        }
    }
}

/// Nanoseconds since `t`.
pub fn ns_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// `a / b` for a table.
pub fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

/// A duration in µs with two decimals.
pub fn us(ns: u64) -> String {
    format!("{:.2}", ns as f64 / 1000.0)
}

/// A small deterministic PRNG (xorshift64), so runs are repeatable.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The load average line of /proc/loadavg, for the record.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Time `f` runs for, as a Duration.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}
