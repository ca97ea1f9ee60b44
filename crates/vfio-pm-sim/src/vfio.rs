//! vfio-pci core: open/close, the device-fd ioctl wrapper, VFIO_DEVICE_FEATURE validation and
//! the low-power features, region access, reset, PMCSR writes, mmap faults, and the host-side
//! sysfs paths (docs/kernel-behaviour.md, *What the kernel sources say*; the functions are those
//! of drivers/vfio/vfio_main.c and drivers/vfio/pci/vfio_pci_core.c).

use crate::config_space::{ConfigSpace, PmcsrRequest};
use crate::eventfd::WakeupEventFd;
use crate::events::Event;
use crate::state::{HostState, Intx};
use nix::errno::Errno;
use vfio_pm::feature::{FEATURE_MASK, FLAG_GET, FLAG_PROBE, FLAG_SET, HEADER_SIZE};
use vfio_pm::{HostKnob, PowerState, BAR0_REGION, CONFIG_REGION};

/// `VFIO_PCI_NUM_REGIONS` (BAR0..5, ROM, config, VGA); vfio-pci adds no device regions here.
const NUM_REGIONS: u32 = 9;

pub use vfio_pm::MmapAccess;

impl HostState {
    /// Fails with EBADF unless `handle` is the device's open fd.
    pub(crate) fn check_handle(&self, i: usize, handle: u64) -> Result<(), Errno> {
        if self.devices[i].handle == Some(handle) {
            Ok(())
        } else {
            Err(Errno::EBADF)
        }
    }

    /// `__vfio_pci_runtime_pm_exit`: clears engaged, re-takes the reference, drops the eventfd
    /// reference without signalling.
    pub(crate) fn engaged_exit(
        &mut self,
        i: usize,
        wake: Option<WakeupEventFd>,
        reason: &'static str,
    ) {
        drop(wake);
        let d = self.dev(i);
        d.wake = None;
        if d.engaged {
            d.engaged = false;
            let device = d.address();
            self.log(Event::Engaged {
                device,
                engaged: false,
                wakeup: false,
            });
            self.get_noresume(i, reason);
        }
    }

    /// `vfio_pci_set_power_state` / `pci_set_power_state` for D0..D3hot. A runtime-suspended
    /// device (only reachable here after a failed resume) is left alone.
    pub(crate) fn set_power_state(&mut self, i: usize, state: PowerState) {
        let d = self.dev(i);
        if d.power == state || d.status == crate::state::Rpm::Suspended {
            return;
        }
        // The emulated device's PMC advertises neither D1 nor D2: the request fails (ignored).
        if matches!(state, PowerState::D1 | PowerState::D2) || !d.cfg.pm_capability {
            return;
        }
        let from = std::mem::replace(&mut d.power, state.clone());
        let device = d.address();
        self.log(Event::PowerState {
            device,
            from,
            to: state,
        });
    }

    fn zap_mmaps(&mut self, i: usize) {
        let device = self.devices[i].address();
        self.log(Event::MmapsZapped { device });
    }

    /// `vfio_pci_core_enable` as far as PM goes. Returns the new fd generation.
    pub(crate) fn open(&mut self, i: usize) -> Result<u64, Errno> {
        if self.devices[i].handle.is_some() {
            return Err(Errno::EBUSY);
        }
        if !self.devices[i].cfg.disable_idle_d3 {
            self.resume_and_get(i, "open")?;
        }
        self.set_power_state(i, PowerState::D0);
        self.next_handle += 1;
        let handle = self.next_handle;
        let d = self.dev(i);
        d.handle = Some(handle);
        d.engaged = false;
        d.wake = None;
        d.pm_intx_masked = false;
        d.intx = d.cfg.intx.then(Intx::default);
        let device = d.address();
        self.log(Event::Opened { device });
        Ok(handle)
    }

    /// Last close (`vfio_pci_core_disable`): exit without signalling, resume, D0, IRQs off,
    /// reset, drop the open reference so the unused device suspends again.
    pub(crate) fn close(&mut self, i: usize, handle: u64) -> Result<(), Errno> {
        self.check_handle(i, handle)?;
        let wake = self.dev(i).wake.take();
        self.engaged_exit(i, wake, "close exit");
        let _ = self.resume(i, "close");
        self.set_power_state(i, PowerState::D0);
        let d = self.dev(i);
        d.intx = None;
        d.pm_intx_masked = false;
        d.handle = None;
        let (device, reset) = (d.address(), d.cfg.reset_works);
        if reset {
            self.log(Event::Reset {
                device,
                kind: "function",
            });
        }
        if !self.devices[i].cfg.disable_idle_d3 {
            self.put(i, "close");
        }
        self.log(Event::Closed { device });
        Ok(())
    }

