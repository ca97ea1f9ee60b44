//! The agent: takes hold of the devices QEMU opened, serves the guest's `_ON`/`_OFF` through
//! the doorbell and the mailbox, and leaves nothing engaged when QEMU goes.
//!
//! One thread, one epoll set: the doorbell listener and connection (QEMU's chardev), QEMU's
//! pidfd (exit), a signalfd (SIGINT, SIGTERM) and the controller's own epoll fd. The only
//! timeouts are the controller's postponed entries and one-shot kernel checks after each
//! transition: an idle VM costs the agent no wakeups at all.

use super::output::{is_d3cold, Printer, Summary};
use super::setup::Setup;
use super::timed::{CallTimes, TimedDevice};
use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};
use vfio_pm::{KernelDevice, LowPower, PciAddress, PowerDevice, Sysfs};
use vfio_pm_vmm::controller::{EventLog, RequestOutcome};
use vfio_pm_vmm::mailbox::Mailbox;
use vfio_pm_vmm::vmm::VmmPowerManager;
use vfio_pm_vmm::{GuestRequest, PowerAction, Slot};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

const LISTENER: u64 = 1;
const CONNECTION: u64 = 2;
const QEMU_EXIT: u64 = 3;
const SIGNAL: u64 = 4;
const CONTROLLER: u64 = 5;
/// Doorbell bytes read per readiness: a flooding guest costs bounded work per wakeup.
const DOORBELL_CHUNK: usize = 4096;
/// When the kernel is asked how a device ended up after a transition.
const KERNEL_CHECK_AFTER: Duration = Duration::from_millis(1500);

/// The QEMU the agent serves.
pub enum Vm {
    /// Started by `vfio-pm qemu`: its exit status becomes ours.
    Child(std::process::Child),
    /// Started by something else (`attach --pid`).
    Attached(u32),
}

impl Vm {
    /// The process id.
    pub fn pid(&self) -> u32 {
        match self {
            Vm::Child(c) => c.id(),
            Vm::Attached(p) => *p,
        }
    }
}

/// Knobs of a run.
pub struct RunOptions {
    /// JSON lines instead of text.
    pub json: bool,
    /// How long to wait for QEMU to open its devices.
    pub adopt_timeout: Duration,
    /// Test only: wait this long before serving a pending `_ON` (a slow LOW_POWER_EXIT).
    pub test_ack_delay: Option<Duration>,
    /// Restore the guest's last acknowledged wishes (an agent replacing one that stopped,
    /// serving the same QEMU); otherwise every device starts on.
    pub restore_wishes: bool,
}

/// The doorbell socket, listening (a stale socket file from an earlier run is replaced).
pub fn bind_doorbell(path: &Path) -> Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn pidfd(pid: u32) -> Result<OwnedFd> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    let pid_t = rustix::process::Pid::from_raw(raw).context("pid 0")?;
    rustix::process::pidfd_open(pid_t, rustix::process::PidfdFlags::empty())
        .with_context(|| format!("pidfd_open({pid}): is QEMU running?"))
}

