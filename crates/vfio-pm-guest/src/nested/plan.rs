//! The plan of the `nested` phase: what L1 runs, written by the host harness as JSON into the
//! machine's tree (which L1 sees through its read-only 9p share) and named on L1's kernel
//! command line (`vfiopm.plan=PATH`, a path on the machine).
//!
//! ```json
//! {"root": "/host", "sample_ms": 250,
//!  "runs": [{"name": "control", "argv": ["qemu-system-x86_64", "..."], "timeout_s": 200,
//!            "adopt": true, "l2_trap": "/tmp/control-trap.log"}]}
//! ```
//!
//! `argv` runs as `chroot ROOT argv...`; `l2_trap` is the L2 trap capture's path inside ROOT.
//! Optional per run: `"actions": [{"after": "idle-begin", "delay_ms": 1500, "do": "config-read"},
//! {"after": "idle-begin", "delay_ms": 4000, "do": "kill", "pidfile": "/tmp/agent.pid"}]` (done
//! by L1 that long after L2 printed `INFO nested <after>`), `"forward_json": true` (the run's
//! JSON lines, the agent's `--json` output, are forwarded) and `"child_idle": true` (the
//! run's own process is measured over L2's idle window: it is the agent).

use serde_json::Value;
use std::time::Duration;

/// The most runs one plan may have, and the most arguments of one run (bounded input).
pub const MAX_RUNS: usize = 16;
/// See [`MAX_RUNS`].
pub const MAX_ARGS: usize = 512;

/// The most actions one run may have.
pub const MAX_ACTIONS: usize = 8;

/// What L1 does beside a run, at a moment L2 announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ActionKind {
    /// Reads L1's device config space through sysfs, as `lspci -xxx` does (from D3cold the
    /// kernel resumes the device for it), and watches it runtime-suspend again.
    ConfigRead,
    /// SIGKILL to the `vfio-pm` process whose pid the file (inside the chroot) names, then
    /// watches the file name a new live `vfio-pm` (its supervisor restarted it).
    Kill {
        /// The pid file, a path inside the chroot.
        pidfile: String,
    },
}

/// One action: `kind`, `delay` after L2 printed `INFO nested <after>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Action {
    /// The L2 announcement (`idle-begin`, `idle-end`, ...).
    pub after: String,
    /// How long after it.
    pub delay: Duration,
    /// What.
    pub kind: ActionKind,
}

/// One L1 run: a command line (usually L1's QEMU starting L2) and what to do beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// One token, used as the prefix of every line about this run.
    pub name: String,
    /// The command, run in the chroot.
    pub argv: Vec<String>,
    /// Killed after this long.
    pub timeout: Duration,
    /// After L2's idle window, take a second device fd from the process holding the device's
    /// group (vfio-pm's `adopt`), probe the low-power features on it, close it.
    pub adopt: bool,
    /// L2's trap capture inside the chroot, reported after the run.
    pub l2_trap: Option<String>,
    /// What L1 does beside the run.
    pub actions: Vec<Action>,
    /// Forward the run's JSON lines (`VFIOPM AGENT <run> <json>`).
    pub forward_json: bool,
    /// Measure the run's own process over L2's idle window (wakeups, CPU).
    pub child_idle: bool,
}

/// The whole plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The chroot (the machine's root mounted in L1).
    pub root: String,
    /// sysfs sampling period of L1's device.
    pub sample: Duration,
    /// The runs, in order.
    pub runs: Vec<Run>,
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("plan: {key:?} must be a string"))
}

fn run_of(v: &Value) -> Result<Run, String> {
    let name = string(v, "name")?;
    if name.is_empty()
        || name.len() > 32
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "plan: run name {name:?} must be 1-32 of [A-Za-z0-9-]"
        ));
    }
    let argv: Vec<String> = v
        .get("argv")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("plan: run {name}: argv must be an array"))?
        .iter()
        .map(|a| a.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .ok_or_else(|| format!("plan: run {name}: argv must hold strings"))?;
    if argv.is_empty() || argv.len() > MAX_ARGS {
        return Err(format!(
            "plan: run {name}: argv must have 1-{MAX_ARGS} words"
        ));
    }
    let timeout = v
        .get("timeout_s")
        .and_then(Value::as_u64)
        .filter(|s| (1..=3600).contains(s))
        .ok_or_else(|| format!("plan: run {name}: timeout_s must be 1-3600"))?;
    let actions = match v.get("actions") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_ACTIONS => a
            .iter()
            .map(|a| action_of(&name, a))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(format!(
                "plan: run {name}: actions must be an array of at most {MAX_ACTIONS}"
            ))
        }
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(Run {
        argv,
        timeout: Duration::from_secs(timeout),
        adopt: flag("adopt"),
        l2_trap: v.get("l2_trap").and_then(Value::as_str).map(str::to_string),
        actions,
        forward_json: flag("forward_json"),
        child_idle: flag("child_idle"),
        name,
    })
}

