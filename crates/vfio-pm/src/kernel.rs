//! The real-kernel backend of [`HostDevice`]: an open vfio-pci device fd plus its sysfs files.

use crate::device::{OpenError, VfioPciDevice};
use crate::feature;
use crate::host::{HostDevice, HostKnob, MmapAccess};
use crate::pci::PciAddress;
use crate::power::{PowerObservation, RuntimeStatus};
use crate::sysfs::{Sysfs, SysfsDevice};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::{vfio_device_info, VFIO_REGION_INFO_FLAG_MMAP};

use crate::ioctl_nr::{VFIO_DEVICE_GET_INFO_IOCTL, VFIO_DEVICE_RESET_IOCTL};

/// How long `settle` waits for an active device to stay active before calling it stable.
const ACTIVE_QUIET: Duration = Duration::from_millis(500);

/// Length of a BAR mapping made by [`HostDevice::bar_mmap_access`] (one page; the kernel
/// rounds the length up to the page size anyway).
const MMAP_LEN: usize = 4096;

/// A shared, read-only mapping of the first page of a VFIO region, kept until close.
#[derive(Debug)]
struct BarMapping {
    region: u32,
    /// The mapping's address (a `usize` so that the device stays `Send`/`Sync`).
    addr: usize,
}

/// A vfio-pci device on the running kernel.
///
/// BAR mappings made by [`HostDevice::bar_mmap_access`] are kept (one per region) until
/// [`HostDevice::close`] or drop, so that a mapping made before LOW_POWER_ENTRY is touched
/// again after it, like a VMM's guest RAM mapping of a BAR.
#[derive(Debug)]
pub struct KernelDevice {
    address: PciAddress,
    sysfs: SysfsDevice,
    device: Option<VfioPciDevice>,
    mappings: Mutex<Vec<BarMapping>>,
}

impl KernelDevice {
    /// Opens the device (see [`VfioPciDevice::open`]).
    pub fn open(sysfs: &Sysfs, address: PciAddress) -> Result<Self, OpenError> {
        let device = VfioPciDevice::open(sysfs, address)?;
        Ok(Self {
            address,
            sysfs: device.sysfs().clone(),
            device: Some(device),
            mappings: Mutex::new(Vec::new()),
        })
    }

    fn mappings(&self) -> MutexGuard<'_, Vec<BarMapping>> {
        self.mappings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept mapping of `region`, made now if there is none.
    fn mapping(&self, region: u32) -> Result<usize, Errno> {
        let dev = self.device()?;
        let mut maps = self.mappings();
        if let Some(m) = maps.iter().find(|m| m.region == region) {
            return Ok(m.addr);
        }
        if dev.region_flags(region) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Errno::EINVAL);
        }
        let (base, _) = dev.region(region);
        let offset = i64::try_from(base).map_err(|_| Errno::EINVAL)?;
        let len = NonZeroUsize::new(MMAP_LEN).ok_or(Errno::EINVAL)?;
        // SAFETY: FFI. A new shared read-only mapping at an address the kernel chooses, so no
        // existing memory is affected; it is only read through `read_volatile` in a forked
        // child and unmapped in `unmap_all` (close or drop).
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                dev,
                offset,
            )
        }?;
        let addr = ptr.as_ptr() as usize;
        maps.push(BarMapping { region, addr });
        Ok(addr)
    }

    /// Unmaps every kept BAR mapping (a mapping holds a reference on the device file, so the
    /// device would not be released by close while one exists).
    fn unmap_all(&self) {
        for m in self.mappings().drain(..) {
            if let Some(ptr) = NonNull::new(m.addr as *mut c_void) {
                // SAFETY: FFI. `ptr` is the start of a MMAP_LEN mapping made by `mapping` and
                // removed from the list here, so it is unmapped exactly once and never read
                // afterwards.
                let _ = unsafe { nix::sys::mman::munmap(ptr, MMAP_LEN) };
            }
        }
    }

    /// The open device, or EBADF after close.
    pub fn device(&self) -> Result<&VfioPciDevice, Errno> {
        self.device.as_ref().ok_or(Errno::EBADF)
    }

    fn ioctl_no_arg(&self, nr: std::os::raw::c_ulong) -> Result<(), Errno> {
        let dev = self.device()?;
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is open for the call.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&RawFd(dev.as_fd()), nr) };
        if ret < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }
}

impl Drop for KernelDevice {
    fn drop(&mut self) {
        self.unmap_all();
    }
}

