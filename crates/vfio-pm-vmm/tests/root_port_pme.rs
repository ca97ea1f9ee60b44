//! The `pcie_pme` wake route end to end: configuration, the manager's virtual root port (Root
//! Control / Root Status, pending queue, interrupt eventfd) and the simulated guest's PCIe PME
//! service driver, over the simulated host.

mod vmm_support;
use std::io::ErrorKind;
use std::time::Duration;
use vfio_pm::{PciAddress, PowerState};
use vfio_pm_sim::KernelVersion;
use vfio_pm_vmm::config::{Problem, RouteKind as ConfigRoute, VmmConfig};
use vfio_pm_vmm::controller::{Event, HostPower, LowPowerVariant, RequestOutcome};
use vfio_pm_vmm::guest::{GuestPower, Reason};
use vfio_pm_vmm::pme::{
    Delivery, WakeRoute, PMCSR_OFFSET, PMCSR_PME_EN, PMCSR_PME_STATUS, ROOT_CONTROL_OFFSET,
    ROOT_CTL_PME_IE, ROOT_STATUS_OFFSET, ROOT_STA_PME_PENDING, ROOT_STA_PME_STATUS,
};
use vfio_pm_vmm::vmm::VmmError;
use vmm_support::{host_addr, slot, Rig};

/// Two NVIDIA functions (wakeup variant) behind root port 00:1c.0 on the PCIe PME route, and a
/// NIC on a GPE (per-device override).
const CONFIG: &str = r#"
[trap]
space = "io"
address = 0x440
width = 1

[wake]
route = "pcie_pme"

[[devices]]
acpi_path = '\_SB.PCI0.RP00.S00'
pci_address = "0000:01:00.0"
vendor_id = 0x10de
class_code = 0x030000
d3cold = true
pme_support = true
root_port = '\_SB.PCI0.RP00'
root_port_bdf = "0000:00:1c.0"
node = "declare"

[[devices]]
acpi_path = '\_SB.PCI0.RP00.S01'
pci_address = "0000:01:00.1"
vendor_id = 0x10de
class_code = 0x030200
d3cold = true
pme_support = true
root_port = '\_SB.PCI0.RP00'
node = "declare"

[[devices]]
acpi_path = '\_SB.PCI0.S28'
pci_address = "0000:00:05.0"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true
wake_route = "gpe"
gpe = 0x10
"#;

const GPU0: usize = 0;
const GPU1: usize = 1;
const NIC: usize = 2;
const RID0: u32 = 0x0100;
const RID1: u32 = 0x0101;

fn port() -> PciAddress {
    "0000:00:1c.0".parse().unwrap()
}

fn rig() -> Rig {
    vmm_support::build(CONFIG, KernelVersion::V6_1, Duration::ZERO)
}

