//! The real-kernel backend of [`PowerDevice`] and [`ConformanceDevice`]: an open vfio-pci
//! device fd plus its sysfs files.
//!
//! The fd can come from three places: [`KernelDevice::open`] opens the device by PCI address in
//! a container of its own (the CLI's diagnostics); [`KernelDevice::from_vfio_device`] shares a
//! VMM's `vfio_ioctls::VfioDevice`, already in the VM's own container;
//! [`KernelDevice::from_device_fd`] takes any VFIO device fd (duplicated from another process, a
//! cdev opened through iommufd, ...).

use crate::device::{OpenError, VfioPciDevice};
use crate::feature;
use crate::host::{ConformanceDevice, HostKnob, MmapAccess, PowerDevice};
use crate::pci::PciAddress;
use crate::power::{PowerObservation, RuntimeStatus};
use crate::sysfs::{Sysfs, SysfsDevice, SysfsError};
use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;
use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_region_info, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::VfioDevice;

use crate::ioctl_nr::{
    VFIO_DEVICE_GET_INFO_IOCTL, VFIO_DEVICE_GET_REGION_INFO_IOCTL, VFIO_DEVICE_RESET_IOCTL,
};

/// How long `settle` waits for an active device to stay active before calling it stable.
const ACTIVE_QUIET: Duration = Duration::from_millis(500);

/// Regions asked about at most (vfio-pci has 9 standard ones plus a few device-specific).
const MAX_REGIONS: u32 = 64;

/// Length of a BAR mapping made by [`ConformanceDevice::bar_mmap_access`] (one page; the kernel
/// rounds the length up to the page size anyway).
const MMAP_LEN: usize = 4096;

/// A shared, read-only mapping of the first page of a VFIO region, kept until close.
#[derive(Debug)]
struct BarMapping {
    region: u32,
    /// The mapping's address (a `usize` so that the device stays `Send`/`Sync`).
    addr: usize,
}

/// What `VFIO_DEVICE_GET_REGION_INFO` said about one region.
#[derive(Clone, Copy, Debug)]
struct RegionInfo {
    index: u32,
    offset: u64,
    size: u64,
    flags: u32,
}

/// Where the device fd comes from (see the module documentation).
enum DeviceFd {
    // Boxed: with vfio-ioctls' vfio_cdev feature a VfioDevice is some 200 bytes.
    Opened(Box<VfioPciDevice>),
    Shared(Arc<VfioDevice>),
    Fd(OwnedFd),
}

impl AsFd for DeviceFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DeviceFd::Opened(d) => d.as_fd(),
            // SAFETY: the fd is owned by the `VfioDevice`, which the `Arc` held in `self` keeps
            // open for as long as the returned borrow lives.
            DeviceFd::Shared(d) => unsafe { BorrowedFd::borrow_raw(d.as_raw_fd()) },
            DeviceFd::Fd(fd) => fd.as_fd(),
        }
    }
}

impl std::fmt::Debug for DeviceFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            DeviceFd::Opened(_) => "opened",
            DeviceFd::Shared(_) => "shared VfioDevice",
            DeviceFd::Fd(_) => "fd",
        };
        write!(f, "{kind} fd {}", self.as_fd().as_raw_fd())
    }
}

