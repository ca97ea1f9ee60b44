use super::*;

fn cap() -> PmCapability {
    PmCapability::new(PmCapabilityConfig {
        next_ptr: 0x50,
        ..Default::default()
    })
}

#[test]
fn header_and_pmc_are_read_only_and_advertise_d3hot_d3cold_pme() {
    let mut c = cap();
    assert_eq!(c.read(0, 1).unwrap(), u32::from(PM_CAP_ID));
    assert_eq!(c.read(1, 1).unwrap(), 0x50);
    let pmc = c.read(PMC_OFFSET, 2).unwrap() as u16;
    assert_eq!(pmc & 0x7, 3, "version 1.2");
    assert_ne!(pmc & PMC_PME_D3HOT, 0);
    assert_ne!(pmc & PMC_PME_D3COLD, 0);
    assert_ne!(pmc & PMC_PME_D0, 0);
    assert_eq!(
        pmc & (PMC_D1_SUPPORT | PMC_D2_SUPPORT | PMC_PME_D1 | PMC_PME_D2),
        0
    );
    assert_eq!(pmc & 0x01f8, 0, "PME clock, DSI, aux current all 0");
    // Writes to ID/next/PMC change nothing.
    c.write(0, 4, 0xffff_ffff).unwrap();
    assert_eq!(c.read(0, 4).unwrap(), 0x0000_5001 | (u32::from(pmc) << 16));
}

#[test]
fn pme_support_config_is_honoured_but_d1_d2_never_advertised() {
    let c = PmCapability::new(PmCapabilityConfig {
        pme_support: 0xffff,
        ..Default::default()
    });
    assert_eq!(c.pmc() & (PMC_PME_D1 | PMC_PME_D2 | PMC_D1_SUPPORT), 0);
    let c = PmCapability::new(PmCapabilityConfig {
        pme_support: PMC_PME_D3HOT,
        ..Default::default()
    });
    assert_eq!(c.pmc(), PMC_VERSION_1_2 | PMC_PME_D3HOT);
}

#[test]
fn power_state_d0_d3hot_rw_and_d1_d2_discarded() {
    let mut c = cap();
    let o = c.write(PMCSR_OFFSET, 2, 3).unwrap();
    assert_eq!(
        o.power_state,
        Some((PciPowerState::D0, PciPowerState::D3Hot))
    );
    assert_eq!(c.read(PMCSR_OFFSET, 2).unwrap() & 3, 3);
    for s in [1, 2] {
        let o = c.write(PMCSR_OFFSET, 1, s).unwrap();
        assert_eq!(o.power_state, None);
        assert_eq!(c.power_state(), PciPowerState::D3Hot);
    }
    let o = c.write(PMCSR_OFFSET, 1, 0).unwrap();
    assert_eq!(
        o.power_state,
        Some((PciPowerState::D3Hot, PciPowerState::D0))
    );
    // Same state again: no change reported.
    assert_eq!(c.write(PMCSR_OFFSET, 1, 0).unwrap().power_state, None);
}

#[test]
fn no_soft_reset_reserved_data_bits_read_only() {
    let mut c = cap();
    assert_ne!(c.pmcsr() & PMCSR_NO_SOFT_RESET, 0);
    // Try to set every bit except PME_Status: only PowerState and PME_En stick.
    c.write(PMCSR_OFFSET, 2, 0x7fff).unwrap();
    assert_eq!(
        c.read(PMCSR_OFFSET, 2).unwrap() as u16,
        3 | PMCSR_NO_SOFT_RESET | PMCSR_PME_EN
    );
    // Clearing NoSoftReset by writing 0 does not work.
    c.write(PMCSR_OFFSET, 2, 0).unwrap();
    assert_eq!(c.pmcsr(), PMCSR_NO_SOFT_RESET);
    assert_eq!(c.pmcsr() & (PMCSR_DATA_SELECT | PMCSR_DATA_SCALE), 0);
    // BSE and Data bytes read 0 and ignore writes.
    c.write(6, 2, 0xffff).unwrap();
    assert_eq!(c.read(6, 2).unwrap(), 0);
    let c2 = PmCapability::new(PmCapabilityConfig {
        no_soft_reset: false,
        ..Default::default()
    });
    assert_eq!(c2.pmcsr() & PMCSR_NO_SOFT_RESET, 0);
}

