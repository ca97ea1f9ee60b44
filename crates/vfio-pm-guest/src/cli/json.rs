//! Reading the CLI's JSON output and the power states it reports.

use super::*;

pub(super) fn parse(stdout: &str) -> Result<Value, String> {
    serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e}): {:?}", stdout.trim()))
}

pub(super) fn text<'a>(v: &'a Value, ptr: &str) -> Option<&'a str> {
    v.pointer(ptr)?.as_str()
}

pub(super) fn flag(v: &Value, ptr: &str) -> Option<bool> {
    v.pointer(ptr)?.as_bool()
}

/// A JSON number of milliseconds as text, `-` when absent.
pub(super) fn millis(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_f64)
        .map_or("-".into(), |m| format!("{m:.1}"))
}

pub(super) fn num(v: &Value, ptr: &str) -> Option<u64> {
    v.pointer(ptr)?.as_u64()
}

/// The observation a JSON object `{"power_state": .., "runtime_status": ..}` describes.
pub(super) fn observation(v: &Value, ptr: &str) -> Option<PowerObservation> {
    Some(PowerObservation {
        power_state: PowerState::from_sysfs(text(v, &format!("{ptr}/power_state"))?),
        runtime_status: RuntimeStatus::from_sysfs(text(v, &format!("{ptr}/runtime_status"))?),
    })
}

pub(super) fn event(v: &Value) -> &str {
    text(v, "/event").unwrap_or("?")
}

pub(super) fn d0_active() -> PowerObservation {
    PowerObservation {
        power_state: PowerState::D0,
        runtime_status: RuntimeStatus::Active,
    }
}

pub(super) fn suspended(p: Platform) -> PowerObservation {
    PowerObservation {
        power_state: p.suspended_state(),
        runtime_status: RuntimeStatus::Suspended,
    }
}

/// A `state` hold event showing the device suspended in the platform's D3 state.
pub(super) fn is_suspended_state(p: Platform) -> impl Fn(&Value) -> bool {
    move |v| event(v) == "state" && observation(v, "/state") == Some(suspended(p))
}
