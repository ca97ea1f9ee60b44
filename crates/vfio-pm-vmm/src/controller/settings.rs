//! Per-device settings and the entry variant they choose before the kernel is probed.

use crate::pme::WakeRoute;
use serde::Serialize;
use std::time::Duration;

/// Default minimum time between host low-power transitions of one device.
pub const DEFAULT_MIN_RESIDENCY: Duration = Duration::from_millis(100);
/// PCI vendor ID of NVIDIA.
pub const VENDOR_NVIDIA: u16 = 0x10de;

/// Which entry call the controller makes on a guest `_OFF`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryPolicy {
    /// By device identity: `LOW_POWER_ENTRY_WITH_WAKEUP` for NVIDIA display/3D controllers and
    /// the configured list, plain `LOW_POWER_ENTRY` otherwise.
    #[default]
    Auto,
    /// Always `LOW_POWER_ENTRY_WITH_WAKEUP`.
    WithWakeup,
    /// Always plain `LOW_POWER_ENTRY` (no wake signal).
    Plain,
}

/// The low-power mechanism used for a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LowPowerVariant {
    /// `LOW_POWER_ENTRY`: the host re-suspends after its own accesses; no wake signal.
    Entry,
    /// `LOW_POWER_ENTRY_WITH_WAKEUP`: one-shot; a host wake becomes a guest PME.
    EntryWithWakeup,
    /// No VFIO low-power features (old kernel): D3hot through PMCSR.
    D3HotFallback,
}

/// A device identity match for the "needs wakeup" list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceMatch {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID, or any.
    pub device: Option<u16>,
}

/// Controller-wide settings.
#[derive(Clone, Debug, Default)]
pub struct ControllerConfig {
    /// Devices that need the guest driver before every entry, beyond the built-in rule
    /// (NVIDIA, base class 0x03): they get `ENTRY_WITH_WAKEUP` under [`EntryPolicy::Auto`].
    pub wakeup_devices: Vec<DeviceMatch>,
}

/// Per-device settings (filled by the VMM's configuration layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID, if known.
    pub device: Option<u16>,
    /// 24-bit class code (base class in bits 23:16).
    pub class: u32,
    /// Which entry call to make.
    pub entry: EntryPolicy,
    /// `Some(b)`: write the host's `d3cold_allowed` = b when adding the device (D3cold
    /// opt-in); `None`: leave it alone.
    pub d3cold: Option<bool>,
    /// Minimum time between host transitions (anti-thrash).
    pub min_residency: Duration,
    /// How a host wake reaches the guest; `None`: no route, so never the wakeup variant.
    pub route: Option<WakeRoute>,
    /// Offset of the PM capability in the *host* device's config space, for the ENOTTY
    /// fallback (the controller then writes PMCSR itself); `None`: the VMM passes the guest's
    /// PMCSR writes through.
    pub host_pm_cap: Option<u8>,
}

impl DeviceSettings {
    /// Settings with defaults: automatic entry policy, host D3cold untouched, default
    /// residency.
    pub fn new(vendor: u16, device: Option<u16>, class: u32, route: Option<WakeRoute>) -> Self {
        Self {
            vendor,
            device,
            class,
            entry: EntryPolicy::Auto,
            d3cold: None,
            min_residency: DEFAULT_MIN_RESIDENCY,
            route,
            host_pm_cap: None,
        }
    }
}

/// True for devices whose guest driver must run before every low-power entry (NVIDIA
/// display/3D controllers: vendor 0x10de, base class 0x03).
pub fn needs_guest_driver(vendor: u16, class: u32) -> bool {
    vendor == VENDOR_NVIDIA && (class >> 16) & 0xff == 0x03
}

/// The variant for `settings` under `config`, before probing the kernel. A device without a
/// wake route always gets plain entry: a wake could never reach its guest.
pub fn choose_variant(config: &ControllerConfig, settings: &DeviceSettings) -> LowPowerVariant {
    if settings.route.is_none() {
        return LowPowerVariant::Entry;
    }
    let wakeup = match settings.entry {
        EntryPolicy::WithWakeup => true,
        EntryPolicy::Plain => false,
        EntryPolicy::Auto => {
            needs_guest_driver(settings.vendor, settings.class)
                || config.wakeup_devices.iter().any(|m| {
                    m.vendor == settings.vendor
                        && m.device.map_or(true, |d| Some(d) == settings.device)
                })
        }
    };
    if wakeup {
        LowPowerVariant::EntryWithWakeup
    } else {
        LowPowerVariant::Entry
    }
}
