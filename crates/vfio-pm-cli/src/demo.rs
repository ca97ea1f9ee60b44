//! `vfio-pm demo`: the whole hypervisor-side chain on the simulated host with a simulated
//! Linux guest, on a virtual clock (deterministic for a seed, no root, no hardware).
//!
//! The chain: guest idles a device → its power resource's `_OFF` writes the trap register →
//! `VmmPowerManager::on_trap_write` → the controller's LOW_POWER_ENTRY(_WITH_WAKEUP) → the
//! simulated kernel runtime-suspends the device to D3cold → a host-side access (`lspci`)
//! resumes it → for the wakeup variant the eventfd fires → exactly one PME (GPE) to the guest
//! → the guest's `Notify (dev, 2)` handler resumes the device through `_ON`.
//!
//! Everything is computed first ([`run_scenario`]); printing happens afterwards.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;
use vfio_pm::{PciAddress, PowerDevice, PowerState};
use vfio_pm_sim::{DeviceConfig, Platform, SimHost};
use vfio_pm_vmm::config::{TrapSpace, VmmConfig};
use vfio_pm_vmm::controller::{
    CallResult, Event, EventLog, HostCall, ManualClock, RequestOutcome, TimedEvent,
};
use vfio_pm_vmm::guest::{GuestInbox, GuestStep, Reason, SimulatedGuest};
use vfio_pm_vmm::pme::WakeRoute;
use vfio_pm_vmm::vmm::{SsdtSummary, VmmPowerManager};
use vfio_pm_vmm::Slot;

/// Arguments of `vfio-pm demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Print the raw events, one JSON object per line, then the summary.
    #[arg(long)]
    json: bool,
    /// Number of passthrough devices (3: GPU, its HDMI audio, a NIC; 4: + an NVMe drive the
    /// host keeps out of D3cold; more: extra NICs).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=16))]
    devices: u8,
    /// Seed of the guest's idle and busy times (same seed, same output).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the demo's VMM configuration (TOML for `vfio-pm aml`) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Anti-thrash minimum residency used by the demo (the controller's default).
const MIN_RESIDENCY: Duration = vfio_pm_vmm::controller::DEFAULT_MIN_RESIDENCY;
/// `_OFF`/`_ON` pairs in the toggle burst.
const BURST_PAIRS: u32 = 25;

/// One passthrough device of the demo.
#[derive(Clone, Debug, Serialize)]
struct Spec {
    name: String,
    what: &'static str,
    vendor: u16,
    device: u16,
    class: u32,
    guest: PciAddress,
    host: PciAddress,
    acpi_path: String,
    root_port: Option<&'static str>,
    declare: bool,
    pme_support: bool,
    gpe: u8,
    /// The host refuses D3cold for it (`d3cold_allowed` = 0): it stops at D3hot.
    host_d3cold: bool,
}

fn specs(n: u8) -> Vec<Spec> {
    // Every address below is in range (device < 32, function < 8).
    let pci = |b, d, f| {
        PciAddress::new(0, b, d, f).unwrap_or(PciAddress {
            domain: 0,
            bus: b,
            device: 0,
            function: 0,
        })
    };
    let mut v = vec![
        Spec {
            name: "gpu".into(),
            what: "NVIDIA GPU (needs the guest driver: ENTRY_WITH_WAKEUP)",
            vendor: 0x10de,
            device: 0x2204,
            class: 0x030000,
            guest: pci(1, 0, 0),
            host: pci(0x41, 0, 0),
            acpi_path: "\\_SB.PCI0.S10.S00".into(),
            root_port: Some("\\_SB.PCI0.S10"),
            declare: true,
            pme_support: true,
            gpe: 0x10,
            host_d3cold: true,
        },
        Spec {
            name: "hda".into(),
            what: "its HDMI audio function (plain ENTRY)",
            vendor: 0x10de,
            device: 0x1aef,
            class: 0x040300,
            guest: pci(1, 0, 1),
            host: pci(0x41, 0, 1),
            acpi_path: "\\_SB.PCI0.S10.S01".into(),
            root_port: Some("\\_SB.PCI0.S10"),
            declare: true,
            pme_support: false,
            gpe: 0x11,
            host_d3cold: true,
        },
        Spec {
            name: "nic".into(),
            what: "Intel NIC (plain ENTRY)",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            guest: pci(0, 5, 0),
            host: pci(0x42, 0, 0),
            acpi_path: "\\_SB.PCI0.S28".into(),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x12,
            host_d3cold: true,
        },
    ];
    if n >= 4 {
        v.push(Spec {
            name: "nvme".into(),
            what: "NVMe drive, host d3cold_allowed=0 (stops at D3hot)",
            vendor: 0x144d,
            device: 0xa808,
            class: 0x010802,
            guest: pci(0, 6, 0),
            host: pci(0x43, 0, 0),
            acpi_path: "\\_SB.PCI0.S30".into(),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x13,
            host_d3cold: false,
        });
    }
    for i in 4..n {
        let dev = 3 + i; // 00:07.0 and up
        v.push(Spec {
            name: format!("nic{}", i - 2),
            what: "another NIC (plain ENTRY)",
            vendor: 0x8086,
            device: 0x10d3,
            class: 0x020000,
            guest: pci(0, dev, 0),
            host: pci(0x40 + i, 0, 0),
            acpi_path: format!("\\_SB.PCI0.S{:02X}", u32::from(dev) * 8),
            root_port: None,
            declare: false,
            pme_support: false,
            gpe: 0x10 + i,
            host_d3cold: true,
        });
    }
    v
}

