//! A minimal VMM integration of vfio-pm-vmm, running on the simulated host.
//!
//! `cargo run -p vfio-pm-vmm --example minimal_vmm`
//!
//! Everything a VMM does is here, in the order it does it: VM build (SSDT, PM capability),
//! the vCPU's I/O exit handler (trap register), config space emulation of the PM capability,
//! wake wiring (GPE block + SCI irqfd), the event loop (epoll fd + poll), reset and shutdown.
//! A real VMM wraps its own VFIO devices instead of `SimDevice`s
//! (`vfio_pm::KernelDevice::from_vfio_device` or `from_device_fd`, docs/vmm-integration.md
//! step 1); the rest is the same code.

use std::sync::Arc;
use std::time::Duration;
use vfio_pm::PowerDevice;
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::controller::TimedEvent;
use vfio_pm_vmm::pme::{EventFdNotifier, GpeBlock, PMCSR_OFFSET, PMCSR_PME_STATUS};
use vfio_pm_vmm::vmm::VmmPowerManager;
use vfio_pm_vmm::Slot;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The VMM's device configuration (normally a file next to the VM definition).
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
root_port = '\_SB.PCI0.S10'
node = "declare"
gpe = 0x10

[[devices]]
acpi_path = '\_SB.PCI0.S28'
pci_address = "0000:00:05.0"
vendor_id = 0x8086
class_code = 0x020000
d3cold = true
gpe = 0x11
"#;

/// Where the VMM places the PM capability in each device's emulated config space.
const PM_CAP: u64 = 0x60;

/// The vCPU's port I/O write exit: the trap register is one more device on the I/O bus.
fn io_write(vpm: &mut VmmPowerManager, port: u64, data: &[u8]) {
    if !vpm.decoder().claims(TrapSpace::Io, port, data.len()) {
        return; // another device's port
    }
    match vpm.on_trap_write(TrapSpace::Io, port, data) {
        Ok(done) => println!(
            "  trap {port:#x} <- {data:02x?}: {:?} {:?} -> {:?}",
            done.request.action, done.request.slot, done.outcome
        ),
        // A malformed guest write is ignored, like hardware would; nothing changed.
        Err(e) if e.is_guest_error() => println!("  ignored guest write: {e}"),
        // A host failure: already in the event stream; the device is marked failed.
        Err(e) => println!("  host failure: {e}"),
    }
}

/// Config space emulation: accesses inside the PM capability go to the manager.
fn config_read(vpm: &VmmPowerManager, dev: Slot, reg: u64, width: usize) -> u32 {
    match reg.checked_sub(PM_CAP) {
        Some(off) if off < 8 => vpm
            .on_pm_config_read(dev, off as usize, width)
            .unwrap_or(0xffff_ffff),
        _ => 0, // the rest of the VMM's config space emulation
    }
}

fn config_write(vpm: &mut VmmPowerManager, dev: Slot, reg: u64, width: usize, v: u32) {
    if let Some(off) = reg.checked_sub(PM_CAP).filter(|o| *o < 8) {
        match vpm.on_pm_config_write(dev, off as usize, width, v) {
            Ok(w) => {
                if let Some(state) = w.forward_power_state {
                    // D3hot fallback (kernel without the low-power features): write the
                    // host PMCSR through the VFIO config region.
                    println!("  forward PowerState {state:?} to the host device");
                }
            }
            Err(e) => println!("  ignored PM capability write: {e}"),
        }
    }
}

/// The VMM's host devices, in configuration order.
type Devices = Vec<Box<dyn PowerDevice>>;

/// The host: a D3cold-capable platform with a GPU and a NIC bound to vfio-pci.
fn simulated_host() -> Result<(SimHost, Devices), Box<dyn std::error::Error>> {
    let host = SimHost::builder()
        .platform(Platform::D3cold)
        .device(DeviceConfig::new("0000:41:00.0".parse()?))
        .device(DeviceConfig::new("0000:42:00.0".parse()?))
        .build()?;
    let devices = host
        .addresses()
        .into_iter()
        .map(|a| host.open(a).map(|d| Box::new(d) as Box<dyn PowerDevice>))
        .collect::<Result<_, _>>()?;
    Ok((host, devices))
}

