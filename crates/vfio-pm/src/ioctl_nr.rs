//! Ioctl request numbers (`_IO(VFIO_TYPE, VFIO_BASE + n)`) the crate issues itself.
#![allow(missing_docs)]

use vfio_bindings::bindings::vfio::{VFIO_BASE, VFIO_TYPE};

vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_GET_INFO_IOCTL, VFIO_TYPE as u32, VFIO_BASE + 7);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_RESET_IOCTL, VFIO_TYPE as u32, VFIO_BASE + 11);
vmm_sys_util::ioctl_io_nr!(VFIO_DEVICE_FEATURE_IOCTL, VFIO_TYPE as u32, VFIO_BASE + 17);
vmm_sys_util::ioctl_io_nr!(
    VFIO_DEVICE_GET_REGION_INFO_IOCTL,
    VFIO_TYPE as u32,
    VFIO_BASE + 8
);
