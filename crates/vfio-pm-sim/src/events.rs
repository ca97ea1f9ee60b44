//! The model's trace: one structured event per transition, in order.

use std::fmt;
use vfio_pm::{PciAddress, PowerState};

/// One transition inside the simulated host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The runtime-PM usage count changed.
    Usage {
        /// The device.
        device: PciAddress,
        /// The new count.
        count: u32,
        /// What changed it (`ioctl get`, `entry put_noidle`, ...).
        reason: &'static str,
    },
    /// An asynchronous idle check was queued (it runs at `settle`/`run_pending`).
    IdleQueued {
        /// The device.
        device: PciAddress,
    },
    /// The device runtime-suspended.
    Suspended {
        /// The device.
        device: PciAddress,
        /// The power state the PCI core chose.
        state: PowerState,
    },
    /// The device runtime-resumed.
    Resumed {
        /// The device.
        device: PciAddress,
        /// The power state it left.
        from: PowerState,
        /// What resumed it.
        reason: &'static str,
    },
    /// A resume failed (device stuck in D3cold).
    ResumeFailed {
        /// The device.
        device: PciAddress,
        /// What tried to resume it.
        reason: &'static str,
    },
    /// The wakeup eventfd was signalled (counter +1).
    Signalled {
        /// The device.
        device: PciAddress,
    },
    /// `pm_runtime_engaged` changed.
    Engaged {
        /// The device.
        device: PciAddress,
        /// The new value.
        engaged: bool,
        /// Whether a wakeup eventfd is armed after the change.
        wakeup: bool,
    },
    /// The device's power state changed outside runtime suspend/resume (PMCSR write, reset).
    PowerState {
        /// The device.
        device: PciAddress,
        /// The old state.
        from: PowerState,
        /// The new state.
        to: PowerState,
    },
    /// The INTx masked state changed.
    Intx {
        /// The device.
        device: PciAddress,
        /// Masked after the change.
        masked: bool,
        /// Whether the runtime-PM code did it.
        by_pm: bool,
    },
    /// All BAR mmaps were zapped (later faults re-check access).
    MmapsZapped {
        /// The device.
        device: PciAddress,
    },
    /// The device fd was opened.
    Opened {
        /// The device.
        device: PciAddress,
    },
    /// The device fd was closed.
    Closed {
        /// The device.
        device: PciAddress,
    },
    /// A function reset (FLR/PM reset) or bus reset was done.
    Reset {
        /// The device.
        device: PciAddress,
        /// `function` or `bus`.
        kind: &'static str,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Usage {
                device,
                count,
                reason,
            } => write!(f, "{device} usage={count} ({reason})"),
            Event::IdleQueued { device } => write!(f, "{device} idle check queued"),
            Event::Suspended { device, state } => write!(f, "{device} suspended to {state}"),
            Event::Resumed {
                device,
                from,
                reason,
            } => write!(f, "{device} resumed from {from} ({reason})"),
            Event::ResumeFailed { device, reason } => {
                write!(f, "{device} resume failed ({reason})")
            }
            Event::Signalled { device } => write!(f, "{device} wakeup eventfd signalled"),
            Event::Engaged {
                device,
                engaged,
                wakeup,
            } => write!(f, "{device} engaged={engaged} wakeup={wakeup}"),
            Event::PowerState { device, from, to } => write!(f, "{device} {from} -> {to}"),
            Event::Intx {
                device,
                masked,
                by_pm,
            } => write!(f, "{device} intx masked={masked} by_pm={by_pm}"),
            Event::MmapsZapped { device } => write!(f, "{device} mmaps zapped"),
            Event::Opened { device } => write!(f, "{device} opened"),
            Event::Closed { device } => write!(f, "{device} closed"),
            Event::Reset { device, kind } => write!(f, "{device} {kind} reset"),
        }
    }
}
