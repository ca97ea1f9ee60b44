//! Host wakes and the event loop: the hypervisor's own accesses, wakeup eventfds, postponed
//! entries and the epoll wait.

use super::*;

impl Controller {
    /// Runs `f` on the device as one of the hypervisor's own accesses (any ioctl or region
    /// access). Afterwards the wakeup eventfd is drained: a signal caused by this access is
    /// never forwarded to the guest. If it took an armed device out of low power while the
    /// guest still wants it off, the device is re-armed.
    pub fn host_access<R>(
        &mut self,
        slot: Slot,
        f: impl FnOnce(&dyn PowerDevice) -> R,
    ) -> Result<R, ControllerError> {
        let e = self.entry_mut(slot)?;
        if e.power == HostPower::Armed {
            // A signal already there is a genuine host wake that came before this access
            // (found by the property tests): deliver it rather than absorb it as ours. A
            // notification failure is reported through the events (`PmeFailed`).
            let pending = e.drain();
            if pending > 0 {
                let now = self.clock.now_ns();
                let _ = self.wake_count(slot, pending, now);
            }
        }
        let e = self.entry_mut(slot)?;
        let out = f(&*e.dev);
        let armed = e.power == HostPower::Armed;
        let guest_off = !e.guest_on;
        let count = self.absorb(slot, SuppressReason::OwnIoctl);
        if armed && count > 0 {
            // The kernel auto-exited; the guest does not know and must not: put it back.
            self.set_power(slot, HostPower::Active);
            self.entry_mut(slot)?.stats.exits += 1;
            if guest_off {
                // A failure is reported through events and the device state.
                let _ = self.enter(slot);
            }
        }
        Ok(out)
    }

    /// Handles a readable wakeup eventfd of `slot`.
    pub fn handle_wake(&mut self, slot: Slot) -> Result<(), ControllerError> {
        let generation = self.entry_mut(slot)?.generation;
        self.wake_token(slot.0, generation)
    }

    fn wake_token(&mut self, index: u32, generation: u32) -> Result<(), ControllerError> {
        let slot = Slot(index);
        let now = self.clock.now_ns();
        let e = match self
            .devices
            .get_mut(index as usize)
            .and_then(Option::as_mut)
        {
            Some(e) if e.generation == generation => e,
            _ => return Ok(()), // event for a removed device, from an older batch
        };
        let count = match e.wake.read() {
            Ok(c) => c,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                e.stats.spurious += 1;
                self.emit(slot, Event::SpuriousWake);
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        self.wake_count(slot, count, now)
    }

    /// The wakeup eventfd of `slot` held `count`: a guest notification if the device is armed.
    fn wake_count(&mut self, slot: Slot, count: u64, now: u64) -> Result<(), ControllerError> {
        let e = self.entry_mut(slot)?;
        let epoch = e.epoch;
        if e.power != HostPower::Armed {
            self.suppressed(slot, SuppressReason::Stale, count);
            return Ok(());
        }
        e.stats.host_wakes += 1;
        e.stats.exits += 1;
        e.last_transition_ns = Some(now);
        let Some(route) = e.settings.route else {
            // Never armed without a route (choose_variant); a signal here is nobody's wake.
            self.suppressed(slot, SuppressReason::Stale, count);
            return Ok(());
        };
        self.emit(slot, Event::HostWake { epoch, count });
        self.set_power(slot, HostPower::WokenByHost);
        match self.notifier.notify(route) {
            Ok(delivery) => {
                self.entry_mut(slot)?.stats.pme_delivered += 1;
                self.emit(slot, Event::PmeDelivered { route, delivery });
                Ok(())
            }
            Err(source) => {
                self.emit(slot, Event::PmeFailed { route });
                Err(ControllerError::Notify { slot, source })
            }
        }
    }

    /// Makes postponed entries whose time has come. Returns how many ran.
    pub fn tick(&mut self) -> usize {
        let now = self.clock.now_ns();
        let mut ran = 0;
        while let Some(&Reverse((due, index, seq))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            let slot = Slot(index);
            let Ok(e) = self.entry_mut(slot) else {
                continue;
            };
            if e.deferred != Some(seq) {
                continue; // cancelled by `_ON` or superseded
            }
            e.deferred = None;
            if e.guest_on || e.power != HostPower::Active {
                continue;
            }
            self.emit(slot, Event::DeferredRun);
            // Failures are reported through events and the device state.
            let _ = self.enter(slot);
            ran += 1;
        }
        ran
    }

    /// The earliest postponed-entry deadline (clock ns), if any.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((d, _, _))| *d)
    }

    /// Waits up to `timeout` (`None`: until something happens) for wakes and queued
    /// requests, handles them, then runs due timers. Returns the number of epoll events.
    pub fn poll_once(&mut self, timeout: Option<Duration>) -> Result<usize, ControllerError> {
        let now = self.clock.now_ns();
        let timer = self
            .next_deadline_ns()
            .map(|d| Duration::from_nanos(d.saturating_sub(now)));
        let wait = match (timeout, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let ms = match wait {
            None => -1,
            Some(d) => i32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(i32::MAX),
        };
        let n = match self.epoll.wait(ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e.into()),
        };
        let mut first_err = None;
        for i in 0..n {
            let data = self.events[i].data();
            let r = match data {
                REQUEST_TOKEN => {
                    self.process_queue();
                    Ok(())
                }
                STOP_TOKEN => {
                    let _ = self.shared.stop_fd.read();
                    Ok(())
                }
                t => self.wake_token(t as u32, (t >> 32) as u32),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        self.tick();
        match first_err {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn process_queue(&mut self) {
        let _ = self.shared.doorbell.read();
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *q, &mut self.pending);
        }
        while let Some(req) = self.pending.pop_front() {
            // Outcomes and failures are reported through events.
            let _ = self.handle_request(req);
        }
    }

    /// Serves wakes, queued requests and timers until [`ControllerHandle::stop`].
    pub fn run(&mut self) -> Result<(), ControllerError> {
        while !self.shared.stop.load(Ordering::Acquire) {
            match self.poll_once(Some(Duration::from_secs(1))) {
                Ok(_) | Err(ControllerError::Notify { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        self.shared.stop.store(false, Ordering::Release);
        Ok(())
    }
}