impl Rig {
    fn pmcsr(&self, i: usize) -> u32 {
        self.vpm
            .on_pm_config_read(slot(i), PMCSR_OFFSET, 2)
            .unwrap()
    }
    fn root_status(&self) -> u32 {
        self.vpm
            .on_root_port_config_read(port(), ROOT_STATUS_OFFSET, 4)
            .unwrap()
    }
    fn root_control(&self) -> u32 {
        self.vpm
            .on_root_port_config_read(port(), ROOT_CONTROL_OFFSET, 2)
            .unwrap()
    }
    /// Interrupts the root port raised since the last call (the irqfd's counter, consumed as
    /// KVM's irqfd would).
    fn interrupts(&self) -> u64 {
        match self.vpm.root_port_irqfd(port()).unwrap().read() {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => panic!("irqfd read: {e}"),
        }
    }
    /// The host touches a device (lspci), the manager handles the wake.
    fn host_wake(&mut self, i: usize) {
        self.clock.advance(Duration::from_millis(10));
        self.host.host_config_read(host_addr(i)).unwrap();
        self.vpm.poll_pending().unwrap();
    }
    fn suspend(&mut self, i: usize) {
        self.guest.runtime_suspend(&mut self.vpm, slot(i)).unwrap();
        self.host.run_pending();
        assert_eq!(
            self.host.snapshot(host_addr(i)).unwrap().power_state,
            PowerState::D3Cold
        );
    }
    fn deliveries(&self, i: usize) -> Vec<Delivery> {
        let s = slot(i);
        self.log
            .snapshot()
            .into_iter()
            .filter(|t| t.slot == s)
            .filter_map(|t| match t.event {
                Event::PmeDelivered { delivery, .. } => Some(delivery),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn configuration_chooses_the_root_port_route() {
    let r = rig();
    assert_eq!(r.vpm.config().wake().route, ConfigRoute::PciePme);
    assert_eq!(
        r.vpm.settings(slot(GPU0)).and_then(|s| s.route),
        Some(WakeRoute::PciPme {
            requester_id: 0x0100
        })
    );
    assert_eq!(
        r.vpm.settings(slot(GPU1)).and_then(|s| s.route),
        Some(WakeRoute::PciPme {
            requester_id: 0x0101
        })
    );
    assert_eq!(
        r.vpm.settings(slot(NIC)).and_then(|s| s.route),
        Some(WakeRoute::AcpiGpe { gpe: 0x10 })
    );
    for i in [GPU0, GPU1] {
        assert_eq!(
            r.vpm.variant(slot(i)),
            Some(LowPowerVariant::EntryWithWakeup)
        );
        // The root port BDF given once applies to every device behind it.
        assert_eq!(r.vpm.config().devices()[i].root_port_bdf, Some(port()));
    }
    assert_eq!(r.vpm.root_ports().collect::<Vec<_>>(), vec![port()]);
    assert_eq!(
        r.vpm
            .config()
            .root_ports()
            .iter()
            .find(|p| p.pci_address == Some(port()))
            .unwrap()
            .acpi_path
            .asl(),
        "\\_SB.PCI0.RP00"
    );
    let rp = &r.vpm.config().root_ports()[0];
    assert_eq!(rp.devices, vec![slot(GPU0), slot(GPU1)]);
    let line = r.vpm.ssdt_summary().to_string();
    assert!(line.contains("\\_GPE._E10"), "{line}");
    assert!(line.contains("PCIe PME via \\_SB.PCI0.RP00"), "{line}");
    // Everything starts clear.
    assert_eq!((r.root_control(), r.root_status()), (0, 0));
    assert_eq!(r.interrupts(), 0);
}

#[test]
fn full_chain_pme_status_root_status_one_interrupt_then_on() {
    let mut r = rig();
    assert_eq!(r.guest.probe_pcie_pme(&mut r.vpm).unwrap(), vec![port()]);
    assert_eq!(r.root_control() & u32::from(ROOT_CTL_PME_IE), 0x8);
    r.suspend(GPU0);
    assert_ne!(
        r.pmcsr(GPU0) & u32::from(PMCSR_PME_EN),
        0,
        "guest armed PME"
    );
    assert_eq!(r.vpm.power(slot(GPU0)), Some(HostPower::Armed));
    r.vpm.poll_pending().unwrap();
    assert_eq!(r.interrupts(), 0, "no wake yet");

    r.host_wake(GPU0);
    assert_ne!(r.pmcsr(GPU0) & u32::from(PMCSR_PME_STATUS), 0);
    assert_eq!(r.root_status(), ROOT_STA_PME_STATUS | RID0);
    assert_eq!(r.interrupts(), 1, "exactly one root port interrupt");
    assert_eq!(r.inbox.pending(), 0, "not through the VMM's ACPI notifier");
    assert_eq!(r.deliveries(GPU0), vec![Delivery::Interrupt]);
    // More host accesses: no second PME, no second interrupt.
    r.host_wake(GPU0);
    assert_eq!(r.interrupts(), 0);
    assert_eq!(r.root_status(), ROOT_STA_PME_STATUS | RID0);

    let handled = r
        .guest
        .handle_root_port_interrupt(&mut r.vpm, port())
        .unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(
        handled[0].route,
        WakeRoute::PciPme {
            requester_id: 0x0100
        }
    );
    assert_eq!(handled[0].device, Some(GPU0 as u32));
    let step = handled[0].resumed.as_ref().unwrap();
    assert_eq!((step.action, step.reason), ("_ON", Reason::Wake));
    assert_eq!(step.trap.data, vec![0x80]);
    assert_eq!(step.outcome, RequestOutcome::AlreadyExited);
    assert!(step.pme_status_seen);
    // Guest cleared everything, re-enabled the interrupt; no interrupt from that.
    assert_eq!(r.root_status(), 0);
    assert_eq!(r.root_control() & u32::from(ROOT_CTL_PME_IE), 0x8);
    assert_eq!(
        r.pmcsr(GPU0) & u32::from(PMCSR_PME_STATUS | PMCSR_PME_EN),
        0
    );
    assert_eq!(r.interrupts(), 0);
    assert_eq!(r.guest.power(slot(GPU0)), Some(GuestPower::D0));
    assert_eq!(r.vpm.power(slot(GPU0)), Some(HostPower::Active));
    let snap = r.host.snapshot(host_addr(GPU0)).unwrap();
    assert!(!snap.engaged && !snap.wakeup_armed);
    assert_eq!(snap.power_state, PowerState::D0);
    let st = r.vpm.stats(slot(GPU0)).unwrap();
    assert_eq!((st.entries, st.exits, st.pme_delivered), (1, 1, 1));
    // The other device behind the port was never touched.
    assert_eq!(r.pmcsr(GPU1) & u32::from(PMCSR_PME_STATUS), 0);

    // A second cycle works the same way, through handle_wakes (which takes the irqfd).
    r.suspend(GPU0);
    r.host_wake(GPU0);
    let handled = r.guest.handle_wakes(&mut r.vpm).unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].device, Some(GPU0 as u32));
    assert!(handled[0].resumed.is_some());
    assert_eq!(r.root_status(), 0);
    assert_eq!(r.vpm.stats(slot(GPU0)).unwrap().pme_delivered, 2);
}

#[test]
fn second_pme_is_pending_and_delivered_when_the_first_is_cleared() {
    let mut r = rig();
    r.guest.probe_pcie_pme(&mut r.vpm).unwrap();
    r.suspend(GPU0);
    r.suspend(GPU1);
    r.host_wake(GPU0);
    r.host_wake(GPU1);
    assert_eq!(
        r.root_status(),
        ROOT_STA_PME_STATUS | ROOT_STA_PME_PENDING | RID0,
        "the first requester is reported, the second queued"
    );
    assert_eq!(r.interrupts(), 1, "one interrupt for both so far");
    assert_eq!(r.deliveries(GPU0), vec![Delivery::Interrupt]);
    assert_eq!(r.deliveries(GPU1), vec![Delivery::Queued]);
    for i in [GPU0, GPU1] {
        assert_ne!(r.pmcsr(i) & u32::from(PMCSR_PME_STATUS), 0, "device {i}");
    }

    // The guest (step by step, PME interrupt left enabled) takes the first request: reads
    // Root Status, clears PME Status, clears the device's PME_Status, resumes it.
    let raised = r
        .vpm
        .on_root_port_config_write(port(), ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS)
        .unwrap();
    assert!(raised, "clearing PME Status loads the pending requester");
    assert_eq!(
        r.root_status(),
        ROOT_STA_PME_STATUS | RID1,
        "no longer pending"
    );
    assert_eq!(r.interrupts(), 1, "re-asserted for the second requester");
    r.vpm
        .on_pm_config_write(slot(GPU0), PMCSR_OFFSET, 2, u32::from(PMCSR_PME_STATUS) | 3)
        .unwrap();
    let step = r
        .guest
        .runtime_resume(&mut r.vpm, slot(GPU0), Reason::Wake)
        .unwrap();
    assert_eq!(step.outcome, RequestOutcome::AlreadyExited);

    // The re-asserted interrupt: the simulated pcie_pme driver takes the second request.
    let handled = r
        .guest
        .handle_root_port_interrupt(&mut r.vpm, port())
        .unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].device, Some(GPU1 as u32));
    assert_eq!(
        handled[0].resumed.as_ref().unwrap().outcome,
        RequestOutcome::AlreadyExited
    );
    assert_eq!(r.root_status(), 0);
    assert_eq!(r.interrupts(), 0);
    for i in [GPU0, GPU1] {
        assert_eq!(r.guest.power(slot(i)), Some(GuestPower::D0));
        assert_eq!(r.vpm.power(slot(i)), Some(HostPower::Active));
        assert_eq!(r.pmcsr(i) & u32::from(PMCSR_PME_STATUS), 0);
        assert!(!r.host.snapshot(host_addr(i)).unwrap().engaged);
    }
}

