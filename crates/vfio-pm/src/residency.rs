//! How long a device spends in D0, D3hot and D3cold, and how often it wakes.
//!
//! Two sources, with different certainty:
//!
//! - The kernel's runtime-PM counters (`power/runtime_active_time` and
//!   `power/runtime_suspended_time`, milliseconds since boot) are exact but do not say whether a
//!   suspended device sat in D3hot or D3cold, nor how many times it woke.
//! - A watcher (`vfio-pm watch`, the exporter's sampler) samples `power_state` and
//!   `power/runtime_status` and feeds a [`ResidencyTracker`]. Between two samples the tracker
//!   attributes the kernel counters' growth: active time to D0, suspended time to the D3 state
//!   observed at either end of the interval. Without counters, or when they did not advance with
//!   the clock (a captured tree), it holds the earlier sample's state for the whole interval. It counts transitions and wakes (suspended → active), plus wakes it
//!   missed but can prove from the counters (active time grew while both samples were suspended).
//!
//! [`Residency::from_report`] gives the since-boot picture from one reading, saying how the
//! suspended time was split ([`D3Split`]): the kernel does not split it, so it is only split when
//! the device cannot reach D3cold at all (then all of it was D3hot).
//!
//! Time is injected: the tracker takes timestamps as a [`Duration`] since any monotonic epoch the
//! caller picks, so tests feed it made-up times.

use crate::power::{PowerObservation, PowerState, RuntimeStatus};
use crate::sysfs::{D3coldPower, DeviceReport};
use serde::{Serialize, Serializer};
use std::time::Duration;

/// One sampled reading of a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// `power_state` and `power/runtime_status`.
    pub observation: PowerObservation,
    /// `power/runtime_active_time` (ms since boot), when readable.
    pub active_ms: Option<u64>,
    /// `power/runtime_suspended_time` (ms since boot), when readable.
    pub suspended_ms: Option<u64>,
}

impl Sample {
    /// A sample from a report; `None` when the power state or runtime status is unreadable.
    pub fn from_report(r: &DeviceReport) -> Option<Self> {
        Some(Self {
            observation: PowerObservation {
                power_state: r.power_state.known()?.clone(),
                runtime_status: r.runtime_status.known()?.clone(),
            },
            active_ms: r.runtime_active_ms.known().copied(),
            suspended_ms: r.runtime_suspended_ms.known().copied(),
        })
    }

    /// A sample without kernel counters.
    pub fn without_counters(power_state: PowerState, runtime_status: RuntimeStatus) -> Self {
        Self {
            observation: PowerObservation {
                power_state,
                runtime_status,
            },
            active_ms: None,
            suspended_ms: None,
        }
    }
}

/// Time attributed to each power state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateTimes {
    /// D0 (fully on).
    #[serde(rename = "d0_seconds", serialize_with = "secs")]
    pub d0: Duration,
    /// D3hot.
    #[serde(rename = "d3hot_seconds", serialize_with = "secs")]
    pub d3hot: Duration,
    /// D3cold.
    #[serde(rename = "d3cold_seconds", serialize_with = "secs")]
    pub d3cold: Duration,
    /// Suspended, but neither sample around it showed which D3 state (a short suspend between
    /// two samples that both saw the device awake).
    #[serde(rename = "d3_unattributed_seconds", serialize_with = "secs")]
    pub d3_unattributed: Duration,
    /// Any other state (D1, D2, `unknown`, odd values).
    #[serde(rename = "other_seconds", serialize_with = "secs")]
    pub other: Duration,
}

impl StateTimes {
    /// The sum of every bucket.
    pub fn total(&self) -> Duration {
        self.d0 + self.d3hot + self.d3cold + self.d3_unattributed + self.other
    }

