//! Opening a vfio-pci device by PCI address through the group/container interface.
//!
//! Preconditions are checked first so that the common mistakes (not bound to vfio-pci, no IOMMU,
//! `/dev/vfio` missing, no permission, group held by another process) get a clear error rather
//! than an errno from deep inside the open sequence. The container and group plumbing itself is
//! `vfio-ioctls`.

use crate::pci::PciAddress;
use crate::sysfs::{Field, Sysfs, SysfsDevice, SysfsError};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioOps};

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No such PCI device.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// Bound to another driver, or to none.
    #[error("{address} is {}, not vfio-pci (bind it: {})", bound_to(.driver), crate::doctor::bind_commands(*.address, .driver))]
    NotVfio {
        /// The device.
        address: PciAddress,
        /// Its driver, or `none`.
        driver: String,
    },
    /// The device has no IOMMU group.
    #[error("{address} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)")]
    NoIommuGroup {
        /// The device.
        address: PciAddress,
    },
    /// `/dev/vfio/vfio` or the group node is missing.
    #[error("{path} does not exist: is the vfio module loaded?")]
    NoDevVfio {
        /// The missing node.
        path: PathBuf,
    },
    /// Opening the container or group was refused.
    #[error("permission denied opening {path}: run as root or grant access to the group node")]
    Permission {
        /// The node.
        path: PathBuf,
    },
    /// The group is open elsewhere (a VMM holds it: VFIO groups are exclusive).
    #[error("IOMMU group {group} of {address} is busy: another process (a VMM?) holds it")]
    Busy {
        /// The device.
        address: PciAddress,
        /// Its group.
        group: u32,
    },
    /// Not every device in the group is bound to vfio-pci (or left unbound).
    #[error("IOMMU group {group} of {address} is not viable: bind every device of the group to vfio-pci")]
    NotViable {
        /// The device.
        address: PciAddress,
        /// Its group.
        group: u32,
    },
    /// Asking the kernel about the open device's regions failed.
    #[error("{address}: VFIO_DEVICE_GET_INFO / GET_REGION_INFO failed: {errno}")]
    DeviceInfo {
        /// The device.
        address: PciAddress,
        /// The kernel's answer.
        errno: nix::errno::Errno,
    },
    /// Anything else from the VFIO open sequence.
    #[error("opening {address} through VFIO failed: {source}")]
    Vfio {
        /// The device.
        address: PciAddress,
        /// vfio-ioctls' error.
        #[source]
        source: VfioError,
    },
}

/// NotVfio unless `dev` is bound to vfio-pci.
pub(crate) fn require_vfio_pci(dev: &SysfsDevice) -> Result<(), OpenError> {
    let address = dev.address();
    match dev.driver() {
        Field::Known(d) if d == "vfio-pci" => Ok(()),
        Field::Known(driver) => Err(OpenError::NotVfio { address, driver }),
        Field::Unknown { unknown } => Err(OpenError::NotVfio {
            address,
            driver: unknown,
        }),
    }
}

fn bound_to(driver: &str) -> String {
    match driver {
        "none" => "not bound to any driver".into(),
        d => format!("bound to {d}"),
    }
}

/// An open vfio-pci device: the device fd plus its sysfs directory.
pub struct VfioPciDevice {
    device: VfioDevice,
    sysfs: SysfsDevice,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("address", &self.sysfs.address())
            .field("fd", &self.device.as_raw_fd())
            .finish()
    }
}

impl VfioPciDevice {
    /// Opens `address` through `/dev/vfio/vfio` and its group node.
    pub fn open(sysfs: &Sysfs, address: PciAddress) -> Result<Self, OpenError> {
        Self::open_with_dev(sysfs, address, "/dev/vfio")
    }

