//! PCI addresses (`domain:bus:device.function`), parsed strictly so that a typo is an error,
//! not a different device.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A PCI function address such as `0000:00:05.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddress {
    /// PCI segment (domain), 16 bits in sysfs names.
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {reason} (expected DDDD:BB:DD.F, e.g. 0000:00:05.0)")]
pub struct PciAddressError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl PciAddress {
    /// Builds an address, checking the device and function ranges.
    pub fn new(domain: u16, bus: u8, device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(Self {
            domain,
            bus,
            device,
            function,
        })
    }

    /// Device and function packed as the 8-bit `devfn` the kernel and ACPI `_ADR` use.
    pub fn devfn(&self) -> u8 {
        (self.device << 3) | self.function
    }
}

impl FromStr for PciAddress {
    type Err = PciAddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| PciAddressError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let (rest, function) = s
            .rsplit_once('.')
            .ok_or_else(|| err("missing '.function'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, s] => (*d, *b, *s),
            [b, s] => ("0", *b, *s),
            _ => return Err(err("expected domain:bus:device or bus:device")),
        };
        let hex = |t: &str, max_len: usize, what: &'static str| {
            if t.is_empty() || t.len() > max_len || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(what));
            }
            u32::from_str_radix(t, 16).map_err(|_| err(what))
        };
        let domain = hex(domain, 4, "domain must be 1-4 hex digits")? as u16;
        let bus = hex(bus, 2, "bus must be 1-2 hex digits")? as u8;
        let device = hex(device, 2, "device must be 1-2 hex digits")?;
        if device > 31 {
            return Err(err("device number above 0x1f"));
        }
        if function.len() != 1 {
            return Err(err("function must be one digit 0-7"));
        }
        let function = hex(function, 1, "function must be one digit 0-7")?;
        if function > 7 {
            return Err(err("function above 7"));
        }
        Ok(Self {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl Serialize for PciAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The same text form as `Display` and `FromStr` (`0000:00:05.0`); a bad address is an error
/// that names it.
impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let a: PciAddress = "0000:00:05.0".parse().unwrap();
        assert_eq!(a, PciAddress::new(0, 0, 5, 0).unwrap());
        let b: PciAddress = "3b:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3b:1f.7");
        assert_eq!(b.devfn(), (0x1f << 3) | 7);
        let c: PciAddress = "ffff:ff:00.1".parse().unwrap();
        assert_eq!(c.domain, 0xffff);
    }

    #[test]
    fn rejects_malformed_addresses_with_a_reason() {
        for bad in [
            "",
            "00:05",
            "0000:00:20.0",
            "0000:00:05.8",
            "0000:00:05.00",
            "g0:05.0",
            "1:2:3:4.0",
            "00000:00:05.0",
            "00:005.0",
            "00:05.",
        ] {
            let e = bad.parse::<PciAddress>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("invalid PCI address"), "{e}");
        }
    }
}