#[test]
fn pme_en_rw_and_pme_status_rw1c() {
    let mut c = cap();
    // Writing 1 to PME_Status while clear does not set it.
    c.write(PMCSR_OFFSET, 2, u32::from(PMCSR_PME_STATUS))
        .unwrap();
    assert!(!c.pme_status());
    assert!(
        !c.signal_pme(),
        "PME_En clear: status latched, no PME asserted"
    );
    assert!(c.pme_status());
    let o = c.write(PMCSR_OFFSET, 2, u32::from(PMCSR_PME_EN)).unwrap();
    assert_eq!(o.pme_enable, Some(true));
    assert!(!o.pme_status_cleared, "writing 0 to PME_Status keeps it");
    assert!(c.pme_status());
    assert!(c.signal_pme());
    // Write 1 clears, and PME_En written as 1 stays.
    let o = c
        .write(PMCSR_OFFSET, 2, u32::from(PMCSR_PME_EN | PMCSR_PME_STATUS))
        .unwrap();
    assert!(o.pme_status_cleared);
    assert!(!c.pme_status());
    assert!(c.pme_enabled());
}

#[test]
fn byte_word_dword_accesses_at_any_offset() {
    let mut c = cap();
    c.signal_pme();
    // Byte write to PMCSR high byte: PME_En + clear status.
    c.write(PMCSR_OFFSET + 1, 1, 0x81).unwrap();
    assert!(c.pme_enabled() && !c.pme_status());
    // Byte write of the low byte leaves PME_En alone.
    c.write(PMCSR_OFFSET, 1, 3).unwrap();
    assert!(c.pme_enabled());
    assert_eq!(c.power_state(), PciPowerState::D3Hot);
    // Dword write at offset 4 covering PMCSR, BSE, Data.
    c.write(4, 4, 0xffff_0000).unwrap();
    assert_eq!(c.power_state(), PciPowerState::D0);
    assert!(!c.pme_enabled());
    // Dword read at 0 equals the composition of byte reads.
    let d = c.read(0, 4).unwrap();
    let bytes: u32 = (0..4).map(|i| c.read(i, 1).unwrap() << (8 * i)).sum();
    assert_eq!(d, bytes);
    // Unaligned word across PMC/PMCSR.
    let w = c.read(3, 2).unwrap();
    assert_eq!(w, (c.read(3, 1).unwrap()) | (c.read(4, 1).unwrap() << 8));
    assert_eq!(c.read(4, 4).unwrap(), u32::from(c.pmcsr()));
}

#[test]
fn malformed_accesses_are_errors_not_panics() {
    let mut c = cap();
    for (off, w) in [
        (0, 0),
        (0, 3),
        (0, 8),
        (7, 2),
        (5, 4),
        (8, 1),
        (usize::MAX, 4),
        (usize::MAX, 1),
    ] {
        assert!(c.read(off, w).is_err(), "{off} {w}");
        assert!(c.write(off, w, 0xffff_ffff).is_err(), "{off} {w}");
    }
    assert_eq!(c.read(0, 3), Err(RegisterError::BadWidth(3)));
    assert!(matches!(
        c.read(7, 2),
        Err(RegisterError::OutOfRange { .. })
    ));
    assert_eq!(c, cap(), "failed writes changed nothing");
}

#[test]
fn reset_clears_everything() {
    let mut c = cap();
    c.write(PMCSR_OFFSET, 2, 0x0103).unwrap();
    c.signal_pme();
    c.reset();
    assert_eq!(c.pmcsr(), PMCSR_NO_SOFT_RESET);
}

