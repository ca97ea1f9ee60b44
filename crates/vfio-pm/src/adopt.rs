//! Taking hold of a vfio-pci device that another process (a VMM such as QEMU) has open,
//! identified exactly by its PCI address.
//!
//! A VFIO group is exclusive: while a VMM holds `/dev/vfio/N`, nobody else can open it. But the
//! VMM's group fd can be duplicated into this process with `pidfd_getfd(2)` (Linux 5.6+, needs
//! ptrace rights over the VMM: root, or the same user with Yama's `ptrace_scope` allowing it),
//! and `VFIO_GROUP_GET_DEVICE_FD` with the device's address on that duplicate returns a second
//! device fd for the same device. The kernel allows several fds per device on the group path
//! (it counts opens; see docs/kernel-behaviour.md), so the VMM's own fd stays valid, and the
//! low-power feature calls on the new fd act on the one device both fds refer to.
//!
//! The fd taken is the one under `/proc/PID/fd` that refers to the group node `/dev/vfio/N`, N
//! being the device's `iommu_group` in sysfs, compared by device number (a VMM in a chroot shows
//! other link text, e.g. `/host/dev/vfio/N`): the device is never guessed from fd order (on 6.1
//! and 6.12 a device fd names no device in its fdinfo).
//!
//! ```no_run
//! use vfio_pm::adopt::{adopt_device, AdoptError};
//! use vfio_pm::{feature, Sysfs};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let qemu_pid = 4242;
//! let fd = adopt_device(&Sysfs::from_env(), qemu_pid, "0000:01:00.0".parse()?)?;
//! println!("{:?}", feature::probe(&fd)?);
//! # Ok(()) }
//! ```

use crate::pci::PciAddress;
use crate::sysfs::{Field, Sysfs, SysfsError};
use nix::errno::Errno;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};

mod nr {
    #![allow(missing_docs)]
    use super::{VFIO_BASE, VFIO_TYPE};
    vmm_sys_util::ioctl_io_nr!(
        VFIO_GROUP_GET_DEVICE_FD_IOCTL,
        VFIO_TYPE as u32,
        VFIO_BASE + 6
    );
}
use nr::VFIO_GROUP_GET_DEVICE_FD_IOCTL;

/// At most this many fd entries of one process are looked at (bounded work on any process).
const MAX_FDS_SCANNED: usize = 65_536;

/// Why the device could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The device's sysfs directory could not be read.
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    /// The device has no IOMMU group (so no VMM can hold it through VFIO).
    #[error("{address} has no IOMMU group: it cannot be held through a VFIO group")]
    NoIommuGroup {
        /// The device.
        address: PciAddress,
    },
    /// No process with this pid (ESRCH), or it exited while being looked at.
    #[error("no process {pid}")]
    NoSuchProcess {
        /// The pid that was given.
        pid: u32,
    },
    /// No ptrace rights over the process (EPERM/EACCES): run as root or as the VMM's user
    /// with Yama's `kernel.yama.ptrace_scope` allowing it.
    #[error("no permission to take fds from process {pid} ({errno}): pidfd_getfd needs ptrace rights (run as root or as the VMM's user)")]
    Permission {
        /// The process.
        pid: u32,
        /// EPERM or EACCES.
        errno: Errno,
    },
    /// The process has no fd for the device's group (yet): a VMM opens its groups shortly
    /// after it starts, so callers retry until a deadline.
    #[error("process {pid} has no fd for {} (IOMMU group {group} of {address}) yet", .node.display())]
    GroupNotOpen {
        /// The process.
        pid: u32,
        /// The device.
        address: PciAddress,
        /// Its group.
        group: u32,
        /// The group node looked for (`/dev/vfio/N`).
        node: PathBuf,
    },
    /// The group is open but not set up yet (no container or IOMMU set: EINVAL): retry.
    #[error(
        "IOMMU group {group} of {address} is open in process {pid} but not set up yet (EINVAL)"
    )]
    GroupNotReady {
        /// The process.
        pid: u32,
        /// The device.
        address: PciAddress,
        /// Its group.
        group: u32,
    },
    /// The kernel does not know the device in that group (ENODEV).
    #[error("{address} is not a device of IOMMU group {group} (ENODEV)")]
    NotInGroup {
        /// The device.
        address: PciAddress,
        /// The group asked.
        group: u32,
    },
    /// The kernel has no `pidfd_open`/`pidfd_getfd` (ENOSYS: Linux before 5.6).
    #[error("{call} is not available (ENOSYS): taking a device from a VMM needs Linux 5.6+")]
    KernelTooOld {
        /// The missing system call.
        call: &'static str,
    },
    /// Any other failure, with the step and the raw errno.
    #[error("{step} failed: {errno} ({})", errno.desc())]
    Os {
        /// What was being done.
        step: &'static str,
        /// The raw errno.
        errno: Errno,
    },
}

