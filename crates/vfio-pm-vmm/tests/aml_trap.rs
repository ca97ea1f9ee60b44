//! The trap decoder: the encoder/decoder round trip, and every malformed guest write as a typed
//! error (never a panic).

mod aml_support;

use aml_support::*;
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::TrapSpace;
use vfio_pm_vmm::trap::{encode, TrapDecoder, TrapError, MAX_SLOTS};
use vfio_pm_vmm::{GuestRequest, PowerAction, Slot};

fn ev(slot: u32, action: PowerAction) -> GuestRequest {
    GuestRequest {
        slot: Slot(slot),
        action,
    }
}

#[test]
fn encoding_is_bit7_action_and_bits_0_to_5_slot() {
    assert_eq!(encode(ev(0, PowerAction::PowerOff)), 0x00);
    assert_eq!(encode(ev(0, PowerAction::PowerOn)), 0x80);
    assert_eq!(encode(ev(5, PowerAction::PowerOn)), 0x85);
    assert_eq!(encode(ev(63, PowerAction::PowerOff)), 0x3f);
    assert_eq!(MAX_SLOTS, 64);
}

#[test]
fn every_configured_resource_round_trips_through_generator_values() {
    let cfg = config(&many_devices());
    let dec = TrapDecoder::new(&cfg);
    for d in cfg.devices().iter().filter(|d| d.d3cold) {
        for action in [PowerAction::PowerOn, PowerAction::PowerOff] {
            let v = aml::trap_value(d, action);
            let got = dec.decode(TrapSpace::Io, 0x440, &[v as u8]).unwrap();
            assert_eq!(
                got,
                GuestRequest {
                    slot: d.slot,
                    action
                }
            );
            assert_eq!(dec.pci_address(got.slot), Some(d.pci_address));
        }
    }
}

#[test]
fn malformed_writes_are_typed_errors() {
    let cfg = config(&many_devices()); // 5 devices, slot 2 is d3hot-only
    let dec = TrapDecoder::new(&cfg);
    assert_eq!(
        dec.decode(TrapSpace::Mmio, 0x440, &[0x80]),
        Err(TrapError::WrongSpace {
            expected: TrapSpace::Io,
            got: TrapSpace::Mmio
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Io, 0x441, &[0x80]),
        Err(TrapError::WrongAddress {
            expected: 0x440,
            got: 0x441
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Io, 0x440, &[0x80, 0]),
        Err(TrapError::WrongWidth {
            expected: 1,
            got: 2
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Io, 0x440, &[]),
        Err(TrapError::WrongWidth {
            expected: 1,
            got: 0
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Io, 0x440, &[0x40]),
        Err(TrapError::ReservedBits {
            value: 0x40,
            reserved: 0x40
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Io, 0x440, &[0x85]),
        Err(TrapError::UnknownSlot {
            value: 0x85,
            slot: 5,
            devices: 5
        })
    );
    let e = dec.decode(TrapSpace::Io, 0x440, &[0x82]).unwrap_err();
    assert!(
        matches!(e, TrapError::NoPowerResource { slot: 2, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0000:00:07.0"), "{e}");
}

#[test]
fn wide_mmio_register_decodes_little_endian_and_checks_upper_bits() {
    let cfg = config(&ged());
    let dec = TrapDecoder::new(&cfg);
    assert_eq!(
        (dec.space(), dec.address(), dec.width()),
        (TrapSpace::Mmio, 0xfe00_0000, 4)
    );
    assert_eq!(
        dec.decode(TrapSpace::Mmio, 0xfe00_0000, &[0x81, 0, 0, 0]),
        Ok(ev(1, PowerAction::PowerOn))
    );
    assert_eq!(
        dec.decode(TrapSpace::Mmio, 0xfe00_0000, &[0x81, 0, 1, 0]),
        Err(TrapError::ReservedBits {
            value: 0x0001_0081,
            reserved: 0x0001_0000
        })
    );
    assert_eq!(
        dec.decode(TrapSpace::Mmio, 0xfe00_0000, &[0x81]),
        Err(TrapError::WrongWidth {
            expected: 4,
            got: 1
        })
    );
    assert!(dec.claims(TrapSpace::Mmio, 0xfe00_0002, 1));
    assert!(!dec.claims(TrapSpace::Mmio, 0xfe00_0004, 4));
    assert!(!dec.claims(TrapSpace::Io, 0xfe00_0000, 4));
    assert_eq!(dec.read_value(), 0);
}

#[test]
fn debugcon_capture_stream_decodes_byte_by_byte() {
    let cfg = config(&example_e1000e());
    let dec = TrapDecoder::new(&cfg);
    // What isa-debugcon records for: boot _ON, runtime suspend _OFF, resume _ON, then garbage.
    let got = dec.decode_stream(&[0x80, 0x00, 0x80, 0x7f]);
    assert_eq!(got[0], Ok(ev(0, PowerAction::PowerOn)));
    assert_eq!(got[1], Ok(ev(0, PowerAction::PowerOff)));
    assert_eq!(got[2], Ok(ev(0, PowerAction::PowerOn)));
    assert!(matches!(got[3], Err(TrapError::ReservedBits { .. })));
    let wide = TrapDecoder::new(&config(&ged()));
    let got = wide.decode_stream(&[0x01, 0, 0, 0, 0x81, 0]);
    assert_eq!(got[0], Ok(ev(1, PowerAction::PowerOff)));
    assert_eq!(
        got[1],
        Err(TrapError::WrongWidth {
            expected: 4,
            got: 2
        })
    );
}

#[test]
fn no_guest_write_panics() {
    for cfg in [config(&many_devices()), config(&ged())] {
        let dec = TrapDecoder::new(&cfg);
        for len in 0..=9usize {
            for v in 0..=255u8 {
                let data = vec![v; len];
                for addr in [0u64, 0x440, 0xfe00_0000, u64::MAX] {
                    for space in [TrapSpace::Io, TrapSpace::Mmio] {
                        let _ = dec.decode(space, addr, &data);
                        let _ = dec.claims(space, addr, len);
                    }
                }
            }
        }
        let _ = dec.decode_value(u64::MAX);
        let _ = dec.decode_stream(&[0xff; 7]);
    }
}
