//! Oracle: ACPICA's acpiexec loads the generated SSDT beside a minimal DSDT and runs it. The
//! power resource methods must write the trap register (captured from acpiexec's field-write trace)
//! with values the trap decoder maps back to the right device and action, keep `_STA` in step, and
//! the wake methods must notify the right device with value 2 (Device Wake).

mod aml_support;

use aml_support::*;
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::TrapSpace;
use vfio_pm_vmm::trap::TrapDecoder;
use vfio_pm_vmm::{GuestRequest, PowerAction, Slot};

fn space_of(acpiexec_space: &str) -> TrapSpace {
    match acpiexec_space {
        "SystemIO" => TrapSpace::Io,
        "SystemMemory" => TrapSpace::Mmio,
        other => panic!("unexpected region space {other}"),
    }
}

/// Decodes what acpiexec saw written, exactly as a VMM would see the access.
fn decode(dec: &TrapDecoder, w: &RegionWrite) -> GuestRequest {
    let bytes = w.value.to_le_bytes();
    dec.decode(space_of(&w.space), w.address, &bytes[..w.width])
        .unwrap_or_else(|e| panic!("decoder refused {w:?}: {e}"))
}

fn slot(i: u8) -> Slot {
    Slot(u32::from(i))
}

#[test]
fn example_power_resource_traps_and_state_and_gpe_wake() {
    let cfg = config(&example_e1000e());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    let pr = "\\_SB.PCI0.PR00";
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            &format!("{pr}._STA"),
            &format!("{pr}._OFF"),
            &format!("{pr}._STA"),
            &format!("{pr}._ON"),
            &format!("{pr}._STA"),
            "\\_SB.PCI0.S28._S0W",
            "\\_GPE._E10",
        ],
    );
    assert_eq!(evals.len(), 7, "{log}");
    assert!(
        !log.contains("AE_"),
        "acpiexec reported an exception:\n{log}"
    );

    assert_eq!(evals[0].integer, Some(1), "powered at start:\n{log}");
    assert!(
        evals[0].writes.is_empty(),
        "_STA must not touch the trap register"
    );

    assert_eq!(evals[1].writes.len(), 1, "_OFF writes once:\n{log}");
    let w = &evals[1].writes[0];
    assert_eq!(
        (w.space.as_str(), w.address, w.width, w.value),
        ("SystemIO", 0x440, 1, 0x00)
    );
    assert_eq!(
        decode(&dec, w),
        GuestRequest {
            slot: slot(0),
            action: PowerAction::PowerOff
        }
    );
    assert_eq!(evals[2].integer, Some(0), "off after _OFF");

    assert_eq!(evals[3].writes.len(), 1, "_ON writes once:\n{log}");
    let w = &evals[3].writes[0];
    assert_eq!((w.address, w.width, w.value), (0x440, 1, 0x80));
    assert_eq!(
        decode(&dec, w),
        GuestRequest {
            slot: slot(0),
            action: PowerAction::PowerOn
        }
    );
    assert_eq!(
        dec.pci_address(slot(0)).unwrap().to_string(),
        "0000:00:05.0"
    );
    assert_eq!(evals[4].integer, Some(1), "on after _ON");

    assert_eq!(evals[5].integer, Some(4), "_S0W is D3cold");

    assert_eq!(evals[6].notifies, vec![("S28_".to_string(), 2)], "{log}");
    assert!(evals[6].writes.is_empty());
}

#[test]
fn many_devices_each_resource_traps_its_own_slot() {
    let cfg = config(&many_devices());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    // (resource, slot): slot 2 (S38) is d3hot-only and has none; slot 1 uses the override PWRB.
    let resources = [("PR00", 0u8), ("PWRB", 1), ("PR03", 3), ("PR04", 4)];
    let mut methods = Vec::new();
    for (pr, _) in resources {
        methods.push(format!("\\_SB.PCI0.{pr}._OFF"));
        methods.push(format!("\\_SB.PCI0.{pr}._ON"));
    }
    // Level-triggered GPE methods; S40 (wakeup = never) has none.
    for gpe in ["_L10", "_L11", "_L12", "_L13"] {
        methods.push(format!("\\_GPE.{gpe}"));
    }
    let refs: Vec<&str> = methods.iter().map(String::as_str).collect();
    let (evals, log) = acpiexec(&ssdt, &refs);
    assert_eq!(evals.len(), refs.len(), "{log}");
    assert!(!log.contains("AE_"), "{log}");
    for (i, (pr, s)) in resources.iter().enumerate() {
        let off = &evals[2 * i];
        let on = &evals[2 * i + 1];
        assert_eq!(off.writes.len(), 1, "{pr} _OFF:\n{log}");
        assert_eq!(on.writes.len(), 1, "{pr} _ON:\n{log}");
        assert_eq!(
            decode(&dec, &off.writes[0]),
            GuestRequest {
                slot: slot(*s),
                action: PowerAction::PowerOff
            },
            "{pr}"
        );
        assert_eq!(
            decode(&dec, &on.writes[0]),
            GuestRequest {
                slot: slot(*s),
                action: PowerAction::PowerOn
            },
            "{pr}"
        );
    }
    let notified: Vec<Vec<(String, u64)>> = evals[8..].iter().map(|e| e.notifies.clone()).collect();
    assert_eq!(
        notified,
        vec![
            vec![("S28_".to_string(), 2)],
            vec![("S30_".to_string(), 2)],
            vec![("S38_".to_string(), 2)],
            vec![("S48_".to_string(), 2)],
        ],
        "{log}"
    );
}

