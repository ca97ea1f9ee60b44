//! What `vfio-pm qemu` adds to a command line, over a fake sysfs tree.

use super::plan::plan;
use super::setup::{prepare, Options, Setup};
use std::path::Path;
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::Sysfs;
use vfio_pm_vmm::config::NodeMode;

fn argv(words: &[&str]) -> Vec<String> {
    std::iter::once("qemu-system-x86_64")
        .chain(words.iter().copied())
        .map(str::to_string)
        .collect()
}

fn tree(dir: &Path) -> Sysfs {
    let fake = FakeSysfs::create(dir.join("sys")).unwrap();
    fake.add(&FakeDevice::vfio("0000:00:05.0".parse().unwrap()))
        .unwrap();
    let mut gpu = FakeDevice::vfio("0000:41:00.0".parse().unwrap());
    gpu.vendor = 0x10de;
    gpu.class = 0x030000;
    fake.add(&gpu).unwrap();
    Sysfs::new(dir.join("sys"))
}

fn setup(words: &[&str], options: Options) -> anyhow::Result<Setup> {
    let tmp = tempfile::tempdir().unwrap();
    let sysfs = tree(tmp.path());
    let a = argv(words);
    let p = plan(&a)?;
    prepare(&sysfs, &a, &p, options, Path::new("/run/vfio-pm/qemu/vm1"))
}

const NIC: &[&str] = &[
    "-machine",
    "q35,accel=tcg",
    "-device",
    "vfio-pci,host=0000:00:05.0,bus=pcie.0,addr=0x6",
];

#[test]
fn a_device_on_the_root_bus_gets_a_power_resource_doorbell_and_mailbox() {
    let s = setup(NIC, Options::default()).unwrap();
    assert_eq!(
        s.extra_args,
        [
            "-acpitable",
            "file=/run/vfio-pm/qemu/vm1/ssdt.aml",
            "-chardev",
            "socket,id=vfiopm-db,path=/run/vfio-pm/qemu/vm1/doorbell.sock,reconnect=1",
            "-device",
            "isa-debugcon,iobase=0x440,chardev=vfiopm-db",
            "-object",
            "memory-backend-file,id=vfiopm-shm,mem-path=/run/vfio-pm/qemu/vm1/mailbox,size=4096,share=on",
            "-device",
            "ivshmem-plain,id=vfiopm-mailbox,memdev=vfiopm-shm,bus=pcie.0,addr=0x1e",
        ]
    );
    let c = s.vmm_config().unwrap();
    assert_eq!(c.devices().len(), 1);
    let d = &c.devices()[0];
    assert_eq!(d.acpi_path.asl(), r"\_SB.PCI0.S30");
    assert_eq!(d.pci_address.to_string(), "0000:00:06.0");
    assert!(
        d.d3cold && !d.has_wake(),
        "plain entry: stock QEMU cannot deliver a wake"
    );
    assert_eq!(c.mailbox().unwrap().device.asl(), r"\_SB.PCI0.SF0");
    assert_eq!(s.managed_hosts(), ["0000:00:05.0".parse().unwrap()]);
    // The setup survives the round trip attach depends on.
    let back: Setup = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
    assert_eq!(back.vmm_config().unwrap(), c);
}

#[test]
fn an_nvidia_display_controller_is_left_to_the_guest_unless_allowed() {
    let gpu = ["-M", "q35", "-device", "vfio-pci,host=41:00.0,addr=0x7"];
    let e = setup(&gpu, Options::default()).unwrap_err().to_string();
    assert!(
        e.contains("NVIDIA") && e.contains("--allow-plain-entry"),
        "{e}"
    );
    let mut both: Vec<&str> = NIC.to_vec();
    both.extend(["-device", "vfio-pci,host=41:00.0,addr=0x7"]);
    let s = setup(&both, Options::default()).unwrap();
    assert_eq!(s.vmm_config().unwrap().devices().len(), 1);
    assert!(s.devices[1].slot.is_none() && s.devices[1].note.contains("cannot deliver the wake"));
    let allowed = Options {
        allow_plain_entry: vec!["0000:41:00.0".parse().unwrap()],
        ..Options::default()
    };
    assert_eq!(
        setup(&gpu, allowed)
            .unwrap()
            .vmm_config()
            .unwrap()
            .devices()
            .len(),
        1
    );
}

#[test]
fn behind_a_root_port_acpi_hotplug_is_turned_off_and_the_node_declared() {
    let s = setup(
        &[
            "-machine",
            "q35",
            "-device",
            "pcie-root-port,id=rp1,bus=pcie.0,addr=0x2,chassis=1",
            "-device",
            "vfio-pci,host=0000:00:05.0,bus=rp1,addr=0x0",
        ],
        Options::default(),
    )
    .unwrap();
    let n = s.extra_args.len();
    assert_eq!(
        &s.extra_args[n - 2..],
        [
            "-global",
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"
        ]
    );
    let c = s.vmm_config().unwrap();
    let d = &c.devices()[0];
    assert_eq!(d.node, NodeMode::Declare);
    assert_eq!(d.acpi_path.asl(), r"\_SB.PCI0.S10.S00");
    assert_eq!(d.root_port.as_ref().unwrap().asl(), r"\_SB.PCI0.S10");
}

#[test]
fn clashes_are_refused_with_what_to_change() {
    let mut taken: Vec<&str> = NIC.to_vec();
    taken.extend(["-device", "virtio-net-pci,addr=0x1e"]);
    let e = setup(&taken, Options::default()).unwrap_err().to_string();
    assert!(e.contains("--mailbox-slot"), "{e}");
    let e = setup(
        NIC,
        Options {
            trap_port: 0x402,
            ..Options::default()
        },
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("firmware debug log"), "{e:#}");
    let mut chardev: Vec<&str> = NIC.to_vec();
    chardev.extend(["-chardev", "socket,id=vfiopm-db,path=/x"]);
    assert!(setup(&chardev, Options::default()).is_err());
    let none = ["-M", "q35", "-m", "1G"];
    assert!(setup(&none, Options::default())
        .unwrap_err()
        .to_string()
        .contains("nothing to manage"));
}
