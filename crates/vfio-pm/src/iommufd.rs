//! Opening a vfio-pci device through its VFIO device cdev and an iommufd, the way current VMMs
//! and libvirt do: `/dev/vfio/devices/vfioN`, `VFIO_DEVICE_BIND_IOMMUFD` to an fd of
//! `/dev/iommu`, an IOAS from `IOMMU_IOAS_ALLOC`, then `VFIO_DEVICE_ATTACH_IOMMUFD_PT`
//! (the plumbing is `vfio-ioctls`' `vfio_cdev` support).
//!
//! What the kernel needs (`drivers/vfio/Kconfig`, `drivers/iommu/iommufd/Kconfig`):
//! `CONFIG_IOMMUFD` (the `iommufd` module, loaded before `vfio`, which imports it) and
//! `CONFIG_VFIO_DEVICE_CDEV` (depends on it), plus an IOMMU driver for the device. Without
//! `VFIO_DEVICE_CDEV` vfio.ko still has a `vfio_device_fops_cdev_open` (an inline stub) and
//! `cdev_device_add` is called with no device number, so no `vfio-dev/` sysfs folder and no
//! `/dev/vfio/devices/` node appear. Debian's kernels (6.1 to 7.3) are built without
//! `CONFIG_IOMMUFD` (their `config` file says `# CONFIG_IOMMUFD is not set`).
//!
//! [`interfaces`] tells from sysfs which of the two ways to open a device the kernel offers.

use crate::device::OpenError;
use crate::pci::PciAddress;
use crate::sysfs::{Field, Sysfs, SysfsDevice};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfio_ioctls::{VfioDevice, VfioError, VfioIommufd, VfioOps};

/// Where the device cdev nodes live.
pub const DEV_VFIO_DEVICES: &str = "/dev/vfio/devices";

/// The iommufd node.
pub const DEV_IOMMU: &str = "/dev/iommu";

/// Which VFIO interfaces the running kernel offers for one device, read from sysfs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interfaces {
    /// The group/container interface: the `vfio` misc device (`/dev/vfio/vfio`) exists and
    /// the device has an IOMMU group (`/dev/vfio/<group>`).
    pub group: bool,
    /// The device's cdev name (`vfioN` of `vfio-dev/vfioN`, with a device number), when the
    /// kernel has `CONFIG_VFIO_DEVICE_CDEV` and the device is bound to a VFIO driver.
    pub cdev: Option<String>,
    /// The `iommu` misc device (`/dev/iommu`) exists: the iommufd module is loaded.
    pub iommufd: bool,
}

impl Interfaces {
    /// True when the device can be opened through its cdev and an iommufd.
    pub fn cdev_iommufd(&self) -> bool {
        self.cdev.is_some() && self.iommufd
    }
}

impl std::fmt::Display for Interfaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let yes = |b: bool| if b { "yes" } else { "no" };
        write!(f, "group/container: {}; cdev+iommufd: ", yes(self.group))?;
        match (&self.cdev, self.iommufd) {
            (Some(c), true) => write!(f, "yes ({c})"),
            (Some(c), false) => write!(f, "no ({c}, but no /dev/iommu: load iommufd)"),
            (None, true) => write!(f, "no (iommufd, but no device cdev for the device)"),
            (None, false) => write!(
                f,
                "no (kernel without CONFIG_IOMMUFD / CONFIG_VFIO_DEVICE_CDEV, or iommufd not loaded)"
            ),
        }
    }
}

/// The device's VFIO cdev name: the one entry of `vfio-dev/` in its sysfs folder that has a
/// device number (a `dev` attribute). Every bound VFIO device has a `vfio-dev/vfioN` entry
/// (`vfio_device_add` registers it in class `vfio-dev`), but only a kernel with
/// `CONFIG_VFIO_DEVICE_CDEV` gives it a device number and so a `/dev/vfio/devices/vfioN` node.
pub fn cdev_name(dev: &SysfsDevice) -> Option<String> {
    let dir = dev.dir().join("vfio-dev");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vfio") && n[4..].chars().all(|c| c.is_ascii_digit()))
        .filter(|n| dir.join(n).join("dev").is_file())
        .collect();
    (names.len() == 1).then(|| names.remove(0))
}

/// Which interfaces the kernel offers for `dev` (sysfs only: opens nothing).
pub fn interfaces(sysfs: &Sysfs, dev: &SysfsDevice) -> Interfaces {
    let misc = |name: &str| sysfs.root().join("class/misc").join(name).exists();
    Interfaces {
        group: misc("vfio") && matches!(dev.iommu_group(), Field::Known(_)),
        cdev: cdev_name(dev),
        iommufd: misc("iommu"),
    }
}

/// Why a device could not be opened through its cdev and an iommufd.
#[derive(Debug, thiserror::Error)]
pub enum IommufdOpenError {
    /// The checks every open makes (no such device, not bound to vfio-pci).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The device has no VFIO cdev.
    #[error(
        "{address} has no VFIO device cdev (no vfio-dev/vfioN/dev in sysfs): the kernel lacks \
         CONFIG_VFIO_DEVICE_CDEV (it needs CONFIG_IOMMUFD); open it through its group instead"
    )]
    NoCdev {
        /// The device.
        address: PciAddress,
    },
    /// A node is missing.
    #[error("{path} does not exist: {hint}")]
    NoNode {
        /// The missing node.
        path: PathBuf,
        /// What provides it.
        hint: &'static str,
    },
    /// Opening a node was refused.
    #[error("permission denied opening {path}: run as root or grant access to the node")]
    Permission {
        /// The node.
        path: PathBuf,
    },
    /// The cdev, the bind or the attach failed (e.g. EBUSY: a VMM holds the device; a group
    /// user holds it).
    #[error("opening {address} through iommufd failed: {source}")]
    Vfio {
        /// The device.
        address: PciAddress,
        /// vfio-ioctls' error.
        #[source]
        source: VfioError,
    },
}

