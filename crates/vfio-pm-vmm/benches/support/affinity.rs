//! Pinning bench threads to CPUs (`sched_setaffinity`), so a cross-thread wake is measured in
//! one known regime: a local context switch (both threads on one CPU) or a cross-CPU wake
//! (an IPI, through the hypervisor when the waiting vCPU halted).

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs the calling thread may run on, in order.
pub fn allowed_cpus() -> nix::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Restricts the calling thread to `cpus`.
pub fn pin_to(cpus: &[usize]) -> nix::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c)?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
}

/// Where a bench places its two sides: the thread that signals and then waits for the answer,
/// and the thread that is woken (the controller or a bare forwarder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Regime {
    /// Both on `cpu`: the wake is a local context switch (the software cost).
    SameCpu {
        /// The one CPU.
        cpu: usize,
    },
    /// On different CPUs: the wake is an IPI to a possibly halted CPU.
    CrossCpu {
        /// The signalling thread's CPU.
        signaller: usize,
        /// The woken thread's CPU.
        worker: usize,
    },
    /// Not pinned (pinning failed): the scheduler picks, regimes mix.
    Unpinned,
}

impl Regime {
    /// The regimes this machine allows, and a warning when it allows fewer than both pinned
    /// regimes. Pinning is tried here on the calling thread, so a failure shows up at once.
    pub fn available() -> (Vec<Regime>, Option<String>) {
        let cpus = match allowed_cpus() {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => {
                return (
                    vec![Regime::Unpinned],
                    Some("sched_getaffinity: no CPU".into()),
                )
            }
            Err(e) => {
                return (
                    vec![Regime::Unpinned],
                    Some(format!("sched_getaffinity: {e}")),
                )
            }
        };
        let last = *cpus.last().unwrap();
        if let Err(e) = pin_to(&[last]) {
            return (
                vec![Regime::Unpinned],
                Some(format!("sched_setaffinity: {e}")),
            );
        }
        let _ = pin_to(&cpus);
        if cpus.len() < 2 {
            let warn = format!("only CPU {last} is allowed: the cross-CPU regime is not measured");
            return (vec![Regime::SameCpu { cpu: last }], Some(warn));
        }
        let cross = Regime::CrossCpu {
            signaller: cpus[0],
            worker: last,
        };
        (vec![Regime::SameCpu { cpu: last }, cross], None)
    }

    /// Pins the calling thread as the signalling side.
    pub fn pin_signaller(self) {
        match self {
            Regime::SameCpu { cpu } | Regime::CrossCpu { signaller: cpu, .. } => {
                pin_to(&[cpu]).expect("sched_setaffinity worked for this regime before")
            }
            Regime::Unpinned => {}
        }
    }

    /// Pins the calling thread as the woken side.
    pub fn pin_worker(self) {
        match self {
            Regime::SameCpu { cpu } | Regime::CrossCpu { worker: cpu, .. } => {
                pin_to(&[cpu]).expect("sched_setaffinity worked for this regime before")
            }
            Regime::Unpinned => {}
        }
    }

    /// A heading for a table.
    pub fn describe(self) -> String {
        match self {
            Regime::SameCpu { cpu } => format!(
                "same CPU (signaller and woken thread both on CPU {cpu}: a local context switch)"
            ),
            Regime::CrossCpu { signaller, worker } => format!(
                "cross CPU (signaller on CPU {signaller}, woken thread on CPU {worker}: an IPI, through the hypervisor when that vCPU halted)"
            ),
            Regime::Unpinned => "UNPINNED (sched_setaffinity failed: regimes mix)".into(),
        }
    }
}
