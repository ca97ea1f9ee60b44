//! The demo's passthrough devices and their VMM configuration.

use super::*;

pub(super) fn specs(n: u8) -> Vec<Spec> {
    // Every address below is in range (device < 32, function < 8).
    let pci = |b, d, f| {
        PciAddress::new(0, b, d, f).unwrap_or(PciAddress {
            domain: 0,
            bus: b,
            device: 0,
            function: 0,
        })
    };
    let mut v = vec![
        Spec {
            name: "gpu".into(),
            what: "NVIDIA GPU (needs the guest driver: ENTRY_WITH_WAKEUP)",
            vendor: 0x10de,
            device: 0x2204,
            class: 0x030000,
            guest: pci(1, 0, 0),
            host: pci(0x41, 0, 0),
            acpi_path: "\\_SB.PCI0.S10.S00".into(),
            root_port: Some("\\_SB.PCI0.S10"),
            declare: true,
            pme_support: true,
            gpe: 0x10,
            host_d3cold: true,
        },
        Spec {
            name: "hda".into(),
            what: "its HDMI audio function (plain ENTRY)",
            vendor: 0x10de,
            device: 0x1aef,
            class: 0x040300,
            guest: pci(1, 0, 1),
            host: pci(0x41, 0, 1),
            acpi_path: "\\_SB.PCI0.S10.S01".into(),
            root_port: Some("\\_SB.PCI0.S10"),
            declare: true,
            pme_support: false,
            gpe: 0x11,
            host_d3cold: true,
        },
        Spec {
            name: "nic".into(),
            what: "Intel NIC (plain ENTRY)",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            guest: pci(0, 5, 0),
            host: pci(0x42, 0, 0),
            acpi_path: "\\_SB.PCI0.S28".into(),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x12,
            host_d3cold: true,
        },
    ];
    if n >= 4 {
        v.push(Spec {
            name: "nvme".into(),
            what: "NVMe drive, host d3cold_allowed=0 (stops at D3hot)",
            vendor: 0x144d,
            device: 0xa808,
            class: 0x010802,
            guest: pci(0, 6, 0),
            host: pci(0x43, 0, 0),
            acpi_path: "\\_SB.PCI0.S30".into(),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x13,
            host_d3cold: false,
        });
    }
    for i in 4..n {
        let dev = 3 + i; // 00:07.0 and up
        v.push(Spec {
            name: format!("nic{}", i - 2),
            what: "another NIC (plain ENTRY)",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            guest: pci(0, dev, 0),
            host: pci(0x40 + i, 0, 0),
            acpi_path: format!("\\_SB.PCI0.S{:02X}", u32::from(dev) * 8),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x10 + i,
            host_d3cold: true,
        });
    }
    v
}

pub(super) fn config_toml(specs: &[Spec]) -> String {
    let mut s = String::from(
        "# vfio-pm demo: VMM configuration (see it as ASL with: vfio-pm aml FILE --dsl)\n\
         [trap]\nspace = \"io\"\naddress = 0x440\nwidth = 1\n\n\
         [wake]\nroute = \"gpe\"\ntrigger = \"edge\"\n",
    );
    for d in specs {
        s.push_str(&format!(
            "\n[[devices]]\n# {} ({})\nacpi_path = '{}'\npci_address = \"{}\"\n\
             vendor_id = {:#06x}\ndevice_id = {:#06x}\nclass_code = {:#08x}\nd3cold = true\n\
             pme_support = {}\ngpe = {:#04x}\n",
            d.name, d.what, d.acpi_path, d.guest, d.vendor, d.device, d.class, d.pme_support, d.gpe
        ));
        if let Some(rp) = d.root_port {
            s.push_str(&format!("root_port = '{rp}'\n"));
        }
        if d.declare {
            s.push_str("node = \"declare\"\n");
        }
    }
    s
}
