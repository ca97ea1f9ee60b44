//! Target `scenario`: scenario text ([`Scenario::parse`]) and running it on the simulated host
//! ([`vfio_pm_sim::run_on_model`]) on both platforms.
//!
//! Invariants, for any text:
//!
//! - parsing returns a [`ParseError`](vfio_pm_sim::scenario::ParseError) naming a line of the
//!   text, or a scenario; never a panic;
//! - a parsed scenario is a fixed point: parsing the text of its steps (the normalized form the
//!   trace prints) and headers again gives the same steps;
//! - running it on the model never panics, on either platform, and records exactly one trace line
//!   per step (or a single line saying why the run could not start), with the step's text and
//!   line, and each named eventfd of the scenario;
//! - every trace line parses back from its printed form ([`TraceLine::parse`], what the QEMU
//!   harness does with a guest's console), so a model run is always comparable with a kernel run;
//! - the model is deterministic: the same scenario gives the same trace twice;
//! - any line of the text read as a trace line ([`TraceLine::parse`], the console parser) is an
//!   error or a line whose printed form parses back to it.

use crate::text;
use vfio_pm_sim::scenario::{Platforms, Scenario, TraceLine};
use vfio_pm_sim::Platform;

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let Some(text) = text(data) else { return };
    trace_lines_round_trip(text);
    let scenario = match Scenario::parse("fuzz", text) {
        Ok(s) => s,
        Err(e) => {
            assert!(e.line >= 1 && e.line <= text.lines().count(), "{e}");
            return;
        }
    };
    reparses(&scenario);
    for platform in [Platform::D3hot, Platform::D3cold] {
        let trace = vfio_pm_sim::run_on_model(&scenario, platform);
        if trace.lines.len() == 1 && trace.lines[0].line == 0 {
            continue; // the run could not create its eventfds: one line says so
        }
        assert_eq!(trace.lines.len(), scenario.steps.len(), "one line per step");
        for (line, step) in trace.lines.iter().zip(&scenario.steps) {
            assert_eq!((line.line, &line.step), (step.line, &step.text));
            let names: Vec<&String> = line.eventfds.iter().map(|(n, _)| n).collect();
            assert_eq!(names, scenario.eventfds.iter().collect::<Vec<_>>());
            let printed = line.to_string();
            assert_eq!(
                TraceLine::parse(&printed).as_ref(),
                Ok(line),
                "trace line does not parse back: {printed:?}"
            );
        }
        assert_eq!(
            trace,
            vfio_pm_sim::run_on_model(&scenario, platform),
            "the model is not deterministic"
        );
    }
}

/// Each line of the text read as a trace line (what a guest prints on the console for the
/// QEMU harness to parse): an error, or a line whose printed form parses back to it.
fn trace_lines_round_trip(text: &str) {
    for l in text.lines() {
        if let Ok(line) = TraceLine::parse(l) {
            let printed = line.to_string();
            assert_eq!(
                TraceLine::parse(&printed).as_ref(),
                Ok(&line),
                "{l:?} parsed, printed as {printed:?}, does not parse back"
            );
        }
    }
}

/// The normalized text of a scenario parses to the same scenario (line numbers aside).
fn reparses(scenario: &Scenario) {
    let mut text = String::new();
    if let Platforms::Only(p) = scenario.platforms {
        text.push_str(&format!("platform {p}\n"));
    }
    if scenario.timing_sensitive {
        text.push_str("timing-sensitive\n");
    }
    if scenario.disable_idle_d3 {
        text.push_str("module disable_idle_d3=1\n");
    }
    for step in &scenario.steps {
        text.push_str(&step.text);
        text.push('\n');
    }
    let again = Scenario::parse("fuzz", &text)
        .unwrap_or_else(|e| panic!("normalized scenario does not parse: {e}\n{text}"));
    assert_eq!(again.platforms, scenario.platforms);
    assert_eq!(again.timing_sensitive, scenario.timing_sensitive);
    assert_eq!(again.disable_idle_d3, scenario.disable_idle_d3);
    assert_eq!(again.eventfds, scenario.eventfds);
    assert_eq!(again.steps.len(), scenario.steps.len());
    for (a, b) in again.steps.iter().zip(&scenario.steps) {
        assert_eq!((&a.text, &a.kind, a.settle), (&b.text, &b.kind, b.settle));
    }
}