fn config_toml(specs: &[Spec]) -> String {
    let mut s = String::from(
        "# vfio-pm demo: VMM configuration (see it as ASL with: vfio-pm aml FILE --dsl)\n\
         [trap]\nspace = \"io\"\naddress = 0x440\nwidth = 1\n\n\
         [wake]\nroute = \"gpe\"\ntrigger = \"edge\"\n",
    );
    for d in specs {
        s.push_str(&format!(
            "\n[[devices]]\n# {} ({})\nacpi_path = '{}'\npci_address = \"{}\"\n\
             vendor_id = {:#06x}\ndevice_id = {:#06x}\nclass_code = {:#08x}\nd3cold = true\n\
             pme_support = {}\ngpe = {:#04x}\n",
            d.name, d.what, d.acpi_path, d.guest, d.vendor, d.device, d.class, d.pme_support, d.gpe
        ));
        if let Some(rp) = d.root_port {
            s.push_str(&format!("root_port = '{rp}'\n"));
        }
        if d.declare {
            s.push_str("node = \"declare\"\n");
        }
    }
    s
}

/// splitmix64: a small deterministic generator for the guest's timings.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Milliseconds in `lo..=hi`.
    fn ms(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// One timeline record.
#[derive(Clone, Debug)]
enum Rec {
    Phase(String),
    Guest {
        at_ns: u64,
        dev: usize,
        step: GuestStep,
    },
    Ctl {
        dev: usize,
        ev: TimedEvent,
    },
    HostAccess {
        at_ns: u64,
        dev: usize,
    },
    HostState {
        at_ns: u64,
        dev: usize,
        from: PowerState,
        to: PowerState,
    },
    Note(String),
}

/// Per-device summary.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
struct DeviceSummary {
    device: String,
    host_bdf: String,
    variant: String,
    d0_ns: u64,
    d3hot_ns: u64,
    d3cold_ns: u64,
    entries: u64,
    exits: u64,
    host_wakes: u64,
    pme_delivered: u64,
    pme_suppressed: u64,
    deferred: u64,
    coalesced: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Summary {
    seed: u64,
    total_ns: u64,
    ssdt_bytes: usize,
    ssdt: String,
    engaged_after_reset: usize,
    devices: Vec<DeviceSummary>,
}

struct Output {
    specs: Vec<Spec>,
    variants: Vec<String>,
    records: Vec<(bool, Rec)>,
    summary: Summary,
}

/// The running demo: simulated host, manager, guest, and the bookkeeping for the timeline.
struct Demo {
    specs: Vec<Spec>,
    host: SimHost,
    vpm: VmmPowerManager,
    guest: SimulatedGuest,
    log: EventLog,
    clock: ManualClock,
    rng: Rng,
    /// Host power state per device and since when (virtual ns).
    state: Vec<(PowerState, u64)>,
    residency: Vec<[u64; 3]>,
    records: Vec<(bool, Rec)>,
    quiet: bool,
}

fn slot(i: usize) -> Result<Slot> {
    u32::try_from(i)
        .map(Slot)
        .context("device slot out of range")
}

fn state_index(p: &PowerState) -> Option<usize> {
    match p {
        PowerState::D0 => Some(0),
        PowerState::D3Hot => Some(1),
        PowerState::D3Cold => Some(2),
        _ => None,
    }
}

impl Demo {
    fn new(n: u8, seed: u64) -> Result<Self> {
        let specs = specs(n);
        let config = VmmConfig::from_toml_str(&config_toml(&specs))
            .context("the demo configuration is invalid")?;
        let mut b = SimHost::builder().platform(Platform::D3cold);
        for s in &specs {
            b = b.device(DeviceConfig::new(s.host));
        }
        let host = b.build()?;
        let mut devices: Vec<Box<dyn PowerDevice>> = Vec::new();
        for s in &specs {
            devices.push(Box::new(host.open(s.host)?));
        }
        let inbox = GuestInbox::new();
        let log = EventLog::new();
        let clock = ManualClock::new();
        let mut builder = VmmPowerManager::builder(config)
            .min_residency(MIN_RESIDENCY)
            .notifier(inbox.clone())
            .clock(clock.clone())
            .events(log.clone());
        for (i, s) in specs.iter().enumerate() {
            if !s.host_d3cold {
                if let Some(st) = builder.device_settings(slot(i)?) {
                    st.d3cold = Some(false);
                }
            }
        }
        let vpm = builder.build(devices)?;
        let guest = SimulatedGuest::new(&vpm, inbox);
        let mut state = Vec::new();
        for s in &specs {
            state.push((host.observe(s.host)?.power_state, 0));
        }
        let residency = vec![[0; 3]; specs.len()];
        Ok(Self {
            specs,
            host,
            vpm,
            guest,
            log,
            clock,
            rng: Rng(seed),
            state,
            residency,
            records: Vec::new(),
            quiet: false,
        })
    }

    fn now(&self) -> u64 {
        self.vpm.controller().now_ns()
    }

    fn push(&mut self, r: Rec) {
        self.records.push((self.quiet, r));
    }

    fn phase(&mut self, text: impl Into<String>) {
        let q = self.quiet;
        self.quiet = false;
        self.push(Rec::Phase(text.into()));
        self.quiet = q;
    }

    fn dev_of(&self, ev: &TimedEvent) -> usize {
        ev.slot.index() as usize
    }

    fn drain_events(&mut self) {
        for ev in self.log.take() {
            let dev = self.dev_of(&ev);
            self.push(Rec::Ctl { dev, ev });
        }
    }

    fn observe(&mut self) -> Result<()> {
        let now = self.now();
        for i in 0..self.specs.len() {
            let p = self.host.observe(self.specs[i].host)?.power_state;
            if p != self.state[i].0 {
                let (from, since) = std::mem::replace(&mut self.state[i], (p.clone(), now));
                if let Some(k) = state_index(&from) {
                    self.residency[i][k] += now.saturating_sub(since);
                }
                self.push(Rec::HostState {
                    at_ns: now,
                    dev: i,
                    from,
                    to: p,
                });
            }
        }
        Ok(())
    }

    /// Lets the host kernel and the controller run, and the guest take its notifications,
    /// until nothing moves.
    fn settle(&mut self) -> Result<()> {
        for _ in 0..64 {
            // The controller first (wakes, due postponed entries), then the kernel's
            // asynchronous suspend of whatever it just let go.
            self.vpm.poll_pending()?;
            self.host.run_pending();
            self.drain_events();
            self.observe()?;
            let at_ns = self.now();
            match self.guest.handle_next_wake(&mut self.vpm)? {
                Some(h) => {
                    if let (Some(dev), Some(step)) = (h.device, h.resumed) {
                        self.push(Rec::Guest {
                            at_ns,
                            dev: dev as usize,
                            step,
                        });
                    }
                    self.drain_events();
                }
                None => return Ok(()),
            }
        }
        Ok(())
    }

    /// Moves the virtual clock to `t`, stopping at each postponed-entry deadline on the way.
    fn advance_to(&mut self, t: u64) -> Result<()> {
        for _ in 0..1024 {
            match self.vpm.next_deadline_ns() {
                Some(d) if d > self.now() && d <= t => {
                    self.clock.set_ns(d);
                    self.settle()?;
                }
                _ => break,
            }
        }
        if t > self.now() {
            self.clock.set_ns(t);
        }
        self.settle()
    }

    fn advance_ms(&mut self, ms: u64) -> Result<()> {
        let t = self.now() + ms * 1_000_000;
        self.advance_to(t)
    }

    fn advance_us(&mut self, us: u64) -> Result<()> {
        let t = self.now() + us * 1_000;
        self.advance_to(t)
    }

    fn suspend(&mut self, i: usize) -> Result<()> {
        let at_ns = self.now();
        let step = self.guest.runtime_suspend(&mut self.vpm, slot(i)?)?;
        self.push(Rec::Guest {
            at_ns,
            dev: i,
            step,
        });
        self.drain_events();
        self.settle()
    }

    fn resume(&mut self, i: usize) -> Result<()> {
        let at_ns = self.now();
        let step = self
            .guest
            .runtime_resume(&mut self.vpm, slot(i)?, Reason::Use)?;
        self.push(Rec::Guest {
            at_ns,
            dev: i,
            step,
        });
        self.drain_events();
        self.settle()
    }

    fn lspci(&mut self, i: usize) -> Result<()> {
        self.push(Rec::HostAccess {
            at_ns: self.now(),
            dev: i,
        });
        self.host.host_config_read(self.specs[i].host)?;
        // Show the transient resume before the kernel's idle work runs again.
        self.observe()?;
        self.settle()
    }

    fn run(&mut self) -> Result<()> {
        const GPU: usize = 0;
        const HDA: usize = 1;
        const NIC: usize = 2;
        let n = self.specs.len();
        self.phase("VM start: devices put under the controller (all on, as after boot)");
        self.drain_events();
        self.observe()?;

        let boot = self.rng.ms(150, 250);
        self.advance_ms(boot)?;
        self.phase("guest: every device idle, runtime suspend to D3cold via _OFF");
        for i in 0..n {
            self.suspend(i)?;
            let gap = self.rng.ms(1, 5);
            self.advance_ms(gap)?;
        }

        for round in 1..=3 {
            let idle = self.rng.ms(300, 700);
            self.advance_ms(idle)?;
            self.phase(format!(
                "round {round}: host runs `lspci -xxx` (config read of every device)"
            ));
            for i in 0..n {
                self.lspci(i)?;
            }
            if round == 1 {
                self.push(Rec::Note(
                    "plain-ENTRY devices bounce D3cold -> D0 -> D3cold with no guest \
                     involvement: the kernel resumes them for the config read and, low power \
                     still engaged and no eventfd to signal, suspends them straight back. \
                     ENTRY_WITH_WAKEUP (the GPU) instead leaves low power and signals its \
                     eventfd: that is the wake the VMM turns into a PME."
                        .into(),
                ));
            }
            let busy = self.rng.ms(30, 180);
            self.phase(format!(
                "round {round}: guest uses the woken GPU for {busy} ms, then it idles again"
            ));
            self.advance_ms(busy)?;
            self.suspend(GPU)?;
            let dev = if round == 2 { HDA } else { NIC };
            let wait = self.rng.ms(150, 300);
            self.advance_ms(wait)?;
            let busy = self.rng.ms(20, 150);
            self.phase(format!(
                "round {round}: guest needs the {} for {busy} ms (_ON from the guest: LOW_POWER_EXIT)",
                self.specs[dev].name
            ));
            self.resume(dev)?;
            self.advance_ms(busy)?;
            self.suspend(dev)?;
        }

        let pause = self.rng.ms(300, 500);
        self.advance_ms(pause)?;
        self.phase(format!(
            "toggle burst: guest flips the GPU _ON/_OFF {BURST_PAIRS} times, 200 us apart (anti-thrash)"
        ));
        self.resume(GPU)?;
        let before = self.records.len();
        for pair in 0..BURST_PAIRS {
            // The first pair in full, the rest only in --json.
            self.quiet = pair > 0;
            self.advance_us(200)?;
            self.suspend(GPU)?;
            self.advance_us(200)?;
            self.resume(GPU)?;
        }
        self.quiet = false;
        let coalesced = self.records[before..]
            .iter()
            .filter(
                |(_, r)| matches!(r, Rec::Ctl { ev, .. } if matches!(ev.event, Event::Coalesced)),
            )
            .count();
        self.push(Rec::Note(format!(
            "... {} guest _OFF/_ON pairs in {:.1} ms: {coalesced} coalesced, the host saw no transition",
            BURST_PAIRS,
            f64::from(BURST_PAIRS * 400) / 1000.0
        )));
        self.advance_us(200)?;
        self.suspend(GPU)?;
        self.advance_ms(MIN_RESIDENCY.as_millis() as u64 + 50)?;

        let tail = self.rng.ms(200, 400);
        self.advance_ms(tail)?;
        self.phase("VM reset: every device leaves low power, nothing stays engaged");
        let report = self.vpm.reset();
        self.drain_events();
        self.settle()?;
        let engaged = self
            .specs
            .iter()
            .filter(|s| self.host.snapshot(s.host).map_or(true, |d| d.engaged))
            .count();
        self.push(Rec::Note(format!(
            "reset: {} devices taken out of low power, {} failed; engaged after reset: {engaged} of {n}",
            report.exited.len(),
            report.failed.len()
        )));
        Ok(())
    }

    fn finish(mut self, seed: u64) -> Result<Output> {
        let now = self.now();
        let mut devices = Vec::new();
        let mut variants = Vec::new();
        for i in 0..self.specs.len() {
            let s = slot(i)?;
            let st = self.vpm.stats(s).context("device stats")?;
            let mut res = self.residency[i];
            if let Some(k) = state_index(&self.state[i].0) {
                res[k] += now.saturating_sub(self.state[i].1);
            }
            let variant = name(&self.vpm.variant(s));
            variants.push(variant.clone());
            devices.push(DeviceSummary {
                device: self.specs[i].name.clone(),
                host_bdf: self.specs[i].host.to_string(),
                variant,
                d0_ns: res[0],
                d3hot_ns: res[1],
                d3cold_ns: res[2],
                entries: st.entries,
                exits: st.exits,
                host_wakes: st.host_wakes,
                pme_delivered: st.pme_delivered,
                pme_suppressed: st.pme_suppressed,
                deferred: st.deferred,
                coalesced: st.coalesced,
            });
        }
        let engaged_after_reset = self
            .specs
            .iter()
            .filter(|s| self.host.snapshot(s.host).map_or(true, |d| d.engaged))
            .count();
        let ssdt = SsdtSummary::of(self.vpm.config());
        let summary = Summary {
            seed,
            total_ns: now,
            ssdt_bytes: ssdt.bytes,
            ssdt: ssdt.to_string(),
            engaged_after_reset,
            devices,
        };
        self.vpm.shutdown();
        Ok(Output {
            specs: self.specs,
            variants,
            records: self.records,
            summary,
        })
    }
}

/// The snake_case name serde gives a value (`entry_with_wakeup`).
fn name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".into(),
    }
}

