//! [`SsdtSummary`]: a one-line description of a configuration's SSDT, for logs and the CLI.

use crate::aml;
use crate::config::{RouteKind, TrapRegister, TrapSpace, VmmConfig};
use std::fmt;

/// A one-line description of the SSDT of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdtSummary {
    /// Table size in bytes (header included).
    pub bytes: usize,
    /// Power resources (one per `d3cold = true` device).
    pub power_resources: usize,
    /// Devices in the configuration.
    pub devices: usize,
    /// Distinct root ports that get `_PR0`/`_PR3`.
    pub root_ports: usize,
    /// The trap register.
    pub trap: TrapRegister,
    /// How wakes reach the guest: ASL names of the wake methods doing `Notify (dev, 2)`
    /// (`\_GPE._E10`, `\_SB.VPMW`), and `PCIe PME via <root port>` for the `pcie_pme` route.
    pub wake: Vec<String>,
}

impl SsdtSummary {
    /// Describes `config`'s SSDT.
    pub fn of(config: &VmmConfig) -> Self {
        let devices = config.devices();
        let mut ports = Vec::new();
        for d in devices {
            if let Some(rp) = &d.root_port {
                if !ports.contains(&rp) {
                    ports.push(rp);
                }
            }
        }
        let mut wake: Vec<String> = Vec::new();
        let mut push = |w: String| {
            if !wake.contains(&w) {
                wake.push(w);
            }
        };
        for d in devices.iter().filter(|d| d.has_wake()) {
            match (d.route, d.gpe, &d.root_port) {
                (RouteKind::Gpe, Some(g), _) => push(format!(
                    "\\_GPE.{}",
                    aml::gpe_method_name(g, config.wake().trigger).as_str()
                )),
                (RouteKind::Ged, _, _) => push(format!("\\_SB.{}", aml::GED_METHOD)),
                (RouteKind::PciePme, _, Some(rp)) => push(format!("PCIe PME via {}", rp.asl())),
                _ => {}
            }
        }
        Self {
            bytes: aml::build_ssdt(config).len(),
            power_resources: devices
                .iter()
                .filter(|d| d.power_resource.is_some())
                .count(),
            devices: devices.len(),
            root_ports: ports.len(),
            trap: config.trap(),
            wake,
        }
    }
}

impl fmt::Display for SsdtSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let space = match self.trap.space {
            TrapSpace::Io => "I/O port",
            TrapSpace::Mmio => "MMIO",
        };
        write!(
            f,
            "SSDT {} bytes: {} power resources (_ON/_OFF write the trap {} {:#x}, {} byte{}), \
             _PR0/_PR3 on {} of {} devices",
            self.bytes,
            self.power_resources,
            space,
            self.trap.address,
            self.trap.width,
            if self.trap.width == 1 { "" } else { "s" },
            self.power_resources,
            self.devices,
        )?;
        if self.root_ports > 0 {
            write!(f, " and {} root port(s)", self.root_ports)?;
        }
        let (pme, acpi): (Vec<&String>, Vec<&String>) =
            self.wake.iter().partition(|w| w.starts_with("PCIe PME"));
        if self.wake.is_empty() {
            write!(f, ", no wake methods")?;
        }
        if !acpi.is_empty() {
            let names: Vec<&str> = acpi.iter().map(|s| s.as_str()).collect();
            write!(f, ", Notify(dev, 2) from {}", names.join(" "))?;
        }
        for p in pme {
            write!(f, ", {p}")?;
        }
        Ok(())
    }
}