fn check_node(path: &Path, hint: &'static str) -> Result<(), IommufdOpenError> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(IommufdOpenError::NoNode {
            path: path.to_path_buf(),
            hint,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(IommufdOpenError::Permission {
                path: path.to_path_buf(),
            })
        }
        Err(_) => Ok(()), // let the open sequence report it with context
    }
}

/// Opens `address` through `/dev/vfio/devices/vfioN` and a new iommufd with one IOAS, the
/// device attached to it. The returned device owns the device fd and keeps the iommufd and
/// the IOAS alive (through its `VfioIommufd`) until it is dropped;
/// [`crate::KernelDevice::open_iommufd`] wraps it for the low-power calls.
pub fn open(sysfs: &Sysfs, address: PciAddress) -> Result<VfioDevice, IommufdOpenError> {
    let dev = sysfs.device(address).map_err(OpenError::from)?;
    crate::device::require_vfio_pci(&dev)?;
    let cdev = cdev_name(&dev).ok_or(IommufdOpenError::NoCdev { address })?;
    check_node(
        Path::new(DEV_IOMMU),
        "the kernel needs CONFIG_IOMMUFD and the iommufd module (modprobe iommufd)",
    )?;
    check_node(
        &Path::new(DEV_VFIO_DEVICES).join(&cdev),
        "no device node for the cdev (is devtmpfs mounted on /dev?)",
    )?;
    let vfio = |source| IommufdOpenError::Vfio { address, source };
    let iommufd = iommufd_ioctls::IommuFd::new().map_err(|e| vfio(VfioError::NewVfioIommufd(e)))?;
    let ops: Arc<dyn VfioOps> =
        Arc::new(VfioIommufd::new(Arc::new(iommufd), None, None).map_err(vfio)?);
    VfioDevice::new(dev.dir(), ops, true).map_err(vfio)
}

/// How to open a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// `/dev/vfio/vfio` and the group node (`VFIO_GROUP_GET_DEVICE_FD`).
    #[default]
    Group,
    /// `/dev/vfio/devices/vfioN` bound to an iommufd.
    Iommufd,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_sysfs::{FakeDevice, FakeSysfs};
    use crate::sysfs::SysfsError;

    fn tree() -> (tempfile::TempDir, Sysfs, FakeSysfs) {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::create(tmp.path().join("sys")).unwrap();
        fake.add(&FakeDevice::vfio("0000:00:05.0".parse().unwrap()))
            .unwrap();
        let sysfs = Sysfs::new(tmp.path().join("sys"));
        (tmp, sysfs, fake)
    }

    #[test]
    fn interfaces_follow_the_misc_devices_and_the_cdev_folder() {
        let (_tmp, sysfs, fake) = tree();
        let addr: PciAddress = "0000:00:05.0".parse().unwrap();
        let dev = sysfs.device(addr).unwrap();
        // A kernel like Debian's: the group interface, no cdev, no iommufd.
        let group = interfaces(&sysfs, &dev);
        assert_eq!(
            group,
            Interfaces {
                group: true,
                cdev: None,
                iommufd: false
            }
        );
        assert!(
            group.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"),
            "{group}"
        );
        // vfio not loaded: no group interface either.
        std::fs::remove_dir(fake.root().join("class/misc/vfio")).unwrap();
        assert!(!interfaces(&sysfs, &dev).group);
        std::fs::create_dir_all(fake.root().join("class/misc/vfio")).unwrap();
        let group = interfaces(&sysfs, &dev);
        assert!(group.group && !group.cdev_iommufd(), "{group}");
        // Debian's 7.3: the vfio-dev entry exists, without a device number.
        std::fs::create_dir_all(dev.dir().join("vfio-dev/vfio3")).unwrap();
        assert_eq!(cdev_name(&dev), None);
        std::fs::write(dev.dir().join("vfio-dev/vfio3/dev"), "238:0\n").unwrap();
        assert_eq!(cdev_name(&dev).as_deref(), Some("vfio3"));
        let half = interfaces(&sysfs, &dev);
        assert!(half.to_string().contains("load iommufd"), "{half}");
        std::fs::create_dir_all(fake.root().join("class/misc/iommu")).unwrap();
        let both = interfaces(&sysfs, &dev);
        assert!(both.cdev_iommufd(), "{both}");
        assert_eq!(
            both.to_string(),
            "group/container: yes; cdev+iommufd: yes (vfio3)"
        );
        // Two entries (never made by a kernel) are no answer rather than a guess.
        std::fs::create_dir_all(dev.dir().join("vfio-dev/vfio4")).unwrap();
        std::fs::write(dev.dir().join("vfio-dev/vfio4/dev"), "238:1\n").unwrap();
        assert_eq!(cdev_name(&dev), None);
    }

    #[test]
    fn open_without_a_cdev_names_the_kernel_option() {
        let (_tmp, sysfs, _fake) = tree();
        let Err(e) = open(&sysfs, "0000:00:05.0".parse().unwrap()) else {
            panic!("opened without a cdev")
        };
        assert!(matches!(e, IommufdOpenError::NoCdev { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_VFIO_DEVICE_CDEV"), "{e}");
        let Err(e) = open(&sysfs, "0000:00:09.0".parse().unwrap()) else {
            panic!("opened a missing device")
        };
        assert!(
            matches!(
                e,
                IommufdOpenError::Open(OpenError::Sysfs(SysfsError::NoSuchDevice { .. }))
            ),
            "{e}"
        );
    }
}
