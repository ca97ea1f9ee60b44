//! Teardown: VM reset, device removal and shutdown leave nothing engaged.

use super::*;

impl Controller {
    fn teardown_one(&mut self, slot: Slot, report: &mut TeardownReport) {
        let Ok(e) = self.entry_mut(slot) else { return };
        e.deferred = None;
        let power = e.power;
        let fallback = e.variant == LowPowerVariant::D3HotFallback;
        let r = match power {
            HostPower::Active => Ok(()),
            HostPower::WokenByHost => {
                self.set_power(slot, HostPower::Active);
                Ok(())
            }
            HostPower::D3HotFallback => self.fallback_write(slot, false).map(|_| ()),
            HostPower::Failed if fallback => self.fallback_write(slot, false).map(|_| ()),
            HostPower::LowPower | HostPower::Armed | HostPower::Failed => {
                let r = e.dev.exit_low_power();
                self.host_call(
                    slot,
                    HostCall::Exit,
                    r.as_ref().map_err(|e| e.errno()).copied(),
                );
                match r {
                    Ok(()) => {
                        if power == HostPower::Failed {
                            self.emit(slot, Event::DeviceRecovered);
                        } else if let Ok(e) = self.entry_mut(slot) {
                            e.stats.exits += 1;
                        }
                        self.set_power(slot, HostPower::Active);
                        Ok(())
                    }
                    Err(source) => {
                        if power == HostPower::Failed {
                            Err(ControllerError::DeviceFailed(slot))
                        } else {
                            self.fail::<()>(slot, HostCall::Exit, source)
                        }
                    }
                }
            }
        };
        self.absorb(slot, SuppressReason::Teardown);
        if let Ok(e) = self.entry_mut(slot) {
            e.guest_on = true;
            e.last_transition_ns = None;
        }
        match r {
            Ok(()) if power != HostPower::Active => report.exited.push(slot),
            Ok(()) => {}
            Err(_) => report.failed.push(slot),
        }
    }

    /// VM reset: every device leaves low power (nothing stays engaged), postponed entries are
    /// dropped and the guest sees every device on, as after power-up.
    pub fn reset_vm(&mut self) -> TeardownReport {
        let mut report = TeardownReport::default();
        self.timers.clear();
        for i in 0..self.devices.len() {
            let slot = Slot(i as u32);
            if self.entry(slot).is_some() {
                self.teardown_one(slot, &mut report);
                self.emit(slot, Event::VmReset);
            }
        }
        report
    }

    /// Removes a device: leaves low power first, unregisters its eventfd, returns it (still
    /// open: dropping a device the controller owned closes its fd, a borrowed one stays open).
    pub fn remove_device(&mut self, slot: Slot) -> Result<Box<dyn PowerDevice>, ControllerError> {
        self.entry_mut(slot)?;
        let mut report = TeardownReport::default();
        self.teardown_one(slot, &mut report);
        if report.failed.contains(&slot) {
            // Still returned so the caller can close it; the failure is in the events.
            tracing::warn!(?slot, "device removed while failed");
        }
        self.unregister(slot)
    }

    /// Takes a torn-down device out of the slot table and the epoll set.
    fn unregister(&mut self, slot: Slot) -> Result<Box<dyn PowerDevice>, ControllerError> {
        let e = self
            .devices
            .get_mut(slot.0 as usize)
            .and_then(Option::take)
            .ok_or(ControllerError::UnknownSlot(slot))?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            e.wake.as_raw_fd(),
            EpollEvent::default(),
        );
        self.free.push(slot.0);
        self.emit(slot, Event::DeviceRemoved);
        Ok(e.dev)
    }

    /// VM shutdown: every device leaves low power (once), then is removed and dropped, so that
    /// nothing stays engaged.
    pub fn shutdown(&mut self) -> TeardownReport {
        let mut report = TeardownReport::default();
        self.timers.clear();
        let slots: Vec<Slot> = self.slots().collect();
        for slot in slots {
            self.teardown_one(slot, &mut report);
            drop(self.unregister(slot));
        }
        report
    }
}