    fn open_with_dev(
        sysfs: &Sysfs,
        address: PciAddress,
        dev_vfio: &str,
    ) -> Result<Self, OpenError> {
        let dev = sysfs.device(address)?;
        require_vfio_pci(&dev)?;
        let group = match dev.iommu_group() {
            Field::Known(g) => g,
            Field::Unknown { .. } => return Err(OpenError::NoIommuGroup { address }),
        };
        for node in ["vfio".to_string(), group.to_string()] {
            let path = PathBuf::from(dev_vfio).join(node);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(OpenError::NoDevVfio { path })
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(OpenError::Permission { path })
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(OpenError::Busy { address, group })
                }
                Err(_) => {} // let vfio-ioctls report it with context
            }
        }
        let container =
            VfioContainer::new(None).map_err(|source| OpenError::Vfio { address, source })?;
        let ops: Arc<dyn VfioOps> = Arc::new(container);
        let device = VfioDevice::new(dev.dir(), ops, false).map_err(|source| match source {
            VfioError::GroupViable => OpenError::NotViable { address, group },
            VfioError::OpenGroup(ref e, _) if e.raw_os_error() == Some(libc::EBUSY) => {
                OpenError::Busy { address, group }
            }
            source => OpenError::Vfio { address, source },
        })?;
        Ok(Self { device, sysfs: dev })
    }

    /// The device's sysfs directory.
    pub fn sysfs(&self) -> &SysfsDevice {
        &self.sysfs
    }

    /// The PCI address.
    pub fn address(&self) -> PciAddress {
        self.sysfs.address()
    }
}

impl AsFd for VfioPciDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.device` and stays open for as long as `self` lives,
        // which bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_sysfs::{FakeDevice, FakeSysfs};

    fn tree() -> (tempfile::TempDir, Sysfs) {
        let tmp = tempfile::tempdir().unwrap();
        let fake = FakeSysfs::create(tmp.path().join("sys")).unwrap();
        fake.add(&FakeDevice::vfio("0000:00:05.0".parse().unwrap()))
            .unwrap();
        let mut nic = FakeDevice::vfio("0000:00:06.0".parse().unwrap());
        nic.driver = None;
        fake.add(&nic).unwrap();
        let mut no_group = FakeDevice::vfio("0000:00:07.0".parse().unwrap());
        no_group.iommu_group = None;
        fake.add(&no_group).unwrap();
        let sysfs = Sysfs::new(tmp.path().join("sys"));
        (tmp, sysfs)
    }

    #[test]
    fn open_errors_name_the_problem_and_the_fix() {
        let (tmp, sysfs) = tree();
        let dev_vfio = tmp.path().join("dev-vfio");
        let dev_vfio = dev_vfio.to_str().unwrap();
        let open = |a: &str| VfioPciDevice::open_with_dev(&sysfs, a.parse().unwrap(), dev_vfio);

        let e = open("0000:00:09.0").unwrap_err();
        assert!(
            matches!(e, OpenError::Sysfs(SysfsError::NoSuchDevice { .. })),
            "{e}"
        );

        let e = open("0000:00:06.0").unwrap_err();
        assert!(matches!(e, OpenError::NotVfio { .. }), "{e}");
        assert!(e.to_string().contains("not bound to any driver"), "{e}");
        assert!(e.to_string().contains("driver_override"), "{e}");

        let e = open("0000:00:07.0").unwrap_err();
        assert!(matches!(e, OpenError::NoIommuGroup { .. }), "{e}");
        assert!(e.to_string().contains("intel_iommu=on"), "{e}");

        // Bound and grouped, but /dev/vfio does not exist (vfio module not loaded).
        let e = open("0000:00:05.0").unwrap_err();
        match &e {
            OpenError::NoDevVfio { path } => assert!(path.ends_with("vfio"), "{e}"),
            other => panic!("expected NoDevVfio, got {other}"),
        }
        // The container exists, the group node does not.
        std::fs::create_dir_all(tmp.path().join("dev-vfio")).unwrap();
        std::fs::write(tmp.path().join("dev-vfio/vfio"), "").unwrap();
        let e = open("0000:00:05.0").unwrap_err();
        match &e {
            OpenError::NoDevVfio { path } => assert!(path.ends_with("5"), "{e}"),
            other => panic!("expected NoDevVfio for the group node, got {other}"),
        }
    }
}