fn rs(p: &RootPortPme) -> u32 {
    p.read(ROOT_STATUS_OFFSET, 4).unwrap()
}

#[test]
fn root_port_pme_status_and_interrupt() {
    let mut p = RootPortPme::new();
    assert_eq!(p.pme_message(0x0128), RootPmeOutcome::Latched);
    assert_eq!(rs(&p), ROOT_STA_PME_STATUS | 0x0128);
    // Enabling the interrupt while status is set raises it.
    assert!(p
        .write(ROOT_CONTROL_OFFSET, 2, u32::from(ROOT_CTL_PME_IE))
        .unwrap());
    assert_eq!(p.root_control(), ROOT_CTL_PME_IE);
    // Writing 0 to status does not clear it; requester ID and pending are RO.
    p.write(ROOT_STATUS_OFFSET, 4, 0xffff | ROOT_STA_PME_PENDING)
        .unwrap();
    assert_eq!(rs(&p), ROOT_STA_PME_STATUS | 0x0128);
    // RW1C.
    assert!(!p.write(ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS).unwrap());
    assert_eq!(rs(&p), 0);
    assert_eq!(p.pme_message(0x0130), RootPmeOutcome::Interrupt);
    // Root Capabilities read 0 and are RO; reserved control bits RO.
    p.write(ROOT_CONTROL_OFFSET, 4, 0xffff_fff0).unwrap();
    assert_eq!(p.read(ROOT_CAPABILITIES_OFFSET, 2).unwrap(), 0);
    assert_eq!(p.root_control(), 0);
}

#[test]
fn root_port_pending_queue() {
    let mut p = RootPortPme::new();
    p.write(ROOT_CONTROL_OFFSET, 1, u32::from(ROOT_CTL_PME_IE))
        .unwrap();
    assert_eq!(p.pme_message(0x0100), RootPmeOutcome::Interrupt);
    assert_eq!(p.pme_message(0x0200), RootPmeOutcome::Queued);
    assert_eq!(p.pme_message(0x0300), RootPmeOutcome::Queued);
    assert_eq!(p.pme_message(0x0200), RootPmeOutcome::Duplicate);
    assert_eq!(p.pme_message(0x0100), RootPmeOutcome::Duplicate);
    assert_eq!(rs(&p), 0x0100 | ROOT_STA_PME_STATUS | ROOT_STA_PME_PENDING);
    // Clear with a byte write to byte 2 of Root Status: next loaded, re-asserted.
    assert!(p.write(ROOT_STATUS_OFFSET + 2, 1, 0x01).unwrap());
    assert_eq!(rs(&p), 0x0200 | ROOT_STA_PME_STATUS | ROOT_STA_PME_PENDING);
    assert!(p.write(ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS).unwrap());
    assert_eq!(rs(&p), 0x0300 | ROOT_STA_PME_STATUS);
    assert!(!p.write(ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS).unwrap());
    assert_eq!(rs(&p), 0);
}

#[test]
fn root_port_queue_bounded_and_interrupt_disabled_reload() {
    let mut p = RootPortPme::new();
    p.pme_message(0);
    for i in 1..=ROOT_PME_QUEUE_LEN as u16 {
        assert_eq!(p.pme_message(i), RootPmeOutcome::Queued);
    }
    assert_eq!(p.pme_message(0xffff), RootPmeOutcome::Dropped);
    assert_eq!(p.dropped(), 1);
    // Interrupt disabled: clearing loads the next without an interrupt.
    assert!(!p.write(ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS).unwrap());
    assert_eq!(rs(&p) & 0xffff, 1);
    p.reset();
    assert_eq!(rs(&p), 0);
}

