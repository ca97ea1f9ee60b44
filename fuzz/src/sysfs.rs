//! Target `sysfs`: the contents of the sysfs files vfio-pm reads ([`Sysfs`], [`SysfsDevice`],
//! [`PowerState::from_sysfs`], [`RuntimeStatus::from_sysfs`], [`Residency`], the doctor) and
//! the residency tracker fed with what such files can say.
//!
//! Each input is a small sysfs tree written with [`FakeSysfs`] into a fresh temporary directory:
//! a device (and sometimes its upstream bridge) whose files hold the fuzzer's bytes or are
//! missing, whose `driver` and `iommu_group` links and firmware power resources have the
//! fuzzer's names. Invariants:
//!
//! - nothing panics: a missing, unreadable (not UTF-8) or odd file is a per-field
//!   [`Field::Unknown`], never a failed report;
//! - every known field is exactly what its file says: `power_state` and `runtime_status` keep
//!   the trimmed text (spelled back by `as_str`), counters are the file's decimal `u64`,
//!   `d3cold_allowed` is one of the kernel's boolean spellings, IDs keep their hex digits;
//! - [`SysfsDevice::observe`] reads the same two files and agrees with the report;
//! - [`Residency::from_report`] keeps the counters (or, given an uptime they exceed, refuses
//!   both with a reason), its suspended share lies in 0..=1, and it splits D3 only when D3cold
//!   is impossible;
//! - the doctor's verdict follows its checks (D3cold reachable only if no blocking check fails);
//! - the [`ResidencyTracker`], fed samples with any counter values (the files' content) at
//!   increasing times, keeps its counts consistent: wakes it missed are part of its wakes, every
//!   seen wake is a transition, and it watched exactly from the first to the last sample.

use arbitrary::{Result, Unstructured};
use std::path::Path;
use std::time::Duration;
use vfio_pm::doctor::{diagnose, KernelSupport, Verdict};
use vfio_pm::fake_sysfs::{FakeDevice, FakeSysfs};
use vfio_pm::residency::{D3Split, Residency, ResidencyTracker, Sample};
use vfio_pm::{Field, PciAddress, PowerObservation, PowerState, RuntimeStatus, Sysfs, SysfsDevice};

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if u.ratio(1, 4).unwrap_or(false) {
        tracker(&mut u);
        return;
    }
    let Ok(tmp) = scratch_dir() else { return };
    let Ok(tree) = Tree::arbitrary(&mut u) else {
        return;
    };
    if tree.write(tmp.path()).is_err() {
        return; // a name the file system refuses: not the parser's business
    }
    tree.check(tmp.path());
}

/// A fresh temporary directory, in memory when the machine has `/dev/shm`: on a disk-backed
/// `/tmp` writing and removing the tree costs about a hundred times more, and the fuzzer's
/// throughput with it.
pub(crate) fn scratch_dir() -> std::io::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("vfio-pm-fuzz")
            .tempdir_in(shm)
        {
            return Ok(dir);
        }
    }
    tempfile::tempdir()
}

/// Files of a device directory whose content is fuzzed (relative to the device directory).
const DEVICE_FILES: &[&str] = &[
    "vendor",
    "device",
    "class",
    "power_state",
    "power/runtime_status",
    "power/control",
    "power/runtime_active_time",
    "power/runtime_suspended_time",
    "d3cold_allowed",
];

/// Spellings the kernel uses, offered to the fuzzer beside arbitrary bytes.
const SPELLINGS: &[&str] = &[
    "D0",
    "D1",
    "D2",
    "D3hot",
    "D3cold",
    "unknown",
    "active",
    "suspended",
    "suspending",
    "resuming",
    "error",
    "unsupported",
    "auto",
    "on",
    "0",
    "1",
    "Y",
    "N",
    "0x10de",
    "0x030000",
    "18446744073709551615",
    "18446744073709551616",
    " 42\n",
    "-1",
];

/// A file's content: missing, or bytes.
type Content = Option<Vec<u8>>;

fn content(u: &mut Unstructured) -> Result<Content> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => None,
        1..=4 => {
            let mut s = u.choose(SPELLINGS)?.as_bytes().to_vec();
            if u.ratio(1, 2)? {
                s.push(b'\n');
            }
            Some(s)
        }
        _ => {
            let len = u.int_in_range(0..=40usize)?;
            Some(u.bytes(len.min(u.len()))?.to_vec())
        }
    })
}