    /// The device-fd ioctl wrapper: runtime get (EIO on failure) before anything else, the
    /// handler, then the asynchronous put.
    pub(crate) fn device_ioctl<T>(
        &mut self,
        i: usize,
        handle: u64,
        handler: impl FnOnce(&mut HostState) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        self.check_handle(i, handle)?;
        let wraps = self.kernel.calls_resume_device();
        if wraps && self.resume_and_get(i, "ioctl get").is_err() {
            return Err(Errno::EIO);
        }
        let result = handler(self);
        if wraps {
            self.put(i, "ioctl put");
        }
        result
    }

    /// VFIO_DEVICE_FEATURE after the wrapper (`vfio_ioctl_device_feature` and vfio-pci's op).
    /// `argsz` is clamped to the header plus payload, as `vfio_pm::feature::device_feature`
    /// does for the real kernel.
    pub(crate) fn feature(
        &mut self,
        i: usize,
        argsz: u32,
        flags: u32,
        payload: &[u8],
    ) -> Result<(), Errno> {
        let total = (HEADER_SIZE as usize).saturating_add(payload.len());
        let argsz = u64::from(argsz).min(total as u64);
        if argsz < u64::from(HEADER_SIZE) {
            return Err(Errno::EINVAL);
        }
        if flags & !(FEATURE_MASK | FLAG_GET | FLAG_SET | FLAG_PROBE) != 0 {
            return Err(Errno::EINVAL);
        }
        if flags & FLAG_PROBE == 0 && flags & FLAG_SET != 0 && flags & FLAG_GET != 0 {
            return Err(Errno::EINVAL);
        }
        let data_len = argsz - u64::from(HEADER_SIZE);
        match flags & FEATURE_MASK {
            // Core migration / dirty logging / data size: plain vfio-pci has no mig_ops/log_ops.
            1 | 2 | 6 | 7 | 8 | 9 => Err(Errno::ENOTTY),
            // MIG_PRECOPY_INFOv2 (7.3): the core refuses a device without pre-copy migration
            // before looking at the flags.
            12 if self.kernel.has_precopy_info_v2() => Err(Errno::EINVAL),
            _ if !self.devices[i].cfg.device_feature_op => {
                Err(self.kernel.missing_feature_op_errno())
            }
            index @ 3..=5 if self.kernel.has_low_power_features() => {
                let minsz = if index == 4 { 8 } else { 0 };
                if check_feature(flags, data_len, minsz)? {
                    return Ok(());
                }
                match index {
                    3 => self.entry(i, None),
                    4 => {
                        let fd_bytes = payload.get(0..4).ok_or(Errno::EFAULT)?;
                        let fd = i32::from_ne_bytes([
                            fd_bytes[0],
                            fd_bytes[1],
                            fd_bytes[2],
                            fd_bytes[3],
                        ]);
                        if fd < 0 {
                            return Err(Errno::EINVAL);
                        }
                        let ctx = WakeupEventFd::from_user_fd(fd)?;
                        self.entry(i, Some(ctx))
                    }
                    _ => {
                        let wake = self.dev(i).wake.take();
                        self.engaged_exit(i, wake, "exit");
                        Ok(())
                    }
                }
            }
            11 if self.kernel.has_dma_buf_feature() => dma_buf_feature(flags, payload, data_len),
            // VF token on a non-PF, anything else.
            _ => Err(Errno::ENOTTY),
        }
    }

    /// `vfio_pci_runtime_pm_entry`.
    fn entry(&mut self, i: usize, wake: Option<WakeupEventFd>) -> Result<(), Errno> {
        self.zap_mmaps(i);
        if self.devices[i].engaged {
            return Err(Errno::EINVAL); // `wake` dropped: the reference is put, no signal
        }
        let d = self.dev(i);
        d.engaged = true;
        let wakeup = wake.is_some();
        d.wake = wake;
        let device = d.address();
        self.log(Event::Engaged {
            device,
            engaged: true,
            wakeup,
        });
        self.put_noidle(i, "entry put_noidle");
        Ok(())
    }