#[test]
fn many_devices_prw_follows_the_wakeup_mode() {
    let cfg = config(&many_devices());
    let ssdt = aml::build_ssdt(&cfg);
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            "\\_SB.PCI0.S28._PRW", // auto, no PME: absent
            "\\_SB.PCI0.S30._PRW", // always: present
            "\\_SB.PCI0.S38._PRW", // auto with PME: present
            "\\_SB.PCI0.S40._PRW", // never: absent
            "\\_SB.PCI0.S38._S0W", // d3hot only: 3
            "\\_SB.PCI0.S38._PR0", // d3hot only: absent
        ],
    );
    let found = |e: &Evaluation| !e.lines.iter().any(|l| l.contains("AE_NOT_FOUND"));
    assert!(!found(&evals[0]), "{log}");
    assert!(found(&evals[1]), "{log}");
    assert!(found(&evals[2]), "{log}");
    assert!(!found(&evals[3]), "{log}");
    assert_eq!(evals[4].integer, Some(3), "{log}");
    assert!(!found(&evals[5]), "{log}");
}

#[test]
fn root_port_and_declared_devices_load_and_share_resources() {
    let cfg = config(&root_port());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            "\\_SB.PCI0.RP00.S00._ADR",
            "\\_SB.PCI0.RP00.S01._ADR",
            "\\_SB.PCI0.RP00.PR01._OFF",
            "\\_SB.PCI0.RP00._S0W",
            "\\_GPE._E11",
        ],
    );
    assert!(!log.contains("AE_"), "{log}");
    assert_eq!(evals[0].integer, Some(0x0000_0000), "{log}");
    assert_eq!(evals[1].integer, Some(0x0000_0001), "{log}");
    assert_eq!(
        decode(&dec, &evals[2].writes[0]),
        GuestRequest {
            slot: slot(1),
            action: PowerAction::PowerOff
        }
    );
    assert_eq!(evals[3].integer, Some(4), "{log}");
    assert_eq!(evals[4].notifies, vec![("S01_".to_string(), 2)], "{log}");
    // The port's _PR0/_PR3 name both endpoints' resources.
    let asl = aml::disassemble(&ssdt).unwrap();
    let port = asl.split("Scope (\\_SB.PCI0.RP00)").last().unwrap();
    assert!(port.contains("\\_SB.PCI0.RP00.PR00"), "{asl}");
    assert!(port.contains("\\_SB.PCI0.RP00.PR01"), "{asl}");
    assert!(port.contains("_PR3"), "{asl}");
}

#[test]
fn ged_route_notifies_by_slot_and_mmio_trap_is_dword() {
    let cfg = config(&ged());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            "\\_SB.PCI0.PR01._OFF",
            "\\_SB.PCI0.PR01._ON",
            "\\_SB.VPMW 1",
            "\\_SB.VPMW 0",
            "\\_SB.VPMW 7",
        ],
    );
    assert!(!log.contains("AE_"), "{log}");
    let w = &evals[0].writes[0];
    assert_eq!(
        (w.space.as_str(), w.address, w.width, w.value),
        ("SystemMemory", 0xfe00_0000, 4, 0x01)
    );
    assert_eq!(
        decode(&dec, w),
        GuestRequest {
            slot: slot(1),
            action: PowerAction::PowerOff
        }
    );
    assert_eq!(
        decode(&dec, &evals[1].writes[0]),
        GuestRequest {
            slot: slot(1),
            action: PowerAction::PowerOn
        }
    );
    assert_eq!(evals[2].notifies, vec![("S30_".to_string(), 2)], "{log}");
    assert_eq!(evals[3].notifies, vec![("S28_".to_string(), 2)], "{log}");
    assert!(
        evals[4].notifies.is_empty(),
        "unknown slot: no notify\n{log}"
    );
}

