//! The VMM adapter (`vfio_pm_vmm::vmm`) and the simulated guest over the simulated host.

mod vmm_support;
use std::time::Duration;
use vfio_pm::PowerState;
use vfio_pm_sim::{KernelVersion, Platform, SimHost};
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::controller::{Event, HostCall, HostPower, LowPowerVariant, RequestOutcome};
use vfio_pm_vmm::guest::{GuestError, GuestInbox, GuestPower, Reason};
use vfio_pm_vmm::pme::{
    PciPowerState, WakeRoute, PMCSR_OFFSET, PMCSR_PME_EN, PMCSR_PME_STATUS, PMC_OFFSET,
    PMC_PME_D3COLD,
};
use vfio_pm_vmm::vmm::{SsdtSummary, VmmError, VmmPowerManager};
use vfio_pm_vmm::{PowerAction, Slot};
use vmm_support::{host_addr, slot, Rig};

/// GPU (wakeup variant), its HDMI audio (plain), a NIC (plain), and a device without a power
/// resource.
const CONFIG: &str = r#"
[trap]
space = "io"
address = 0x440
width = 1

[[devices]]
acpi_path = '\_SB.PCI0.S10.S00'
pci_address = "0000:01:00.0"
vendor_id = 0x10de
device_id = 0x2204
class_code = 0x030000
d3cold = true
pme_support = true
root_port = '\_SB.PCI0.S10'
node = "declare"
gpe = 0x10

[[devices]]
acpi_path = '\_SB.PCI0.S10.S01'
pci_address = "0000:01:00.1"
vendor_id = 0x10de
device_id = 0x1aef
class_code = 0x040300
d3cold = true
root_port = '\_SB.PCI0.S10'
node = "declare"
gpe = 0x11

[[devices]]
acpi_path = '\_SB.PCI0.S28'
pci_address = "0000:00:05.0"
vendor_id = 0x8086
device_id = 0x10d3
class_code = 0x020000
d3cold = true
gpe = 0x12

[[devices]]
acpi_path = '\_SB.PCI0.S30'
pci_address = "0000:00:06.0"
vendor_id = 0x8086
class_code = 0x010802
wakeup = "never"
"#;

const GPU: usize = 0;
const HDA: usize = 1;
const NIC: usize = 2;
const PLAIN_NO_PR: usize = 3;

fn rig_with(kernel: KernelVersion, min_residency: Duration) -> Rig {
    vmm_support::build(CONFIG, kernel, min_residency)
}

fn rig() -> Rig {
    rig_with(KernelVersion::V6_1, Duration::ZERO)
}

impl Rig {
    fn snap(&self, i: usize) -> vfio_pm_sim::DeviceSnapshot {
        self.host.snapshot(host_addr(i)).unwrap()
    }
    fn powers(&self) -> Vec<Option<HostPower>> {
        self.vpm.slots().map(|s| self.vpm.power(s)).collect()
    }
    fn snaps(&self) -> Vec<vfio_pm_sim::DeviceSnapshot> {
        (0..4).map(|i| self.snap(i)).collect()
    }
    fn pmcsr(&self, i: usize) -> u32 {
        self.vpm
            .on_pm_config_read(slot(i), PMCSR_OFFSET, 2)
            .unwrap()
    }
    fn count(&self, i: usize, pred: impl Fn(&Event) -> bool) -> usize {
        let s = slot(i);
        self.log.count(s, pred)
    }
}