/// A file or link name from the fuzzer: printable, no `/`, never `.` or `..`.
fn name(u: &mut Unstructured) -> Result<String> {
    let len = u.int_in_range(1..=24usize)?;
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        let c = *u.choose(b"abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789:._- ")?;
        s.push(char::from(c));
    }
    if s == "." || s == ".." {
        s.push('x');
    }
    Ok(s)
}

struct DeviceSpec {
    address: PciAddress,
    files: Vec<Content>,
    driver: Option<String>,
    iommu_group: Option<String>,
    power_resources: Option<Vec<String>>,
}

impl DeviceSpec {
    fn arbitrary(u: &mut Unstructured, address: PciAddress) -> Result<Self> {
        let files = DEVICE_FILES
            .iter()
            .map(|_| content(u))
            .collect::<Result<_>>()?;
        let driver = match u.int_in_range(0..=3u8)? {
            0 => None,
            1 => Some("vfio-pci".to_string()),
            _ => Some(name(u)?),
        };
        let iommu_group = match u.int_in_range(0..=3u8)? {
            0 => None,
            1 => Some(u.arbitrary::<u32>()?.to_string()),
            _ => Some(name(u)?),
        };
        let power_resources = if u.arbitrary()? {
            let n = u.int_in_range(0..=3usize)?;
            Some((0..n).map(|_| name(u)).collect::<Result<_>>()?)
        } else {
            None
        };
        Ok(Self {
            address,
            files,
            driver,
            iommu_group,
            power_resources,
        })
    }

    /// Writes the device with [`FakeSysfs::add`], then replaces its files with the fuzzed ones.
    fn write(&self, fake: &FakeSysfs, parent: Option<PciAddress>) -> std::io::Result<()> {
        let mut d = FakeDevice::vfio(self.address);
        d.parent = parent;
        d.driver = self.driver.clone();
        d.iommu_group = None;
        d.power_resources = self.power_resources.clone();
        let dir = fake.add(&d)?;
        if let Some(g) = &self.iommu_group {
            let group_dir = fake.root().join("kernel/iommu_groups").join(g);
            std::fs::create_dir_all(&group_dir)?;
            std::os::unix::fs::symlink(group_dir, dir.join("iommu_group"))?;
        }
        for (rel, content) in DEVICE_FILES.iter().zip(&self.files) {
            match content {
                Some(bytes) => std::fs::write(dir.join(rel), bytes)?,
                None => std::fs::remove_file(dir.join(rel))?,
            }
        }
        Ok(())
    }
}

struct Tree {
    device: DeviceSpec,
    bridge: Option<DeviceSpec>,
    disable_idle_d3: Content,
}

impl Tree {
    fn arbitrary(u: &mut Unstructured) -> Result<Self> {
        let address = PciAddress::new(
            u.arbitrary()?,
            u.arbitrary()?,
            u.int_in_range(0..=31)?,
            u.int_in_range(0..=7)?,
        )
        .ok_or(arbitrary::Error::IncorrectFormat)?;
        let bridge = if u.ratio(1, 3)? {
            let b = PciAddress::new(address.domain, address.bus.wrapping_sub(1), 0x1c, 0)
                .ok_or(arbitrary::Error::IncorrectFormat)?;
            if b == address {
                None
            } else {
                Some(DeviceSpec::arbitrary(u, b)?)
            }
        } else {
            None
        };
        Ok(Self {
            device: DeviceSpec::arbitrary(u, address)?,
            bridge,
            disable_idle_d3: content(u)?,
        })
    }