fn run_scenario(devices: u8, seed: u64) -> Result<Output> {
    let mut demo = Demo::new(devices, seed)?;
    demo.run()?;
    demo.finish(seed)
}

// ---------------------------------------------------------------------------------------------
// Printing
// ---------------------------------------------------------------------------------------------

/// A timeline timestamp in seconds, to 100 µs (the toggle burst is 200 µs apart).
fn t(ns: u64) -> String {
    format!("{:.4}s", ns as f64 / 1e9)
}

/// A duration as the other commands print it (`3.2s`, `120ms`).
fn human(ns: u64) -> String {
    crate::table::human(std::time::Duration::from_nanos(ns))
}

/// Terminal width the text output fits.
const WIDTH: usize = 80;

/// Hanging indent of a wrapped timeline line: under the WHAT column.
const TIMELINE_INDENT: usize = 24;

/// Wraps every line longer than [`WIDTH`] at spaces, keeping the spacing of what stays on the
/// first line. Continuation lines are indented under the WHAT column for timeline lines, else
/// four more than the line's own indent.
fn fit(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let timeline = line.split_whitespace().next().is_some_and(|w| {
            w.strip_suffix('s')
                .is_some_and(|n| n.parse::<f64>().is_ok())
        });
        let own = line.len() - line.trim_start().len();
        let indent = " ".repeat(if timeline { TIMELINE_INDENT } else { own + 4 });
        let mut rest = line;
        let mut prefix = "";
        loop {
            let room = WIDTH - prefix.len();
            if rest.chars().count() <= room {
                out.push_str(prefix);
                out.push_str(rest);
                out.push('\n');
                break;
            }
            // The last space that fits, past the line's own indent; else the first after it
            // (a word longer than the room stays whole).
            let spaces = || {
                rest.char_indices()
                    .filter(|&(i, c)| c == ' ' && !rest[..i].trim().is_empty())
                    .map(|(i, _)| i)
            };
            let Some(cut) = spaces()
                .take_while(|&i| i <= room)
                .last()
                .or_else(|| spaces().next())
            else {
                out.push_str(prefix);
                out.push_str(rest);
                out.push('\n');
                break;
            };
            out.push_str(prefix);
            out.push_str(rest[..cut].trim_end());
            out.push('\n');
            rest = rest[cut..].trim_start();
            prefix = &indent;
        }
    }
    out
}