#[test]
fn settings_follow_the_configuration() {
    let r = rig();
    assert_eq!(
        r.vpm.variant(slot(GPU)),
        Some(LowPowerVariant::EntryWithWakeup)
    );
    assert_eq!(r.vpm.variant(slot(HDA)), Some(LowPowerVariant::Entry));
    assert_eq!(r.vpm.variant(slot(NIC)), Some(LowPowerVariant::Entry));
    assert_eq!(
        r.vpm.settings(slot(GPU)).and_then(|s| s.route),
        Some(WakeRoute::AcpiGpe { gpe: 0x10 })
    );
    assert_eq!(r.vpm.settings(slot(NIC)).unwrap().d3cold, Some(true));
    assert_eq!(r.vpm.settings(slot(PLAIN_NO_PR)).unwrap().d3cold, None);
    // D3cold opt-in was written to the host for the three power-resource devices.
    assert!(r.snap(GPU).d3cold_allowed);
    assert_eq!(
        r.count(GPU, |e| matches!(
            e,
            Event::HostCall {
                call: HostCall::D3ColdAllowed(true),
                ..
            }
        )),
        1
    );
    assert_eq!(
        r.count(PLAIN_NO_PR, |e| matches!(e, Event::HostCall { .. })),
        0
    );
    // PME support advertised only where configured.
    let pmc = |i| r.vpm.on_pm_config_read(slot(i), PMC_OFFSET, 2).unwrap();
    assert_ne!(pmc(GPU) & u32::from(PMC_PME_D3COLD), 0);
    assert_eq!(pmc(NIC) & u32::from(PMC_PME_D3COLD), 0);
    // The SSDT is the generator's.
    assert_eq!(
        r.vpm.ssdt(),
        vfio_pm_vmm::aml::build_ssdt(r.vpm.config()).as_slice()
    );
    let sum = r.vpm.ssdt_summary();
    assert_eq!(sum, SsdtSummary::of(r.vpm.config()));
    assert_eq!(
        (sum.power_resources, sum.devices, sum.root_ports),
        (3, 4, 1)
    );
    assert_eq!(sum.bytes, r.vpm.ssdt().len());
    let line = sum.to_string();
    assert!(
        line.contains("\\_GPE._E10") && line.contains("0x440"),
        "{line}"
    );
}

#[test]
fn malformed_trap_writes_change_nothing() {
    let mut r = rig();
    // One device off first, so "unchanged" covers a non-initial state too.
    r.guest.runtime_suspend(&mut r.vpm, slot(NIC)).unwrap();
    r.host.run_pending();
    let powers = r.powers();
    let snaps = r.snaps();
    let events = r.log.len();
    let stats: Vec<_> = r.vpm.slots().map(|s| r.vpm.stats(s)).collect();
    let bad: Vec<(TrapSpace, u64, Vec<u8>)> = vec![
        (TrapSpace::Mmio, 0x440, vec![0x00]),     // wrong space
        (TrapSpace::Io, 0x441, vec![0x00]),       // wrong port
        (TrapSpace::Io, 0x440, vec![]),           // empty
        (TrapSpace::Io, 0x440, vec![0x00, 0x00]), // wrong width
        (TrapSpace::Io, 0x440, vec![0x40]),       // reserved bit 6
        (TrapSpace::Io, 0x440, vec![0x04]),       // slot 4: not configured
        (TrapSpace::Io, 0x440, vec![0x83]),       // slot 3: no power resource
        (TrapSpace::Io, 0x440, vec![0xff]),
    ];
    for (space, addr, data) in bad {
        let err = r.vpm.on_trap_write(space, addr, &data).unwrap_err();
        assert!(matches!(err, VmmError::Trap(_)), "{err}");
        assert!(err.is_guest_error());
    }
    r.vpm.poll_pending().unwrap();
    r.host.run_pending();
    assert_eq!(r.powers(), powers);
    assert_eq!(r.snaps(), snaps);
    assert_eq!(r.log.len(), events, "no event for a malformed write");
    let after: Vec<_> = r.vpm.slots().map(|s| r.vpm.stats(s)).collect();
    assert_eq!(after, stats);
    // Malformed PM capability accesses are errors too, and change nothing.
    let pmcsr = r.pmcsr(GPU);
    for (off, width) in [(7, 2), (4, 3), (8, 1), (usize::MAX, 4), (0, 0)] {
        let e = r
            .vpm
            .on_pm_config_write(slot(GPU), off, width, 0xffff_ffff)
            .unwrap_err();
        assert!(matches!(e, VmmError::PmRegister(_)), "{e}");
        assert!(r.vpm.on_pm_config_read(slot(GPU), off, width).is_err());
    }
    assert_eq!(r.pmcsr(GPU), pmcsr);
    assert!(matches!(
        r.vpm.on_pm_config_read(slot(9), 4, 2),
        Err(VmmError::UnknownSlot(Slot(9)))
    ));
}

