//! `vfio-pm demo`: the binary's timeline, JSON events and summary.

use serde_json::Value;
use std::process::{Command, Output};

fn demo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .arg("demo")
        .args(args)
        .output()
        .expect("run vfio-pm demo")
}

fn text(args: &[&str]) -> String {
    let out = demo(args);
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = String::from_utf8(out.stdout).unwrap();
    unwrap_lines(&raw)
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

/// The output with the demo's 80-column wrapping undone: a line indented more than 3 columns
/// deeper than the line it follows continues it.
fn unwrap_lines(raw: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut base = 0;
    for l in raw.lines() {
        match out.last_mut() {
            Some(prev)
                if !l.trim().is_empty() && !prev.trim().is_empty() && indent(l) > base + 3 =>
            {
                prev.push(' ');
                prev.push_str(l.trim_start());
            }
            _ => {
                base = indent(l);
                out.push(l.to_string());
            }
        }
    }
    out.join("\n") + "\n"
}

/// Index of the first line at or after `from` containing every needle.
fn find(lines: &[&str], from: usize, needles: &[&str]) -> usize {
    (from..lines.len())
        .find(|&i| needles.iter().all(|n| lines[i].contains(n)))
        .unwrap_or_else(|| {
            panic!(
                "no line after {from} with {needles:?}:\n{}",
                lines.join("\n")
            )
        })
}

fn device_line(line: &str, dev: &str, kind: &str) -> bool {
    let mut w = line.split_whitespace().skip(1);
    w.next() == Some(dev) && w.next() == Some(kind)
}

#[test]
fn timeline_shows_the_chain_in_order() {
    let out = text(&[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("vfio-pm demo:"));
    assert!(
        lines[1].starts_with("SSDT ")
            && lines[1].contains("bytes")
            && lines[1].contains("_GPE._E10"),
        "{}",
        lines[1]
    );
    assert!(out.contains("vfio-pm aml"));

    // GPU: _OFF trap -> ENTRY_WITH_WAKEUP -> D3cold -> lspci -> resumed -> wake -> PME ->
    // guest _ON (0x80) -> kernel already exited, controller back to active.
    let off = find(&lines, 0, &["gpu", "guest", "_OFF (idle)", "0x440 <- [00]"]);
    let entry = find(&lines, off, &["gpu", "LOW_POWER_ENTRY_WITH_WAKEUP -> ok"]);
    let d3cold = find(&lines, entry, &["gpu", "power_state D0 -> D3cold"]);
    let lspci = find(&lines, d3cold, &["gpu", "lspci"]);
    let up = find(&lines, lspci, &["gpu", "power_state D3cold -> D0"]);
    let wake = find(&lines, up, &["gpu", "wake", "host wake"]);
    let pme = find(&lines, wake, &["gpu", "PME delivered via GPE 0x10"]);
    let on = find(&lines, pme, &["gpu", "_ON (Notify(dev, 2)", "<- [80]"]);
    let active = find(&lines, on, &["gpu", "power", "woken_by_host -> active"]);
    assert!(off < entry && entry < d3cold && d3cold < lspci && lspci < up);
    assert!(up < wake && wake < pme && pme < on && on < active);
    // Exactly one PME per wake: the next gpu PME line is in the next round.
    let next_lspci = find(&lines, active, &["gpu", "lspci"]);
    assert!(!lines[pme + 1..next_lspci]
        .iter()
        .any(|l| device_line(l, "gpu", "pme") && l.contains("delivered")));

    // A guest-initiated resume exits for real.
    find(&lines, 0, &["LOW_POWER_EXIT -> ok"]);

    // NIC and HDMI audio: plain entry, host access resumes and re-suspends, never a PME.
    let nic_entry = find(&lines, 0, &["nic", "LOW_POWER_ENTRY -> ok"]);
    assert!(!lines[nic_entry].contains("WITH_WAKEUP"));
    let nic_lspci = find(&lines, nic_entry, &["nic", "lspci"]);
    let nic_up = find(&lines, nic_lspci, &["nic", "power_state D3cold -> D0"]);
    assert_eq!(
        find(&lines, nic_up, &["nic", "power_state D0 -> D3cold"]),
        nic_up + 1
    );
    for dev in ["nic", "hda", "nvme"] {
        assert!(
            !lines
                .iter()
                .any(|l| device_line(l, dev, "pme") || device_line(l, dev, "wake")),
            "{dev} got a wake or PME"
        );
    }
    find(&lines, 0, &["hda", "LOW_POWER_ENTRY -> ok"]);
    find(&lines, 0, &["nvme", "power_state D0 -> D3hot"]);

    // Burst: coalesced.
    let burst = find(&lines, 0, &["== toggle burst"]);
    find(
        &lines,
        burst,
        &["gpu", "_ON cancelled the deferred _OFF (coalesced)"],
    );
    let note = find(&lines, burst, &["coalesced, the host saw no transition"]);
    assert!(lines[note].contains("25 coalesced"), "{}", lines[note]);

    // Reset: everything out of low power, nothing engaged.
    let reset = find(&lines, burst, &["== VM reset"]);
    find(&lines, reset, &["gpu", "VM reset"]);
    find(&lines, reset, &["engaged after reset: 0 of 4"]);

    // Summary: the GPU was woken three times, three PMEs, coalesced > 0.
    let gpu = summary_rows(&out)
        .into_iter()
        .find(|r| r[0] == "gpu")
        .unwrap();
    assert_eq!(gpu[2], "entry_with_wakeup");
    assert_eq!((gpu[8].as_str(), gpu[9].as_str()), ("3", "3"));
    assert!(gpu[12].parse::<u64>().unwrap() > 0);
}

/// The rows of the text summary tables (residency, then counters), split on whitespace and
/// joined by device: name, host BDF, variant, D0, D3hot, D3cold, then the counters.
fn summary_rows(out: &str) -> Vec<Vec<String>> {
    let lines: Vec<&str> = out.lines().collect();
    let table = |pred: &dyn Fn(&str) -> bool| -> Vec<Vec<String>> {
        let head = lines.iter().position(|l| pred(l)).expect("summary header");
        lines[head + 1..]
            .iter()
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let residency = table(&|l| l.starts_with("DEVICE HOST BDF") && l.contains("D3COLD"));
    let counters = table(&|l| l.starts_with("DEVICE ") && l.contains("COALESCED"));
    assert_eq!(residency.len(), counters.len());
    residency
        .into_iter()
        .zip(counters)
        .map(|(mut r, c)| {
            assert_eq!(r[0], c[0]);
            r.extend(c.into_iter().skip(1));
            r
        })
        .collect()
}

/// A duration of the summary as the CLI prints durations (`table::human`).
fn human(ns: &Value) -> String {
    let d = std::time::Duration::from_nanos(ns.as_u64().unwrap());
    let ms = d.as_millis();
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", d.as_secs_f64()),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

#[test]
fn json_lines_parse_and_agree_with_the_text_summary() {
    let json = text(&["--json"]);
    let values: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = values.last().unwrap();
    assert_eq!(summary["type"], "summary");
    assert_eq!(summary["engaged_after_reset"], 0);
    let events: Vec<&Value> = values.iter().filter(|v| v["type"] == "event").collect();
    assert!(events.len() > 50);
    let count = |dev: &str, pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .filter(|e| e["device"] == dev && pred(&e["event"]))
            .count() as u64
    };
    let rows = summary_rows(&text(&[]));
    let devices = summary["devices"].as_array().unwrap();
    assert_eq!(rows.len(), devices.len());
    for (row, d) in rows.iter().zip(devices) {
        let name = d["device"].as_str().unwrap();
        assert_eq!(row[0], name);
        assert_eq!(row[1], d["host_bdf"].as_str().unwrap());
        assert_eq!(row[2], d["variant"].as_str().unwrap());
        assert_eq!(row[3], human(&d["d0_ns"]), "{name} D0");
        assert_eq!(row[4], human(&d["d3hot_ns"]), "{name} D3hot");
        assert_eq!(row[5], human(&d["d3cold_ns"]), "{name} D3cold");
        for (col, key) in [
            (6, "entries"),
            (7, "exits"),
            (8, "host_wakes"),
            (9, "pme_delivered"),
            (10, "pme_suppressed"),
            (11, "deferred"),
            (12, "coalesced"),
        ] {
            assert_eq!(row[col], d[key].to_string(), "{name} {key}");
        }
        // The raw events add up to the summary's counters.
        let n = |kind: &str| count(name, &|e| e["kind"] == kind);
        assert_eq!(n("pme_delivered"), d["pme_delivered"].as_u64().unwrap());
        assert_eq!(n("host_wake"), d["host_wakes"].as_u64().unwrap());
        assert_eq!(n("coalesced"), d["coalesced"].as_u64().unwrap());
        assert_eq!(n("deferred"), d["deferred"].as_u64().unwrap());
        assert_eq!(n("pme_suppressed"), d["pme_suppressed"].as_u64().unwrap());
        let entries = count(name, &|e| {
            e["kind"] == "host_call"
                && (e["call"] == "entry" || e["call"] == "entry_with_wakeup")
                && e["result"]["result"] == "ok"
        });
        assert_eq!(entries, d["entries"].as_u64().unwrap(), "{name}");
        let total = ["d0_ns", "d3hot_ns", "d3cold_ns"]
            .iter()
            .map(|k| d[k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(total, summary["total_ns"].as_u64().unwrap(), "{name}");
    }
    // Guest steps carry the trap bytes the AML writes.
    let steps: Vec<&Value> = values.iter().filter(|v| v["type"] == "guest").collect();
    assert!(steps
        .iter()
        .any(|s| s["device"] == "gpu" && s["step"]["trap"]["data"] == serde_json::json!([128])));
    // The burst is all there in JSON (text shows one pair).
    assert!(devices[0]["coalesced"].as_u64().unwrap() >= 25);
}

#[test]
fn output_is_deterministic_per_seed() {
    assert_eq!(text(&["--seed", "42"]), text(&["--seed", "42"]));
    assert_eq!(
        text(&["--json", "--seed", "5"]),
        text(&["--json", "--seed", "5"])
    );
    assert_ne!(text(&["--seed", "1"]), text(&["--seed", "2"]));
}

#[test]
fn device_counts_and_config() {
    let three = text(&["--devices", "3"]);
    assert!(three.contains("engaged after reset: 0 of 3"));
    assert!(!three.contains("nvme"));
    let many = text(&["--devices", "16"]);
    assert!(many.contains("engaged after reset: 0 of 16"));
    assert_eq!(summary_rows(&many).len(), 16);
    let bad = demo(&["--devices", "2"]);
    assert_eq!(bad.status.code(), Some(2));
    let config = text(&["--print-config"]);
    assert!(config.contains("[[devices]]") && config.contains("vendor_id = 0x10de"));
    // The config is what `vfio-pm aml` takes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, &config).unwrap();
    let aml = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["aml", path.to_str().unwrap(), "-o"])
        .arg(dir.path().join("ssdt.aml"))
        .output()
        .unwrap();
    assert!(aml.status.success(), "{aml:?}");
    let ssdt = std::fs::read(dir.path().join("ssdt.aml")).unwrap();
    assert_eq!(&ssdt[..4], b"SSDT");
    let first = text(&[]);
    assert!(
        first.contains(&format!("SSDT {} bytes", ssdt.len())),
        "{}",
        first.lines().nth(1).unwrap()
    );
}

#[test]
fn text_fits_80_columns_with_the_cli_s_units() {
    for devices in ["4", "16"] {
        let out = demo(&["--devices", devices]);
        let raw = String::from_utf8(out.stdout).unwrap();
        let wide: Vec<&str> = raw.lines().filter(|l| l.chars().count() > 80).collect();
        assert!(wide.is_empty(), "{devices} devices: {wide:#?}");
        // Timestamps in seconds like the other commands, not "3192.200ms".
        assert!(!raw.contains(".000ms") && !raw.contains(".200ms"), "{raw}");
    }
    let out = text(&[]);
    let lspci = out.find("host runs `lspci -xxx`").unwrap();
    let why = out[lspci..]
        .find("plain-ENTRY devices bounce D3cold -> D0 -> D3cold with no guest involvement")
        .expect("the bounce explained after the first lspci");
    assert!(out[lspci + why..].contains("ENTRY_WITH_WAKEUP"));
}