    fn bucket(&mut self, state: &PowerState) -> &mut Duration {
        match state {
            PowerState::D0 => &mut self.d0,
            PowerState::D3Hot => &mut self.d3hot,
            PowerState::D3Cold => &mut self.d3cold,
            _ => &mut self.other,
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_secs<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A change between two consecutive samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When the new state was first seen.
    pub at: Duration,
    /// The state before.
    pub from: PowerObservation,
    /// The state now.
    pub to: PowerObservation,
    /// How long the previous state had been seen (from its first to this sample).
    pub previous_for: Duration,
    /// True when this change completes a wake (the device was suspended and is active now).
    pub wake: bool,
}

/// Follows one device's samples: transitions, wakes and time per state.
#[derive(Clone, Debug, Default)]
pub struct ResidencyTracker {
    first_at: Option<Duration>,
    last: Option<(Duration, Sample)>,
    since: Duration,
    settled: Option<RuntimeStatus>,
    observed: StateTimes,
    transitions: u64,
    wakes: u64,
    missed_wakes: u64,
    counter_jumps: u64,
}

/// How far the kernel counters may outgrow the wall clock between two samples before the
/// growth is taken for a counter reset or a bad read: the reads of one sample are not
/// instantaneous, so a little more than the elapsed time is normal.
fn counter_slack(dt: Duration) -> Duration {
    Duration::from_secs(1) + dt / 4
}

impl ResidencyTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a sample taken at `at`; returns the transition when the state changed.
    ///
    /// Samples must come in time order; one older than the previous is attributed no time.
    pub fn observe(&mut self, at: Duration, sample: &Sample) -> Option<Transition> {
        let Some((prev_at, prev)) = self.last.take() else {
            self.first_at = Some(at);
            self.since = at;
            self.settle(&sample.observation.runtime_status);
            self.last = Some((at, sample.clone()));
            return None;
        };
        let at = at.max(prev_at);
        self.attribute(at - prev_at, &prev, sample);
        let mut transition = None;
        if sample.observation != prev.observation {
            self.transitions += 1;
            let wake = self.settle(&sample.observation.runtime_status);
            if wake {
                self.wakes += 1;
            }
            transition = Some(Transition {
                at,
                from: prev.observation.clone(),
                to: sample.observation.clone(),
                previous_for: at.saturating_sub(self.since),
                wake,
            });
            self.since = at;
        }
        self.last = Some((at, sample.clone()));
        transition
    }

    /// Records a runtime status; true when it starts a wake.
    ///
    /// A wake counts from the moment the resume is seen (`resuming` or `active` after
    /// `suspended`): a short wake sampled only as `suspended → resuming → suspended` is still a
    /// wake. `suspending` changes nothing until it settles.
    fn settle(&mut self, status: &RuntimeStatus) -> bool {
        match status {
            RuntimeStatus::Suspending => false,
            RuntimeStatus::Resuming | RuntimeStatus::Active => {
                let wake = self.settled == Some(RuntimeStatus::Suspended);
                self.settled = Some(RuntimeStatus::Active);
                wake
            }
            other => {
                self.settled = Some(other.clone());
                false
            }
        }
    }

    fn attribute(&mut self, dt: Duration, prev: &Sample, now: &Sample) {
        let delta = |a: Option<u64>, b: Option<u64>| b?.checked_sub(a?).map(Duration::from_millis);
        let active = delta(prev.active_ms, now.active_ms);
        let suspended = delta(prev.suspended_ms, now.suspended_ms);
        let live = |a: Duration, s: Duration| (a + s) * 2 >= dt;
        let (Some(active), Some(suspended)) = (active, suspended) else {
            // No counters, or they went backwards (the device was replaced): hold the state.
            *self.observed.bucket(&prev.observation.power_state) += dt;
            return;
        };
        if active.saturating_add(suspended) > dt.saturating_add(counter_slack(dt)) {
            // More counted time than passed: a reset or a bad read, not residency.
            self.counter_jumps += 1;
            *self.observed.bucket(&prev.observation.power_state) += dt;
            return;
        }
        if !live(active, suspended) {
            // The counters did not keep up with the clock (a captured tree, or a kernel that
            // updates them only at transitions): hold the state instead.
            *self.observed.bucket(&prev.observation.power_state) += dt;
            return;
        }
        self.observed.d0 += active;
        let d3 = [&prev.observation.power_state, &now.observation.power_state]
            .into_iter()
            .find(|s| s.is_d3());
        match d3 {
            Some(s) => *self.observed.bucket(s) += suspended,
            None => self.observed.d3_unattributed += suspended,
        }
        let asleep = |s: &Sample| {
            matches!(
                s.observation.runtime_status,
                RuntimeStatus::Suspended | RuntimeStatus::Suspending
            )
        };
        let suspended_both = asleep(prev) && asleep(now);
        let active_both = prev.observation.runtime_status == RuntimeStatus::Active
            && now.observation.runtime_status == RuntimeStatus::Active;
        // Awake time between two suspended samples, or suspended time between two active ones:
        // the device woke (at least once) without either sample seeing it.
        if (suspended_both && !active.is_zero()) || (active_both && !suspended.is_zero()) {
            self.wakes += 1;
            self.missed_wakes += 1;
        }
    }

    /// State changes seen (power state or runtime status).
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Wakes (suspended → active), seen or proven from the counters; a lower bound.
    pub fn wakes(&self) -> u64 {
        self.wakes
    }

    /// The part of [`wakes`](Self::wakes) that no sample saw, proven from the kernel counters.
    pub fn missed_wakes(&self) -> u64 {
        self.missed_wakes
    }

    /// Sample intervals over which the kernel counters grew by more than the time that passed
    /// (a counter reset or a bad read); their time was attributed to the held state instead.
    pub fn counter_jumps(&self) -> u64 {
        self.counter_jumps
    }

    /// Time attributed to each state between the first and the last sample.
    pub fn observed(&self) -> StateTimes {
        self.observed
    }

    /// Time from the first to the last sample.
    pub fn watched(&self) -> Duration {
        match (self.first_at, &self.last) {
            (Some(first), Some((last, _))) => last.saturating_sub(first),
            _ => Duration::ZERO,
        }
    }

    /// The last sample and how long its state has been seen, at time `now`.
    pub fn current(&self, now: Duration) -> Option<(&Sample, Duration)> {
        let (_, s) = self.last.as_ref()?;
        Some((s, now.saturating_sub(self.since)))
    }

    /// Everything the tracker knows as of the last sample, for printing or JSON.
    pub fn summary(&self) -> TrackerSummary {
        let at = self.last.as_ref().map_or(Duration::ZERO, |(at, _)| *at);
        self.summary_at(at)
    }

    /// As [`summary`](Self::summary), with the last sampled state held until `now` (when a
    /// watch stops between two samples). Does not change the tracker.
    pub fn summary_at(&self, now: Duration) -> TrackerSummary {
        let last = self.last.as_ref().map(|(_, s)| s);
        let mut observed = self.observed;
        let mut watched = self.watched();
        if let Some((at, s)) = &self.last {
            let extra = now.saturating_sub(*at);
            *observed.bucket(&s.observation.power_state) += extra;
            watched += extra;
        }
        TrackerSummary {
            watched,
            observed,
            transitions: self.transitions,
            wakes: self.wakes,
            missed_wakes: self.missed_wakes,
            counter_jumps: self.counter_jumps,
            last: last.map(|s| s.observation.clone()),
            kernel_active: last.and_then(|s| s.active_ms).map(Duration::from_millis),
            kernel_suspended: last.and_then(|s| s.suspended_ms).map(Duration::from_millis),
        }
    }
}

/// What a [`ResidencyTracker`] saw, in serializable form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackerSummary {
    /// Time from the first to the last sample.
    #[serde(rename = "watched_seconds", serialize_with = "secs")]
    pub watched: Duration,
    /// Time attributed to each state while watching.
    pub observed: StateTimes,
    /// State changes seen.
    pub transitions: u64,
    /// Wakes, seen or proven from the counters.
    pub wakes: u64,
    /// Wakes no sample saw, proven from the counters (included in `wakes`).
    pub missed_wakes: u64,
    /// Intervals where the kernel counters grew faster than the clock (reset or bad read).
    pub counter_jumps: u64,
    /// The last state seen.
    pub last: Option<PowerObservation>,
    /// The kernel's runtime-active time since boot, at the last sample.
    #[serde(rename = "kernel_active_seconds", serialize_with = "opt_secs")]
    pub kernel_active: Option<Duration>,
    /// The kernel's runtime-suspended time since boot, at the last sample.
    #[serde(rename = "kernel_suspended_seconds", serialize_with = "opt_secs")]
    pub kernel_suspended: Option<Duration>,
}