#[test]
fn gpu_full_chain_off_wake_one_pme_on() {
    let mut r = rig();
    let gpu = slot(GPU);
    // Guest idles the GPU: PMCSR PME_En + D3hot, then _OFF writes 0x00 to port 0x440.
    let step = r.guest.runtime_suspend(&mut r.vpm, gpu).unwrap();
    assert_eq!(step.trap.data, vec![0x00]);
    assert_eq!(step.trap.address, 0x440);
    assert_eq!(
        step.outcome,
        RequestOutcome::Entered(LowPowerVariant::EntryWithWakeup)
    );
    assert_ne!(r.pmcsr(GPU) & u32::from(PMCSR_PME_EN), 0);
    assert_eq!(
        r.count(GPU, |e| matches!(
            e,
            Event::HostCall { call: HostCall::EntryWithWakeup, result, .. } if result.is_ok()
        )),
        1
    );
    r.host.run_pending();
    assert_eq!(r.snap(GPU).power_state, PowerState::D3Cold);
    assert_eq!(r.vpm.power(gpu), Some(HostPower::Armed));
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.inbox.pending(), 0, "no wake yet");

    // lspci on the host: the kernel resumes the GPU and signals the eventfd.
    r.clock.advance(Duration::from_millis(50));
    r.host.host_config_read(host_addr(GPU)).unwrap();
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.inbox.pending(), 1, "exactly one PME");
    assert_ne!(
        r.pmcsr(GPU) & u32::from(PMCSR_PME_STATUS),
        0,
        "PME_Status visible in the emulated PMCSR"
    );
    assert_eq!(r.vpm.power(gpu), Some(HostPower::WokenByHost));
    // More host accesses: no second PME.
    r.host.host_config_read(host_addr(GPU)).unwrap();
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.inbox.pending(), 1);

    // The guest takes the Notify and resumes through _ON (0x80).
    let handled = r.guest.handle_wakes(&mut r.vpm).unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].device, Some(GPU as u32));
    let resumed = handled[0].resumed.as_ref().unwrap();
    assert_eq!(resumed.trap.data, vec![0x80]);
    assert_eq!(resumed.reason, Reason::Wake);
    assert!(resumed.pme_status_seen);
    assert_eq!(resumed.outcome, RequestOutcome::AlreadyExited);
    assert_eq!(r.pmcsr(GPU) & u32::from(PMCSR_PME_STATUS), 0, "cleared");
    assert_eq!(r.guest.power(gpu), Some(GuestPower::D0));
    assert_eq!(r.vpm.power(gpu), Some(HostPower::Active));
    let snap = r.snap(GPU);
    assert!(!snap.engaged && !snap.wakeup_armed);
    assert_eq!(snap.power_state, PowerState::D0);
    let st = r.vpm.stats(gpu).unwrap();
    assert_eq!(
        (st.entries, st.exits, st.host_wakes, st.pme_delivered),
        (1, 1, 1, 1)
    );

    // A guest-initiated resume of an armed GPU makes a real EXIT, whose own signal is no PME.
    r.guest.runtime_suspend(&mut r.vpm, gpu).unwrap();
    r.host.run_pending();
    let step = r
        .guest
        .runtime_resume(&mut r.vpm, gpu, Reason::Use)
        .unwrap();
    assert_eq!(step.outcome, RequestOutcome::Exited);
    assert!(!step.pme_status_seen);
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.inbox.pending(), 0);
    assert_eq!(
        r.count(GPU, |e| matches!(
            e,
            Event::HostCall {
                call: HostCall::Exit,
                ..
            }
        )),
        1
    );
    assert!(!r.snap(GPU).engaged);
}