    /// `vfio_pci_rw`: index check, zero count, runtime get (EIO), the access, put.
    pub(crate) fn region_rw(
        &mut self,
        i: usize,
        handle: u64,
        region: u32,
        offset: u64,
        len: usize,
        access: Access<'_>,
    ) -> Result<usize, Errno> {
        self.check_handle(i, handle)?;
        if region >= NUM_REGIONS {
            return Err(Errno::EINVAL);
        }
        if len == 0 {
            return Ok(0);
        }
        let wraps = self.kernel.calls_resume_device();
        if wraps && self.resume_and_get(i, "region rw get").is_err() {
            return Err(Errno::EIO);
        }
        let result = match region {
            CONFIG_REGION => self.config_rw(i, offset, access),
            BAR0_REGION => self.bar_rw(i, offset, access),
            _ => Err(Errno::EINVAL),
        };
        if wraps {
            self.put(i, "region rw put");
        }
        result
    }

    fn config_rw(&mut self, i: usize, offset: u64, access: Access<'_>) -> Result<usize, Errno> {
        let len = access.len();
        if !ConfigSpace::in_range(offset, len) {
            return Err(Errno::EFAULT);
        }
        let at = offset as usize;
        match access {
            Access::Read(buf) => {
                let d = &self.devices[i];
                d.config.read(at, buf, &d.power);
            }
            Access::Write(data) => {
                if let Some(PmcsrRequest(bits)) = self.dev(i).config.write(at, data) {
                    let state = match bits {
                        0 => PowerState::D0,
                        1 => PowerState::D1,
                        2 => PowerState::D2,
                        _ => PowerState::D3Hot,
                    };
                    // vfio_lock_and_set_power_state: ≥D3hot zaps mmaps first.
                    if state == PowerState::D3Hot {
                        self.zap_mmaps(i);
                    }
                    self.set_power_state(i, state);
                }
            }
        }
        Ok(len)
    }

    /// `__vfio_pci_memory_enabled`.
    fn memory_enabled(&self, i: usize) -> bool {
        let d = &self.devices[i];
        !d.power.is_d3() && d.config.memory_enabled()
    }

    fn bar_rw(&mut self, i: usize, offset: u64, access: Access<'_>) -> Result<usize, Errno> {
        let size = self.devices[i].cfg.bar0_size;
        if size == 0 || offset >= size {
            return Err(Errno::EINVAL);
        }
        if !self.memory_enabled(i) {
            return Err(Errno::EIO);
        }
        let n = (access.len() as u64).min(size - offset) as usize;
        if let Access::Read(buf) = access {
            buf[..n].fill(0);
        }
        Ok(n)
    }

    /// VFIO_DEVICE_RESET inside the wrapper.
    pub(crate) fn function_reset(&mut self, i: usize) -> Result<(), Errno> {
        if !self.devices[i].cfg.reset_works {
            return Err(Errno::EINVAL);
        }
        self.zap_mmaps(i);
        self.set_power_state(i, PowerState::D0);
        let device = self.devices[i].address();
        self.log(Event::Reset {
            device,
            kind: "function",
        });
        Ok(())
    }

    /// VFIO_DEVICE_PCI_HOT_RESET inside the wrapper: every dev_set member is resumed (so
    /// wakeup-armed siblings signal and auto-exit), reset, and released.
    pub(crate) fn hot_reset(&mut self, i: usize) -> Result<(), Errno> {
        if !self.devices[i].cfg.reset_works {
            return Err(Errno::EINVAL);
        }
        let set = self.devices[i].cfg.dev_set;
        let members: Vec<usize> = (0..self.devices.len())
            .filter(|&j| j == i || (set.is_some() && self.devices[j].cfg.dev_set == set))
            .collect();
        let mut held = Vec::new();
        for &j in &members {
            if let Err(e) = self.resume_and_get(j, "hot reset get") {
                for &k in &held {
                    self.put(k, "hot reset put");
                }
                return Err(e);
            }
            held.push(j);
        }
        for &j in &members {
            self.zap_mmaps(j);
            self.set_power_state(j, PowerState::D0);
            let device = self.devices[j].address();
            self.log(Event::Reset {
                device,
                kind: "bus",
            });
        }
        for &j in &held {
            self.put(j, "hot reset put");
        }
        Ok(())
    }

    /// `mmap` of `region` (only a memory BAR, here BAR0, is mmap-capable: EINVAL otherwise)
    /// and a touch of it, i.e. the mmap fault handler: SIGBUS while engaged or while memory is
    /// disabled; never resumes the device.
    pub(crate) fn mmap_access(
        &self,
        i: usize,
        handle: u64,
        region: u32,
    ) -> Result<MmapAccess, Errno> {
        self.check_handle(i, handle)?;
        if region != BAR0_REGION || self.devices[i].cfg.bar0_size == 0 {
            return Err(Errno::EINVAL);
        }
        if self.devices[i].engaged || !self.memory_enabled(i) {
            Ok(MmapAccess::SigBus)
        } else {
            Ok(MmapAccess::Ok)
        }
    }