    fn write(&self, root: &Path) -> std::io::Result<()> {
        let fake = FakeSysfs::create(root)?;
        if let Some(b) = &self.bridge {
            b.write(&fake, None)?;
        }
        self.device
            .write(&fake, self.bridge.as_ref().map(|b| b.address))?;
        if let Some(bytes) = &self.disable_idle_d3 {
            let dir = root.join("module/vfio_pci/parameters");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("disable_idle_d3"), bytes)?;
        }
        Ok(())
    }

    fn check(&self, root: &Path) {
        let sysfs = Sysfs::new(root);
        let listed: Vec<PciAddress> = sysfs
            .devices()
            .expect("the tree has a devices directory")
            .iter()
            .map(SysfsDevice::address)
            .collect();
        let mut want: Vec<PciAddress> = self.bridge.iter().map(|b| b.address).collect();
        want.push(self.device.address);
        want.sort();
        assert_eq!(listed, want, "devices()");
        let dev = sysfs.device(self.device.address).expect("device exists");
        let report = dev.report();
        check_fields(&self.device, &report);
        match (&report.parent_bridge, &self.bridge) {
            (Some(r), Some(b)) => {
                assert_eq!(r.address, b.address);
                check_text_field(&b.files[3], &r.power_state, |s| {
                    PowerState::from_sysfs(s).as_str().to_string()
                });
            }
            (None, None) => {}
            (r, b) => panic!(
                "parent bridge {:?}, tree has {:?}",
                r.as_ref().map(|r| r.address),
                b.as_ref().map(|b| b.address)
            ),
        }
        check_observe(&self.device, &dev, &report);
        check_residency(&report);
        let diagnosis = diagnose(&sysfs, self.device.address, KernelSupport::InferFromVersion)
            .expect("the device exists");
        let failed = diagnosis.checks.iter().any(|c| c.verdict == Verdict::Fail);
        assert!(!(diagnosis.d3cold_reachable && failed), "{diagnosis:?}");
        let idle = sysfs.vfio_disable_idle_d3();
        let want = self
            .disable_idle_d3
            .as_deref()
            .and_then(|b| match utf8_trimmed(b)? {
                "1" | "Y" | "y" => Some(true),
                "0" | "N" | "n" => Some(false),
                _ => None,
            });
        assert_eq!(idle.known().copied(), want, "disable_idle_d3 {idle:?}");
    }
}

/// The trimmed text of a file's bytes, or `None` when they are not UTF-8.
fn utf8_trimmed(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok().map(str::trim)
}

/// A field read as text: known exactly when the file is there and UTF-8, with `value` of it.
fn check_text_field<T: std::fmt::Debug + std::fmt::Display>(
    file: &Content,
    field: &Field<T>,
    value: impl Fn(&str) -> String,
) {
    let want = file.as_deref().and_then(utf8_trimmed);
    match (want, field.known()) {
        (Some(text), Some(v)) => assert_eq!(v.to_string(), value(text), "{field:?} from {text:?}"),
        (None, None) => {}
        (w, _) => panic!("{field:?} from {w:?}"),
    }
}

/// A field parsed from text: `parse` says what the file's text gives.
fn check_parsed<T: PartialEq + std::fmt::Debug>(
    file: &Content,
    field: &Field<T>,
    parse: impl Fn(&str) -> Option<T>,
) {
    let want = file.as_deref().and_then(utf8_trimmed).and_then(parse);
    assert_eq!(field.known(), want.as_ref(), "{field:?}");
}

fn check_fields(spec: &DeviceSpec, r: &vfio_pm::DeviceReport) {
    let f = &spec.files;
    let hex = |s: &str| s.strip_prefix("0x").map(str::to_string);
    check_parsed(&f[0], &r.vendor, hex);
    check_parsed(&f[1], &r.device, hex);
    check_parsed(&f[2], &r.class, hex);
    check_text_field(&f[3], &r.power_state, |s| s.to_string());
    check_text_field(&f[4], &r.runtime_status, |s| s.to_string());
    check_text_field(&f[5], &r.power_control, |s| s.to_string());
    check_parsed(&f[6], &r.runtime_active_ms, |s| s.parse::<u64>().ok());
    check_parsed(&f[7], &r.runtime_suspended_ms, |s| s.parse::<u64>().ok());
    check_parsed(&f[8], &r.d3cold_allowed, |s| match s {
        "1" | "Y" | "y" => Some(true),
        "0" | "N" | "n" => Some(false),
        _ => None,
    });
    assert_eq!(
        r.driver.known().map(String::as_str),
        Some(spec.driver.as_deref().unwrap_or("none"))
    );
    let group = spec
        .iommu_group
        .as_deref()
        .and_then(|g| g.parse::<u32>().ok());
    assert_eq!(r.iommu_group.known().copied(), group);
    let mut resources = spec.power_resources.clone();
    if let Some(v) = &mut resources {
        v.sort();
        v.dedup();
    }
    assert_eq!(r.power_resources_d3hot.known(), resources.as_ref());
    assert_eq!(r.power_resources_d0.known(), resources.as_ref());
}

