//! Target `qemu_args`: the QEMU command line `vfio-pm qemu` analyses (vfio-pm-cli's
//! `qemu::args` walker, `qemu::opts` value parser and `qemu::plan`, compiled into this crate
//! from the CLI's own source files: the CLI is a binary crate with no library to link).
//!
//! The input is the command line, one word per line (the first is the QEMU binary). Invariants:
//!
//! - nothing panics, and a command line the analysis cannot handle is a typed `PlanError` with a
//!   message;
//! - the walk is faithful: options in order, each at its index, each taking the next word as its
//!   value exactly when QEMU's option table says it takes one;
//! - every parsed option value has no empty property name and at most `MAX_PROPS + 1`
//!   properties, and a property lookup gives the last value for its key;
//! - a plan names only what the command line has: its binary, pass-through devices with a VFIO
//!   driver at a valid slot and function, each at the index of a `-device` option, behind a root
//!   port that exists; device ids are unique; the machine is q35; it serializes to JSON (what
//!   `vfio-pm qemu print-plan` prints); and the analysis is deterministic.

use crate::text;
use crate::{args, opts, plan};

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let Some(text) = text(data) else { return };
    let argv: Vec<String> = text.split('\n').map(str::to_string).collect();
    let rest = &argv[1..];
    match args::walk(rest) {
        Ok(options) => check_walk(rest, &options),
        Err(args::WalkError::TooMany(n)) => assert!(n > args::MAX_ARGS),
        Err(args::WalkError::MissingValue(name)) => {
            // Only the last word can lack its value.
            let last = rest.last().map(String::as_str);
            let dashed = [format!("-{name}"), format!("--{name}")];
            assert!(
                last.is_some_and(|l| dashed.iter().any(|d| d == l)),
                "{last:?}"
            );
        }
    }
    let result = plan::plan(&argv);
    assert_eq!(
        result,
        plan::plan(&argv),
        "the analysis is not deterministic"
    );
    match result {
        Ok(p) => check_plan(&argv, &p),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn check_walk(rest: &[String], options: &[args::QemuOption]) {
    let mut last = None;
    for o in options {
        assert!(last.map_or(true, |l| o.index > l), "options out of order");
        last = Some(o.index);
        let word = &rest[o.index];
        assert!(
            word == &format!("-{}", o.name) || word == &format!("--{}", o.name),
            "{word:?} is not option {:?}",
            o.name
        );
        let takes_value = !args::NO_VALUE.contains(&o.name.as_str());
        assert_eq!(
            o.value.as_ref(),
            rest.get(o.index + 1).filter(|_| takes_value)
        );
        if let Some(v) = &o.value {
            for implied in [None, Some("driver")] {
                if let Ok(props) = opts::Props::parse(v, implied) {
                    check_props(&props);
                }
            }
        }
    }
}

fn check_props(props: &opts::Props) {
    assert!(
        props.items.len() <= opts::MAX_PROPS + 1,
        "{} properties",
        props.items.len()
    );
    for (k, v) in &props.items {
        assert!(!k.is_empty(), "an empty property name");
        let last = props
            .items
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str());
        assert_eq!(props.get(k), last);
        let _ = v;
    }
    for n in &props.numbers {
        assert!(
            props.items.iter().any(|(k, _)| k == n),
            "number {n:?} is no property"
        );
    }
}

fn check_plan(argv: &[String], p: &plan::QemuPlan) {
    assert_eq!(p.binary, argv[0]);
    assert!(
        p.machine.machine_type == "q35" || p.machine.machine_type.starts_with("pc-q35-"),
        "{:?}",
        p.machine.machine_type
    );
    let options = args::walk(&argv[1..]).expect("a planned command line walks");
    for d in &p.devices {
        assert!(
            plan::VFIO_DRIVERS.contains(&d.driver.as_str()),
            "{:?}",
            d.driver
        );
        assert!(
            d.slot <= 0x1f && d.function <= 7,
            "{}.{}",
            d.slot,
            d.function
        );
        assert!(
            options
                .iter()
                .any(|o| o.index == d.arg_index && o.name == "device"),
            "device at {} is no -device option",
            d.arg_index
        );
        if let Some(rp) = &d.root_port {
            assert!(
                p.root_ports.iter().any(|r| &r.id == rp),
                "no root port {rp:?}"
            );
        }
    }
    for r in &p.root_ports {
        assert!(r.slot <= 0x1f && r.function <= 7);
    }
    let mut ids: Vec<&str> = p.devices.iter().filter_map(|d| d.id.as_deref()).collect();
    ids.extend(p.root_ports.iter().map(|r| r.id.as_str()));
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicate ids in a plan");
    serde_json::to_string(p).expect("a plan serializes");
}