fn call_name(call: HostCall) -> String {
    match call {
        HostCall::Entry => "LOW_POWER_ENTRY".into(),
        HostCall::EntryWithWakeup => "LOW_POWER_ENTRY_WITH_WAKEUP".into(),
        HostCall::Exit => "LOW_POWER_EXIT".into(),
        HostCall::D3ColdAllowed(b) => format!("d3cold_allowed = {}", u8::from(b)),
        HostCall::PmcsrD3Hot => "PMCSR D3hot (fallback)".into(),
        HostCall::PmcsrD0 => "PMCSR D0 (fallback)".into(),
    }
}

fn route_text(r: &WakeRoute) -> String {
    match r {
        WakeRoute::AcpiGpe { gpe } => format!("GPE {gpe:#04x} (SCI)"),
        WakeRoute::Ged { event } => format!("GED event {event}"),
        WakeRoute::PciPme { requester_id } => format!("root port PME from {requester_id:#06x}"),
    }
}

fn outcome_text(o: &RequestOutcome) -> String {
    match o {
        RequestOutcome::Entered(v) => format!("entered ({})", name(v)),
        RequestOutcome::Exited => "exited".into(),
        RequestOutcome::AlreadyExited => "kernel already exited on the wake: no ioctl".into(),
        RequestOutcome::Deferred { until_ns } => format!("deferred until {}", t(*until_ns)),
        RequestOutcome::Coalesced => "coalesced".into(),
        RequestOutcome::Unchanged => "unchanged".into(),
        RequestOutcome::Recovered => "recovered".into(),
    }
}

