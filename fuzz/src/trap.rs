//! Target `trap`: guest writes to the trap register ([`TrapDecoder`]).
//!
//! The fuzzer picks a trap register (I/O or MMIO, address, width) and 1 to 64 devices (each with
//! or without a power resource), then a sequence of guest accesses of any space, address and
//! length. Invariants:
//!
//! - [`TrapDecoder::decode`] accepts exactly the writes the decoder [claims](TrapDecoder::claims)
//!   at the register's own address and width; the decoded request, re-encoded
//!   ([`encode`], little endian, the register's width), gives back the bytes written,
//!   and names an in-range slot of a device that has a power resource.
//! - A malformed write is the one [`TrapError`] variant its defect calls for, whose fields
//!   describe that defect; never a panic.
//! - [`TrapDecoder::decode_stream`] of a capture agrees with decoding each width-sized chunk.
//! - For every device with a power resource, the values the SSDT's `_ON`/`_OFF` write
//!   ([`aml::trap_value`]) decode to that device and action: generator and decoder agree.

use arbitrary::{Result, Unstructured};
use vfio_pm::PciAddress;
use vfio_pm_vmm::aml;
use vfio_pm_vmm::config::{ConfigFile, DeviceFile, TrapFile, TrapSpace, VmmConfig, WakeupMode};
use vfio_pm_vmm::trap::{encode, TrapDecoder, TrapError, ACTION_ON, RESERVED_MASK, SLOT_MASK};
use vfio_pm_vmm::{GuestRequest, PowerAction};

/// The fuzz target's entry point.
pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(config) = config(&mut u) else { return };
    let decoder = TrapDecoder::new(&config);
    generator_and_decoder_agree(&config, &decoder);
    while !u.is_empty() {
        let Ok(access) = access(&mut u, &decoder) else {
            return;
        };
        match access {
            Access::Write { space, addr, data } => {
                check_write(&config, &decoder, space, addr, &data)
            }
            Access::Stream(bytes) => check_stream(&config, &decoder, &bytes),
        }
    }
}

/// A configuration from the fuzzer's choices; a trap register the configuration refuses (a
/// reserved port, a misaligned MMIO address) falls back to the default port, since the
/// configuration's own checks are the `config_aml` target's business.
fn config(u: &mut Unstructured) -> Result<VmmConfig> {
    let mmio: bool = u.arbitrary()?;
    let (space, width, address) = if mmio {
        let width = *u.choose(&[1i64, 2, 4, 8])?;
        let address = u.int_in_range(1..=i64::MAX / width)? * width;
        (TrapSpace::Mmio, width, address)
    } else {
        let width = *u.choose(&[1i64, 2, 4])?;
        (TrapSpace::Io, width, i64::from(u.arbitrary::<u16>()?))
    };
    let count = u.int_in_range(1..=64usize)?;
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        let address = PciAddress::new(0, (i / 32) as u8, (i % 32) as u8, 0)
            .ok_or(arbitrary::Error::IncorrectFormat)?;
        devices.push(DeviceFile {
            d3cold: u.arbitrary()?,
            wakeup: WakeupMode::Never,
            ..DeviceFile::new(&format!("\\_SB.PCI0.D{i:03}"), address, 0x10de, 0x030000)
        });
    }
    let mut file = ConfigFile::new(
        TrapFile {
            space,
            address,
            width,
            ..TrapFile::io(0)
        },
        devices,
    );
    match VmmConfig::validate(&file) {
        Ok(c) => Ok(c),
        Err(_) => {
            file.trap = TrapFile {
                width,
                ..TrapFile::io(0x440)
            };
            VmmConfig::validate(&file).map_err(|_| arbitrary::Error::IncorrectFormat)
        }
    }
}

enum Access {
    Write {
        space: TrapSpace,
        addr: u64,
        data: Vec<u8>,
    },
    Stream(Vec<u8>),
}

fn access(u: &mut Unstructured, dec: &TrapDecoder) -> Result<Access> {
    if u.ratio(1, 8)? {
        let len = u.int_in_range(0..=64usize)?;
        return Ok(Access::Stream(u.bytes(len.min(u.len()))?.to_vec()));
    }
    // Mostly the register itself (so that values get explored), sometimes near it, sometimes
    // anywhere.
    let space = if u.ratio(7, 8)? {
        dec.space()
    } else {
        *u.choose(&[TrapSpace::Io, TrapSpace::Mmio])?
    };
    let addr = match u.int_in_range(0..=7u8)? {
        0 => u.arbitrary()?,
        1 => dec
            .address()
            .wrapping_add(u64::from(u.int_in_range(0..=15u8)?))
            .wrapping_sub(8),
        _ => dec.address(),
    };
    let len = if u.ratio(7, 8)? {
        usize::from(dec.width())
    } else {
        u.int_in_range(0..=16usize)?
    };
    let data = u.bytes(len.min(u.len()))?.to_vec();
    Ok(Access::Write { space, addr, data })
}