#[test]
fn one_interrupt_serves_both_requests_like_linux() {
    // Linux masks PME Interrupt Enable while it drains Root Status, so the pending requester
    // loaded by the clear raises no second interrupt: both are handled in one pass.
    let mut r = rig();
    r.guest.probe_pcie_pme(&mut r.vpm).unwrap();
    r.suspend(GPU1);
    r.suspend(GPU0);
    r.host_wake(GPU1);
    r.host_wake(GPU0);
    assert_eq!(
        r.root_status(),
        ROOT_STA_PME_STATUS | ROOT_STA_PME_PENDING | RID1
    );
    let handled = r.guest.handle_wakes(&mut r.vpm).unwrap();
    let devices: Vec<_> = handled.iter().map(|h| h.device).collect();
    assert_eq!(devices, vec![Some(GPU1 as u32), Some(GPU0 as u32)]);
    assert!(handled.iter().all(|h| h.resumed.is_some()));
    assert_eq!(r.root_status(), 0);
    assert_eq!(r.root_control() & u32::from(ROOT_CTL_PME_IE), 0x8);
    assert_eq!(r.interrupts(), 0, "no interrupt left over");
    assert_eq!(r.inbox.pending(), 0);
}

#[test]
fn pme_en_clear_latches_pme_status_without_interrupt() {
    let mut r = rig();
    r.guest.probe_pcie_pme(&mut r.vpm).unwrap();
    r.suspend(GPU0);
    // The guest disarms wake: PMCSR D3hot with PME_En clear.
    r.vpm
        .on_pm_config_write(slot(GPU0), PMCSR_OFFSET, 2, 0x3)
        .unwrap();
    r.host_wake(GPU0);
    assert_ne!(
        r.pmcsr(GPU0) & u32::from(PMCSR_PME_STATUS),
        0,
        "PME_Status is set regardless of PME_En"
    );
    assert_eq!(r.root_status(), 0, "no PME message without PME_En");
    assert_eq!(r.interrupts(), 0);
    assert_eq!(r.deliveries(GPU0), vec![Delivery::Latched]);
    assert_eq!(r.inbox.pending(), 0);
    assert!(r.guest.handle_wakes(&mut r.vpm).unwrap().is_empty());
    assert_eq!(r.guest.power(slot(GPU0)), Some(GuestPower::D3Cold));
}