impl AdoptError {
    /// True for the errors that go away by themselves while a VMM starts (its group not opened
    /// or not set up yet): a caller waiting for the VMM retries these until its deadline.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::GroupNotOpen { .. } | Self::GroupNotReady { .. })
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// The IOMMU group of `address`, from sysfs.
pub fn iommu_group(sysfs: &Sysfs, address: PciAddress) -> Result<u32, AdoptError> {
    match sysfs.device(address)?.iommu_group() {
        Field::Known(g) => Ok(g),
        Field::Unknown { .. } => Err(AdoptError::NoIommuGroup { address }),
    }
}

/// The identity of an open file: a device node is the same device whatever path names it
/// (a VMM in a chroot or another mount namespace shows `/proc/PID/fd` links that do not read
/// `/dev/vfio/N` from here), any other file is its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileId {
    CharDevice(u64),
    Inode(u64, u64),
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if meta.file_type().is_char_device() {
        FileId::CharDevice(meta.rdev())
    } else {
        FileId::Inode(meta.dev(), meta.ino())
    }
}

/// The fd numbers under `proc_root/PID/fd` that refer to the file `target` names (compared by
/// device number for a device node, else by inode, not by the link's text), ascending.
///
/// Errors: the process does not exist, or its fd table is not readable (ptrace rights). A
/// `target` that does not exist is held by nobody: an empty list.
pub fn fds_linking_to(proc_root: &Path, pid: u32, target: &Path) -> Result<Vec<RawFd>, AdoptError> {
    let dir = proc_root.join(pid.to_string()).join("fd");
    let entries = std::fs::read_dir(&dir).map_err(|e| match io_errno(&e) {
        Errno::ENOENT | Errno::ESRCH => AdoptError::NoSuchProcess { pid },
        errno @ (Errno::EACCES | Errno::EPERM) => AdoptError::Permission { pid, errno },
        errno => AdoptError::Os {
            step: "reading /proc/PID/fd",
            errno,
        },
    })?;
    let Ok(want) = std::fs::metadata(target).map(|m| file_id(&m)) else {
        return Ok(Vec::new());
    };
    let mut fds: Vec<RawFd> = entries
        .take(MAX_FDS_SCANNED)
        .filter_map(Result::ok)
        .filter_map(|e| {
            let fd: RawFd = e.file_name().to_str()?.parse().ok()?;
            // Follows the magic link to the open file; a fd closed since the listing is skipped.
            let meta = std::fs::metadata(e.path()).ok()?;
            (file_id(&meta) == want).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    Ok(fds)
}

/// The pids under `proc_root` holding an fd for `target` (e.g. `/dev/vfio/12`), ascending.
/// Processes whose fd table cannot be read (or that exit meanwhile) are skipped; at most
/// `MAX_FDS_SCANNED` processes are looked at.
pub fn holders(proc_root: &Path, target: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .take(MAX_FDS_SCANNED)
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| fds_linking_to(proc_root, pid, target).is_ok_and(|fds| !fds.is_empty()))
        .collect();
    pids.sort_unstable();
    pids
}

/// The pids holding the VFIO group of `address` (usually exactly one: the VMM).
pub fn group_holders(sysfs: &Sysfs, address: PciAddress) -> Result<Vec<u32>, AdoptError> {
    let group = iommu_group(sysfs, address)?;
    Ok(holders(Path::new("/proc"), &group_node(group)))
}

/// `/dev/vfio/N`.
pub fn group_node(group: u32) -> PathBuf {
    PathBuf::from(format!("/dev/vfio/{group}"))
}

/// Duplicates fd `target_fd` of process `pid` into this process (`pidfd_open` + `pidfd_getfd`):
/// the same open file description, as `pidfd_getfd(2)` promises.
pub fn take_fd(pid: u32, target_fd: RawFd) -> Result<OwnedFd, AdoptError> {
    use rustix::process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags};
    let raw = i32::try_from(pid).map_err(|_| AdoptError::NoSuchProcess { pid })?;
    let id = Pid::from_raw(raw).ok_or(AdoptError::NoSuchProcess { pid })?;
    let pidfd = pidfd_open(id, PidfdFlags::empty()).map_err(|e| match rustix_errno(e) {
        Errno::ESRCH => AdoptError::NoSuchProcess { pid },
        Errno::ENOSYS => AdoptError::KernelTooOld { call: "pidfd_open" },
        errno => AdoptError::Os {
            step: "pidfd_open",
            errno,
        },
    })?;
    pidfd_getfd(&pidfd, target_fd, PidfdGetfdFlags::empty()).map_err(|e| match rustix_errno(e) {
        errno @ (Errno::EPERM | Errno::EACCES) => AdoptError::Permission { pid, errno },
        Errno::ESRCH => AdoptError::NoSuchProcess { pid },
        Errno::ENOSYS => AdoptError::KernelTooOld {
            call: "pidfd_getfd",
        },
        errno => AdoptError::Os {
            step: "pidfd_getfd",
            errno,
        },
    })
}