fn event_text(ev: &Event) -> Option<(&'static str, String)> {
    Some(match ev {
        Event::DeviceAdded { address, variant } => (
            "ctl",
            format!("added host {address}, variant {}", name(variant)),
        ),
        Event::DeviceRemoved => ("ctl", "removed".into()),
        Event::Guest { .. } => return None, // the guest line says it
        Event::GuestRejected { action, reason } => (
            "ctl",
            format!("guest {} rejected: {}", name(action), name(reason)),
        ),
        Event::HostCall { call, result, .. } => {
            let r = match result {
                CallResult::Ok => "ok".to_string(),
                CallResult::Err { errno, desc } => format!("error {errno} ({desc})"),
            };
            ("host", format!("{} -> {r}", call_name(*call)))
        }
        Event::Power { from, to } => ("power", format!("{} -> {}", name(from), name(to))),
        Event::HostWake { epoch, count } => (
            "wake",
            format!("host wake: kernel resumed the device, eventfd = {count} (arming #{epoch})"),
        ),
        Event::PmeDelivered { route, delivery } => (
            "pme",
            format!(
                "PME delivered via {} ({}), PME_Status set",
                route_text(route),
                name(delivery)
            ),
        ),
        Event::PmeFailed { route } => ("pme", format!("PME FAILED via {}", route_text(route))),
        Event::PmeSuppressed { reason, count, .. } => (
            "pme",
            format!("PME suppressed ({}, eventfd = {count})", name(reason)),
        ),
        Event::SpuriousWake => ("wake", "spurious (eventfd empty)".into()),
        Event::Deferred { until_ns } => (
            "ctl",
            format!("_OFF deferred until {} (anti-thrash)", t(*until_ns)),
        ),
        Event::DeferredRun => ("ctl", "deferred _OFF runs now".into()),
        Event::Coalesced => ("ctl", "_ON cancelled the deferred _OFF (coalesced)".into()),
        Event::Fallback { reason, .. } => ("ctl", format!("D3hot fallback ({})", name(reason))),
        Event::DeviceFailed { call, errno } => (
            "ctl",
            format!("DEVICE FAILED: {} errno {errno}", call_name(*call)),
        ),
        Event::DeviceRecovered => ("ctl", "device recovered".into()),
        Event::VmReset => ("ctl", "VM reset: out of low power, guest sees it on".into()),
    })
}

