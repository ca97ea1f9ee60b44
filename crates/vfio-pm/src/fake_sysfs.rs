//! Writes sysfs-shaped trees for tests, demos and captured-tree tooling.
//!
//! The layout mirrors the kernel's: devices live under `devices/pci0000:00/...` (nested below
//! their bridge), `bus/pci/devices/BDF` are symlinks to them, `driver` and `iommu_group` are
//! symlinks, and power files hold the kernel's spellings.

use crate::pci::PciAddress;
use std::io;
use std::path::{Path, PathBuf};

/// One device to write.
#[derive(Clone, Debug)]
pub struct FakeDevice {
    /// Address.
    pub address: PciAddress,
    /// Upstream bridge (must be written first), if any.
    pub parent: Option<PciAddress>,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Driver name; `None` for unbound.
    pub driver: Option<String>,
    /// IOMMU group.
    pub iommu_group: Option<u32>,
    /// `power_state` text.
    pub power_state: String,
    /// `power/runtime_status` text.
    pub runtime_status: String,
    /// `power/control` text.
    pub control: String,
    /// `power/runtime_active_time` (ms).
    pub active_ms: u64,
    /// `power/runtime_suspended_time` (ms).
    pub suspended_ms: u64,
    /// `d3cold_allowed`.
    pub d3cold_allowed: bool,
    /// `_PR3` power resource names; `None` for no ACPI firmware node at all.
    pub power_resources: Option<Vec<String>>,
}

impl FakeDevice {
    /// A vfio-bound, idle, D3cold-capable device at `address`.
    pub fn vfio(address: PciAddress) -> Self {
        Self {
            address,
            parent: None,
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            driver: Some("vfio-pci".into()),
            iommu_group: Some(address.device as u32),
            power_state: "D3cold".into(),
            runtime_status: "suspended".into(),
            control: "auto".into(),
            active_ms: 1000,
            suspended_ms: 9000,
            d3cold_allowed: true,
            power_resources: Some(vec!["LNXPOWER:00".into()]),
        }
    }
}

/// A fake sysfs root being written.
#[derive(Debug)]
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    /// Creates the skeleton under `root` (which may already exist).
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("bus/pci/devices"))?;
        std::fs::create_dir_all(root.join("bus/pci/drivers"))?;
        std::fs::create_dir_all(root.join("kernel/iommu_groups"))?;
        std::fs::create_dir_all(root.join("devices/pci0000:00"))?;
        // The vfio module's misc device (`/dev/vfio/vfio`): a host with VFIO loaded.
        std::fs::create_dir_all(root.join("class/misc/vfio"))?;
        Ok(Self { root })
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets vfio-pci's `disable_idle_d3` parameter.
    pub fn set_disable_idle_d3(&self, on: bool) -> io::Result<()> {
        let dir = self.root.join("module/vfio_pci/parameters");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("disable_idle_d3"), if on { "Y\n" } else { "N\n" })
    }

    fn real_dir(&self, address: PciAddress) -> io::Result<PathBuf> {
        let link = self.root.join("bus/pci/devices").join(address.to_string());
        std::fs::canonicalize(link)
    }

    /// Writes (or rewrites) a device.
    pub fn add(&self, d: &FakeDevice) -> io::Result<PathBuf> {
        let parent_dir = match d.parent {
            Some(p) => self.real_dir(p)?,
            None => self.root.join("devices/pci0000:00"),
        };
        let dir = parent_dir.join(d.address.to_string());
        std::fs::create_dir_all(dir.join("power"))?;
        let w = |rel: &str, v: String| replace_file(&dir.join(rel), (v + "\n").as_bytes());
        w("vendor", format!("0x{:04x}", d.vendor))?;
        w("device", format!("0x{:04x}", d.device))?;
        w("class", format!("0x{:06x}", d.class))?;
        w("power_state", d.power_state.clone())?;
        w("power/runtime_status", d.runtime_status.clone())?;
        w("power/control", d.control.clone())?;
        w("power/runtime_active_time", d.active_ms.to_string())?;
        w("power/runtime_suspended_time", d.suspended_ms.to_string())?;
        w("d3cold_allowed", u8::from(d.d3cold_allowed).to_string())?;
        replace_file(&dir.join("config"), &[0u8; 64])?;
        relink(
            &dir.join("driver"),
            d.driver.as_ref().map(|drv| {
                let drv_dir = self.root.join("bus/pci/drivers").join(drv);
                let _ = std::fs::create_dir_all(&drv_dir);
                drv_dir
            }),
        )?;
        relink(
            &dir.join("iommu_group"),
            d.iommu_group.map(|g| {
                let g_dir = self.root.join("kernel/iommu_groups").join(g.to_string());
                let _ = std::fs::create_dir_all(&g_dir);
                g_dir
            }),
        )?;
        let fw = dir.join("firmware_node");
        let _ = std::fs::remove_dir_all(&fw);
        if let Some(res) = &d.power_resources {
            std::fs::create_dir_all(fw.join("power_resources_D0"))?;
            std::fs::create_dir_all(fw.join("power_resources_D3hot"))?;
            for r in res {
                std::fs::write(fw.join("power_resources_D0").join(r), "")?;
                std::fs::write(fw.join("power_resources_D3hot").join(r), "")?;
            }
        }
        relink(
            &self
                .root
                .join("bus/pci/devices")
                .join(d.address.to_string()),
            Some(dir.clone()),
        )?;
        Ok(dir)
    }

    /// Removes a device (hot-unplug).
    ///
    /// The bus link goes first, so that a reader sees the device vanish at once rather than a
    /// half-deleted directory (whose missing `driver` link would read as "unbound").
    pub fn remove(&self, address: PciAddress) -> io::Result<()> {
        let link = self.root.join("bus/pci/devices").join(address.to_string());
        let real = std::fs::canonicalize(&link);
        std::fs::remove_file(&link)?;
        match real {
            Ok(real) => std::fs::remove_dir_all(real),
            Err(_) => Ok(()),
        }
    }
}