fn qemu_gone(fd: &OwnedFd) -> bool {
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    matches!(nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Where the kernel names the device of an fd (`vfio-device-syspath` in fdinfo, Linux 6.18+),
/// the adopted fd must be the device asked for; older kernels do not say, and the group's
/// `VFIO_GROUP_GET_DEVICE_FD` by address is the identification.
fn confirm_device(fd: &OwnedFd, host: PciAddress) -> Result<()> {
    match vfio_pm::fdinfo::pci_address_of_fd(fd) {
        Ok(Some(named)) if named != host => {
            bail!("the fd taken for {host} is device {named} (fdinfo vfio-device-syspath)")
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{host}: reading the adopted fd's fdinfo")),
    }
}

/// Second fds for every managed device, taken from QEMU's groups as soon as it has set them
/// up. `None` when QEMU exited first.
fn adopt_all(
    sysfs: &Sysfs,
    pid: u32,
    hosts: &[PciAddress],
    exit: &OwnedFd,
    timeout: Duration,
    out: &mut Printer,
) -> Result<Option<Vec<KernelDevice>>> {
    let deadline = Instant::now() + timeout;
    let mut devices = Vec::with_capacity(hosts.len());
    for &host in hosts {
        loop {
            if qemu_gone(exit) {
                return Ok(None);
            }
            match vfio_pm::adopt::adopt_device(sysfs, pid, host) {
                Ok(fd) => {
                    confirm_device(&fd, host)?;
                    let dev = KernelDevice::from_device_fd(sysfs, host, fd)
                        .with_context(|| format!("{host}: the adopted fd"))?;
                    out.note(
                        Some(host),
                        "took hold of QEMU's device (same open device, second fd)",
                    );
                    devices.push(dev);
                    break;
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("{host}: taking hold of QEMU's device"))
                }
            }
        }
    }
    Ok(Some(devices))
}

/// The guest's last acknowledged wish per slot (`None`: never asked: the device is on).
fn last_wishes(mb: &Mailbox) -> Result<Vec<Option<PowerAction>>> {
    Ok(mb
        .read_all()?
        .into_iter()
        .map(|w| {
            (w.req != 0 && !w.pending()).then(|| {
                if w.trap_value() & vfio_pm_vmm::trap::ACTION_ON != 0 {
                    PowerAction::PowerOn
                } else {
                    PowerAction::PowerOff
                }
            })
        })
        .collect())
}

struct Loop<'a> {
    sysfs: &'a Sysfs,
    vpm: VmmPowerManager,
    mailbox: Mailbox,
    log: EventLog,
    out: Printer,
    hosts: Vec<PciAddress>,
    listener: UnixListener,
    conn: Option<UnixStream>,
    epoll: Epoll,
    checks: Vec<(Instant, Slot)>,
    d3cold_seen: Vec<bool>,
    doorbell_bytes: u64,
    malformed: u64,
    test_ack_delay: Option<Duration>,
    times: CallTimes,
}

impl Loop<'_> {
    fn serve(&mut self) -> Result<()> {
        // A slow EXIT is what the ordering must survive: only a pending _ON waits.
        if let Some(d) = self.test_ack_delay {
            let on = self
                .mailbox
                .pending()?
                .iter()
                .any(|(_, w)| w.trap_value() & vfio_pm_vmm::trap::ACTION_ON != 0);
            if on {
                std::thread::sleep(d);
            }
        }
        let replies = self
            .vpm
            .serve_mailbox(&self.mailbox)
            .context("the mailbox")?;
        for r in replies {
            match &r.result {
                Ok(o) => {
                    if matches!(
                        o.outcome,
                        RequestOutcome::Entered(_) | RequestOutcome::Exited
                    ) {
                        self.checks
                            .push((Instant::now() + KERNEL_CHECK_AFTER, r.slot));
                    }
                }
                Err(e) if e.is_guest_error() => {
                    self.malformed += 1;
                    if !self.out.guest_line_allowed() {
                        continue;
                    }
                    let host = self.hosts.get(r.slot.index() as usize).copied();
                    self.out.note(
                        host,
                        &format!("ignored a malformed mailbox request {:#010x}: {e}", r.req),
                    );
                }
                Err(e) => {
                    let host = self.hosts.get(r.slot.index() as usize).copied();
                    self.out.note(host, &format!("host call failed: {e:#}"));
                }
            }
        }
        self.flush_events();
        Ok(())
    }

    fn flush_events(&mut self) {
        let evs = self.log.take();
        self.out.events(&evs);
        for call in self.times.take() {
            self.out.call_time(&call);
        }
    }

    fn accept(&mut self) -> Result<()> {
        loop {
            match self.listener.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)?;
                    if let Some(old) = self.conn.take() {
                        let _ = self.epoll.ctl(
                            ControlOperation::Delete,
                            old.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                    self.epoll.ctl(
                        ControlOperation::Add,
                        s.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, CONNECTION),
                    )?;
                    self.conn = Some(s);
                    self.out.note(None, "QEMU connected to the doorbell");
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("accepting QEMU's doorbell connection"),
            }
        }
        // Requests made while nobody listened are in the mailbox.
        self.serve()
    }

    fn doorbell(&mut self) -> Result<()> {
        let mut buf = [0u8; DOORBELL_CHUNK];
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        match conn.read(&mut buf) {
            Ok(0) => {
                if let Some(old) = self.conn.take() {
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        old.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                self.out.note(None, "QEMU closed the doorbell");
            }
            Ok(n) => {
                self.doorbell_bytes += n as u64;
                for r in self.vpm.decoder().decode_stream(&buf[..n]) {
                    if r.is_err() {
                        self.malformed += 1;
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("reading the doorbell"),
        }
        self.serve()
    }

    fn kernel_checks(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = self.checks.drain(..).partition(|(t, _)| *t <= now);
        self.checks = later;
        for (_, slot) in due {
            let i = slot.index() as usize;
            let Some(&host) = self.hosts.get(i) else {
                continue;
            };
            let text = match self.sysfs.device(host).map(|d| d.observe()) {
                Ok(Ok(o)) => {
                    if is_d3cold(&o.power_state) {
                        self.d3cold_seen[i] = true;
                    }
                    format!("{} {}", o.power_state, o.runtime_status)
                }
                Ok(Err(e)) => format!("unknown ({e})"),
                Err(e) => format!("unknown ({e})"),
            };
            self.out.kernel_state(host, &text);
        }
    }

    fn timeout_ms(&self) -> i32 {
        let now = Instant::now();
        let check = self
            .checks
            .iter()
            .map(|(t, _)| t.saturating_duration_since(now))
            .min();
        let timer = self
            .vpm
            .next_deadline_ns()
            .map(|d| Duration::from_nanos(d.saturating_sub(self.vpm.controller().now_ns())));
        match check.into_iter().chain(timer).min() {
            None => -1,
            Some(d) => i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX),
        }
    }
}

impl Loop<'_> {
    /// Serves doorbells, timers and signals until QEMU exits (or, attached, a stop signal).
    fn serve_until_exit(&mut self, vm: &mut Vm, sigfd: &SignalFd) -> Result<()> {
        let mut events = vec![EpollEvent::default(); 8];
        loop {
            let n = match self.epoll.wait(self.timeout_ms(), &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e).context("epoll"),
            };
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => self.accept()?,
                    CONNECTION => self.doorbell()?,
                    QEMU_EXIT => return Ok(()),
                    SIGNAL if self.on_signal(vm, sigfd) => return Ok(()),
                    CONTROLLER => {
                        self.vpm
                            .poll(Some(Duration::ZERO))
                            .context("the controller")?;
                        self.flush_events();
                    }
                    _ => {}
                }
            }
            self.vpm
                .poll(Some(Duration::ZERO))
                .context("the controller")?;
            self.flush_events();
            self.kernel_checks();
        }
    }

    /// The guest's last acknowledged request was `_OFF` (an agent replacing one that stopped).
    /// Runtime-suspended when the agent arrived, the device is still engaged: the controller
    /// takes it over without a host call where it can (plain entry). Otherwise it is entered
    /// again (an engaged but awake device answers EINVAL, which the controller handles with EXIT
    /// and a second ENTRY).
    fn restore_off(&mut self, slot: Slot, suspended_on_arrival: bool) {
        let host = self.hosts.get(slot.index() as usize).copied();
        if suspended_on_arrival && self.vpm.adopt_low_power(slot).is_ok() {
            self.out.note(
                host,
                "the guest wants it off and the kernel had it runtime-suspended: low power is \
                 still engaged (taken over, no host call)",
            );
            // Our own start-up ioctls woke it; the kernel must put it back.
            self.checks
                .push((Instant::now() + KERNEL_CHECK_AFTER, slot));
            return;
        }
        if let Err(e) = self.vpm.handle_request(GuestRequest::power_off(slot)) {
            self.out
                .note(host, &format!("restoring the guest's _OFF failed: {e:#}"));
        }
    }

    /// A SIGINT or SIGTERM; true when the agent should stop now.
    fn on_signal(&mut self, vm: &mut Vm, sigfd: &SignalFd) -> bool {
        let Ok(Some(info)) = sigfd.read_signal() else {
            return false;
        };
        let sig = Signal::try_from(info.ssi_signo as i32).ok();
        match (vm, sig) {
            (Vm::Child(c), Some(Signal::SIGTERM)) => {
                self.out.note(None, "SIGTERM: passing it to QEMU");
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(c.id() as i32),
                    Signal::SIGTERM,
                );
                false
            }
            // A terminal's Ctrl-C reaches QEMU too: wait for it to exit.
            (Vm::Child(_), _) => false,
            (Vm::Attached(_), _) => {
                self.out
                    .note(None, "stopping: every device leaves low power first");
                true
            }
        }
    }

    /// Every device out of low power, then a residency summary per device.
    fn shut_down(&mut self, wall: Duration, suspended_at_start: &[Option<u64>]) {
        // Read before shutdown, which removes the devices from the controller.
        let stats: Vec<_> = (0..self.hosts.len())
            .map(|i| self.vpm.stats(Slot(i as u32)).unwrap_or_default())
            .collect();
        let report = self.vpm.shutdown();
        self.flush_events();
        self.out.flush_dropped();
        if !report.failed.is_empty() {
            self.out.note(
                None,
                &format!("leaving low power FAILED for {:?}", report.failed),
            );
        }
        for (i, host) in self.hosts.clone().iter().enumerate() {
            let now = kernel_suspended_ms(self.sysfs, *host);
            let kernel_suspended = match (suspended_at_start.get(i).copied().flatten(), now) {
                (Some(a), Some(b)) if b >= a => Some(Duration::from_millis(b - a)),
                _ => None,
            };
            self.out.summary(
                *host,
                &Summary {
                    wall,
                    stats: stats[i],
                    kernel_suspended,
                    d3cold_seen: self.d3cold_seen[i],
                },
            );
        }
        if self.malformed > 0 {
            self.out.note(
                None,
                &format!(
                    "{} malformed doorbell bytes or mailbox words ignored ({} doorbell bytes)",
                    self.malformed, self.doorbell_bytes
                ),
            );
        }
    }
}