fn trap_text(step: &GuestStep) -> String {
    let bytes: Vec<String> = step.trap.data.iter().map(|b| format!("{b:02x}")).collect();
    let space = match step.trap.space {
        TrapSpace::Io => "io",
        TrapSpace::Mmio => "mmio",
    };
    let why = match step.reason {
        Reason::Idle => "idle",
        Reason::Use => "needed",
        Reason::Wake => "Notify(dev, 2)",
    };
    let pme = if step.pme_status_seen {
        ", PME_Status seen+cleared"
    } else {
        ""
    };
    format!(
        "{} ({why}{pme}): trap {space} {:#x} <- [{}] => {}",
        step.action,
        step.trap.address,
        bytes.join(" "),
        outcome_text(&step.outcome)
    )
}

fn dev_name(out: &Output, dev: usize) -> &str {
    out.specs.get(dev).map_or("-", |s| s.name.as_str())
}

/// `writeln!` into the output buffer (writing to a `String` cannot fail).
macro_rules! w {
    ($o:expr) => {
        $o.push('\n')
    };
    ($o:expr, $($a:tt)*) => {{
        let _ = writeln!($o, $($a)*);
    }};
}

fn print_text(o: &mut String, out: &Output, devices: u8) {
    let s = &out.summary;
    w!(
        o,
        "vfio-pm demo: simulated host (D3cold platform, kernel 6.1) + simulated Linux guest, \
         {devices} devices, seed {}, virtual clock",
        s.seed
    );
    w!(o, "{}", s.ssdt);
    w!(
        o,
        "  (see it: vfio-pm demo --print-config > demo.toml && vfio-pm aml demo.toml --dsl)"
    );
    w!(o);
    w!(
        o,
        "{:<6} {:<13} {:<13} {:<10} {:<7} VARIANT",
        "DEVICE",
        "GUEST BDF",
        "HOST BDF",
        "ID",
        "CLASS",
    );
    w!(o, "{:<6} ACPI NODE, WAKE: what it is", "");
    for (sp, v) in out.specs.iter().zip(&out.variants) {
        w!(
            o,
            "{:<6} {:<13} {:<13} {:04x}:{:04x}  {:06x}  {v}",
            sp.name,
            sp.guest.to_string(),
            sp.host.to_string(),
            sp.vendor,
            sp.device,
            sp.class,
        );
        w!(
            o,
            "{:<6} {}, GPE {:#04x}: {}",
            "",
            sp.acpi_path,
            sp.gpe,
            sp.what
        );
    }
    w!(o);
    w!(o, "{:>8}  {:<6} {:<6} WHAT", "TIME", "DEVICE", "KIND");
    for (quiet, r) in &out.records {
        if *quiet {
            continue;
        }
        match r {
            Rec::Phase(text) => w!(o, "\n== {text}"),
            Rec::Note(text) => w!(o, "   {text}"),
            Rec::Guest { at_ns, dev, step } => w!(
                o,
                "{:>8}  {:<6} {:<6} {}",
                t(*at_ns),
                dev_name(out, *dev),
                "guest",
                trap_text(step)
            ),
            Rec::Ctl { dev, ev } => {
                if let Some((kind, text)) = event_text(&ev.event) {
                    w!(
                        o,
                        "{:>8}  {:<6} {:<6} {text}",
                        t(ev.at_ns),
                        dev_name(out, *dev),
                        kind
                    );
                }
            }
            Rec::HostAccess { at_ns, dev } => w!(
                o,
                "{:>8}  {:<6} {:<6} lspci: config read through sysfs",
                t(*at_ns),
                dev_name(out, *dev),
                "host"
            ),
            Rec::HostState {
                at_ns,
                dev,
                from,
                to,
            } => w!(
                o,
                "{:>8}  {:<6} {:<6} power_state {} -> {}",
                t(*at_ns),
                dev_name(out, *dev),
                "state",
                from.as_str(),
                to.as_str()
            ),
        }
    }
    w!(o);
    w!(
        o,
        "Residency and counters (virtual time {}; engaged after reset: {})",
        human(s.total_ns),
        s.engaged_after_reset
    );
    w!(
        o,
        "{:<6} {:<13} {:<18} {:>7} {:>7} {:>7}",
        "DEVICE",
        "HOST BDF",
        "VARIANT",
        "D0",
        "D3HOT",
        "D3COLD"
    );
    for d in &s.devices {
        w!(
            o,
            "{:<6} {:<13} {:<18} {:>7} {:>7} {:>7}",
            d.device,
            d.host_bdf,
            d.variant,
            human(d.d0_ns),
            human(d.d3hot_ns),
            human(d.d3cold_ns),
        );
    }
    w!(o);
    w!(
        o,
        "{:<6} {:>7} {:>5} {:>5} {:>4} {:>10} {:>8} {:>9}",
        "DEVICE",
        "ENTRIES",
        "EXITS",
        "WAKES",
        "PMES",
        "SUPPRESSED",
        "DEFERRED",
        "COALESCED"
    );
    for d in &s.devices {
        w!(
            o,
            "{:<6} {:>7} {:>5} {:>5} {:>4} {:>10} {:>8} {:>9}",
            d.device,
            d.entries,
            d.exits,
            d.host_wakes,
            d.pme_delivered,
            d.pme_suppressed,
            d.deferred,
            d.coalesced
        );
    }
}

