//! [`SimHost`]: the simulated host, shared by every [`SimDevice`] opened on it.

use crate::config::DeviceConfig;
use crate::device::SimDevice;
use crate::error::SimError;
use crate::events::Event;
use crate::platform::{KernelVersion, Platform};
use crate::state::{DevState, HostState};
use std::sync::{Arc, Mutex, MutexGuard};
use vfio_pm::{HostKnob, PciAddress, PowerObservation, PowerState};

/// A simulated host: platform, kernel version and vfio-pci devices. Cheap to clone (all
/// clones share one host).
#[derive(Clone, Debug)]
pub struct SimHost {
    inner: Arc<Mutex<HostState>>,
}

/// Builds a [`SimHost`]. Without any [`SimHostBuilder::device`], the host has one default
/// device (an e1000e at [`crate::DEFAULT_ADDRESS`]).
#[derive(Clone, Debug)]
pub struct SimHostBuilder {
    platform: Platform,
    kernel: KernelVersion,
    devices: Vec<DeviceConfig>,
}

impl SimHostBuilder {
    /// The platform (D3hot only, or D3cold-capable). Default: D3hot.
    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// The kernel version to impersonate. Default: 6.1.
    pub fn kernel(mut self, kernel: KernelVersion) -> Self {
        self.kernel = kernel;
        self
    }

    /// Adds a device.
    pub fn device(mut self, config: DeviceConfig) -> Self {
        self.devices.push(config);
        self
    }

    /// Builds the host: every device is registered with vfio-pci (D0, runtime PM allowed, the
    /// register-time put unless `disable_idle_d3`) and the host has settled, so unused devices
    /// are runtime-suspended (Part 1).
    pub fn build(self) -> Result<SimHost, SimError> {
        let mut configs = self.devices;
        if configs.is_empty() {
            configs.push(DeviceConfig::default());
        }
        for (n, c) in configs.iter().enumerate() {
            if configs[..n].iter().any(|o| o.address == c.address) {
                return Err(SimError::DuplicateDevice { address: c.address });
            }
        }
        let mut state = HostState {
            platform: self.platform,
            kernel: self.kernel,
            devices: configs.into_iter().map(DevState::new).collect(),
            events: Vec::new(),
            next_handle: 0,
        };
        for i in 0..state.devices.len() {
            if !state.devices[i].cfg.disable_idle_d3 {
                state.put(i, "register");
            }
        }
        state.run_pending();
        Ok(SimHost {
            inner: Arc::new(Mutex::new(state)),
        })
    }
}

impl SimHost {
    /// A builder with the defaults (D3hot platform, kernel 6.1, no devices yet).
    pub fn builder() -> SimHostBuilder {
        SimHostBuilder {
            platform: Platform::D3hot,
            kernel: KernelVersion::V6_1,
            devices: Vec::new(),
        }
    }

    /// A host with one default device on `platform`, kernel 6.1.
    pub fn new(platform: Platform) -> Self {
        let host = Self::builder().platform(platform).build();
        // The default configuration has a single device, so building cannot fail; fall back to
        // an empty host rather than panic.
        host.unwrap_or_else(|_| SimHost {
            inner: Arc::new(Mutex::new(HostState {
                platform,
                kernel: KernelVersion::V6_1,
                devices: Vec::new(),
                events: Vec::new(),
                next_handle: 0,
            })),
        })
    }