#[test]
fn root_port_malformed_accesses() {
    let mut p = RootPortPme::new();
    for (off, w) in [
        (0, 4),
        (0x1b, 2),
        (0x22, 4),
        (0x24, 1),
        (0x1c, 3),
        (usize::MAX, 2),
    ] {
        assert!(p.read(off, w).is_err(), "{off:#x} {w}");
        assert!(p.write(off, w, !0).is_err(), "{off:#x} {w}");
    }
    assert_eq!(p.root_control(), 0);
}

#[test]
fn eventfd_notifier_pci_route_follows_pme_en_and_root_port() {
    let pm = Arc::new(Mutex::new(cap()));
    let rp = Arc::new(Mutex::new(RootPortPme::new()));
    let irq = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
    let mut n = EventFdNotifier::new();
    n.add_pci(0x0128, pm.clone(), rp.clone(), irq.clone());
    let route = WakeRoute::PciPme {
        requester_id: 0x0128,
    };
    // PME_En clear: latched in PME_Status only.
    assert_eq!(n.notify(route).unwrap(), Delivery::Latched);
    assert!(pm.lock().unwrap().pme_status());
    assert!(irq.read().is_err());
    assert_eq!(rs(&rp.lock().unwrap()), 0);
    pm.lock().unwrap().write(PMCSR_OFFSET, 2, 0x8100).unwrap();
    // Root port interrupt disabled: latched at the root port.
    assert_eq!(n.notify(route).unwrap(), Delivery::Latched);
    assert_eq!(rs(&rp.lock().unwrap()), ROOT_STA_PME_STATUS | 0x0128);
    rp.lock()
        .unwrap()
        .write(ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS)
        .unwrap();
    rp.lock()
        .unwrap()
        .write(ROOT_CONTROL_OFFSET, 2, u32::from(ROOT_CTL_PME_IE))
        .unwrap();
    assert_eq!(n.notify(route).unwrap(), Delivery::Interrupt);
    assert_eq!(irq.read().unwrap(), 1);
    assert!(matches!(
        n.notify(WakeRoute::PciPme { requester_id: 1 }),
        Err(NotifyError::UnknownRoute(_))
    ));
}

#[test]
fn eventfd_notifier_gpe_and_ged() {
    let gpe = Arc::new(GpeBlock::new());
    let sci = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let sci2 = sci.try_clone().unwrap();
    let ged = Arc::new(GedEvents::new());
    let gedirq = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
    let gedirq2 = gedirq.try_clone().unwrap();
    let mut n = EventFdNotifier::new();
    assert!(n.notify(WakeRoute::AcpiGpe { gpe: 5 }).is_err());
    n.set_gpe(gpe.clone(), sci);
    n.set_ged(ged.clone(), gedirq);
    assert_eq!(
        n.notify(WakeRoute::AcpiGpe { gpe: 5 }).unwrap(),
        Delivery::Latched
    );
    assert_eq!(gpe.status(), 1 << 5);
    gpe.clear_status(1 << 5);
    gpe.set_enable(1 << 5);
    assert_eq!(
        n.notify(WakeRoute::AcpiGpe { gpe: 5 }).unwrap(),
        Delivery::Interrupt
    );
    assert_eq!(sci2.read().unwrap(), 1);
    assert!(n.notify(WakeRoute::AcpiGpe { gpe: 64 }).is_err());
    assert_eq!(
        n.notify(WakeRoute::Ged { event: 3 }).unwrap(),
        Delivery::Interrupt
    );
    assert_eq!(gedirq2.read().unwrap(), 1);
    assert_eq!(ged.take(), 1 << 3);
    assert_eq!(ged.take(), 0);
    assert!(n.notify(WakeRoute::Ged { event: 64 }).is_err());
}

#[test]
fn recording_notifier_records() {
    let n = RecordingNotifier::new();
    let r = WakeRoute::Ged { event: 1 };
    n.notify(r).unwrap();
    n.notify(r).unwrap();
    assert_eq!(n.count(), 2);
    assert_eq!(n.count_for(r), 2);
    assert_eq!(n.routes(), vec![r, r]);
}