fn print_json(o: &mut String, out: &Output) -> Result<()> {
    for (_, r) in &out.records {
        let v = match r {
            Rec::Phase(text) => json!({"type": "phase", "text": text}),
            Rec::Note(text) => json!({"type": "note", "text": text}),
            Rec::Guest { at_ns, dev, step } => json!({
                "type": "guest", "at_ns": at_ns, "device": dev_name(out, *dev), "step": step,
            }),
            Rec::Ctl { dev, ev } => {
                let mut v = serde_json::to_value(ev)?;
                if let Value::Object(m) = &mut v {
                    m.insert("type".into(), json!("event"));
                    m.insert("device".into(), json!(dev_name(out, *dev)));
                }
                v
            }
            Rec::HostAccess { at_ns, dev } => json!({
                "type": "host_access", "at_ns": at_ns, "device": dev_name(out, *dev),
                "access": "config_read",
            }),
            Rec::HostState {
                at_ns,
                dev,
                from,
                to,
            } => json!({
                "type": "host_state", "at_ns": at_ns, "device": dev_name(out, *dev),
                "from": from.as_str(), "to": to.as_str(),
            }),
        };
        w!(o, "{}", serde_json::to_string(&v)?);
    }
    let mut v = serde_json::to_value(&out.summary)?;
    if let Value::Object(m) = &mut v {
        m.insert("type".into(), json!("summary"));
    }
    w!(o, "{}", serde_json::to_string(&v)?);
    Ok(())
}