#[test]
fn interrupt_disabled_latches_until_the_guest_enables_it() {
    let mut r = rig();
    // No probe: PME Interrupt Enable stays clear.
    r.suspend(GPU0);
    r.host_wake(GPU0);
    assert_eq!(r.root_status(), ROOT_STA_PME_STATUS | RID0);
    assert_eq!(r.interrupts(), 0);
    assert_eq!(r.deliveries(GPU0), vec![Delivery::Latched]);
    // Enabling the interrupt with PME Status set raises it.
    let raised = r
        .vpm
        .on_root_port_config_write(port(), ROOT_CONTROL_OFFSET, 2, u32::from(ROOT_CTL_PME_IE))
        .unwrap();
    assert!(raised);
    assert_eq!(r.interrupts(), 1);
    let handled = r
        .guest
        .handle_root_port_interrupt(&mut r.vpm, port())
        .unwrap();
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].device, Some(GPU0 as u32));
    assert_eq!(r.root_status(), 0);
}

#[test]
fn malformed_root_port_accesses_change_nothing() {
    let mut r = rig();
    r.guest.probe_pcie_pme(&mut r.vpm).unwrap();
    r.suspend(GPU0);
    r.suspend(GPU1);
    r.host_wake(GPU0);
    r.host_wake(GPU1);
    assert_eq!(r.interrupts(), 1);
    let (ctl, sta) = (r.root_control(), r.root_status());
    let pmcsr = (r.pmcsr(GPU0), r.pmcsr(GPU1));
    let bad: [(usize, usize); 9] = [
        (0x1b, 1),
        (0x1b, 2),
        (0x24, 1),
        (0x22, 4),
        (0x1c, 3),
        (0x1c, 0),
        (0x1c, 8),
        (usize::MAX, 4),
        (0, 2),
    ];
    for (off, width) in bad {
        let e = r
            .vpm
            .on_root_port_config_write(port(), off, width, 0xffff_ffff)
            .unwrap_err();
        assert!(
            matches!(e, VmmError::RootPortRegister { .. }),
            "{off:#x}/{width}: {e}"
        );
        assert!(e.is_guest_error());
        assert!(r.vpm.on_root_port_config_read(port(), off, width).is_err());
    }
    let other: PciAddress = "0000:00:1d.0".parse().unwrap();
    for e in [
        r.vpm
            .on_root_port_config_write(other, ROOT_STATUS_OFFSET, 4, ROOT_STA_PME_STATUS)
            .unwrap_err(),
        r.vpm
            .on_root_port_config_read(other, ROOT_STATUS_OFFSET, 4)
            .unwrap_err(),
    ] {
        assert!(
            matches!(e, VmmError::UnknownRootPort(a) if a == other),
            "{e}"
        );
        assert!(e.is_guest_error());
    }
    assert_eq!((r.root_control(), r.root_status()), (ctl, sta));
    assert_eq!((r.pmcsr(GPU0), r.pmcsr(GPU1)), pmcsr);
    assert_eq!(r.interrupts(), 0);
    // Arbitrary guest accesses never panic; a reset clears the root port.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = 0x18 + (x as usize % 16);
        let width = (x >> 8) as usize % 6;
        if x & 1 << 20 != 0 {
            let _ = r
                .vpm
                .on_root_port_config_write(port(), off, width, (x >> 32) as u32);
        } else {
            let _ = r.vpm.on_root_port_config_read(port(), off, width);
        }
    }
    r.vpm.reset();
    assert_eq!((r.root_control(), r.root_status()), (0, 0));
}

