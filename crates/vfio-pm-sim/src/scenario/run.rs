//! The runner: drives any [`ConformanceDevice`] backend through a [`Scenario`] and records a [`Trace`].

use super::parse::{Fd, FeatureStep, Knob, PmcsrStep, Scenario, Step, StepKind};
use super::trace::{Trace, TraceLine};
use nix::errno::Errno;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;
use vfio_pm::{ConformanceDevice, EventFd, HostKnob, MmapAccess, CONFIG_REGION};

/// The fd number used for `fd=badfd`: far above any open descriptor, so the kernel's fd lookup
/// fails with EBADF.
pub const BAD_FD: i32 = 0x3fff_fff0;

/// How the runner waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// The limit passed to [`ConformanceDevice::settle`] after each settling step.
    pub settle_limit: Duration,
    /// Interleavings for `nosettle` steps: when bit `i` is set, the host's asynchronous work
    /// still runs after the `i`-th `nosettle` step of the scenario (a settle whose observation
    /// is not recorded; the line still says `unsettled`), i.e. the asynchronous suspend wins
    /// the race with the next step. 0 (the default) = the next step always wins. Meant for the
    /// model, whose suspend happens only when asked; see `vfio_pm_sim::model_outcomes`.
    pub suspend_wins: u64,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            settle_limit: Duration::from_secs(2),
            suspend_wins: 0,
        }
    }
}

/// Runs `scenario` with default options. `open` is called for `open` and `reopen` steps and
/// returns a freshly opened device (for the model: `SimHost::open`; for the kernel:
/// `KernelDevice::open`), or the errno to record.
pub fn run(
    scenario: &Scenario,
    open: &mut dyn FnMut() -> Result<Box<dyn ConformanceDevice>, Errno>,
) -> Trace {
    run_with(scenario, open, &RunOptions::default())
}

/// Runs `scenario` with `options` (see [`run`]). Never panics: every failure is recorded in
/// the trace.
pub fn run_with(
    scenario: &Scenario,
    open: &mut dyn FnMut() -> Result<Box<dyn ConformanceDevice>, Errno>,
    options: &RunOptions,
) -> Trace {
    let mut trace = Trace {
        scenario: scenario.name.clone(),
        lines: Vec::new(),
    };
    let mut efds = Vec::new();
    for name in &scenario.eventfds {
        match EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK) {
            Ok(e) => efds.push((name.clone(), e)),
            Err(e) => {
                trace.lines.push(TraceLine {
                    line: 0,
                    step: format!("create eventfd {name}"),
                    result: errno_name(io_errno(&e)),
                    eventfds: Vec::new(),
                    power: "-".into(),
                });
                return trace;
            }
        }
    }
    let mut runner = Runner {
        device: None,
        efds,
        open,
    };
    let mut nosettle_index = 0u32;
    for step in &scenario.steps {
        let result = runner.step(step);
        if !step.settle {
            let wins = options
                .suspend_wins
                .checked_shr(nosettle_index)
                .is_some_and(|b| b & 1 == 1);
            nosettle_index = nosettle_index.saturating_add(1);
            if let (true, Some(dev)) = (wins, &runner.device) {
                // Only lets the asynchronous work run; the line still says `unsettled`.
                let _ = dev.settle(options.settle_limit);
            }
        }
        let eventfds = runner
            .efds
            .iter()
            .map(|(name, e)| (name.clone(), read_counter(e)))
            .collect();
        let power = match &runner.device {
            None => "-".to_string(),
            Some(_) if !step.settle => "unsettled".to_string(),
            Some(dev) => match dev.settle(options.settle_limit) {
                Ok(obs) => obs.to_string(),
                Err(e) => errno_name(e),
            },
        };
        trace.lines.push(TraceLine {
            line: step.line,
            step: step.text.clone(),
            result,
            eventfds,
            power,
        });
    }
    trace
}

struct Runner<'a> {
    device: Option<Box<dyn ConformanceDevice>>,
    efds: Vec<(String, EventFd)>,
    open: &'a mut dyn FnMut() -> Result<Box<dyn ConformanceDevice>, Errno>,
}

impl Runner<'_> {
    fn step(&mut self, step: &Step) -> String {
        let result = match &step.kind {
            StepKind::Open => self.open(),
            StepKind::Reopen => {
                if let Some(dev) = self.device.as_mut() {
                    let _ = dev.close();
                }
                self.device = None;
                self.open()
            }
            kind => match &mut self.device {
                None => return "no-device".into(),
                Some(dev) => do_step(dev.as_mut(), kind, &self.efds),
            },
        };
        match result {
            Ok(Outcome::Done) => "ok".into(),
            Ok(Outcome::Value(value)) => format!("ok={value}"),
            Ok(Outcome::Raw(text)) => text,
            Err(e) => errno_name(e),
        }
    }

    fn open(&mut self) -> Result<Outcome, Errno> {
        // On success the previous handle (if any) is dropped, which closes it.
        self.device = Some((self.open)()?);
        Ok(Outcome::Done)
    }
}

