//! What L1 does beside a run at moments L2 announces (see [`super::plan::Action`]): an `lspci`-style
//! config read of L1's device, a SIGKILL to the agent, and what each must be followed by
//! (the device runtime-suspends again; a supervisor restarts the agent). Also the agent's own
//! cost over L2's idle window (`child_idle`).

use super::plan::{Action, ActionKind};
use crate::report::Reporter;
use std::time::{Duration, Instant};
use vfio_pm::SysfsDevice;

/// How long L1's device may take to runtime-suspend again after the config read.
const RESUSPEND_LIMIT: Duration = Duration::from_secs(10);
/// How long a supervisor may take to start the agent again.
const RESTART_LIMIT: Duration = Duration::from_secs(30);

/// A condition being waited for after an action.
enum Watch {
    /// L1's device back in `D3cold suspended` after config read `n`.
    Resuspend { since: Instant, n: u32 },
    /// The pid file names a live `vfio-pm` other than `old`.
    Restart {
        pidfile: String,
        old: i32,
        since: Instant,
    },
}

/// The actions of one run: scheduled when L2 announces, done when due, then watched.
pub struct Actions {
    run: String,
    root: String,
    todo: Vec<Action>,
    due: Vec<(Instant, ActionKind)>,
    watches: Vec<Watch>,
    /// Config reads done so far (their checks are numbered from 1).
    reads: u32,
}

fn pid_in(path: &str) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|p| *p > 1)
}

fn is_agent(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vfio-pm")
}

fn active_ms(sys: &SysfsDevice) -> Option<u64> {
    let t = std::fs::read_to_string(sys.dir().join("power/runtime_active_time")).ok()?;
    t.trim().parse().ok()
}

impl Actions {
    /// The actions of run `run`; pid files are paths under `root`.
    pub fn new(run: &str, root: &str, todo: &[Action]) -> Self {
        Self {
            run: run.into(),
            root: root.into(),
            todo: todo.to_vec(),
            due: Vec::new(),
            watches: Vec::new(),
            reads: 0,
        }
    }

    /// L2 printed `INFO nested <what>`: schedules the actions waiting for it.
    pub fn announced(&mut self, what: &str) {
        let now = Instant::now();
        let (now_due, rest): (Vec<_>, Vec<_>) = self.todo.drain(..).partition(|a| a.after == what);
        self.todo = rest;
        self.due
            .extend(now_due.into_iter().map(|a| (now + a.delay, a.kind)));
    }

    /// True while something is due or watched.
    pub fn busy(&self) -> bool {
        !self.due.is_empty() || !self.watches.is_empty()
    }

