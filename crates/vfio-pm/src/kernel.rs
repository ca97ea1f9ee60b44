//! The real-kernel backend of [`HostDevice`]: an open vfio-pci device fd plus its sysfs files.

use crate::device::{OpenError, VfioPciDevice};
use crate::feature;
use crate::host::{HostDevice, HostKnob};
use crate::pci::PciAddress;
use crate::power::{PowerObservation, RuntimeStatus};
use crate::sysfs::{Sysfs, SysfsDevice};
use nix::errno::Errno;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};
use vfio_bindings::bindings::vfio::vfio_device_info;

use crate::ioctl_nr::{VFIO_DEVICE_GET_INFO_IOCTL, VFIO_DEVICE_RESET_IOCTL};

/// How long `settle` waits for an active device to stay active before calling it stable.
const ACTIVE_QUIET: Duration = Duration::from_millis(500);

/// A vfio-pci device on the running kernel.
#[derive(Debug)]
pub struct KernelDevice {
    address: PciAddress,
    sysfs: SysfsDevice,
    device: Option<VfioPciDevice>,
}

impl KernelDevice {
    /// Opens the device (see [`VfioPciDevice::open`]).
    pub fn open(sysfs: &Sysfs, address: PciAddress) -> Result<Self, OpenError> {
        let device = VfioPciDevice::open(sysfs, address)?;
        Ok(Self {
            address,
            sysfs: device.sysfs().clone(),
            device: Some(device),
        })
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