/// How the kernel's suspended time was split between D3hot and D3cold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum D3Split {
    /// Not split: the kernel does not say, and the device may use either (watch it to find out).
    Unknown,
    /// All of it was D3hot: this device cannot reach D3cold (`d3cold_allowed` is 0 or the
    /// firmware gives the slot no D3hot power resources, `_PR3`). Inferred from sysfs.
    InferredNoD3cold,
}

/// Since-boot residency from one reading of the kernel counters.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Residency {
    /// Time runtime-active, i.e. in D0 (kernel counter).
    #[serde(rename = "d0_seconds", serialize_with = "opt_secs")]
    pub d0: Option<Duration>,
    /// Time runtime-suspended, i.e. in D3hot or D3cold (kernel counter).
    #[serde(rename = "d3_seconds", serialize_with = "opt_secs")]
    pub d3: Option<Duration>,
    /// Time in D3hot, when it can be told.
    #[serde(rename = "d3hot_seconds", serialize_with = "opt_secs")]
    pub d3hot: Option<Duration>,
    /// Time in D3cold, when it can be told.
    #[serde(rename = "d3cold_seconds", serialize_with = "opt_secs")]
    pub d3cold: Option<Duration>,
    /// Share of the counted time spent suspended (0..=1).
    pub suspended_share: Option<f64>,
    /// How `d3` was split into `d3hot` and `d3cold`.
    pub d3_split: D3Split,
    /// Why the counters were not used, when they count more time than has passed since boot
    /// (a counter reset or a bad read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counter_error: Option<String>,
}

