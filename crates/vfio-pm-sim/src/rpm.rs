//! The runtime-PM core of one device (drivers/base/power/runtime.c as far as vfio-pci needs
//! it) and the PCI core's choice of target state, with vfio-pci's suspend/resume callbacks
//! (`vfio_pci_core_runtime_suspend`/`_resume` in drivers/vfio/pci/vfio_pci_core.c; summary in
//! docs/kernel-behaviour.md, *Runtime PM references* and *Suspend and resume callbacks*).
//!
//! Suspend is asynchronous: dropping the last reference only queues an idle check, which runs
//! in [`HostState::run_pending`] (the "let the kernel run" step).

use crate::events::Event;
use crate::platform::Platform;
use crate::state::{HostState, Rpm};
use nix::errno::Errno;
use vfio_pm::PowerState;

impl HostState {
    fn log_usage(&mut self, i: usize, reason: &'static str) {
        let d = &self.devices[i];
        let ev = Event::Usage {
            device: d.address(),
            count: d.usage,
            reason,
        };
        self.log(ev);
    }

    /// `pm_runtime_get_noresume`.
    pub(crate) fn get_noresume(&mut self, i: usize, reason: &'static str) {
        let d = self.dev(i);
        d.usage = d.usage.saturating_add(1);
        self.log_usage(i, reason);
    }

    /// `pm_runtime_put_noidle` (never below zero).
    pub(crate) fn put_noidle(&mut self, i: usize, reason: &'static str) {
        let d = self.dev(i);
        d.usage = d.usage.saturating_sub(1);
        self.log_usage(i, reason);
    }

    /// `pm_runtime_put`: drop a reference; at zero, queue an asynchronous idle check.
    pub(crate) fn put(&mut self, i: usize, reason: &'static str) {
        self.put_noidle(i, reason);
        if self.devices[i].usage == 0 {
            self.queue_idle(i);
        }
    }

    pub(crate) fn queue_idle(&mut self, i: usize) {
        let d = self.dev(i);
        if !d.idle_pending {
            d.idle_pending = true;
            let device = d.address();
            self.log(Event::IdleQueued { device });
        }
    }

    /// `pm_runtime_resume`: synchronous resume if suspended, running vfio-pci's
    /// runtime_resume callback (signal + auto-exit, INTx unmask). A successful resume queues
    /// an idle check, as `rpm_resume` does.
    pub(crate) fn resume(&mut self, i: usize, reason: &'static str) -> Result<(), Errno> {
        let d = self.dev(i);
        if d.status == Rpm::Active {
            return Ok(());
        }
        let device = d.address();
        if d.resume_fails {
            self.log(Event::ResumeFailed { device, reason });
            return Err(Errno::EIO);
        }
        let from = std::mem::replace(&mut d.power, PowerState::D0);
        d.status = Rpm::Active;
        self.log(Event::Resumed {
            device,
            from,
            reason,
        });
        // vfio_pci_core_runtime_resume
        if let Some(wake) = self.dev(i).wake.take() {
            wake.signal();
            self.log(Event::Signalled { device });
            self.engaged_exit(i, Some(wake), "resume auto-exit");
        }
        if std::mem::take(&mut self.dev(i).pm_intx_masked) {
            self.intx_unmask(i, true);
        }
        self.queue_idle(i);
        Ok(())
    }

    /// `pm_runtime_resume_and_get`: +1 then resume; on failure the reference is dropped again.
    pub(crate) fn resume_and_get(&mut self, i: usize, reason: &'static str) -> Result<(), Errno> {
        self.get_noresume(i, reason);
        if let Err(e) = self.resume(i, reason) {
            self.put_noidle(i, reason);
            return Err(e);
        }
        Ok(())
    }

    /// Runs the queued asynchronous idle checks: a device whose usage count is zero
    /// runtime-suspends. Returns how many devices suspended.
    pub(crate) fn run_pending(&mut self) -> usize {
        let mut suspended = 0;
        for i in 0..self.devices.len() {
            let d = self.dev(i);
            if !std::mem::take(&mut d.idle_pending) {
                continue;
            }
            if d.usage == 0 && d.status == Rpm::Active {
                self.suspend(i);
                suspended += 1;
            }
        }
        suspended
    }

    /// `rpm_suspend` → vfio-pci's runtime_suspend callback → PCI core target state.
    fn suspend(&mut self, i: usize) {
        // vfio_pci_core_runtime_suspend: undo a guest PMCSR D3hot first (still active here).
        self.set_power_state(i, PowerState::D0);
        let masked = match self.dev(i).intx.as_mut() {
            Some(intx) if !intx.masked => {
                intx.masked = true;
                true
            }
            _ => false,
        };
        if masked {
            self.dev(i).pm_intx_masked = true;
            let device = self.devices[i].address();
            self.log(Event::Intx {
                device,
                masked: true,
                by_pm: true,
            });
        }
        // pci_finish_runtime_suspend / pci_target_state.
        let platform = self.platform;
        let d = self.dev(i);
        let target = if platform == Platform::D3cold && d.d3cold_allowed {
            PowerState::D3Cold
        } else if d.cfg.pm_capability {
            PowerState::D3Hot
        } else {
            PowerState::D0
        };
        d.power = target.clone();
        d.status = Rpm::Suspended;
        let device = d.address();
        self.log(Event::Suspended {
            device,
            state: target,
        });
    }

    /// Unmasks INTx (`vfio_pci_intx_unmask`): a pending interrupt re-signals the trigger.
    pub(crate) fn intx_unmask(&mut self, i: usize, by_pm: bool) {
        let Some(intx) = self.dev(i).intx.as_mut() else {
            return;
        };
        intx.masked = false;
        if std::mem::take(&mut intx.pending) {
            // The handler fires again: trigger signalled, line auto-masked.
            intx.triggers += 1;
            intx.masked = true;
        }
        let masked = intx.masked;
        let device = self.devices[i].address();
        self.log(Event::Intx {
            device,
            masked,
            by_pm,
        });
    }
}