fn action_of(run: &str, v: &Value) -> Result<Action, String> {
    let after = string(v, "after").map_err(|e| format!("run {run}: action: {e}"))?;
    let delay = v
        .get("delay_ms")
        .and_then(Value::as_u64)
        .filter(|ms| *ms <= 600_000)
        .ok_or_else(|| format!("plan: run {run}: action delay_ms must be 0-600000"))?;
    let kind = match v.get("do").and_then(Value::as_str) {
        Some("config-read") => ActionKind::ConfigRead,
        Some("kill") => ActionKind::Kill {
            pidfile: string(v, "pidfile").map_err(|e| format!("run {run}: kill: {e}"))?,
        },
        other => {
            return Err(format!(
                "plan: run {run}: action do {other:?} (config-read|kill)"
            ))
        }
    };
    Ok(Action {
        after,
        delay: Duration::from_millis(delay),
        kind,
    })
}

impl Plan {
    /// Parses and checks a plan.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("plan: {e}"))?;
        let runs = v
            .get("runs")
            .and_then(Value::as_array)
            .ok_or("plan: runs must be an array")?;
        if runs.is_empty() || runs.len() > MAX_RUNS {
            return Err(format!("plan: 1-{MAX_RUNS} runs, got {}", runs.len()));
        }
        let runs: Vec<Run> = runs.iter().map(run_of).collect::<Result<_, _>>()?;
        let sample = v.get("sample_ms").and_then(Value::as_u64).unwrap_or(250);
        Ok(Self {
            root: string(&v, "root")?,
            sample: Duration::from_millis(sample.clamp(10, 10_000)),
            runs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plan_and_refuses_bad_ones() {
        let p = Plan::parse(
            r#"{"root":"/host","sample_ms":250,"runs":[{"name":"control","argv":["q","-m","1"],
                "timeout_s":200,"adopt":true,"l2_trap":"/tmp/t"}]}"#,
        )
        .unwrap();
        assert_eq!(p.root, "/host");
        assert_eq!(p.sample, Duration::from_millis(250));
        assert_eq!(p.runs[0].argv, ["q", "-m", "1"]);
        assert!(p.runs[0].adopt);
        assert_eq!(p.runs[0].l2_trap.as_deref(), Some("/tmp/t"));
        assert!(p.runs[0].actions.is_empty() && !p.runs[0].forward_json);
        let p = Plan::parse(
            r#"{"root":"/host","runs":[{"name":"attach","argv":["sh"],"timeout_s":9,
                "forward_json":true,"child_idle":true,"actions":[
                {"after":"idle-begin","delay_ms":1500,"do":"config-read"},
                {"after":"idle-begin","delay_ms":4000,"do":"kill","pidfile":"/tmp/a.pid"}]}]}"#,
        )
        .unwrap();
        let r = &p.runs[0];
        assert!(r.forward_json && r.child_idle);
        assert_eq!(r.actions[0].kind, ActionKind::ConfigRead);
        assert_eq!(r.actions[0].delay, Duration::from_millis(1500));
        assert_eq!(
            r.actions[1].kind,
            ActionKind::Kill {
                pidfile: "/tmp/a.pid".into()
            }
        );
        for bad in [
            "",
            "[]",
            r#"{"root":"/h","runs":[]}"#,
            r#"{"root":"/h","runs":[{"name":"a b","argv":["q"],"timeout_s":1}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":[],"timeout_s":1}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":[1],"timeout_s":1}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":["q"],"timeout_s":0}]}"#,
            r#"{"runs":[{"name":"a","argv":["q"],"timeout_s":5}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":["q"],"timeout_s":5,"actions":{}}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":["q"],"timeout_s":5,
                "actions":[{"after":"x","delay_ms":1,"do":"reboot"}]}]}"#,
            r#"{"root":"/h","runs":[{"name":"a","argv":["q"],"timeout_s":5,
                "actions":[{"after":"x","delay_ms":1,"do":"kill"}]}]}"#,
        ] {
            assert!(Plan::parse(bad).is_err(), "{bad}");
        }
    }
}