/// True when the kernel reports the device runtime-suspended.
fn kernel_runtime_suspended(sysfs: &Sysfs, host: PciAddress) -> bool {
    sysfs
        .device(host)
        .ok()
        .and_then(|d| d.observe().ok())
        .is_some_and(|o| o.runtime_status == vfio_pm::RuntimeStatus::Suspended)
}

fn kernel_suspended_ms(sysfs: &Sysfs, host: PciAddress) -> Option<u64> {
    let dir = sysfs.device(host).ok()?;
    let mut text = String::new();
    std::fs::File::open(dir.dir().join("power/runtime_suspended_time"))
        .ok()?
        .take(64)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// One line per passed-through device: managed or not, and why.
fn describe(out: &mut Printer, setup: &Setup) {
    for d in &setup.devices {
        let node = if d.acpi_path.is_empty() {
            "no ACPI node"
        } else {
            &d.acpi_path
        };
        out.note(
            Some(d.host),
            &format!("{} (guest {}, {node})", d.note, d.guest),
        );
    }
}

/// What the guest last asked (restored for an agent that replaces a stopped one; otherwise
/// every device starts on). A device the guest wants on leaves low power now (EXIT is harmless
/// when not engaged); one it wants off is engaged once the controller has it.
fn start_wishes(
    mailbox: &Mailbox,
    devices: &[KernelDevice],
    restore: bool,
) -> Result<Vec<Option<PowerAction>>> {
    let wishes = if restore {
        last_wishes(mailbox)?
    } else {
        vec![None; devices.len()]
    };
    for (dev, wish) in devices.iter().zip(&wishes) {
        if *wish != Some(PowerAction::PowerOff) {
            dev.exit_low_power()
                .with_context(|| format!("{}: LOW_POWER_EXIT at start", dev.address()))?;
        }
    }
    Ok(wishes)
}

/// Serves `vm` until it exits (or, attached, until SIGINT/SIGTERM). Returns QEMU's exit code
/// (attached: 0).
pub fn run(
    sysfs: &Sysfs,
    setup: &Setup,
    mut vm: Vm,
    listener: UnixListener,
    mailbox: Mailbox,
    opts: RunOptions,
) -> Result<u8> {
    let start = Instant::now();
    let hosts = setup.managed_hosts();
    let mut out = Printer::new(opts.json, start, hosts.clone());
    let exit = pidfd(vm.pid())?;
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("cannot block SIGINT/SIGTERM")?;
    let sigfd = SignalFd::new(&mask).context("cannot create a signalfd")?;
    describe(&mut out, setup);
    // Before any ioctl of ours (each wakes the device for its duration): a device QEMU holds
    // open is runtime-active unless low power is engaged.
    let suspended_on_arrival: Vec<bool> = hosts
        .iter()
        .map(|h| kernel_runtime_suspended(sysfs, *h))
        .collect();
    let Some(devices) = adopt_all(sysfs, vm.pid(), &hosts, &exit, opts.adopt_timeout, &mut out)?
    else {
        out.note(None, "QEMU exited before it opened its devices");
        return finish(vm);
    };
    let wishes = start_wishes(&mailbox, &devices, opts.restore_wishes)?;
    let log = EventLog::new();
    let times = CallTimes::default();
    let boxed: Vec<Box<dyn PowerDevice>> = devices
        .into_iter()
        .map(|d| Box::new(TimedDevice::new(d, times.clone())) as Box<dyn PowerDevice>)
        .collect();
    let vpm = VmmPowerManager::builder(setup.vmm_config()?)
        .min_residency(setup.options.min_residency)
        .events(log.clone())
        .build(boxed)
        .context("putting the devices under control")?;
    let epoll = Epoll::new()?;
    for (fd, token) in [
        (listener.as_raw_fd(), LISTENER),
        (exit.as_raw_fd(), QEMU_EXIT),
        (sigfd.as_raw_fd(), SIGNAL),
        (vpm.epoll_fd(), CONTROLLER),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let suspended_at_start: Vec<Option<u64>> = hosts
        .iter()
        .map(|h| kernel_suspended_ms(sysfs, *h))
        .collect();
    let mut l = Loop {
        sysfs,
        vpm,
        mailbox,
        log,
        out,
        hosts: hosts.clone(),
        listener,
        conn: None,
        epoll,
        checks: Vec::new(),
        d3cold_seen: vec![false; hosts.len()],
        doorbell_bytes: 0,
        malformed: 0,
        test_ack_delay: opts.test_ack_delay,
        times,
    };
    for (i, wish) in wishes.iter().enumerate() {
        if *wish == Some(PowerAction::PowerOff) {
            l.restore_off(Slot(i as u32), suspended_on_arrival[i]);
        }
    }
    l.flush_events();
    l.serve()?;
    let controlled_since = Instant::now();
    l.serve_until_exit(&mut vm, &sigfd)?;
    l.shut_down(controlled_since.elapsed(), &suspended_at_start);
    drop(l);
    finish(vm)
}

fn finish(vm: Vm) -> Result<u8> {
    match vm {
        Vm::Attached(_) => Ok(0),
        Vm::Child(mut c) => {
            let st = c.wait().context("waiting for QEMU")?;
            use std::os::unix::process::ExitStatusExt;
            Ok(match (st.code(), st.signal()) {
                (Some(code), _) => u8::try_from(code).unwrap_or(1),
                (None, Some(sig)) => 128u8.saturating_add(u8::try_from(sig).unwrap_or(0)),
                _ => 1,
            })
        }
    }
}

/// Refuses an attach to a process that is not QEMU holding the devices' groups.
pub fn check_holder(sysfs: &Sysfs, pid: u32, hosts: &[PciAddress]) -> Result<()> {
    for &h in hosts {
        let holders = vfio_pm::adopt::group_holders(sysfs, h)?;
        if !holders.contains(&pid) {
            bail!("process {pid} does not hold the VFIO group of {h} (held by {holders:?})");
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
