//! The host-side oracle of the `d3cold` platform: the bytes the guest kernel's calls of vfio-pm's
//! generated `_ON`/`_OFF` wrote to the trap port, decoded with vfio-pm's own
//! [`vfio_pm_vmm::trap::TrapDecoder`] and checked against what the guest reported.

use crate::console::Check;
use crate::harness::Platform;
use crate::qemu::TrapMark;
use vfio_pm_vmm::trap::{TrapDecoder, TrapError};
use vfio_pm_vmm::{GuestRequest, PowerAction};

/// The fewest power-offs a `d3cold` run must show: every settled suspend of the `checks` phase
/// (at least five) runs `_OFF` once.
pub const MIN_POWER_OFFS: usize = 5;

/// The power-offs the `cli` phase adds when every one of its checks passes: each is a D3cold
/// suspend the guest confirmed after the device had been in D0 (probe 1, cycle 2,
/// cycle --wakeup --count 2: 3, hold 2, hold --wakeup with its wake and re-arm 3, hold + SIGINT 2,
/// doctor 1, doctor while held 2).
pub const CLI_POWER_OFFS: usize = 16;

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        passed,
        detail,
    }
}

/// The decoded sequence in short form: `+` power on, `-` power off, `!` undecodable.
pub fn sequence(events: &[Result<GuestRequest, TrapError>]) -> String {
    events
        .iter()
        .map(|e| match e {
            Ok(GuestRequest {
                action: PowerAction::PowerOn,
                ..
            }) => '+',
            Ok(GuestRequest {
                action: PowerAction::PowerOff,
                ..
            }) => '-',
            Err(_) => '!',
        })
        .collect()
}

