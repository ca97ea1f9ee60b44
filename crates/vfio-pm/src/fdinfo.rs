//! Which PCI device a VFIO device fd belongs to, from the kernel's fdinfo.
//!
//! Newer kernels print `vfio-device-syspath: /sys/devices/...` in `/proc/<pid>/fdinfo/<fd>` of a
//! VFIO device fd (`vfio_device_show_fdinfo` in `drivers/vfio/vfio_main.c`, for group-obtained
//! and cdev fds alike); 6.12 and older print no such line. The last component of the path is
//! the device's name, a PCI address for vfio-pci.

use crate::pci::PciAddress;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

/// The fdinfo key.
pub const SYSPATH_KEY: &str = "vfio-device-syspath:";

/// The fdinfo of an fd could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct FdinfoError {
    /// The fdinfo file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

/// The sysfs path the kernel names in fdinfo text, if any.
pub fn syspath(fdinfo: &str) -> Option<&str> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix(SYSPATH_KEY))
        .map(str::trim)
        .filter(|p| !p.is_empty())
}

/// The PCI address of the device named in fdinfo text: None when there is no
/// `vfio-device-syspath` line (an older kernel, or not a VFIO device fd) or the device is not
/// a PCI device.
pub fn parse(fdinfo: &str) -> Option<PciAddress> {
    syspath(fdinfo)?.rsplit('/').next()?.parse().ok()
}

/// The PCI address named in `/proc/<pid>/fdinfo/<fd>` (see [`parse`]).
pub fn pci_address_of(pid: u32, fd: i32) -> Result<Option<PciAddress>, FdinfoError> {
    read(PathBuf::from(format!("/proc/{pid}/fdinfo/{fd}")))
}

/// The PCI address the kernel names for one of this process's fds (see [`parse`]).
pub fn pci_address_of_fd(fd: impl AsFd) -> Result<Option<PciAddress>, FdinfoError> {
    let raw = fd.as_fd().as_raw_fd();
    read(PathBuf::from(format!("/proc/self/fdinfo/{raw}")))
}

fn read(path: PathBuf) -> Result<Option<PciAddress>, FdinfoError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse(&text)),
        Err(source) => Err(FdinfoError { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pci_address_of_the_syspath_line() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1052\n\
                    vfio-device-syspath: /sys/devices/pci0000:00/0000:00:05.0\n";
        assert_eq!(parse(text), Some("0000:00:05.0".parse().unwrap()));
        let behind_bridge =
            "vfio-device-syspath: /sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0";
        assert_eq!(parse(behind_bridge), Some("0000:01:00.0".parse().unwrap()));
        // A 6.12 kernel, a platform device, an empty value, garbage: no address.
        assert_eq!(parse("pos:\t0\nflags:\t02000002\n"), None);
        assert_eq!(
            parse("vfio-device-syspath: /sys/devices/platform/fff51000.ethernet"),
            None
        );
        assert_eq!(parse("vfio-device-syspath:   \n"), None);
        assert_eq!(parse("\u{0}\u{ff}garbage"), None);
    }

    #[test]
    fn a_plain_file_has_no_device_and_a_closed_fd_is_an_error() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(pci_address_of_fd(&f).unwrap(), None);
        assert_eq!(
            pci_address_of(std::process::id(), f.as_raw_fd()).unwrap(),
            None
        );
        let e = pci_address_of(std::process::id(), 1_000_000).unwrap_err();
        assert!(e.to_string().contains("fdinfo/1000000"), "{e}");
    }
}
