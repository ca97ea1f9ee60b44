//! Prints the model's trace of every scenario on both platforms, and a side-by-side diff of
//! the two platforms where they differ.
//!
//! `cargo run -p vfio-pm-sim --example model_traces [SCENARIO_DIR]`

use std::path::PathBuf;
use vfio_pm_sim::scenario::{diff, Scenario};
use vfio_pm_sim::{run_on_model, Platform};

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios"));
    let scenarios = match Scenario::load_dir(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    for sc in &scenarios {
        let traces: Vec<_> = Platform::ALL
            .into_iter()
            .filter(|&p| sc.applies_to(p))
            .map(|p| (p, run_on_model(sc, p)))
            .collect();
        match traces.as_slice() {
            [(_, a), (_, b)] if a != b => print!("{}", diff(a, b, "d3hot", "d3cold")),
            [(p, t), ..] => print!("[{p}{}] {t}", if traces.len() > 1 { "+" } else { "" }),
            [] => {}
        }
        println!();
    }
}