/// Reads the first 4 bytes of the mapping at `addr` in a forked child, so that a SIGBUS from
/// the kernel's fault handler kills only the child.
fn touch_in_child(addr: usize) -> Result<MmapAccess, Errno> {
    // SAFETY: FFI. After fork the child runs only async-signal-safe code: `setrlimit` (no core
    // file for the expected SIGBUS), one volatile read of the shared mapping at `addr` (valid:
    // it is mapped in the parent and inherited by the child) and `_exit`; it allocates nothing
    // and takes no locks, so the other threads' state it inherits does not matter.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: FFI; `no_core` is a valid rlimit for the duration of the call.
            unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
            // SAFETY: `addr` is the start of a readable MMAP_LEN-byte mapping (see above),
            // 4-byte aligned (page-aligned).
            let value = unsafe { std::ptr::read_volatile(addr as *const u32) };
            std::hint::black_box(value);
            // SAFETY: FFI; `_exit` ends the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => loop {
            match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, 0)) => return Ok(MmapAccess::Ok),
                Ok(WaitStatus::Signaled(_, Signal::SIGBUS, _)) => return Ok(MmapAccess::SigBus),
                Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => {
                    return Err(Errno::EIO)
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
            }
        },
    }
}

struct RawFd<'a>(std::os::fd::BorrowedFd<'a>);
impl std::os::fd::AsRawFd for RawFd<'_> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl HostDevice for KernelDevice {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        feature::device_feature(self.device()?, argsz, flags, payload)
    }

    fn device_ioctl(&self) -> Result<(), Errno> {
        let dev = self.device()?;
        let mut info = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: `info` is a properly sized and initialised vfio_device_info whose argsz
        // matches its size; the kernel writes only within it; the fd is open for the call.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &RawFd(dev.as_fd()),
                VFIO_DEVICE_GET_INFO_IOCTL(),
                &mut info,
            )
        };
        if ret < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let dev = self.device()?;
        let (base, _) = dev.region(region);
        nix::sys::uio::pread(dev, buf, (base + offset) as i64)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let dev = self.device()?;
        let (base, _) = dev.region(region);
        nix::sys::uio::pwrite(dev, data, (base + offset) as i64)
    }

    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno> {
        touch_in_child(self.mapping(region)?)
    }

    fn host_config_read(&self) -> Result<(), Errno> {
        self.sysfs.read_config().map(|_| ()).map_err(|e| match e {
            crate::sysfs::SysfsError::Io { source, .. } => io_errno(source),
            crate::sysfs::SysfsError::NoSuchDevice { .. } => Errno::ENODEV,
        })
    }

    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        let (file, value) = match knob {
            HostKnob::RuntimePmAllowed(true) => ("power/control", "auto"),
            HostKnob::RuntimePmAllowed(false) => ("power/control", "on"),
            HostKnob::D3ColdAllowed(on) => ("d3cold_allowed", if on { "1" } else { "0" }),
        };
        self.sysfs.write(file, value).map_err(|e| match e {
            crate::sysfs::SysfsError::Io { source, .. } => io_errno(source),
            crate::sysfs::SysfsError::NoSuchDevice { .. } => Errno::ENODEV,
        })
    }

    fn reset(&self) -> Result<(), Errno> {
        self.ioctl_no_arg(VFIO_DEVICE_RESET_IOCTL())
    }

    fn close(&mut self) -> Result<(), Errno> {
        self.unmap_all();
        self.device.take().map(drop).ok_or(Errno::EBADF)
    }

    fn observe(&self) -> Result<PowerObservation, Errno> {
        self.sysfs.observe().map_err(io_errno)
    }

    fn settle(&self, limit: Duration) -> Result<PowerObservation, Errno> {
        let start = Instant::now();
        let mut last = self.observe()?;
        let mut stable_since = Instant::now();
        loop {
            // "suspended" counts once a second reading 10 ms later agrees (the PCI core may
            // still be finishing the D-state transition when runtime_status flips).
            let confirmed_suspended = last.runtime_status == RuntimeStatus::Suspended
                && stable_since.elapsed() >= Duration::from_millis(10);
            if confirmed_suspended
                || stable_since.elapsed() >= ACTIVE_QUIET.min(limit)
                || start.elapsed() >= limit
            {
                return Ok(last);
            }
            std::thread::sleep(Duration::from_millis(5));
            let now = self.observe()?;
            if now != last || now.runtime_status.is_transient() {
                stable_since = Instant::now();
            }
            last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The child's touch tells a served read from a SIGBUS: a shared file mapping reads fine,
    /// and once the file is truncated the same page faults with SIGBUS (like a BAR mapping
    /// whose fault handler refuses); the parent survives both.
    #[test]
    fn touch_in_child_reports_ok_and_sigbus() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(MMAP_LEN as u64).unwrap();
        let len = NonZeroUsize::new(MMAP_LEN).unwrap();
        // SAFETY: FFI. A new shared read-only mapping of a private temporary file at an
        // address the kernel chooses; unmapped below and not used afterwards.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .unwrap();
        let addr = ptr.as_ptr() as usize;
        assert_eq!(touch_in_child(addr), Ok(MmapAccess::Ok));
        file.set_len(0).unwrap();
        assert_eq!(touch_in_child(addr), Ok(MmapAccess::SigBus));
        // SAFETY: FFI; the mapping made above, unmapped once.
        unsafe { nix::sys::mman::munmap(ptr, MMAP_LEN) }.unwrap();
    }
}