/// `value` as the register's little-endian bytes.
fn register_bytes(value: u64, width: u8) -> Vec<u8> {
    value.to_le_bytes()[..usize::from(width)].to_vec()
}

fn le_value(data: &[u8]) -> u64 {
    data.iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn check_write(config: &VmmConfig, dec: &TrapDecoder, space: TrapSpace, addr: u64, data: &[u8]) {
    let result = dec.decode(space, addr, data);
    let at_register = space == dec.space() && addr == dec.address();
    let full_width = data.len() == usize::from(dec.width());
    match &result {
        Ok(event) => {
            assert!(
                at_register && full_width,
                "{result:?} for {space:?} {addr:#x} {data:?}"
            );
            assert!(
                dec.claims(space, addr, data.len()),
                "decoded but not claimed"
            );
            assert_eq!(
                register_bytes(encode(*event), dec.width()),
                data,
                "re-encoding {event:?} does not give back the bytes written"
            );
            assert_eq!(dec.decode_value(encode(*event)).as_ref(), Ok(event));
            let device = config
                .devices()
                .get(event.slot.index() as usize)
                .unwrap_or_else(|| panic!("{event:?} names a slot beyond the devices"));
            assert!(device.d3cold, "{event:?}: its device has no power resource");
            assert_eq!(dec.pci_address(event.slot), Some(device.pci_address));
        }
        Err(TrapError::WrongSpace { expected, got }) => {
            assert!(*expected == dec.space() && *got == space && space != dec.space());
        }
        Err(TrapError::WrongAddress { expected, got }) => {
            assert!(space == dec.space() && *expected == dec.address() && *got == addr);
            assert_ne!(addr, dec.address());
        }
        Err(TrapError::WrongWidth { expected, got }) => {
            assert!(at_register && *expected == dec.width() && *got == data.len());
            assert!(!full_width);
        }
        Err(e) => {
            assert!(at_register && full_width, "{e:?} for a misplaced write");
            check_value_error(config, le_value(data), e);
        }
    }
    // claims() is the interval overlap of the access with the register.
    let first = u128::from(addr);
    let last = first + data.len().max(1) as u128 - 1;
    let reg_first = u128::from(dec.address());
    let reg_last = reg_first + u128::from(dec.width()) - 1;
    let overlaps = first <= reg_last && last >= reg_first;
    assert_eq!(
        dec.claims(space, addr, data.len()),
        space == dec.space() && overlaps,
        "claims({space:?}, {addr:#x}, {})",
        data.len()
    );
}

/// A well-placed write's value error says what is wrong with the value.
fn check_value_error(config: &VmmConfig, value: u64, e: &TrapError) {
    let slot = (value & SLOT_MASK) as u8;
    match e {
        TrapError::ReservedBits { value: v, reserved } => {
            assert_eq!((*v, *reserved), (value, value & RESERVED_MASK));
            assert_ne!(*reserved, 0);
        }
        TrapError::UnknownSlot {
            value: v,
            slot: s,
            devices,
        } => {
            assert_eq!((*v, *s, *devices), (value, slot, config.devices().len()));
            assert_eq!(value & RESERVED_MASK, 0);
            assert!(usize::from(slot) >= config.devices().len());
        }
        TrapError::NoPowerResource {
            value: v,
            slot: s,
            address,
        } => {
            assert_eq!((*v, *s), (value, slot));
            let device = &config.devices()[usize::from(slot)];
            assert!(!device.d3cold && device.pci_address == *address);
        }
        other => panic!("{other:?} for a write at the register with its width"),
    }
}

fn check_stream(config: &VmmConfig, dec: &TrapDecoder, bytes: &[u8]) {
    let width = usize::from(dec.width());
    let results = dec.decode_stream(bytes);
    assert_eq!(results.len(), bytes.len().div_ceil(width));
    for (chunk, result) in bytes.chunks(width).zip(&results) {
        if chunk.len() == width {
            assert_eq!(result, &dec.decode(dec.space(), dec.address(), chunk));
        } else {
            assert_eq!(
                result,
                &Err(TrapError::WrongWidth {
                    expected: dec.width(),
                    got: chunk.len()
                })
            );
        }
    }
    // Every decoded event of a capture names a device with a power resource.
    for event in results.iter().flatten() {
        assert!(config.devices()[event.slot.index() as usize].d3cold);
    }
}

fn generator_and_decoder_agree(config: &VmmConfig, dec: &TrapDecoder) {
    for device in config.devices() {
        for action in [PowerAction::PowerOn, PowerAction::PowerOff] {
            let value = aml::trap_value(device, action);
            assert_eq!(value & ACTION_ON != 0, action == PowerAction::PowerOn);
            let bytes = register_bytes(value, dec.width());
            let decoded = dec.decode(dec.space(), dec.address(), &bytes);
            if device.d3cold {
                assert_eq!(
                    decoded,
                    Ok(GuestRequest {
                        slot: device.slot,
                        action
                    })
                );
            } else {
                assert!(matches!(decoded, Err(TrapError::NoPowerResource { .. })));
            }
        }
    }
}