#[test]
fn plain_nic_resuspends_after_host_access_without_pme() {
    let mut r = rig();
    let nic = slot(NIC);
    let step = r.guest.runtime_suspend(&mut r.vpm, nic).unwrap();
    assert_eq!(step.trap.data, vec![0x02]);
    assert_eq!(
        step.outcome,
        RequestOutcome::Entered(LowPowerVariant::Entry)
    );
    assert_eq!(
        r.pmcsr(NIC) & u32::from(PMCSR_PME_EN),
        0,
        "no PME support advertised, so the guest does not arm PME"
    );
    r.host.run_pending();
    assert_eq!(r.snap(NIC).power_state, PowerState::D3Cold);
    r.host.host_config_read(host_addr(NIC)).unwrap();
    assert_eq!(r.snap(NIC).power_state, PowerState::D0, "lspci resumed it");
    r.vpm.poll_pending().unwrap();
    r.host.run_pending();
    let snap = r.snap(NIC);
    assert_eq!(snap.power_state, PowerState::D3Cold, "re-suspended");
    assert!(snap.engaged);
    assert_eq!(r.inbox.pending(), 0);
    assert_eq!(r.vpm.power(nic), Some(HostPower::LowPower));
    assert_eq!(r.vpm.stats(nic).unwrap().pme_delivered, 0);
    // The VMM's own access through the manager: no PME either, device re-suspends.
    let mut b = [0u8; 2];
    r.vpm
        .host_access(nic, |d| d.region_read(vfio_pm::CONFIG_REGION, 0, &mut b))
        .unwrap()
        .unwrap();
    r.host.run_pending();
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.inbox.pending(), 0);
    assert!(r.snap(NIC).suspended);
    // Guest resume: EXIT.
    let step = r
        .guest
        .runtime_resume(&mut r.vpm, nic, Reason::Use)
        .unwrap();
    assert_eq!(step.trap.data, vec![0x82]);
    assert_eq!(step.outcome, RequestOutcome::Exited);
    assert!(!r.snap(NIC).engaged);
}

#[test]
fn guest_refuses_nonsense_and_devices_without_power_resource() {
    let mut r = rig();
    assert!(matches!(
        r.guest
            .runtime_resume(&mut r.vpm, slot(GPU), Reason::Use)
            .unwrap_err(),
        GuestError::WrongState { .. }
    ));
    assert!(matches!(
        r.guest
            .runtime_suspend(&mut r.vpm, slot(PLAIN_NO_PR))
            .unwrap_err(),
        GuestError::NoPowerResource(3)
    ));
    assert!(matches!(
        r.guest
            .trap_write(&r.vpm, slot(7), PowerAction::PowerOff)
            .unwrap_err(),
        GuestError::UnknownDevice(7)
    ));
    assert_eq!(
        r.log.count(slot(GPU), |e| matches!(e, Event::Guest { .. })),
        0
    );
}

#[test]
fn anti_thrash_coalesces_a_toggle_burst() {
    let mut r = rig_with(KernelVersion::V6_1, Duration::from_millis(100));
    let gpu = slot(GPU);
    r.guest.runtime_suspend(&mut r.vpm, gpu).unwrap();
    r.host.run_pending();
    r.clock.advance(Duration::from_millis(5));
    r.guest
        .runtime_resume(&mut r.vpm, gpu, Reason::Use)
        .unwrap();
    for _ in 0..20 {
        r.clock.advance(Duration::from_micros(50));
        let off = r.guest.runtime_suspend(&mut r.vpm, gpu).unwrap();
        assert!(matches!(off.outcome, RequestOutcome::Deferred { .. }));
        let on = r
            .guest
            .runtime_resume(&mut r.vpm, gpu, Reason::Use)
            .unwrap();
        assert_eq!(on.outcome, RequestOutcome::Coalesced);
    }
    let st = r.vpm.stats(gpu).unwrap();
    assert_eq!((st.entries, st.exits, st.coalesced), (1, 1, 20));
    // A final _OFF runs once the residency has passed.
    r.guest.runtime_suspend(&mut r.vpm, gpu).unwrap();
    assert!(r.vpm.next_deadline_ns().is_some());
    r.clock.advance(Duration::from_millis(100));
    r.vpm.poll(Some(Duration::ZERO)).unwrap();
    assert_eq!(r.vpm.power(gpu), Some(HostPower::Armed));
    assert_eq!(r.inbox.pending(), 0);
}