/// Judges one run's trap capture.
///
/// `d3cold`: every byte decodes; every event is slot 0, the harness's device; the sequence
/// starts with the boot-time `_ON` and alternates strictly (the kernel refcounts the resource of
/// its one device) with at least [`MIN_POWER_OFFS`] power-offs ([`CLI_POWER_OFFS`] more when the
/// `cli` phase ran, `cli_ran`); and, when the guest printed the
/// trap window (`cli_ran`), the last event before the window is a power-off and none falls inside
/// it, while the guest saw the device D3cold suspended with the resource off.
/// `d3hot`: no power resource, so nothing is written.
pub fn checks(
    platform: Platform,
    decoder: &TrapDecoder,
    device: &str,
    trap: &[u8],
    marks: &[TrapMark],
    cli_ran: bool,
    idle_d3_disabled: bool,
) -> Vec<Check> {
    if platform == Platform::D3Hot {
        return vec![check(
            "host-trap-silent",
            trap.is_empty(),
            format!("trap port got {trap:02x?} (no power resource on this platform)"),
        )];
    }
    let events = decoder.decode_stream(trap);
    let seq = sequence(&events);
    let errors: Vec<String> = events
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.as_ref().err().map(|e| format!("byte {i}: {e}")))
        .collect();
    let ok: Vec<GuestRequest> = events
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .copied()
        .collect();
    let mut out = vec![check(
        "host-trap-decodes",
        errors.is_empty() && !trap.is_empty(),
        format!(
            "{} bytes, {} decode errors {:?}: {seq}",
            trap.len(),
            errors.len(),
            &errors[..errors.len().min(5)]
        ),
    )];

    let slots: Vec<String> = ok
        .iter()
        .map(|e| {
            decoder
                .pci_address(e.slot)
                .map(|a| format!("{} = {a}", e.slot))
                .unwrap_or_else(|| format!("{} = ?", e.slot))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    out.push(check(
        "host-trap-slot0-is-the-device",
        !ok.is_empty()
            && ok.iter().all(|e| {
                e.slot.index() == 0
                    && decoder
                        .pci_address(e.slot)
                        .is_some_and(|a| a.to_string() == device)
            }),
        format!("slots seen: {slots:?} (want slot 0 = {device})"),
    ));

    let offs = ok
        .iter()
        .filter(|e| e.action == PowerAction::PowerOff)
        .count();
    let ons = ok.len() - offs;
    let alternating = ok.windows(2).all(|w| w[0].action != w[1].action);
    let starts_on = ok.first().map(|e| e.action) == Some(PowerAction::PowerOn);
    // A `disable_idle_d3=1` boot runs only its few scenarios and the unused device never
    // suspends: one power-off (an ENTRY's) is the least it shows.
    let min_offs = if idle_d3_disabled { 1 } else { MIN_POWER_OFFS }
        + if cli_ran { CLI_POWER_OFFS } else { 0 };
    out.push(check(
        "host-trap-alternates",
        errors.is_empty() && alternating && starts_on && offs >= min_offs,
        format!(
            "_ON {ons}x, _OFF {offs}x (want >= {min_offs}), alternating {alternating}, \
             starts with the boot _ON {starts_on}"
        ),
    ));

    if cli_ran {
        out.push(window_check(decoder, trap, marks));
    }
    out
}

/// The trap window: the guest printed `begin` while it saw the device D3cold suspended (power
/// resource off) and `end` after holding it so.
fn window_check(decoder: &TrapDecoder, trap: &[u8], marks: &[TrapMark]) -> Check {
    let name = "host-trap-off-while-guest-d3cold";
    let find = |n: &str| -> Vec<usize> {
        marks
            .iter()
            .filter(|m| m.name == n)
            .map(|m| m.trap_len)
            .collect()
    };
    let (begin, end) = match (find("begin").as_slice(), find("end").as_slice()) {
        (&[b], &[e]) => (b, e),
        _ => {
            return check(
                name,
                false,
                format!("want one begin and one end trap mark, got {marks:?}"),
            )
        }
    };
    let Some(before) = trap.get(..begin) else {
        return check(
            name,
            false,
            format!("begin mark at {begin} bytes, capture has {}", trap.len()),
        );
    };
    let last = decoder.decode_stream(before).pop();
    let last_is_off = matches!(
        last,
        Some(Ok(GuestRequest {
            action: PowerAction::PowerOff,
            ..
        }))
    );
    check(
        name,
        last_is_off && end == begin,
        format!(
            "{begin} bytes at begin (last event {last:?}), {end} at end (want no event in between)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(begin: usize, end: usize) -> Vec<TrapMark> {
        vec![
            TrapMark {
                name: "begin".into(),
                trap_len: begin,
            },
            TrapMark {
                name: "end".into(),
                trap_len: end,
            },
        ]
    }

    fn passed(checks: &[Check]) -> bool {
        checks.iter().all(|c| c.passed)
    }

    #[test]
    fn d3cold_capture_must_decode_alternate_and_be_off_in_the_window() {
        let d = crate::ssdt::decoder().expect("example config");
        let dev = crate::guest::DEVICE;
        let good = [0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80];
        let c = |t: &[u8], m: &[TrapMark], cli| checks(Platform::D3Cold, &d, dev, t, m, cli, false);
        assert!(passed(&c(&good, &[], false)));
        assert_eq!(sequence(&d.decode_stream(&good)), "+-+-+-+-+-+");
        // With the cli phase: its power-offs too, and the window.
        assert!(!passed(&c(&good, &marks(4, 4), true)));
        let long: Vec<u8> = [0x80, 0].repeat(MIN_POWER_OFFS + CLI_POWER_OFFS);
        assert!(passed(&c(&long, &marks(4, 4), true)));
        let good = long.as_slice();
        // Window problems: last event before begin is _ON, an event inside, no marks.
        assert!(!passed(&c(good, &marks(3, 3), true)));
        assert!(!passed(&c(good, &marks(4, 5), true)));
        assert!(!passed(&c(good, &[], true)));
        assert!(!passed(&c(good, &marks(400, 400), true)));
        let good = &good[..11];
        // Sequence problems: not alternating, too few, starts with _OFF, reserved bit, slot 1.
        assert!(!passed(&c(
            &[0x80, 0, 0, 0x80, 0, 0x80, 0, 0x80, 0, 0x80, 0],
            &[],
            false
        )));
        assert!(!passed(&c(&[0x80, 0, 0x80, 0], &[], false)));
        assert!(!passed(&c(&good[1..], &[], false)));
        let mut bad = good.to_vec();
        bad[5] = 0x40;
        assert!(!passed(&c(&bad, &[], false)));
        bad[5] = 0x01;
        assert!(!passed(&c(&bad, &[], false)));
        assert!(!passed(&c(&[], &[], false)));
    }

    #[test]
    fn d3hot_capture_must_be_empty() {
        let d = crate::ssdt::decoder().expect("example config");
        let dev = crate::guest::DEVICE;
        assert!(passed(&checks(
            Platform::D3Hot,
            &d,
            dev,
            b"",
            &[],
            true,
            false
        )));
        assert!(!passed(&checks(
            Platform::D3Hot,
            &d,
            dev,
            &[0],
            &[],
            true,
            false
        )));
    }
}
