//! The entry and exit paths: guest `_OFF` (deferred by anti-thrash or entered now, with the
//! ENOTTY fallback and the already-engaged retry) and guest `_ON`.

use super::*;

impl Controller {
    /// Handles one guest request. Errors are also reported as events; a request for an
    /// unknown slot is an error, never a panic.
    pub fn handle_request(&mut self, req: GuestRequest) -> Result<RequestOutcome, ControllerError> {
        match req.action {
            PowerAction::PowerOff => self.power_off(req.slot),
            PowerAction::PowerOn => self.power_on(req.slot),
        }
    }

    /// Guest `_OFF`.
    pub fn power_off(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        let failed = e.power == HostPower::Failed;
        let duplicate = !e.guest_on;
        let min_res = u64::try_from(e.settings.min_residency.as_nanos()).unwrap_or(u64::MAX);
        let due = e.last_transition_ns.map(|t| t.saturating_add(min_res));
        self.emit(
            slot,
            Event::Guest {
                action: PowerAction::PowerOff,
            },
        );
        if failed {
            self.emit(
                slot,
                Event::GuestRejected {
                    action: PowerAction::PowerOff,
                    reason: RejectReason::DeviceFailed,
                },
            );
            return Err(ControllerError::DeviceFailed(slot));
        }
        let e = self.entry_mut(slot)?;
        if duplicate {
            e.stats.duplicates += 1;
            return Ok(RequestOutcome::Unchanged);
        }
        e.guest_on = false;
        if let Some(until) = due.filter(|&d| d > now) {
            self.timer_seq += 1;
            let seq = self.timer_seq;
            let e = self.entry_mut(slot)?;
            e.deferred = Some(seq);
            e.stats.deferred += 1;
            self.timers.push(Reverse((until, slot.0, seq)));
            self.emit(slot, Event::Deferred { until_ns: until });
            return Ok(RequestOutcome::Deferred { until_ns: until });
        }
        self.enter(slot)
    }

    /// Bookkeeping after the host accepted an entry.
    fn entered(
        &mut self,
        slot: Slot,
        variant: LowPowerVariant,
        now: u64,
    ) -> Result<RequestOutcome, ControllerError> {
        let e = self.entry_mut(slot)?;
        e.stats.entries += 1;
        e.last_transition_ns = Some(now);
        let to = if variant == LowPowerVariant::EntryWithWakeup {
            HostPower::Armed
        } else {
            HostPower::LowPower
        };
        self.set_power(slot, to);
        Ok(RequestOutcome::Entered(variant))
    }

    pub(super) fn enter(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        // Signals left from an earlier arming are not this arming's business.
        let stale = e.drain();
        e.epoch += 1;
        let variant = e.variant;
        if stale > 0 {
            self.suppressed(slot, SuppressReason::Stale, stale);
        }
        let e = self.entry_mut(slot)?;
        let (call, result) = match variant {
            LowPowerVariant::EntryWithWakeup => (
                HostCall::EntryWithWakeup,
                e.dev.enter_low_power_with_wakeup(&e.wake),
            ),
            LowPowerVariant::Entry => (HostCall::Entry, e.dev.enter_low_power()),
            LowPowerVariant::D3HotFallback => return self.fallback_write(slot, true),
        };
        self.host_call(
            slot,
            call,
            result.as_ref().map(|_| ()).map_err(|e| e.errno()),
        );
        match result {
            Ok(()) => self.entered(slot, variant, now),
            Err(FeatureError::Unsupported { .. }) => {
                let writes = self.entry_mut(slot)?.settings.host_pm_cap.is_some();
                self.entry_mut(slot)?.variant = LowPowerVariant::D3HotFallback;
                self.emit(
                    slot,
                    Event::Fallback {
                        reason: FallbackReason::Enotty,
                        controller_writes_pmcsr: writes,
                    },
                );
                self.fallback_write(slot, true)
            }
            Err(FeatureError::AlreadyEngaged { .. }) => {
                // Someone engaged the device behind our back: exit, then retry once.
                let r = self.entry_mut(slot)?.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                self.absorb(slot, SuppressReason::OwnIoctl);
                let e = self.entry_mut(slot)?;
                let retry = match variant {
                    LowPowerVariant::EntryWithWakeup => e.dev.enter_low_power_with_wakeup(&e.wake),
                    _ => e.dev.enter_low_power(),
                };
                self.host_call(slot, call, retry.as_ref().map_err(|e| e.errno()).copied());
                match retry {
                    Ok(()) => self.entered(slot, variant, now),
                    Err(source) => self.fail(slot, call, source),
                }
            }
            Err(source @ FeatureError::ResumeFailed { .. }) => self.fail(slot, call, source),
            Err(source) => {
                // Nothing was engaged (the kernel validates before engaging): the device stays
                // on, consistent; report.
                Err(ControllerError::Host { slot, source })
            }
        }
    }

    pub(super) fn fail<T>(
        &mut self,
        slot: Slot,
        call: HostCall,
        source: FeatureError,
    ) -> Result<T, ControllerError> {
        self.set_power(slot, HostPower::Failed);
        self.emit(
            slot,
            Event::DeviceFailed {
                call,
                errno: source.errno() as i32,
            },
        );
        Err(ControllerError::Host { slot, source })
    }

