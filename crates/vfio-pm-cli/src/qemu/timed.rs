//! How long the host's low-power calls take: a [`PowerDevice`] that times each
//! `VFIO_DEVICE_FEATURE` SET of a low-power feature on the device it wraps, so that the agent can
//! print a bare LOW_POWER_EXIT's duration beside the guest's `_ON` round trip.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfio_pm::feature::{FEATURE_MASK, FLAG_PROBE, FLAG_SET};
use vfio_pm::{Errno, HostKnob, LowPowerFeature, PciAddress, PowerDevice};

/// The durations recorded since the last [`CallTimes::take`], shared with the agent's loop.
#[derive(Clone, Default)]
pub struct CallTimes(Arc<Mutex<Vec<CallTime>>>);

/// One timed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallTime {
    /// The device.
    pub device: PciAddress,
    /// The feature SET.
    pub feature: LowPowerFeature,
    /// From the ioctl's start to its return.
    pub took: Duration,
}

/// At most this many durations wait to be taken (bounded whatever the guest does).
const MAX_PENDING: usize = 64;

impl CallTimes {
    fn record(&self, call: CallTime) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < MAX_PENDING {
            v.push(call);
        }
    }

    /// The durations recorded since the last call, oldest first.
    pub fn take(&self) -> Vec<CallTime> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `dev`, with its low-power SETs timed into `times`.
pub struct TimedDevice<D> {
    dev: D,
    times: CallTimes,
}

impl<D> TimedDevice<D> {
    /// Wraps `dev`.
    pub fn new(dev: D, times: CallTimes) -> Self {
        Self { dev, times }
    }
}

fn low_power_set(flags: u32) -> Option<LowPowerFeature> {
    // PROBE|SET asks whether SET is supported and does nothing else.
    if flags & FLAG_SET == 0 || flags & FLAG_PROBE != 0 {
        return None;
    }
    LowPowerFeature::ALL
        .into_iter()
        .find(|f| f.index() == flags & FEATURE_MASK)
}

impl<D: PowerDevice> PowerDevice for TimedDevice<D> {
    fn address(&self) -> PciAddress {
        self.dev.address()
    }

    fn device_feature(&self, argsz: u32, flags: u32, payload: &[u8]) -> Result<(), Errno> {
        let start = Instant::now();
        let r = self.dev.device_feature(argsz, flags, payload);
        if let (Some(feature), Ok(())) = (low_power_set(flags), &r) {
            self.times.record(CallTime {
                device: self.dev.address(),
                feature,
                took: start.elapsed(),
            });
        }
        r
    }

    fn region_read(&self, region: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Errno> {
        self.dev.region_read(region, offset, buf)
    }

    fn region_write(&self, region: u32, offset: u64, data: &[u8]) -> Result<usize, Errno> {
        self.dev.region_write(region, offset, data)
    }

    fn set_host_knob(&self, knob: HostKnob) -> Result<(), Errno> {
        self.dev.set_host_knob(knob)
    }

    fn host_knob_is(&self, knob: HostKnob) -> Option<bool> {
        self.dev.host_knob_is(knob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_pm::LowPower;
    use vfio_pm_sim::{DeviceConfig, SimHost};

    #[test]
    fn times_successful_low_power_sets_only() {
        let a = PciAddress::new(0, 1, 0, 0).unwrap();
        let host = SimHost::builder()
            .device(DeviceConfig::new(a))
            .build()
            .unwrap();
        let times = CallTimes::default();
        let dev = TimedDevice::new(host.open(a).unwrap(), times.clone());
        dev.probe_low_power().unwrap();
        assert!(times.take().is_empty(), "PROBE is not timed");
        dev.enter_low_power().unwrap();
        assert!(
            dev.enter_low_power().is_err(),
            "ENTRY again is EINVAL, not timed"
        );
        dev.exit_low_power().unwrap();
        let got: Vec<_> = times.take().into_iter().map(|c| c.feature).collect();
        assert_eq!(got, [LowPowerFeature::Entry, LowPowerFeature::Exit]);
        assert!(times.take().is_empty());
    }
}