    /// Locks the state. The model never panics while holding the lock, but a poisoned lock
    /// (a panic in a caller's thread) is still usable.
    pub(crate) fn lock(&self) -> MutexGuard<'_, HostState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn index(&self, address: PciAddress) -> Result<usize, SimError> {
        self.lock()
            .index_of(address)
            .ok_or(SimError::NoSuchDevice { address })
    }

    /// Opens the device fd (group open + `VFIO_GROUP_GET_DEVICE_FD`): resumes the device and
    /// takes the open reference. EBUSY while it is open elsewhere.
    pub fn open(&self, address: PciAddress) -> Result<SimDevice, SimError> {
        let i = self.index(address)?;
        let handle = self.lock().open(i).map_err(|errno| match errno {
            nix::errno::Errno::EBUSY => SimError::Busy { address },
            errno => SimError::Kernel { address, errno },
        })?;
        Ok(SimDevice::new(self.clone(), i, handle, address))
    }

    /// Lets the kernel run: executes every queued asynchronous idle check (devices whose
    /// usage count is zero runtime-suspend). Returns how many devices suspended.
    pub fn run_pending(&self) -> usize {
        self.lock().run_pending()
    }

    /// The power state and runtime status of a device, as sysfs shows them.
    pub fn observe(&self, address: PciAddress) -> Result<PowerObservation, SimError> {
        let i = self.index(address)?;
        Ok(self.lock().devices[i].observe())
    }

    /// A host sysfs config read of any device (opened or not).
    pub fn host_config_read(&self, address: PciAddress) -> Result<(), SimError> {
        let i = self.index(address)?;
        self.lock().host_config_read(i);
        Ok(())
    }

    /// Writes a sysfs knob of any device (opened or not).
    pub fn set_host_knob(&self, address: PciAddress, knob: HostKnob) -> Result<(), SimError> {
        let i = self.index(address)?;
        self.lock().set_knob(i, knob);
        Ok(())
    }

    /// Injects (or clears) a resume failure: while set, the device cannot leave D3cold and
    /// every call that needs it resumed fails with EIO.
    pub fn set_resume_failure(&self, address: PciAddress, fails: bool) -> Result<(), SimError> {
        let i = self.index(address)?;
        self.lock().devices[i].resume_fails = fails;
        Ok(())
    }

    /// The model's internal state of a device, for tests and demos.
    pub fn snapshot(&self, address: PciAddress) -> Result<DeviceSnapshot, SimError> {
        let i = self.index(address)?;
        Ok(DeviceSnapshot::of(&self.lock().devices[i]))
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.lock().events.clone()
    }

    /// Every event so far, clearing the log.
    pub fn take_events(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// The addresses of all devices.
    pub fn addresses(&self) -> Vec<PciAddress> {
        self.lock().devices.iter().map(|d| d.address()).collect()
    }

    /// The platform.
    pub fn platform(&self) -> Platform {
        self.lock().platform
    }

    /// The kernel version.
    pub fn kernel(&self) -> KernelVersion {
        self.lock().kernel
    }
}

/// The model's view of one device at an instant (more than sysfs shows).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// `power_state`.
    pub power_state: PowerState,
    /// Runtime-suspended.
    pub suspended: bool,
    /// Runtime-PM usage count.
    pub usage: u32,
    /// An idle check is queued.
    pub idle_pending: bool,
    /// The device fd is open.
    pub open: bool,
    /// `pm_runtime_engaged`.
    pub engaged: bool,
    /// A wakeup eventfd is armed.
    pub wakeup_armed: bool,
    /// `power/control` is `auto`.
    pub runtime_allowed: bool,
    /// `d3cold_allowed`.
    pub d3cold_allowed: bool,
    /// INTx state, when the user has INTx enabled.
    pub intx: Option<IntxStatus>,
}

/// INTx as the model tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntxStatus {
    /// `ctx->masked`.
    pub masked: bool,
    /// `pm_intx_masked`: runtime suspend masked it and resume will unmask it.
    pub masked_by_pm: bool,
    /// An interrupt is pending behind the mask.
    pub pending: bool,
    /// How many times the INTx trigger eventfd was signalled.
    pub triggers: u64,
}

impl DeviceSnapshot {
    fn of(d: &DevState) -> Self {
        Self {
            power_state: d.power.clone(),
            suspended: d.status == crate::state::Rpm::Suspended,
            usage: d.usage,
            idle_pending: d.idle_pending,
            open: d.handle.is_some(),
            engaged: d.engaged,
            wakeup_armed: d.wake.is_some(),
            runtime_allowed: d.runtime_allowed,
            d3cold_allowed: d.d3cold_allowed,
            intx: d.intx.map(|x| IntxStatus {
                masked: x.masked,
                masked_by_pm: d.pm_intx_masked,
                pending: x.pending,
                triggers: x.triggers,
            }),
        }
    }
}