    pub(super) fn fallback_write(
        &mut self,
        slot: Slot,
        d3: bool,
    ) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        let call = if d3 {
            HostCall::PmcsrD3Hot
        } else {
            HostCall::PmcsrD0
        };
        if let Some(cap) = e.settings.host_pm_cap {
            let off = u64::from(cap) + crate::pme::PMCSR_OFFSET as u64;
            let mut b = [0u8; 1];
            let r = e
                .dev
                .region_read(CONFIG_REGION, off, &mut b)
                .and_then(|_| {
                    let v = (b[0] & !0x3) | if d3 { 0x3 } else { 0 };
                    e.dev.region_write(CONFIG_REGION, off, &[v])
                })
                .map(|_| ());
            self.host_call(slot, call, r);
            if let Err(errno) = r {
                self.set_power(slot, HostPower::Failed);
                self.emit(
                    slot,
                    Event::DeviceFailed {
                        call,
                        errno: errno as i32,
                    },
                );
                return Err(ControllerError::HostOther { slot, call, errno });
            }
        }
        let e = self.entry_mut(slot)?;
        e.last_transition_ns = Some(now);
        if d3 {
            e.stats.entries += 1;
            self.set_power(slot, HostPower::D3HotFallback);
            Ok(RequestOutcome::Entered(LowPowerVariant::D3HotFallback))
        } else {
            e.stats.exits += 1;
            self.set_power(slot, HostPower::Active);
            Ok(RequestOutcome::Exited)
        }
    }

    /// Drains the wakeup eventfd after one of our own calls and accounts what it held.
    pub(super) fn absorb(&mut self, slot: Slot, reason: SuppressReason) -> u64 {
        let Ok(e) = self.entry_mut(slot) else {
            return 0;
        };
        let count = e.drain();
        if count > 0 {
            self.suppressed(slot, reason, count);
        }
        count
    }

    /// Takes over a device that is already in plain low power, engaged through another fd of
    /// the same open device before this controller had it (an agent restarted while the VMM
    /// kept the device open), with the guest's last request `_OFF`. No host call: any ioctl on
    /// the device fd would wake it (`vfio_device_fops_unl_ioctl` takes a runtime PM reference
    /// first) and ENTRY again would answer EINVAL (docs/kernel-behaviour.md). The caller knows
    /// the device is engaged from the kernel: a device a VMM holds open is runtime-active unless
    /// low power is engaged (`vfio_pci_core_enable` keeps a usage reference). Only for plain
    /// entry (the wakeup variant's eventfd belonged to the previous holder) and only before
    /// this controller moved the device.
    pub fn adopt_low_power(&mut self, slot: Slot) -> Result<(), ControllerError> {
        let now = self.clock.now_ns();
        let e = self.entry_mut(slot)?;
        let why = if e.variant != LowPowerVariant::Entry {
            Some("not plain LOW_POWER_ENTRY")
        } else if e.power != HostPower::Active || e.last_transition_ns.is_some() {
            Some("the controller already moved it")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ControllerError::NotAdoptable { slot, why });
        }
        e.guest_on = false;
        e.last_transition_ns = Some(now);
        self.set_power(slot, HostPower::LowPower);
        self.emit(slot, Event::AdoptedLowPower);
        Ok(())
    }

    /// Guest `_ON`. Never delayed.
    pub fn power_on(&mut self, slot: Slot) -> Result<RequestOutcome, ControllerError> {
        let now = self.clock.now_ns();
        self.entry_mut(slot)?;
        self.emit(
            slot,
            Event::Guest {
                action: PowerAction::PowerOn,
            },
        );
        let e = self.entry_mut(slot)?;
        let was_on = e.guest_on;
        e.guest_on = true;
        if e.deferred.take().is_some() {
            e.stats.coalesced += 1;
            self.emit(slot, Event::Coalesced);
            return Ok(RequestOutcome::Coalesced);
        }
        match e.power {
            HostPower::Active => {
                if was_on {
                    e.stats.duplicates += 1;
                }
                Ok(RequestOutcome::Unchanged)
            }
            HostPower::WokenByHost => {
                // The kernel auto-exited when it signalled; nothing to undo.
                self.absorb(slot, SuppressReason::GuestPoweringOn);
                self.set_power(slot, HostPower::Active);
                Ok(RequestOutcome::AlreadyExited)
            }
            HostPower::D3HotFallback => self.fallback_write(slot, false),
            HostPower::Failed if e.variant == LowPowerVariant::D3HotFallback => {
                // No EXIT to retry (the kernel lacks the features): PMCSR D0 again recovers.
                self.fallback_write(slot, false)?;
                self.emit(slot, Event::DeviceRecovered);
                Ok(RequestOutcome::Recovered)
            }
            HostPower::LowPower | HostPower::Armed | HostPower::Failed => {
                let failed = e.power == HostPower::Failed;
                let r = e.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                // The EXIT's own resume signalled the eventfd if the device was suspended; a
                // genuine wake that raced with this `_ON` is absorbed too: the guest is
                // turning the device on anyway.
                self.absorb(slot, SuppressReason::GuestPoweringOn);
                match r {
                    Ok(()) => {
                        let e = self.entry_mut(slot)?;
                        e.last_transition_ns = Some(now);
                        if !failed {
                            e.stats.exits += 1;
                        }
                        self.set_power(slot, HostPower::Active);
                        if failed {
                            self.emit(slot, Event::DeviceRecovered);
                            Ok(RequestOutcome::Recovered)
                        } else {
                            Ok(RequestOutcome::Exited)
                        }
                    }
                    Err(source) => {
                        if failed {
                            self.emit(
                                slot,
                                Event::GuestRejected {
                                    action: PowerAction::PowerOn,
                                    reason: RejectReason::DeviceFailed,
                                },
                            );
                            return Err(ControllerError::DeviceFailed(slot));
                        }
                        self.fail(slot, HostCall::Exit, source)
                    }
                }
            }
        }
    }
}