/// Runs `vfio-pm demo`.
pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let mut text = String::new();
    if args.print_config {
        text = config_toml(&specs(args.devices));
    } else if args.json {
        let out = run_scenario(args.devices, args.seed)?;
        print_json(&mut text, &out)?;
    } else {
        let out = run_scenario(args.devices, args.seed)?;
        let mut wide = String::new();
        print_text(&mut wide, &out, args.devices);
        text = fit(&wide);
    }
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_count_has_a_valid_configuration() {
        for n in 3..=16 {
            let toml = config_toml(&specs(n));
            let c = VmmConfig::from_toml_str(&toml).unwrap_or_else(|e| panic!("{n}: {e}\n{toml}"));
            assert_eq!(c.devices().len(), usize::from(n));
        }
    }

    #[test]
    fn scenario_is_deterministic_and_ends_clean() {
        let a = run_scenario(4, 7).unwrap();
        let b = run_scenario(4, 7).unwrap();
        assert_eq!(a.summary.devices, b.summary.devices);
        assert_eq!(a.summary.engaged_after_reset, 0);
        let gpu = &a.summary.devices[0];
        assert_eq!(gpu.variant, "entry_with_wakeup");
        assert_eq!(gpu.host_wakes, 3);
        assert_eq!(gpu.pme_delivered, 3);
        assert_eq!(gpu.coalesced, u64::from(BURST_PAIRS));
        let nvme = &a.summary.devices[3];
        assert!(nvme.d3hot_ns > 0 && nvme.d3cold_ns == 0);
        for d in &a.summary.devices[1..] {
            assert_eq!(d.pme_delivered, 0, "{}", d.device);
        }
    }
}
