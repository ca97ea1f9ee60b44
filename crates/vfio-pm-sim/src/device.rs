//! [`SimDevice`]: an opened device fd on a [`SimHost`], implementing [`PowerDevice`] and
//! [`ConformanceDevice`] call for call like the kernel.

use crate::error::SimError;
use crate::host::{DeviceSnapshot, SimHost};
use crate::vfio::{Access, MmapAccess};
use nix::errno::Errno;
use std::time::Duration;
use vfio_pm::{ConformanceDevice, HostKnob, PciAddress, PowerDevice, PowerObservation};

/// An open vfio-pci device fd on the simulated host. Dropping it closes it (like dropping a
/// real fd); after [`ConformanceDevice::close`] every fd call fails with EBADF, while the sysfs-side
/// calls (`observe`, `settle`, `host_config_read`, `set_host_knob`) keep working, as they do on
/// the kernel backend.
#[derive(Debug)]
pub struct SimDevice {
    host: SimHost,
    index: usize,
    handle: u64,
    address: PciAddress,
}

impl SimDevice {
    pub(crate) fn new(host: SimHost, index: usize, handle: u64, address: PciAddress) -> Self {
        Self {
            host,
            index,
            handle,
            address,
        }
    }

    /// The host this device lives on.
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// VFIO_DEVICE_PCI_HOT_RESET: resets every device of this device's dev_set; wakeup-armed
    /// siblings are resumed, signalled and leave low power.
    pub fn hot_reset(&self) -> Result<(), Errno> {
        let i = self.index;
        self.host
            .lock()
            .device_ioctl(i, self.handle, |s| s.hot_reset(i))
    }

    /// VFIO_DEVICE_SET_IRQS ACTION_MASK / ACTION_UNMASK on INTx (EINVAL when INTx is not in
    /// use). Goes through the ioctl wrapper, so it resumes the device.
    pub fn set_intx_masked(&self, masked: bool) -> Result<(), Errno> {
        let i = self.index;
        self.host
            .lock()
            .device_ioctl(i, self.handle, |s| s.user_intx_mask(i, masked))
    }

    /// The device asserts its INTx line (EINVAL when INTx is not in use).
    pub fn raise_intx(&self) -> Result<(), Errno> {
        let mut host = self.host.lock();
        host.check_handle(self.index, self.handle)?;
        host.raise_intx(self.index)
    }

    /// The model's internal state of this device.
    pub fn snapshot(&self) -> Result<DeviceSnapshot, SimError> {
        self.host.snapshot(self.address)
    }
}

impl PowerDevice for SimDevice {
    fn address(&self) -> PciAddress {
        self.address
    }

    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        let i = self.index;
        self.host
            .lock()
            .device_ioctl(i, self.handle, |s| s.feature(i, argsz, flags, payload))
    }

    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        let len = buf.len();
        self.host.lock().region_rw(
            self.index,
            self.handle,
            region,
            offset,
            len,
            Access::Read(buf),
        )
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        self.host.lock().region_rw(
            self.index,
            self.handle,
            region,
            offset,
            data.len(),
            Access::Write(data),
        )
    }

    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        self.host.lock().set_knob(self.index, knob);
        Ok(())
    }
}

impl ConformanceDevice for SimDevice {
    fn device_ioctl(&self) -> Result<(), Errno> {
        self.host
            .lock()
            .device_ioctl(self.index, self.handle, |_| Ok(()))
    }

    fn bar_mmap_access(&self, region: u32) -> Result<MmapAccess, Errno> {
        self.host
            .lock()
            .mmap_access(self.index, self.handle, region)
    }

    fn host_config_read(&self) -> Result<(), Errno> {
        self.host.lock().host_config_read(self.index);
        Ok(())
    }

    fn reset(&self) -> Result<(), Errno> {
        let i = self.index;
        self.host
            .lock()
            .device_ioctl(i, self.handle, |s| s.function_reset(i))
    }

    fn close(&mut self) -> Result<(), Errno> {
        self.host.lock().close(self.index, self.handle)
    }

    fn observe(&self) -> Result<PowerObservation, Errno> {
        Ok(self.host.lock().devices[self.index].observe())
    }

    fn settle(&self, _limit: Duration) -> Result<PowerObservation, Errno> {
        let mut host = self.host.lock();
        host.run_pending();
        Ok(host.devices[self.index].observe())
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        // Closing an fd that is already closed is EBADF: nothing to do.
        let _ = self.host.lock().close(self.index, self.handle);
    }
}