    /// A host sysfs config read (`pci_config_pm_runtime_get/put`): resumes only from D3cold.
    pub(crate) fn host_config_read(&mut self, i: usize) {
        self.get_noresume(i, "sysfs config get");
        if self.devices[i].power == PowerState::D3Cold {
            let _ = self.resume(i, "sysfs config read");
        }
        self.put(i, "sysfs config put");
    }

    /// A write to `power/control` or `d3cold_allowed`.
    pub(crate) fn set_knob(&mut self, i: usize, knob: HostKnob) {
        match knob {
            HostKnob::RuntimePmAllowed(false) => {
                if std::mem::replace(&mut self.dev(i).runtime_allowed, false) {
                    self.get_noresume(i, "pm_runtime_forbid");
                    let _ = self.resume(i, "power/control=on");
                }
            }
            HostKnob::RuntimePmAllowed(true) => {
                if !std::mem::replace(&mut self.dev(i).runtime_allowed, true) {
                    self.put(i, "pm_runtime_allow");
                }
            }
            HostKnob::D3ColdAllowed(on) => {
                self.dev(i).d3cold_allowed = on;
                let _ = self.resume(i, "d3cold_allowed store");
            }
        }
    }

    /// The user masks (SET_IRQS ACTION_MASK) or unmasks INTx.
    pub(crate) fn user_intx_mask(&mut self, i: usize, masked: bool) -> Result<(), Errno> {
        let device = self.devices[i].address();
        let intx = self.dev(i).intx.as_mut().ok_or(Errno::EINVAL)?;
        if masked {
            intx.masked = true;
            self.log(Event::Intx {
                device,
                masked: true,
                by_pm: false,
            });
        } else {
            self.intx_unmask(i, false);
        }
        Ok(())
    }

    /// The device asserts INTx: signalled and auto-masked, or left pending while masked.
    pub(crate) fn raise_intx(&mut self, i: usize) -> Result<(), Errno> {
        let intx = self.dev(i).intx.as_mut().ok_or(Errno::EINVAL)?;
        if intx.masked {
            intx.pending = true;
        } else {
            intx.triggers += 1;
            intx.masked = true;
        }
        Ok(())
    }
}

/// `vfio_check_feature` for a SET-only feature: Ok(true) = PROBE answered (do nothing).
/// `vfio_pci_core_feature_dma_buf` (6.19+) up to where a dma-buf would be created: a
/// GET-only feature whose payload is `struct vfio_device_feature_dma_buf` (16 bytes:
/// region_index, open_flags, flags, nr_ranges). Exporting is not modelled: a request that
/// passes the checks the model knows answers EOPNOTSUPP.
fn dma_buf_feature(flags: u32, payload: &[u8], data_len: u64) -> Result<(), Errno> {
    const MINSZ: u64 = 16;
    if check_feature_ops(flags, data_len, MINSZ, FLAG_GET)? {
        return Ok(());
    }
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(Errno::EFAULT)
    };
    let (region, dma_flags, nr_ranges) = (word(0)?, word(8)?, word(12)?);
    if nr_ranges == 0 || dma_flags != 0 {
        return Err(Errno::EINVAL);
    }
    if region >= 6 {
        return Err(Errno::ENODEV);
    }
    Err(Errno::EOPNOTSUPP)
}

/// `vfio_check_feature` for a SET-only feature (the low-power ones).
fn check_feature(flags: u32, data_len: u64, minsz: u64) -> Result<bool, Errno> {
    check_feature_ops(flags, data_len, minsz, FLAG_SET)
}

/// `vfio_check_feature(flags, argsz, supported_ops, minsz)`: Ok(true) for a PROBE that
/// succeeds, Ok(false) when the call is to be performed.
fn check_feature_ops(flags: u32, data_len: u64, minsz: u64, supported: u32) -> Result<bool, Errno> {
    if flags & (FLAG_GET | FLAG_SET) & !supported != 0 {
        return Err(Errno::EINVAL);
    }
    if flags & FLAG_PROBE != 0 {
        return Ok(true);
    }
    if flags & (FLAG_GET | FLAG_SET) == 0 {
        return Err(Errno::EINVAL);
    }
    if data_len < minsz {
        return Err(Errno::EINVAL);
    }
    Ok(false)
}

/// A region access: read into a buffer or write from one.
pub(crate) enum Access<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Access<'_> {
    fn len(&self) -> usize {
        match self {
            Access::Read(b) => b.len(),
            Access::Write(b) => b.len(),
        }
    }
}
