//! The demo run: simulated host, manager and guest on a virtual clock, recorded as a
//! timeline.

use super::*;

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

pub(super) fn run_scenario(devices: u8, seed: u64) -> Result<Output> {
    let mut demo = Demo::new(devices, seed)?;
    demo.run()?;
    demo.finish(seed)
}