/// Wake wiring: the ACPI GPE block the VMM emulates and the SCI irqfd it registered with KVM
/// (KVM_IRQFD). The guest enables the GPE through GPE0_EN.
fn gpe_wiring() -> std::io::Result<(Arc<GpeBlock>, EventFd, EventFdNotifier)> {
    let gpe = Arc::new(GpeBlock::new());
    let sci = EventFd::new(EFD_NONBLOCK)?;
    let mut notifier = EventFdNotifier::new();
    notifier.set_gpe(gpe.clone(), sci.try_clone()?);
    Ok((gpe, sci, notifier))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (host, devices) = simulated_host()?;
    let (gpe, sci, notifier) = gpe_wiring()?;

    // VM build.
    let config = VmmConfig::from_toml_str(CONFIG)?;
    let mut vpm = VmmPowerManager::builder(config)
        .notifier(notifier)
        .events(|ev: &TimedEvent| {
            if let Ok(line) = serde_json::to_string(ev) {
                println!("  event {line}");
            }
        })
        .build(devices)?;
    println!("VM build: {}", vpm.ssdt_summary());
    let _ssdt: &[u8] = vpm.ssdt(); // add to the ACPI tables next to the DSDT

    // The event loop: the manager's epoll fd in the VMM's own epoll set.
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        vpm.epoll_fd(),
        EpollEvent::new(EventSet::IN, 1),
    )?;

    // --- The guest runs. ---
    gpe.set_enable(1 << 0x10 | 1 << 0x11); // guest: GPE0_EN
    let gpu = Slot(0);
    println!("guest: GPU idle -> PMCSR D3hot, _OFF");
    config_write(&mut vpm, gpu, PM_CAP + PMCSR_OFFSET as u64, 2, 0x3);
    io_write(&mut vpm, 0x440, &[0x00]);
    io_write(&mut vpm, 0x440, &[0x40]); // a malformed write: ignored
    host.run_pending(); // the kernel suspends the device
    println!(
        "host: GPU {:?}",
        host.observe(host.addresses()[0])?.power_state
    );

    println!("host: lspci reads the GPU's config space");
    host.host_config_read(host.addresses()[0])?;

    // The VMM's event loop iteration.
    let mut events = vec![EpollEvent::default(); 4];
    let n = epoll.wait(1000, &mut events)?;
    if n > 0 {
        vpm.poll(Some(Duration::ZERO))?;
    }
    println!(
        "SCI raised: {}, GPE0_STS = {:#x}",
        sci.read().is_ok(),
        gpe.status()
    );

    // The guest's GPE handler runs _E10: Notify(GPU, 2) -> runtime resume.
    let pmcsr = config_read(&vpm, gpu, PM_CAP + PMCSR_OFFSET as u64, 2);
    println!(
        "guest: PMCSR = {pmcsr:#06x} (PME_Status {}), resume via _ON",
        pmcsr & u32::from(PMCSR_PME_STATUS) != 0
    );
    gpe.clear_status(1 << 0x10);
    io_write(&mut vpm, 0x440, &[0x80]);
    config_write(
        &mut vpm,
        gpu,
        PM_CAP + PMCSR_OFFSET as u64,
        2,
        u32::from(PMCSR_PME_STATUS),
    );

    // VM reset, then shutdown: nothing is left in low power.
    let report = vpm.reset();
    println!(
        "reset: {} exited, {} failed",
        report.exited.len(),
        report.failed.len()
    );
    let report = vpm.shutdown();
    println!("shutdown: {} failed", report.failed.len());
    Ok(())
}