/// A vfio-pci device on the running kernel.
///
/// BAR mappings made by [`ConformanceDevice::bar_mmap_access`] are kept (one per region) until
/// [`ConformanceDevice::close`] or drop, so that a mapping made before LOW_POWER_ENTRY is touched
/// again after it, like a VMM's guest RAM mapping of a BAR.
///
/// Region offsets come from `VFIO_DEVICE_GET_INFO` and `VFIO_DEVICE_GET_REGION_INFO`, asked
/// once when the device is wrapped (ioctls: the kernel resumes a suspended device around them).
/// An access to a region index the device does not have, or past a region's end, then fails
/// with EINVAL without reaching the kernel, instead of silently reading another region. For an
/// index beyond the kernel's regions that is the kernel's own answer (`vfio_pci_rw` in
/// drivers/vfio/pci/vfio_pci_core.c checks it before it resumes the device; the QEMU checks
/// phase asks the kernel directly). For an index the kernel counts but cannot serve (the VGA
/// region of a non-VGA device, which `GET_REGION_INFO` refuses) the kernel would resume the
/// device before refusing; this backend refuses without the wake.
#[derive(Debug)]
pub struct KernelDevice {
    address: PciAddress,
    sysfs: SysfsDevice,
    fd: Option<DeviceFd>,
    regions: Vec<RegionInfo>,
    mappings: Mutex<Vec<BarMapping>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl KernelDevice {
    /// Opens the device by PCI address in a container of its own (see [`VfioPciDevice::open`]).
    /// For diagnostics: a VMM's device is already in the VM's container, and a group is
    /// exclusive, so a VMM wraps its own device with [`KernelDevice::from_vfio_device`] or
    /// [`KernelDevice::from_device_fd`] instead.
    pub fn open(sysfs: &Sysfs, address: PciAddress) -> Result<Self, OpenError> {
        let device = VfioPciDevice::open(sysfs, address)?;
        let dir = device.sysfs().clone();
        Self::with_fd(dir, DeviceFd::Opened(Box::new(device)))
    }

    /// Opens the device through its cdev and an iommufd (see [`crate::iommufd::open`]), as
    /// current VMMs do; the device keeps its iommufd until close.
    pub fn open_iommufd(
        sysfs: &Sysfs,
        address: PciAddress,
    ) -> Result<Self, crate::iommufd::IommufdOpenError> {
        let device = crate::iommufd::open(sysfs, address)?;
        Ok(Self::from_vfio_device(sysfs, address, Arc::new(device))?)
    }

    /// Wraps a device a VMM opened with `vfio-ioctls` in the VM's own container; the VMM keeps
    /// using its `Arc`. `address` is the host PCI address of that device (its sysfs directory is
    /// used for the `d3cold_allowed` knob and host config reads).
    pub fn from_vfio_device(
        sysfs: &Sysfs,
        address: PciAddress,
        device: Arc<VfioDevice>,
    ) -> Result<Self, OpenError> {
        Self::with_fd(sysfs.device(address)?, DeviceFd::Shared(device))
    }

    /// Wraps any open VFIO device fd of the device at host PCI `address`: one obtained from
    /// another process (`pidfd_getfd`), from `VFIO_GROUP_GET_DEVICE_FD` on a group the caller
    /// holds, or an iommufd cdev. A VMM that only lends an fd passes a duplicate
    /// (`BorrowedFd::try_clone_to_owned`): it is the same open file, so the low-power calls act
    /// on the VMM's device.
    pub fn from_device_fd(
        sysfs: &Sysfs,
        address: PciAddress,
        fd: OwnedFd,
    ) -> Result<Self, OpenError> {
        Self::with_fd(sysfs.device(address)?, DeviceFd::Fd(fd))
    }

    /// Asks the kernel for the device's regions once, so that no later access falls back to a
    /// default for a region the device does not have.
    fn with_fd(sysfs: SysfsDevice, fd: DeviceFd) -> Result<Self, OpenError> {
        let address = sysfs.address();
        let regions =
            query_regions(fd.as_fd()).map_err(|errno| OpenError::DeviceInfo { address, errno })?;
        Ok(Self {
            address,
            sysfs,
            fd: Some(fd),
            regions,
            mappings: Mutex::new(Vec::new()),
        })
    }

    /// The device's sysfs directory.
    pub fn sysfs(&self) -> &SysfsDevice {
        &self.sysfs
    }

    /// The open device fd, or EBADF after close.
    pub fn fd(&self) -> Result<BorrowedFd<'_>, Errno> {
        self.fd.as_ref().map(AsFd::as_fd).ok_or(Errno::EBADF)
    }

    /// Offset, size and flags of region `index`; EINVAL for an index the device does not have.
    fn region(&self, index: u32) -> Result<RegionInfo, Errno> {
        self.fd()?;
        self.regions
            .iter()
            .find(|r| r.index == index)
            .copied()
            .ok_or(Errno::EINVAL)
    }

    /// The file offset of `offset` within region `index` for an access of `len` bytes; EINVAL
    /// for a region the device does not have or an access past its end.
    fn region_offset(&self, index: u32, offset: u64, len: usize) -> Result<i64, Errno> {
        let r = self.region(index)?;
        let end = offset.checked_add(len as u64).ok_or(Errno::EINVAL)?;
        if end > r.size {
            return Err(Errno::EINVAL);
        }
        i64::try_from(r.offset + offset).map_err(|_| Errno::EINVAL)
    }

    /// The kept mapping of `region`, made now if there is none.
    fn mapping(&self, region: u32) -> Result<usize, Errno> {
        let info = self.region(region)?;
        let fd = self.fd()?;
        let mut maps = lock(&self.mappings);
        if let Some(m) = maps.iter().find(|m| m.region == region) {
            return Ok(m.addr);
        }
        if info.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(Errno::EINVAL);
        }
        let offset = i64::try_from(info.offset).map_err(|_| Errno::EINVAL)?;
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
                fd,
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
        for m in lock(&self.mappings).drain(..) {
            if let Some(ptr) = NonNull::new(m.addr as *mut c_void) {
                // SAFETY: FFI. `ptr` is the start of a MMAP_LEN mapping made by `mapping` and
                // removed from the list here, so it is unmapped exactly once and never read
                // afterwards.
                let _ = unsafe { nix::sys::mman::munmap(ptr, MMAP_LEN) };
            }
        }
    }
}