#[test]
fn d3hot_only_device_has_no_power_resource_but_wakes() {
    let cfg = config(&d3hot_only());
    let ssdt = aml::build_ssdt(&cfg);
    let (evals, log) = acpiexec(
        &ssdt,
        &["\\_SB.PCI0.S28._S0W", "\\_GPE._E10", "\\_SB.PCI0.PR00._ON"],
    );
    assert_eq!(evals[0].integer, Some(3), "{log}");
    assert_eq!(evals[1].notifies, vec![("S28_".to_string(), 2)], "{log}");
    assert!(
        evals[2].lines.iter().any(|l| l.contains("AE_NOT_FOUND")),
        "{log}"
    );
    assert!(evals.iter().all(|e| e.writes.is_empty()), "{log}");
}

#[test]
fn pcie_pme_route_has_no_wake_method_and_keeps_power_objects() {
    let cfg = config(&pcie_pme());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            "\\_SB.PCI0.RP00.S00._S0W",
            "\\_SB.PCI0.RP00.S01._S0W",
            "\\_SB.PCI0.RP00._S0W",
            "\\_SB.PCI0.RP00.PR00._OFF",
            "\\_SB.PCI0.RP00.PR01._ON",
            "\\_GPE._E10",
            "\\_SB.PCI0.RP00.S00._PRW",
            "\\_SB.VPMW 0",
        ],
    );
    assert_eq!(evals.len(), 8, "{log}");
    for (i, e) in evals[..5].iter().enumerate() {
        assert!(
            !e.lines.iter().any(|l| l.contains("AE_")),
            "evaluation {i}\n{log}"
        );
    }
    assert_eq!(evals[0].integer, Some(4), "{log}");
    assert_eq!(evals[1].integer, Some(4), "{log}");
    assert_eq!(evals[2].integer, Some(4), "root port _S0W\n{log}");
    assert_eq!(
        decode(&dec, &evals[3].writes[0]),
        GuestRequest {
            slot: slot(0),
            action: PowerAction::PowerOff
        }
    );
    assert_eq!(
        decode(&dec, &evals[4].writes[0]),
        GuestRequest {
            slot: slot(1),
            action: PowerAction::PowerOn
        }
    );
    // The NIC's per-device GPE route is still there; the PCIe PME devices have no AML wake.
    assert_eq!(evals[5].notifies, vec![("S28_".to_string(), 2)], "{log}");
    for e in &evals[6..] {
        assert!(e.notifies.is_empty(), "{log}");
        assert!(
            e.lines.iter().any(|l| l.contains("AE_NOT_FOUND")),
            "no _PRW, no GED method\n{log}"
        );
    }
    let asl = aml::disassemble(&ssdt).unwrap();
    let gpe = asl.split("Scope (\\_GPE)").nth(1).unwrap_or("");
    assert!(!gpe.contains("RP00"), "{asl}");
    assert!(!asl.contains("_PRW"), "{asl}");
    let port = asl.split("Scope (\\_SB.PCI0.RP00)").last().unwrap();
    for obj in [
        "_PR0",
        "_PR3",
        "_S0W",
        "\\_SB.PCI0.RP00.PR00",
        "\\_SB.PCI0.RP00.PR01",
    ] {
        assert!(port.contains(obj), "{obj}\n{asl}");
    }
}

/// The mailbox variant in acpiexec: its simulated PCI config space reads BAR2 as 0 (no shared
/// memory mapped), so `\_SB.VPMA` falls back to the posted doorbell: `_ON`/`_OFF` still write
/// their trap value exactly once, return without waiting, and keep `_STA` right.
#[test]
fn mailbox_methods_fall_back_to_the_doorbell_without_shared_memory() {
    require_tools();
    let cfg = config(&mailbox());
    let dec = TrapDecoder::new(&cfg);
    let ssdt = aml::build_ssdt(&cfg);
    let pr = "\\_SB.PCI0.PR00";
    let (evals, log) = acpiexec(
        &ssdt,
        &[
            &format!("{pr}._OFF"),
            &format!("{pr}._STA"),
            &format!("{pr}._ON"),
            &format!("{pr}._STA"),
        ],
    );
    assert_eq!(evals.len(), 4, "{log}");
    assert!(
        !log.contains("AE_"),
        "acpiexec reported an exception:\n{log}"
    );
    let io: Vec<&RegionWrite> = evals[0]
        .writes
        .iter()
        .filter(|w| w.space == "SystemIO")
        .collect();
    assert_eq!(io.len(), 1, "_OFF rings once:\n{log}");
    assert_eq!(decode(&dec, io[0]), GuestRequest::power_off(slot(0)));
    assert_eq!(evals[1].integer, Some(0));
    let io: Vec<&RegionWrite> = evals[2]
        .writes
        .iter()
        .filter(|w| w.space == "SystemIO")
        .collect();
    assert_eq!(io.len(), 1, "_ON rings once:\n{log}");
    assert_eq!(decode(&dec, io[0]), GuestRequest::power_on(slot(0)));
    assert_eq!(evals[3].integer, Some(1));
}