/// `VFIO_GROUP_GET_DEVICE_FD` for `address` on a group fd: a new device fd.
pub fn group_device_fd(
    group_fd: &OwnedFd,
    group: u32,
    address: PciAddress,
    pid: u32,
) -> Result<OwnedFd, AdoptError> {
    let name = CString::new(address.to_string()).map_err(|_| AdoptError::Os {
        step: "device name",
        errno: Errno::EINVAL,
    })?;
    // SAFETY: FFI. VFIO_GROUP_GET_DEVICE_FD reads a NUL-terminated string, which `name` is and
    // which lives across the call; the group fd is open for the call; the kernel writes nothing.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_ptr(
            &Raw(group_fd.as_raw_fd()),
            VFIO_GROUP_GET_DEVICE_FD_IOCTL(),
            name.as_ptr(),
        )
    };
    if ret < 0 {
        return Err(match Errno::last() {
            Errno::ENODEV => AdoptError::NotInGroup { address, group },
            Errno::EINVAL => AdoptError::GroupNotReady {
                pid,
                address,
                group,
            },
            errno => AdoptError::Os {
                step: "VFIO_GROUP_GET_DEVICE_FD",
                errno,
            },
        });
    }
    // SAFETY: a non-negative return of VFIO_GROUP_GET_DEVICE_FD is a new fd installed for this
    // process that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