/// `VFIO_DEVICE_GET_INFO` (an ioctl: the kernel resumes a suspended device around it).
fn device_info(fd: BorrowedFd<'_>) -> Result<vfio_device_info, Errno> {
    let mut info = vfio_device_info {
        argsz: std::mem::size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: `info` is a properly sized and initialised vfio_device_info whose argsz matches
    // its size; the kernel writes only within it; the fd is open for the call.
    let ret = unsafe {
        vmm_sys_util::ioctl::ioctl_with_mut_ref(&fd, VFIO_DEVICE_GET_INFO_IOCTL(), &mut info)
    };
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(info)
    }
}

/// Every region the kernel describes (`num_regions` from `VFIO_DEVICE_GET_INFO`); an index the
/// kernel refuses (EINVAL: the VGA region of a non-VGA device) is left out.
fn query_regions(fd: BorrowedFd<'_>) -> Result<Vec<RegionInfo>, Errno> {
    let info = device_info(fd)?;
    let mut regions = Vec::new();
    for index in 0..info.num_regions.min(MAX_REGIONS) {
        let mut r = vfio_region_info {
            argsz: std::mem::size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        // SAFETY: `r` is a properly sized and initialised vfio_region_info whose argsz matches
        // its size (no capability chain is asked for); the kernel writes only within it; the
        // fd is open for the call.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &fd,
                VFIO_DEVICE_GET_REGION_INFO_IOCTL(),
                &mut r,
            )
        };
        match ret {
            0.. => regions.push(RegionInfo {
                index,
                offset: r.offset,
                size: r.size,
                flags: r.flags,
            }),
            _ if Errno::last() == Errno::EINVAL => {}
            _ => return Err(Errno::last()),
        }
    }
    Ok(regions)
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

fn io_errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn sysfs_errno(e: SysfsError) -> Errno {
    match e {
        SysfsError::Io { source, .. } => io_errno(source),
        SysfsError::NoSuchDevice { .. } => Errno::ENODEV,
    }
}

/// The sysfs attribute of a knob and the text that sets it.
fn knob_file(knob: HostKnob) -> (&'static str, &'static str) {
    match knob {
        HostKnob::RuntimePmAllowed(true) => ("power/control", "auto"),
        HostKnob::RuntimePmAllowed(false) => ("power/control", "on"),
        HostKnob::D3ColdAllowed(on) => ("d3cold_allowed", if on { "1" } else { "0" }),
    }
}

impl PowerDevice for KernelDevice {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        feature::device_feature(self.fd()?, argsz, flags, payload)
    }

    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let at = self.region_offset(region, offset, buf.len())?;
        nix::sys::uio::pread(self.fd()?, buf, at)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        let at = self.region_offset(region, offset, data.len())?;
        nix::sys::uio::pwrite(self.fd()?, data, at)
    }

    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        let (file, value) = knob_file(knob);
        self.sysfs.write(file, value).map_err(sysfs_errno)
    }

    fn host_knob_is(&self, knob: HostKnob) -> Option<bool> {
        let (file, value) = knob_file(knob);
        let now = self.sysfs.attribute(file).known()?.clone();
        Some(now == value)
    }
}

impl ConformanceDevice for KernelDevice {
    fn device_ioctl(&self) -> Result<(), Errno> {
        device_info(self.fd()?).map(|_| ())
    }

    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno> {
        touch_in_child(self.mapping(region)?)
    }

    fn host_config_read(&self) -> Result<(), Errno> {
        self.sysfs.read_config().map(|_| ()).map_err(sysfs_errno)
    }

    fn reset(&self) -> Result<(), Errno> {
        let fd = self.fd()?;
        // SAFETY: VFIO_DEVICE_RESET takes no argument; the fd is open for the call.
        let ret = unsafe { vmm_sys_util::ioctl::ioctl(&fd, VFIO_DEVICE_RESET_IOCTL()) };
        if ret < 0 {
            Err(Errno::last())
        } else {
            Ok(())
        }
    }

    fn close(&mut self) -> Result<(), Errno> {
        self.unmap_all();
        self.fd.take().map(drop).ok_or(Errno::EBADF)
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
