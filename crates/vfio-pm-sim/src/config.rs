//! Per-device configuration of the simulated host.

use vfio_pm::PciAddress;

/// The address of QEMU's e1000e in the QEMU harness (`-device e1000e,addr=0x5`).
pub const DEFAULT_ADDRESS: PciAddress = PciAddress {
    domain: 0,
    bus: 0,
    device: 5,
    function: 0,
};

/// How one simulated vfio-pci device behaves. Defaults match the QEMU harness's e1000e on a
/// baseline host: runtime PM allowed, reset works, PM capability present, no INTx in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The device's PCI address.
    pub address: PciAddress,
    /// vfio-pci `disable_idle_d3=1`: open/close/register take no runtime-PM reference.
    pub disable_idle_d3: bool,
    /// Whether VFIO_DEVICE_RESET works (`reset_works`); else it answers EINVAL.
    pub reset_works: bool,
    /// Whether the user has INTx enabled (irq_type INTx) after open.
    pub intx: bool,
    /// Resume failure injection: the device cannot leave D3cold, every resume fails (EIO).
    pub resume_fails: bool,
    /// Whether the device has a PCI PM capability (PMCSR).
    pub pm_capability: bool,
    /// Devices with the same dev_set id are reset together by a bus hot reset.
    pub dev_set: Option<u32>,
    /// Whether the driver has a `device_feature` op (vfio-pci does; some variant drivers not).
    pub device_feature_op: bool,
    /// Size of BAR0 (a memory BAR); 0 for none.
    pub bar0_size: u64,
}

impl DeviceConfig {
    /// The defaults for a device at `address`.
    pub fn new(address: PciAddress) -> Self {
        Self {
            address,
            disable_idle_d3: false,
            reset_works: true,
            intx: false,
            resume_fails: false,
            pm_capability: true,
            dev_set: None,
            device_feature_op: true,
            bar0_size: 0x2_0000,
        }
    }

    /// Sets [`DeviceConfig::disable_idle_d3`].
    pub fn disable_idle_d3(mut self, on: bool) -> Self {
        self.disable_idle_d3 = on;
        self
    }

    /// Sets [`DeviceConfig::reset_works`].
    pub fn reset_works(mut self, on: bool) -> Self {
        self.reset_works = on;
        self
    }

    /// Sets [`DeviceConfig::intx`].
    pub fn intx(mut self, on: bool) -> Self {
        self.intx = on;
        self
    }

    /// Sets [`DeviceConfig::resume_fails`].
    pub fn resume_fails(mut self, on: bool) -> Self {
        self.resume_fails = on;
        self
    }

    /// Sets [`DeviceConfig::pm_capability`].
    pub fn pm_capability(mut self, on: bool) -> Self {
        self.pm_capability = on;
        self
    }

    /// Sets [`DeviceConfig::dev_set`].
    pub fn dev_set(mut self, id: u32) -> Self {
        self.dev_set = Some(id);
        self
    }

    /// Sets [`DeviceConfig::device_feature_op`].
    pub fn device_feature_op(mut self, on: bool) -> Self {
        self.device_feature_op = on;
        self
    }
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self::new(DEFAULT_ADDRESS)
    }
}