    /// Does what is due and judges the watches; `sample` is L1's device as last sampled
    /// (`power_state runtime_status`) and when.
    pub fn step(&mut self, r: &mut Reporter, sys: &SysfsDevice, sample: Option<(&str, Instant)>) {
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(t, _)| *t <= now);
        self.due = later;
        for (_, kind) in ready {
            match kind {
                ActionKind::ConfigRead => self.config_read(r, sys),
                ActionKind::Kill { pidfile } => self.kill(r, &pidfile),
            }
        }
        let watches = std::mem::take(&mut self.watches);
        for w in watches {
            if let Some(w) = self.judge(r, w, sample) {
                self.watches.push(w);
            }
        }
    }

    /// Reports actions never done and watches never settled (the run ended first).
    pub fn finish(&mut self, r: &mut Reporter) {
        for a in self.todo.drain(..) {
            r.check(
                &format!("{}.action-never-run", self.run),
                false,
                format!("{:?}: L2 never announced {:?}", a.kind, a.after),
            );
        }
        for (_, kind) in self.due.drain(..) {
            r.check(
                &format!("{}.action-done", self.run),
                false,
                format!("{kind:?} was still due when the run ended"),
            );
        }
        for w in std::mem::take(&mut self.watches) {
            let name = match w {
                Watch::Resuspend { n, .. } => format!("l1-resuspended-{n}"),
                Watch::Restart { .. } => "agent-restarted".to_string(),
            };
            r.check(
                &format!("{}.{name}", self.run),
                false,
                "the run ended first".to_string(),
            );
        }
    }

    fn config_read(&mut self, r: &mut Reporter, sys: &SysfsDevice) {
        let before = crate::checks::observe_stable(sys).ok();
        let active_before = active_ms(sys);
        let read = sys.read_config();
        let vendor = read
            .as_ref()
            .ok()
            .filter(|c| c.len() >= 2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]));
        let was_d3cold = before.as_ref().is_some_and(|o| {
            o.power_state == vfio_pm::PowerState::D3Cold
                && o.runtime_status == vfio_pm::RuntimeStatus::Suspended
        });
        self.reads += 1;
        let n = self.reads;
        r.check(
            &format!("{}.l1-config-read-{n}", self.run),
            was_d3cold && vendor.is_some_and(|v| v != 0xffff),
            format!(
                "L1 device {before:?} before; config read {:?} bytes, vendor {vendor:04x?} \
                 (0xffff: read without a resume); runtime_active_time {active_before:?} ms",
                read.as_ref().map(Vec::len).map_err(|e| e.to_string())
            ),
        );
        self.watches.push(Watch::Resuspend {
            since: Instant::now(),
            n,
        });
    }

    fn kill(&mut self, r: &mut Reporter, pidfile: &str) {
        let path = format!("{}{pidfile}", self.root);
        let pid = pid_in(&path).filter(|p| is_agent(*p));
        let result = pid.map(|p| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            )
        });
        r.check(
            &format!("{}.agent-killed", self.run),
            matches!(result, Some(Ok(()))),
            format!("SIGKILL to vfio-pm pid {pid:?} from {pidfile}: {result:?}"),
        );
        if let Some(old) = pid {
            self.watches.push(Watch::Restart {
                pidfile: path,
                old,
                since: Instant::now(),
            });
        }
    }

    /// A watch's verdict, or the watch back when undecided.
    fn judge(&self, r: &mut Reporter, w: Watch, sample: Option<(&str, Instant)>) -> Option<Watch> {
        match w {
            Watch::Resuspend { since, n } => {
                // Only a sample taken after the read counts.
                let state = sample.filter(|(_, at)| *at > since).map(|(s, _)| s);
                let done = state == Some("D3cold suspended");
                if done || since.elapsed() > RESUSPEND_LIMIT {
                    r.check(
                        &format!("{}.l1-resuspended-{n}", self.run),
                        done,
                        format!(
                            "L1 device {state:?} {:.1?} after the config read",
                            since.elapsed()
                        ),
                    );
                    return None;
                }
                Some(Watch::Resuspend { since, n })
            }
            Watch::Restart {
                pidfile,
                old,
                since,
            } => {
                let new = pid_in(&pidfile).filter(|p| *p != old && is_agent(*p));
                if new.is_some() || since.elapsed() > RESTART_LIMIT {
                    r.check(
                        &format!("{}.agent-restarted", self.run),
                        new.is_some(),
                        format!(
                            "agent pid {old} replaced by {new:?} after {:.1?}",
                            since.elapsed()
                        ),
                    );
                    return None;
                }
                Some(Watch::Restart {
                    pidfile,
                    old,
                    since,
                })
            }
        }
    }
}

/// A process's scheduler counters: how often its threads were switched out (each sleep that
/// ended is one voluntary switch) and its CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcUsage {
    /// Voluntary plus involuntary context switches of every thread.
    pub switches: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcUsage {
    /// Reads `/proc/PID/task/*/status` and `/proc/PID/stat`.
    pub fn of(pid: u32) -> Option<Self> {
        let mut switches = 0;
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
            switches += switches_in(&status)?;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Self {
            switches,
            cpu_ticks: cpu_ticks_in(&stat)?,
        })
    }
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a status file.
fn switches_in(status: &str) -> Option<u64> {
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// utime + stime (fields 14 and 15) of a stat line; the command name may hold spaces.
fn cpu_ticks_in(stat: &str) -> Option<u64> {
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, index 11.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_switches_and_cpu_time() {
        let status =
            "Name:\tvfio-pm\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(switches_in(status), Some(15));
        assert_eq!(switches_in("Name: x\n"), None);
        let stat = "42 (vfio pm) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 99 0 0";
        assert_eq!(cpu_ticks_in(stat), Some(12));
        assert_eq!(cpu_ticks_in("garbage"), None);
        let me = ProcUsage::of(std::process::id()).unwrap();
        assert!(me.switches > 0 || me.cpu_ticks > 0);
    }

    #[test]
    fn actions_wait_for_their_announcement() {
        let mut a = Actions::new(
            "attach",
            "/nonexistent",
            &[Action {
                after: "idle-begin".into(),
                delay: Duration::ZERO,
                kind: ActionKind::Kill {
                    pidfile: "/x.pid".into(),
                },
            }],
        );
        assert!(!a.busy());
        a.announced("idle-end");
        assert!(!a.busy());
        a.announced("idle-begin");
        assert!(a.busy());
    }
}
