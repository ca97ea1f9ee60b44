//! Unit tests of the pure parts; the state machine is tested over the simulated host in
//! `tests/controller_sim.rs`.

use super::*;
use crate::pme::WakeRoute;

fn settings(vendor: u16, class: u32) -> DeviceSettings {
    DeviceSettings::new(
        vendor,
        Some(0x1234),
        class,
        Some(WakeRoute::Ged { event: 0 }),
    )
}

#[test]
fn nvidia_display_and_3d_need_the_guest_driver() {
    assert!(needs_guest_driver(0x10de, 0x030000));
    assert!(needs_guest_driver(0x10de, 0x030200));
    assert!(needs_guest_driver(0x10de, 0x038000));
    assert!(!needs_guest_driver(0x10de, 0x040300), "NVIDIA HDA audio");
    assert!(!needs_guest_driver(0x1002, 0x030000), "AMD GPU");
    assert!(!needs_guest_driver(0x8086, 0x020000));
}

#[test]
fn variant_choice_auto_always_never_and_configured_list() {
    let cfg = ControllerConfig {
        wakeup_devices: vec![
            DeviceMatch {
                vendor: 0x1af4,
                device: None,
            },
            DeviceMatch {
                vendor: 0x8086,
                device: Some(0x10d3),
            },
        ],
    };
    let v = |s: &DeviceSettings| choose_variant(&cfg, s);
    assert_eq!(
        v(&settings(0x10de, 0x030000)),
        LowPowerVariant::EntryWithWakeup
    );
    assert_eq!(v(&settings(0x8086, 0x020000)), LowPowerVariant::Entry);
    assert_eq!(
        v(&settings(0x1af4, 0x010000)),
        LowPowerVariant::EntryWithWakeup
    );
    let mut s = settings(0x8086, 0x020000);
    s.device = Some(0x10d3);
    assert_eq!(v(&s), LowPowerVariant::EntryWithWakeup);
    let mut s = settings(0x10de, 0x030000);
    s.entry = EntryPolicy::Plain;
    assert_eq!(v(&s), LowPowerVariant::Entry);
    let mut s = settings(0x8086, 0x020000);
    s.entry = EntryPolicy::WithWakeup;
    assert_eq!(v(&s), LowPowerVariant::EntryWithWakeup);
}

#[test]
fn unknown_slots_are_errors() {
    let mut c = Controller::new(
        ControllerConfig::default(),
        Box::new(crate::pme::RecordingNotifier::new()),
        Box::new(ManualClock::new()),
        Box::new(NullSink),
    )
    .unwrap();
    for s in [Slot(0), Slot(7), Slot(u32::MAX)] {
        assert!(matches!(
            c.power_off(s),
            Err(ControllerError::UnknownSlot(_))
        ));
        assert!(matches!(
            c.power_on(s),
            Err(ControllerError::UnknownSlot(_))
        ));
        assert!(matches!(
            c.handle_wake(s),
            Err(ControllerError::UnknownSlot(_))
        ));
        assert!(c.remove_device(s).is_err());
        assert!(c.stats(s).is_none());
    }
    assert_eq!(c.poll_once(Some(Duration::ZERO)).unwrap(), 0);
    assert!(c.is_empty());
}