#[test]
fn reset_leaves_nothing_engaged_and_clears_pm_state() {
    let mut r = rig();
    for i in [GPU, HDA, NIC] {
        r.guest.runtime_suspend(&mut r.vpm, slot(i)).unwrap();
    }
    r.host.run_pending();
    r.host.host_config_read(host_addr(GPU)).unwrap();
    r.vpm.poll_pending().unwrap();
    assert_ne!(r.pmcsr(GPU) & u32::from(PMCSR_PME_STATUS), 0);
    let report = r.vpm.reset();
    assert_eq!(report.exited.len(), 3);
    assert!(report.failed.is_empty());
    r.vpm.poll_pending().unwrap();
    for i in 0..4 {
        assert!(!r.snap(i).engaged, "device {i}");
        assert_eq!(r.vpm.power(slot(i)), Some(HostPower::Active));
        assert_eq!(r.pmcsr(i) & 0x3, u32::from(PciPowerState::D0.bits()));
        assert_eq!(r.pmcsr(i) & u32::from(PMCSR_PME_STATUS | PMCSR_PME_EN), 0);
    }
    assert_eq!(
        r.inbox.pending(),
        1,
        "only the genuine wake before the reset"
    );
    let report = r.vpm.shutdown();
    assert!(report.failed.is_empty());
    assert!((0..4).all(|i| !r.snap(i).open));
}

#[test]
fn d3hot_fallback_asks_the_vmm_to_forward_power_state() {
    let mut r = rig_with(KernelVersion::V5_19, Duration::ZERO);
    assert_eq!(
        r.vpm.variant(slot(NIC)),
        Some(LowPowerVariant::D3HotFallback)
    );
    let w = r
        .vpm
        .on_pm_config_write(slot(NIC), PMCSR_OFFSET, 2, 0x3)
        .unwrap();
    assert_eq!(w.forward_power_state, Some(PciPowerState::D3Hot));
    // With the low-power features (6.1), PowerState stays emulated.
    let mut r = rig();
    let w = r
        .vpm
        .on_pm_config_write(slot(NIC), PMCSR_OFFSET, 2, 0x3)
        .unwrap();
    assert_eq!(w.forward_power_state, None);
    assert_eq!(
        w.outcome.power_state,
        Some((PciPowerState::D0, PciPowerState::D3Hot))
    );
}

#[test]
fn device_count_must_match_the_configuration() {
    let config = VmmConfig::from_toml_str(CONFIG).unwrap();
    let host = SimHost::new(Platform::D3cold);
    let dev = host.open(host.addresses()[0]).unwrap();
    let err = VmmPowerManager::new(config, vec![Box::new(dev)], GuestInbox::new())
        .err()
        .unwrap();
    assert!(matches!(
        err,
        VmmError::DeviceCount {
            expected: 4,
            got: 1
        }
    ));
}

#[test]
fn arbitrary_guest_writes_never_panic() {
    let mut r = rig();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..5000 {
        let v = next();
        let len = (v % 6) as usize;
        let data: Vec<u8> = (0..len).map(|i| (v >> (8 * i)) as u8).collect();
        let space = if v & 1 << 40 != 0 {
            TrapSpace::Io
        } else {
            TrapSpace::Mmio
        };
        let addr = if v & 1 << 41 != 0 { 0x440 } else { v >> 48 };
        match r.vpm.on_trap_write(space, addr, &data) {
            Ok(out) => assert_eq!(out.request.slot.index() as usize, data[0] as usize & 0x3f),
            Err(e) => assert!(e.is_guest_error() || matches!(e, VmmError::Controller(_))),
        }
        let s = Slot(((v >> 32) % 64) as u32);
        let _ =
            r.vpm
                .on_pm_config_write(s, (v >> 8) as usize % 12, (v >> 16) as usize % 6, v as u32);
        let _ = r
            .vpm
            .on_pm_config_read(s, (v >> 24) as usize % 12, (v >> 4) as usize % 6);
        if v % 7 == 0 {
            r.host.run_pending();
            r.vpm.poll_pending().unwrap();
        }
    }
    r.vpm.reset();
    assert!((0..4).all(|i| !r.snap(i).engaged));
}