fn err(toml: &str) -> (String, Problem) {
    let e = VmmConfig::from_toml_str(toml).unwrap_err();
    (
        e.field().unwrap_or_else(|| panic!("{e}")).to_string(),
        e.problem().unwrap().clone(),
    )
}

/// CONFIG's first device with `edit` applied to its lines, alone.
fn one(edit: &[(&str, Option<&str>)]) -> String {
    let mut s = String::from(
        "[trap]\nspace = \"io\"\naddress = 0x440\n[wake]\nroute = \"pcie_pme\"\n[[devices]]\n",
    );
    let mut keys: Vec<(&str, String)> = vec![
        ("acpi_path", "'\\_SB.PCI0.RP00.S00'".into()),
        ("pci_address", "\"0000:01:00.0\"".into()),
        ("vendor_id", "0x10de".into()),
        ("class_code", "0x030000".into()),
        ("d3cold", "true".into()),
        ("pme_support", "true".into()),
        ("root_port", "'\\_SB.PCI0.RP00'".into()),
        ("root_port_bdf", "\"0000:00:1c.0\"".into()),
    ];
    for (k, v) in edit {
        keys.retain(|(key, _)| key != k);
        if let Some(v) = v {
            keys.push((k, v.to_string()));
        }
    }
    for (k, v) in keys {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

type IsProblem = fn(&Problem) -> bool;

#[test]
fn configuration_errors_name_the_field() {
    VmmConfig::from_toml_str(&one(&[])).unwrap();
    let cases: Vec<(String, &str, IsProblem)> = vec![
        (
            one(&[("root_port", None), ("root_port_bdf", None)]),
            "devices[0].root_port",
            |p| matches!(p, Problem::PciePmeNeedsRootPort),
        ),
        (
            one(&[("root_port_bdf", None)]),
            "devices[0].root_port_bdf",
            |p| matches!(p, Problem::MissingRootPortBdf { .. }),
        ),
        (
            one(&[("pme_support", Some("false"))]),
            "devices[0].pme_support",
            |p| matches!(p, Problem::PciePmeNeedsPmeSupport),
        ),
        (
            one(&[("pme_support", None)]),
            "devices[0].pme_support",
            |p| matches!(p, Problem::PciePmeNeedsPmeSupport),
        ),
        (
            one(&[("pci_address", Some("\"0000:00:05.0\""))]),
            "devices[0].pci_address",
            |p| matches!(p, Problem::NotBelowRootPort { .. }),
        ),
        (
            one(&[("root_port_bdf", Some("\"0001:00:1c.0\""))]),
            "devices[0].pci_address",
            |p| matches!(p, Problem::NotBelowRootPort { .. }),
        ),
        (
            one(&[("root_port_bdf", Some("\"00:1c.0.0\""))]),
            "devices[0].root_port_bdf",
            |p| matches!(p, Problem::BadPciAddress(_)),
        ),
        (
            one(&[("root_port", None)]),
            "devices[0].root_port_bdf",
            |p| matches!(p, Problem::UnusedRootPortBdf),
        ),
        (one(&[("gpe", Some("0x10"))]), "devices[0].gpe", |p| {
            matches!(p, Problem::UnusedGpe)
        }),
        (
            one(&[("wakeup", Some("\"always\""))]),
            "devices[0].wakeup",
            |p| matches!(p, Problem::PrwNeedsGpe),
        ),
    ];
    for (toml, field, want) in cases {
        let (f, p) = err(&toml);
        assert_eq!(f, field, "{p}\n{toml}");
        assert!(want(&p), "{p:?}\n{toml}");
        assert!(!p.to_string().is_empty());
    }
    // Two devices disagreeing on the root port's address; two root ports at one address;
    // a root port at a device's address; duplicate requester IDs across domains.
    let second = |extra: &str| {
        format!(
            "{}[[devices]]\nacpi_path = '\\_SB.PCI0.RP00.S01'\npci_address = \"0000:01:00.1\"\nvendor_id = 0x10de\nclass_code = 0x030200\nd3cold = true\npme_support = true\nroot_port = '\\_SB.PCI0.RP00'\n{extra}",
            one(&[])
        )
    };
    VmmConfig::from_toml_str(&second("")).unwrap();
    VmmConfig::from_toml_str(&second("root_port_bdf = \"0000:00:1c.0\"\n")).unwrap();
    let (f, p) = err(&second("root_port_bdf = \"0000:00:1d.0\"\n"));
    assert_eq!(f, "devices[1].root_port_bdf");
    assert!(
        matches!(p, Problem::RootPortBdfConflict { other: 0, .. }),
        "{p}"
    );
    let other_port = one(&[])
        + "[[devices]]\nacpi_path = '\\_SB.PCI0.RP01.S00'\npci_address = \"0000:02:00.0\"\nvendor_id = 0x10de\nclass_code = 0x030000\npme_support = true\nroot_port = '\\_SB.PCI0.RP01'\nroot_port_bdf = \"0000:00:1c.0\"\n";
    let (f, p) = err(&other_port);
    assert_eq!(f, "devices[1].root_port_bdf");
    assert!(matches!(p, Problem::Duplicate { other: 0, .. }), "{p}");
    let same_rid = one(&[])
        + "[[devices]]\nacpi_path = '\\_SB.PCI1.RP00.S00'\npci_address = \"0001:01:00.0\"\nvendor_id = 0x10de\nclass_code = 0x030000\npme_support = true\nroot_port = '\\_SB.PCI1.RP00'\nroot_port_bdf = \"0001:00:1c.0\"\n";
    let (f, p) = err(&same_rid);
    assert_eq!(f, "devices[1].pci_address");
    assert!(matches!(p, Problem::Duplicate { other: 0, .. }), "{p}");
    // wakeup = "never" needs no root port; an unknown route name is a TOML error.
    VmmConfig::from_toml_str(&one(&[
        ("root_port", None),
        ("root_port_bdf", None),
        ("pme_support", None),
        ("wakeup", Some("\"never\"")),
    ]))
    .unwrap();
    let bad = one(&[]).replace("pcie_pme", "pcie");
    assert!(VmmConfig::from_toml_str(&bad)
        .unwrap_err()
        .field()
        .is_none());
}