struct Raw(RawFd);
impl AsRawFd for Raw {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A second device fd for `address`, taken from the VFIO group fd that process `pid` (the VMM)
/// has open. The VMM's own fds are untouched; dropping the returned fd closes only this one.
///
/// [`AdoptError::is_retryable`] errors mean the VMM has not opened or set up the group yet.
pub fn adopt_device(sysfs: &Sysfs, pid: u32, address: PciAddress) -> Result<OwnedFd, AdoptError> {
    let group = iommu_group(sysfs, address)?;
    adopt_from(Path::new("/proc"), pid, address, group, &group_node(group))
}

/// [`adopt_device`] with the group and its node given (and `/proc` elsewhere).
pub fn adopt_from(
    proc_root: &Path,
    pid: u32,
    address: PciAddress,
    group: u32,
    node: &Path,
) -> Result<OwnedFd, AdoptError> {
    let fds = fds_linking_to(proc_root, pid, node)?;
    let Some(&target) = fds.first() else {
        return Err(AdoptError::GroupNotOpen {
            pid,
            address,
            group,
            node: node.to_path_buf(),
        });
    };
    let group_fd = take_fd(pid, target)?;
    group_device_fd(&group_fd, group, address, pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn me() -> u32 {
        std::process::id()
    }

    #[test]
    fn finds_this_process_fd_by_the_file_it_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node");
        let file = std::fs::File::create(&path).unwrap();
        let fds = fds_linking_to(Path::new("/proc"), me(), &path).unwrap();
        assert!(fds.contains(&file.as_raw_fd()), "{fds:?}");
        assert!(holders(Path::new("/proc"), &path).contains(&me()));
        assert!(
            fds_linking_to(Path::new("/proc"), me(), &dir.path().join("none"))
                .unwrap()
                .is_empty()
        );
        // The same file under another name (a VMM in a chroot sees other paths): found.
        let alias = dir.path().join("alias");
        std::fs::hard_link(&path, &alias).unwrap();
        assert!(fds_linking_to(Path::new("/proc"), me(), &alias)
            .unwrap()
            .contains(&file.as_raw_fd()));
        // A device node is matched by its device number, whatever the path.
        let null = std::fs::File::open("/dev/null").unwrap();
        let fds = fds_linking_to(Path::new("/proc"), me(), Path::new("/dev/null")).unwrap();
        assert!(fds.contains(&null.as_raw_fd()));
    }

    #[test]
    fn take_fd_duplicates_the_same_open_file() {
        let mut file = tempfile::tempfile().unwrap();
        let dup = take_fd(me(), file.as_raw_fd()).unwrap();
        let mut dup = std::fs::File::from(dup);
        // Same open file description: one file offset for both.
        dup.write_all(b"abc").unwrap();
        use std::io::Seek;
        assert_eq!(file.stream_position().unwrap(), 3);
        file.write_all(b"d").unwrap();
        assert_eq!(dup.stream_position().unwrap(), 4);
    }

    #[test]
    fn errors_are_typed() {
        // A pid that cannot exist (above the kernel's PID_MAX_LIMIT of 2^22).
        let gone = 1 << 23;
        assert!(matches!(
            take_fd(gone, 0),
            Err(AdoptError::NoSuchProcess { pid }) if pid == gone
        ));
        let addr: PciAddress = "0000:00:05.0".parse().unwrap();
        assert!(matches!(
            adopt_from(Path::new("/proc"), gone, addr, 7, Path::new("/dev/vfio/7")),
            Err(AdoptError::NoSuchProcess { .. })
        ));
        // This process has no fd for the group: retryable.
        let e = adopt_from(
            Path::new("/proc"),
            me(),
            addr,
            4_000_000,
            Path::new("/dev/vfio/4000000"),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                AdoptError::GroupNotOpen {
                    group: 4_000_000,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.is_retryable());
        // A fd that is not a VFIO group: the kernel refuses the ioctl, typed as Os.
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("7");
        let _f = std::fs::File::create(&node).unwrap();
        let e = adopt_from(Path::new("/proc"), me(), addr, 7, &node).unwrap_err();
        assert!(
            matches!(
                e,
                AdoptError::Os {
                    step: "VFIO_GROUP_GET_DEVICE_FD",
                    errno: Errno::ENOTTY
                }
            ),
            "{e}"
        );
        assert!(!e.is_retryable());
        // A sysfs without the device.
        let sysfs = Sysfs::new(dir.path());
        assert!(matches!(
            adopt_device(&sysfs, me(), addr),
            Err(AdoptError::Sysfs(_))
        ));
    }

    #[test]
    fn no_iommu_group_is_reported() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("bus/pci/devices/0000:00:05.0");
        std::fs::create_dir_all(&dev).unwrap();
        let sysfs = Sysfs::new(root.path());
        let addr: PciAddress = "0000:00:05.0".parse().unwrap();
        assert!(matches!(
            adopt_device(&sysfs, me(), addr),
            Err(AdoptError::NoIommuGroup { .. })
        ));
    }
}
