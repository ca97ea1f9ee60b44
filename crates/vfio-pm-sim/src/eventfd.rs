//! The kernel's side of a wakeup eventfd: validation like `eventfd_ctx_fdget`, a reference
//! that outlives the caller's fd, and `eventfd_signal(ctx, 1)`.

use nix::errno::Errno;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

/// A reference to a user's eventfd held by the simulated kernel (a dup of the user's fd).
#[derive(Debug)]
pub(crate) struct WakeupEventFd {
    file: File,
}

impl WakeupEventFd {
    /// Takes a reference to the eventfd `fd` of this process, like the kernel does with the
    /// number in the ENTRY_WITH_WAKEUP payload: not open → EBADF, not an eventfd → EINVAL.
    /// (The caller checks `fd < 0` first, as the kernel does.)
    pub(crate) fn from_user_fd(fd: RawFd) -> Result<Self, Errno> {
        if fd < 0 {
            return Err(Errno::EINVAL);
        }
        // SAFETY: F_DUPFD_CLOEXEC takes an integer and touches no memory of this process; the
        // kernel validates `fd` and fails with EBADF when it is not open.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(Errno::last());
        }
        // SAFETY: `dup` is a file descriptor just created by fcntl above; nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        if !is_eventfd(&owned) {
            return Err(Errno::EINVAL);
        }
        Ok(Self {
            file: File::from(owned),
        })
    }

    /// `eventfd_signal(ctx, 1)`: adds 1 to the counter (an 8-byte native-endian write).
    /// Errors are ignored, as the kernel's signal cannot fail.
    pub(crate) fn signal(&self) {
        let _ = (&self.file).write(&1u64.to_ne_bytes());
    }
}

/// True when `fd` is an eventfd: `/proc/self/fdinfo` shows `eventfd-count`; without /proc, any
/// anonymous inode is accepted (an 8-byte write to another anon-inode file fails harmlessly).
fn is_eventfd(fd: &OwnedFd) -> bool {
    let raw = fd.as_raw_fd();
    if let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")) {
        return info.lines().any(|l| l.starts_with("eventfd-count"));
    }
    match fd.try_clone().map(File::from).and_then(|f| f.metadata()) {
        Ok(meta) => meta.mode() & libc::S_IFMT == 0,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn validates_like_eventfd_ctx_fdget() {
        assert_eq!(WakeupEventFd::from_user_fd(-1).err(), Some(Errno::EINVAL));
        assert_eq!(
            WakeupEventFd::from_user_fd(0x3fff_fff0).err(),
            Some(Errno::EBADF)
        );
        let dir = File::open("/").unwrap();
        assert_eq!(
            WakeupEventFd::from_user_fd(dir.as_raw_fd()).err(),
            Some(Errno::EINVAL)
        );
    }

    #[test]
    fn signal_reaches_the_callers_eventfd_even_after_the_caller_closed_its_number() {
        let efd = EventFd::new(EFD_NONBLOCK).unwrap();
        let dup = efd.try_clone().unwrap();
        let held = WakeupEventFd::from_user_fd(dup.as_raw_fd()).unwrap();
        drop(dup);
        held.signal();
        held.signal();
        assert_eq!(efd.read().unwrap(), 2);
        assert!(efd.read().is_err(), "counter reset by the read");
    }
}