/// Replaces `path`'s content in one step (a new file renamed over it), so that a reader polling
/// the tree (watch, the exporter) never sees it empty or half written, as it never does in
/// sysfs.
fn replace_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("fake-sysfs-new");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Points `link` at `target` (none: removes it). An unchanged link is left alone and a changed
/// one is replaced in one step, so that a reader never sees a bound device unbound for a moment.
fn relink(link: &Path, target: Option<PathBuf>) -> io::Result<()> {
    let current = std::fs::read_link(link).ok();
    match target {
        Some(t) if current.as_deref() == Some(t.as_path()) => Ok(()),
        Some(t) => {
            let tmp = link.with_extension("fake-sysfs-new");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(t, &tmp)?;
            std::fs::rename(&tmp, link)
        }
        None if link.symlink_metadata().is_ok() => std::fs::remove_file(link),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{diagnose, KernelSupport, Verdict};
    use crate::{PowerState, Sysfs};

    fn addr(s: &str) -> PciAddress {
        s.parse().unwrap()
    }

    #[test]
    fn report_reads_every_field_from_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::create(tmp.path()).unwrap();
        let mut bridge = FakeDevice::vfio(addr("0000:00:1c.0"));
        bridge.driver = Some("pcieport".into());
        bridge.power_state = "D0".into();
        fake.add(&bridge).unwrap();
        let mut gpu = FakeDevice::vfio(addr("0000:01:00.0"));
        gpu.parent = Some(bridge.address);
        gpu.vendor = 0x10de;
        gpu.class = 0x030000;
        fake.add(&gpu).unwrap();
        fake.set_disable_idle_d3(false).unwrap();

        let sysfs = Sysfs::new(tmp.path());
        let devs = sysfs.devices().unwrap();
        assert_eq!(devs.len(), 2);
        let r = sysfs.device(gpu.address).unwrap().report();
        assert!(r.is_vfio());
        assert_eq!(r.vendor.known().unwrap(), "10de");
        assert_eq!(r.class.known().unwrap(), "030000");
        assert_eq!(r.power_state.known(), Some(&PowerState::D3Cold));
        assert_eq!(r.iommu_group.known(), Some(&0));
        assert_eq!(r.runtime_suspended_ms.known(), Some(&9000));
        assert_eq!(r.power_resources_d3hot.known().unwrap(), &["LNXPOWER:00"]);
        assert_eq!(r.parent_bridge.as_ref().unwrap().address, bridge.address);
        assert_eq!(sysfs.vfio_disable_idle_d3().known(), Some(&false));
    }

    #[test]
    fn missing_and_odd_files_are_unknown_fields_not_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::create(tmp.path()).unwrap();
        let mut d = FakeDevice::vfio(addr("0000:00:05.0"));
        d.power_resources = None;
        d.driver = None;
        let dir = fake.add(&d).unwrap();
        std::fs::remove_file(dir.join("power_state")).unwrap();
        std::fs::write(dir.join("power/runtime_suspended_time"), "lots\n").unwrap();
        std::fs::write(dir.join("d3cold_allowed"), "maybe\n").unwrap();
        let r = Sysfs::new(tmp.path()).device(d.address).unwrap().report();
        assert!(r.power_state.known().is_none());
        assert!(r.runtime_suspended_ms.known().is_none());
        assert!(r.d3cold_allowed.known().is_none());
        assert!(r.power_resources_d3hot.known().is_none());
        assert_eq!(r.driver.known().unwrap(), "none");
        let json = serde_json::to_value(&r).unwrap();
        assert!(json["power_state"]["unknown"]
            .as_str()
            .unwrap()
            .contains("power_state"));
        assert!(Sysfs::new(tmp.path()).device(addr("0000:00:06.0")).is_err());
    }

    #[test]
    fn doctor_explains_what_blocks_d3cold() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::create(tmp.path()).unwrap();
        fake.set_disable_idle_d3(false).unwrap();
        let good = FakeDevice::vfio(addr("0000:00:05.0"));
        fake.add(&good).unwrap();
        let mut bad = FakeDevice::vfio(addr("0000:00:06.0"));
        bad.control = "on".into();
        bad.power_resources = Some(vec![]);
        fake.add(&bad).unwrap();
        let sysfs = Sysfs::new(tmp.path());

        let g = diagnose(&sysfs, good.address, KernelSupport::InferFromVersion).unwrap();
        // This test host's kernel decides kernel_support; everything else must pass.
        for c in &g.checks {
            if c.id != "kernel_support" {
                assert_eq!(c.verdict, Verdict::Pass, "{c:?}");
            }
        }
        let b = diagnose(&sysfs, bad.address, KernelSupport::InferFromVersion).unwrap();
        assert!(!b.d3cold_reachable);
        let failed: Vec<_> = b
            .checks
            .iter()
            .filter(|c| c.verdict == Verdict::Fail)
            .map(|c| c.id)
            .collect();
        assert_eq!(failed, ["runtime_pm_allowed", "firmware_power_resources"]);
        assert!(b.checks[1].fix.as_ref().unwrap().contains("power/control"));
    }
}