fn check_observe(spec: &DeviceSpec, dev: &SysfsDevice, r: &vfio_pm::DeviceReport) {
    let state = spec.files[3].as_deref().and_then(utf8_trimmed);
    let status = spec.files[4].as_deref().and_then(utf8_trimmed);
    let (Some(state), Some(status)) = (state, status) else {
        assert!(dev.observe().is_err(), "observe() of unreadable files");
        return;
    };
    if RuntimeStatus::from_sysfs(status).is_transient() {
        return; // observe() waits for a transition that a file never finishes
    }
    let want = PowerObservation {
        power_state: PowerState::from_sysfs(state),
        runtime_status: RuntimeStatus::from_sysfs(status),
    };
    assert_eq!(dev.observe().ok().as_ref(), Some(&want));
    assert_eq!(r.power_state.known(), Some(&want.power_state));
    let sample = Sample::from_report(r).expect("both fields known");
    assert_eq!(sample.observation, want);
}

fn check_residency(r: &vfio_pm::DeviceReport) {
    let ms = |f: &Field<u64>| f.known().map(|v| Duration::from_millis(*v));
    // Without an uptime bound the counters are taken as they are; with one (an hour here),
    // counters beyond it are refused as a whole, with a reason.
    for since_boot in [None, Some(Duration::from_secs(3600))] {
        let res = Residency::from_report(r, since_boot);
        if res.counter_error.is_some() {
            assert!(since_boot.is_some(), "a counter error without a bound");
            assert!(res.d0.is_none() && res.d3.is_none() && res.suspended_share.is_none());
        } else {
            assert_eq!(res.d0, ms(&r.runtime_active_ms));
            assert_eq!(res.d3, ms(&r.runtime_suspended_ms));
        }
        if let Some(share) = res.suspended_share {
            assert!((0.0..=1.0).contains(&share), "suspended share {share}");
        }
        match res.d3_split {
            D3Split::InferredNoD3cold => {
                assert_eq!(res.d3hot, res.d3);
                assert_eq!(res.d3cold, res.d3.map(|_| Duration::ZERO));
            }
            D3Split::Unknown => assert!(res.d3hot.is_none() && res.d3cold.is_none()),
        }
    }
}

/// Feeds the tracker samples whose counters are anything a file can hold, at increasing times.
fn tracker(u: &mut Unstructured) {
    let states = ["D0", "D3hot", "D3cold", "unknown", "D1"];
    let statuses = ["active", "suspended", "suspending", "resuming", "error"];
    let mut tr = ResidencyTracker::new();
    let mut at = Duration::from_millis(u64::from(u.arbitrary::<u32>().unwrap_or(0)));
    let first = at;
    let mut samples = 0u64;
    let mut seen_wakes = 0u64;
    let mut changes = 0u64;
    while !u.is_empty() {
        let Ok(sample) = (|| -> Result<Sample> {
            let counter = |u: &mut Unstructured| -> Result<Option<u64>> {
                Ok(match u.int_in_range(0..=3u8)? {
                    0 => None,
                    1 => Some(u.arbitrary()?),
                    _ => Some(u64::from(u.arbitrary::<u32>()?)),
                })
            };
            Ok(Sample {
                observation: PowerObservation {
                    power_state: PowerState::from_sysfs(u.choose(&states)?),
                    runtime_status: RuntimeStatus::from_sysfs(u.choose(&statuses)?),
                },
                active_ms: counter(u)?,
                suspended_ms: counter(u)?,
            })
        })() else {
            break;
        };
        if samples > 0 {
            at += Duration::from_millis(u64::from(u.arbitrary::<u16>().unwrap_or(0)) * 16);
        }
        if let Some(t) = tr.observe(at, &sample) {
            changes += 1;
            seen_wakes += u64::from(t.wake);
            assert_ne!(t.from, t.to);
        }
        samples += 1;
        let _ = tr.summary();
        let _ = tr.observed().total();
    }
    assert_eq!(tr.transitions(), changes);
    assert!(tr.transitions() <= samples.saturating_sub(1));
    assert!(tr.missed_wakes() <= tr.wakes());
    assert_eq!(tr.wakes() - tr.missed_wakes(), seen_wakes);
    if samples > 0 {
        assert_eq!(tr.watched(), at - first);
    }
}