/// A successful step's result: `ok`, `ok=VALUE`, or a word of its own (`SIGBUS`).
enum Outcome {
    Done,
    Value(String),
    Raw(String),
}

impl From<Option<String>> for Outcome {
    fn from(v: Option<String>) -> Self {
        v.map_or(Outcome::Done, Outcome::Value)
    }
}

fn do_step(
    dev: &mut dyn ConformanceDevice,
    kind: &StepKind,
    efds: &[(String, EventFd)],
) -> Result<Outcome, Errno> {
    if let StepKind::MmapTouch { region } = kind {
        return dev.bar_mmap_access(region.index()).map(|a| match a {
            MmapAccess::Ok => Outcome::Done,
            MmapAccess::SigBus => Outcome::Raw(a.to_string()),
        });
    }
    let r = match kind {
        StepKind::Open | StepKind::Reopen | StepKind::Settle => Ok(None),
        StepKind::Close => dev.close().map(|_| None),
        StepKind::Feature(f) => feature(dev, f, efds).map(|_| None),
        StepKind::Ioctl => dev.device_ioctl().map(|_| None),
        StepKind::ConfigRead => dev.host_config_read().map(|_| None),
        StepKind::RegionRead {
            region,
            offset,
            len,
        } => {
            let mut buf = vec![0u8; *len];
            dev.region_read(region.index(), *offset, &mut buf)
                .map(|_| None)
        }
        StepKind::RegionWrite {
            region,
            offset,
            data,
        } => dev
            .region_write(region.index(), *offset, data)
            .map(|_| None),
        StepKind::Pmcsr(p) => pmcsr(dev, *p),
        StepKind::Knob(k) => dev
            .set_host_knob(match k {
                Knob::Control(auto) => HostKnob::RuntimePmAllowed(*auto),
                Knob::D3cold(on) => HostKnob::D3ColdAllowed(*on),
            })
            .map(|_| None),
        StepKind::Reset => dev.reset().map(|_| None),
        StepKind::MmapTouch { .. } => Ok(None),
    };
    r.map(Outcome::from)
}

fn feature(
    dev: &dyn ConformanceDevice,
    f: &FeatureStep,
    efds: &[(String, EventFd)],
) -> Result<(), Errno> {
    // Kept open until the call returns.
    let mut _file = None;
    let payload = match (&f.payload, &f.fd, f.reserved) {
        (Some(raw), _, _) => raw.clone(),
        (None, None, None) => Vec::new(),
        (None, fd, reserved) => {
            let fd = match fd {
                None => 0,
                Some(Fd::Number(n)) => *n,
                Some(Fd::Bad) => BAD_FD,
                Some(Fd::File) => {
                    let file = File::open("/").map_err(|e| io_errno(&e))?;
                    let n = file.as_raw_fd();
                    _file = Some(file);
                    n
                }
                Some(Fd::EventFd(name)) => efds
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, e)| e.as_raw_fd())
                    .unwrap_or(BAD_FD),
            };
            let mut p = vfio_pm::feature::wakeup_payload(fd).to_vec();
            p[4..8].copy_from_slice(&reserved.unwrap_or(0).to_ne_bytes());
            p
        }
    };
    let argsz = f
        .argsz
        .unwrap_or((vfio_pm::feature::HEADER_SIZE as usize + payload.len()) as u32);
    dev.device_feature(argsz, f.flags, &payload)
}

/// Finds the PM capability by walking the capability list through the config region.
fn find_pm_cap(dev: &dyn ConformanceDevice) -> Result<u64, Errno> {
    let mut b = [0u8; 1];
    dev.region_read(CONFIG_REGION, 0x34, &mut b)?;
    let mut at = u64::from(b[0] & !3);
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let mut cap = [0u8; 2];
        dev.region_read(CONFIG_REGION, at, &mut cap)?;
        if cap[0] == 0x01 {
            return Ok(at);
        }
        at = u64::from(cap[1] & !3);
    }
    Err(Errno::ENODEV)
}

fn pmcsr(dev: &dyn ConformanceDevice, step: PmcsrStep) -> Result<Option<String>, Errno> {
    let at = find_pm_cap(dev)? + 4;
    let mut v = [0u8; 2];
    dev.region_read(CONFIG_REGION, at, &mut v)?;
    match step {
        PmcsrStep::Read => Ok(Some(
            ["D0", "D1", "D2", "D3hot"][usize::from(v[0] & 3)].to_string(),
        )),
        PmcsrStep::Write(bits) => {
            let value = (u16::from_le_bytes(v) & !3) | u16::from(bits & 3);
            dev.region_write(CONFIG_REGION, at, &value.to_le_bytes())?;
            Ok(None)
        }
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The errno's symbolic name (`EINVAL`).
pub(crate) fn errno_name(e: Errno) -> String {
    format!("{e:?}")
}

/// A named eventfd's counter, read and reset: 0 when nothing was signalled (the runner's
/// eventfds are non-blocking). Any other read error records `u64::MAX`, a count no kernel
/// produces, so the trace cannot pass for a silent one.
fn read_counter(efd: &EventFd) -> u64 {
    match efd.read() {
        Ok(count) => count,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => u64::MAX,
    }
}