/// Time since this host booted (`/proc/uptime`), the bound of the since-boot counters.
pub fn uptime() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

impl Residency {
    /// Since-boot residency of the device `r` describes. Counters that add up to more than
    /// `since_boot` (when given; see [`uptime`]) are a reset or a bad read: not used, and said
    /// so in `counter_error`.
    pub fn from_report(r: &DeviceReport, since_boot: Option<Duration>) -> Self {
        let mut d0 = r
            .runtime_active_ms
            .known()
            .map(|ms| Duration::from_millis(*ms));
        let mut d3 = r
            .runtime_suspended_ms
            .known()
            .map(|ms| Duration::from_millis(*ms));
        let counted = d0
            .unwrap_or_default()
            .saturating_add(d3.unwrap_or_default());
        let counter_error = since_boot
            .filter(|b| counted > b.saturating_add(counter_slack(Duration::ZERO)))
            .map(|b| {
                format!(
                    "runtime_active_time + runtime_suspended_time = {} s, more than the {} s since boot: a counter reset or a bad read",
                    counted.as_secs(),
                    b.as_secs()
                )
            });
        if counter_error.is_some() {
            (d0, d3) = (None, None);
        }
        let no_d3cold = r.d3cold_allowed.known() == Some(&false)
            || matches!(r.d3cold_power(), D3coldPower::None(_));
        let suspended_share = match (d0, d3) {
            (Some(a), Some(s)) if !(a + s).is_zero() => {
                Some(s.as_secs_f64() / (a + s).as_secs_f64())
            }
            _ => None,
        };
        let (d3hot, d3cold, d3_split) = if no_d3cold {
            (d3, d3.map(|_| Duration::ZERO), D3Split::InferredNoD3cold)
        } else {
            (None, None, D3Split::Unknown)
        };
        Self {
            d0,
            d3,
            d3hot,
            d3cold,
            suspended_share,
            d3_split,
            counter_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(state: &str, status: &str, active_ms: u64, suspended_ms: u64) -> Sample {
        Sample {
            observation: PowerObservation {
                power_state: PowerState::from_sysfs(state),
                runtime_status: RuntimeStatus::from_sysfs(status),
            },
            active_ms: Some(active_ms),
            suspended_ms: Some(suspended_ms),
        }
    }

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_wake_seen_only_as_resuming_counts_once() {
        // Seen in QEMU: a host config read sampled as suspended -> resuming -> suspended.
        let mut tr = ResidencyTracker::new();
        tr.observe(t(0), &s("D3cold", "suspended", 100, 1000));
        let x = tr
            .observe(t(650), &s("D3cold", "resuming", 100, 1650))
            .unwrap();
        assert!(x.wake);
        tr.observe(t(700), &s("D3cold", "suspended", 126, 1674));
        tr.observe(t(2000), &s("D3cold", "suspended", 126, 2974));
        assert_eq!(tr.wakes(), 1);
        assert_eq!(tr.missed_wakes(), 0);
    }

    #[test]
    fn counts_transitions_and_wakes_with_time_in_previous_state() {
        let mut tr = ResidencyTracker::new();
        assert_eq!(tr.observe(t(0), &s("D0", "active", 100, 0)), None);
        let x = tr
            .observe(t(1000), &s("D3cold", "suspended", 1100, 0))
            .unwrap();
        assert_eq!(x.previous_for, t(1000));
        assert!(!x.wake);
        assert_eq!(
            tr.observe(t(2000), &s("D3cold", "suspended", 1100, 1000)),
            None
        );
        let x = tr
            .observe(t(3000), &s("D0", "resuming", 1100, 2000))
            .unwrap();
        assert!(x.wake, "the resume is the wake");
        assert_eq!(x.previous_for, t(2000));
        let x = tr.observe(t(3500), &s("D0", "active", 1600, 2000)).unwrap();
        assert!(!x.wake, "the same wake, completed");
        assert_eq!(tr.transitions(), 3);
        assert_eq!(tr.wakes(), 1);
        assert_eq!(tr.missed_wakes(), 0);
        let o = tr.observed();
        assert_eq!(o.d0, t(1500));
        assert_eq!(o.d3cold, t(2000));
        assert_eq!(o.d3hot, Duration::ZERO);
        assert_eq!(tr.watched(), t(3500));
        assert_eq!(o.total(), tr.watched());
        let later = tr.summary_at(t(4500));
        assert_eq!(later.watched, t(4500));
        assert_eq!(later.observed.d0, t(2500));
        assert_eq!(later.kernel_active, Some(t(1600)));
        assert_eq!(tr.summary().watched, t(3500), "summary_at changes nothing");
    }

    #[test]
    fn suspended_time_goes_to_the_observed_d3_state() {
        let mut tr = ResidencyTracker::new();
        tr.observe(t(0), &s("D3hot", "suspended", 0, 5000));
        tr.observe(t(1000), &s("D3hot", "suspended", 0, 6000));
        tr.observe(t(2000), &s("D3cold", "suspended", 0, 7000));
        // Both samples awake, but the counters show a suspend in between: flavour unknown.
        tr.observe(t(3000), &s("D0", "active", 500, 7500));
        tr.observe(t(4000), &s("D0", "active", 1000, 8000));
        let o = tr.observed();
        assert_eq!(o.d3hot, t(2000), "{o:?}");
        assert_eq!(o.d3cold, t(500));
        assert_eq!(o.d3_unattributed, t(500));
        assert_eq!(o.d0, t(1000));
        assert_eq!(tr.wakes(), 2, "one seen, one proven from the counters");
        assert_eq!(tr.missed_wakes(), 1);
    }

    #[test]
    fn proves_wakes_no_sample_saw() {
        let mut tr = ResidencyTracker::new();
        tr.observe(t(0), &s("D3cold", "suspended", 0, 0));
        // A config-space read woke the device for 30 ms between samples.
        assert_eq!(
            tr.observe(t(1000), &s("D3cold", "suspended", 30, 970)),
            None
        );
        assert_eq!(tr.wakes(), 1);
        assert_eq!(tr.missed_wakes(), 1);
        assert_eq!(tr.transitions(), 0);
        assert_eq!(tr.observed().d0, t(30));
    }

    #[test]
    fn without_counters_holds_the_earlier_state_and_survives_odd_input() {
        let mut tr = ResidencyTracker::new();
        let d3 = Sample::without_counters(PowerState::D3Cold, RuntimeStatus::Suspended);
        let d0 = Sample::without_counters(PowerState::D0, RuntimeStatus::Active);
        tr.observe(t(1000), &d3);
        tr.observe(t(3000), &d0);
        // Out-of-order time is attributed nothing rather than panicking.
        tr.observe(t(2000), &d3);
        assert_eq!(tr.observed().d3cold, t(2000));
        assert_eq!(tr.wakes(), 1);
        // Counters that go backwards (device replaced) fall back to holding the state.
        let mut tr = ResidencyTracker::new();
        tr.observe(t(0), &s("D0", "active", 9000, 9000));
        tr.observe(t(1000), &s("D0", "active", 10, 0));
        assert_eq!(tr.observed().d0, t(1000));
        assert_eq!(tr.missed_wakes(), 0);
        let other = Sample::without_counters(PowerState::from_sysfs("D9"), RuntimeStatus::Error);
        tr.observe(t(2000), &other);
        tr.observe(t(2500), &other);
        assert_eq!(tr.observed().other, t(500));
        // Frozen counters (a captured tree) are not evidence: the state is held.
        let mut frozen = ResidencyTracker::new();
        frozen.observe(t(0), &s("D3hot", "suspended", 5000, 2000));
        frozen.observe(t(1000), &s("D3hot", "suspended", 5000, 2000));
        assert_eq!(frozen.observed().d3hot, t(1000));
        let json = serde_json::to_value(tr.summary()).unwrap();
        assert_eq!(json["observed"]["other_seconds"], 0.5);
        assert_eq!(json["transitions"], 1);
    }

    #[test]
    fn counters_growing_faster_than_the_clock_are_a_jump_not_residency() {
        let mut tr = ResidencyTracker::new();
        tr.observe(t(0), &s("D0", "active", 1000, 0));
        tr.observe(t(1000), &s("D0", "active", u64::MAX, 0));
        tr.observe(t(2000), &s("D0", "active", u64::MAX, 0));
        assert_eq!(tr.counter_jumps(), 1);
        assert_eq!(tr.observed().d0, t(2000), "the clock, not the counter");
        assert_eq!(tr.observed().total(), tr.watched());
        // Ordinary lag between the clock and the reads is not a jump.
        let mut ok = ResidencyTracker::new();
        ok.observe(t(0), &s("D0", "active", 0, 0));
        ok.observe(t(1000), &s("D0", "active", 1300, 0));
        assert_eq!(ok.counter_jumps(), 0);
        assert_eq!(ok.observed().d0, t(1300));
        assert_eq!(
            serde_json::to_value(tr.summary()).unwrap()["counter_jumps"],
            1
        );
    }

    #[test]
    fn since_boot_counters_beyond_the_uptime_are_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = crate::fake_sysfs::FakeSysfs::create(tmp.path()).unwrap();
        let mut d = crate::fake_sysfs::FakeDevice::vfio("0000:00:05.0".parse().unwrap());
        d.active_ms = u64::MAX;
        fake.add(&d).unwrap();
        let report = crate::Sysfs::new(tmp.path())
            .device(d.address)
            .unwrap()
            .report();
        let r = Residency::from_report(&report, Some(Duration::from_secs(3600)));
        assert_eq!((r.d0, r.d3, r.suspended_share), (None, None, None));
        let why = r.counter_error.unwrap();
        assert!(why.contains("more than the 3600 s since boot"), "{why}");
        assert!(uptime().is_some_and(|u| !u.is_zero()));
    }

    #[test]
    fn since_boot_split_is_only_made_when_d3cold_is_impossible() {
        let tmp = tempfile::tempdir().unwrap();
        let fake = crate::fake_sysfs::FakeSysfs::create(tmp.path()).unwrap();
        let mut d = crate::fake_sysfs::FakeDevice::vfio("0000:00:05.0".parse().unwrap());
        fake.add(&d).unwrap();
        let sysfs = crate::Sysfs::new(tmp.path());
        let r = Residency::from_report(&sysfs.device(d.address).unwrap().report(), None);
        assert_eq!(r.d0, Some(t(1000)));
        assert_eq!(r.d3, Some(t(9000)));
        assert_eq!(r.d3_split, D3Split::Unknown);
        assert_eq!(r.d3cold, None);
        assert_eq!(r.suspended_share, Some(0.9));
        d.power_resources = Some(vec![]);
        fake.add(&d).unwrap();
        let r = Residency::from_report(&sysfs.device(d.address).unwrap().report(), None);
        assert_eq!(r.d3_split, D3Split::InferredNoD3cold);
        assert_eq!((r.d3hot, r.d3cold), (Some(t(9000)), Some(Duration::ZERO)));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["d3_split"], "inferred_no_d3cold");
        assert_eq!(json["d3hot_seconds"], 9.0);
    }
}
