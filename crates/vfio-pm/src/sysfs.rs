//! Host power introspection from sysfs, for one PCI device or all of them.
//!
//! The root is configurable ([`Sysfs::new`], or `VFIO_PM_SYSFS_ROOT` through
//! [`Sysfs::from_env`]) so that tests and users can point it at a captured tree. A missing or odd
//! file yields a per-field [`Field::Unknown`] with the reason, never a panic or a failed report.

use crate::pci::PciAddress;
use crate::power::{PowerObservation, PowerState, RuntimeStatus};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the sysfs root.
pub const SYSFS_ROOT_ENV: &str = "VFIO_PM_SYSFS_ROOT";

/// A value read from sysfs, or why it could not be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Field<T> {
    /// The value.
    Known(T),
    /// Why it is unknown (missing file, unparsable text, ...).
    Unknown {
        /// The reason, for humans.
        unknown: String,
    },
}

impl<T> Field<T> {
    fn unknown(reason: impl Into<String>) -> Self {
        Field::Unknown {
            unknown: reason.into(),
        }
    }

    /// The value, if known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Field::Known(v) => Some(v),
            Field::Unknown { .. } => None,
        }
    }
}

impl<T: std::fmt::Display> Field<T> {
    /// The value as text, or `?` when unknown.
    pub fn display(&self) -> String {
        match self {
            Field::Known(v) => v.to_string(),
            Field::Unknown { .. } => "?".into(),
        }
    }

    /// The value as text, or `unknown (why)`.
    pub fn describe(&self) -> String {
        match self {
            Field::Known(v) => v.to_string(),
            Field::Unknown { unknown } => format!("unknown ({unknown})"),
        }
    }
}

/// Errors of sysfs writes and of looking a device up.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    /// The device directory does not exist.
    #[error("no PCI device {address} under {root}")]
    NoSuchDevice {
        /// The address asked for.
        address: PciAddress,
        /// The sysfs root used.
        root: PathBuf,
    },
    /// A read or write failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A sysfs tree (normally `/sys`).
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

impl Sysfs {
    /// A sysfs tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$VFIO_PM_SYSFS_ROOT` when set and non-empty, else `/sys`.
    pub fn from_env() -> Self {
        match std::env::var_os(SYSFS_ROOT_ENV) {
            Some(r) if !r.is_empty() => Self::new(r),
            _ => Self::default(),
        }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/bus/pci/devices/BDF`.
    pub fn device_dir(&self, address: PciAddress) -> PathBuf {
        self.root.join("bus/pci/devices").join(address.to_string())
    }

    /// Fails with [`SysfsError::NoSuchDevice`] unless the device directory exists.
    pub fn device(&self, address: PciAddress) -> Result<SysfsDevice, SysfsError> {
        let dir = self.device_dir(address);
        if !dir.is_dir() {
            return Err(SysfsError::NoSuchDevice {
                address,
                root: self.root.clone(),
            });
        }
        Ok(SysfsDevice {
            sysfs: self.clone(),
            address,
            dir,
        })
    }

    /// All PCI devices, in address order. Entries whose names are not PCI addresses are skipped,
    /// and so is a device removed between the listing and its lookup; an error reading the
    /// directory is an error, not a shorter list.
    pub fn devices(&self) -> Result<Vec<SysfsDevice>, SysfsError> {
        let dir = self.root.join("bus/pci/devices");
        let io = |source| SysfsError::Io {
            path: dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let Some(address) = name.to_str().and_then(|n| n.parse::<PciAddress>().ok()) else {
                continue;
            };
            if let Ok(device) = self.device(address) {
                out.push(device);
            }
        }
        out.sort_by_key(|d| d.address);
        Ok(out)
    }

    /// vfio-pci's `disable_idle_d3` module parameter.
    pub fn vfio_disable_idle_d3(&self) -> Field<bool> {
        let p = self.root.join("module/vfio_pci/parameters/disable_idle_d3");
        match read_trimmed(&p) {
            Ok(s) => parse_bool(&s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Field::unknown("vfio_pci module not loaded")
            }
            Err(e) => Field::unknown(e.to_string()),
        }
    }
}

/// One PCI device's sysfs directory.
#[derive(Clone, Debug)]
pub struct SysfsDevice {
    sysfs: Sysfs,
    address: PciAddress,
    dir: PathBuf,
}

/// Everything vfio-pm reports about a device's power, read at one time.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// PCI address.
    pub address: PciAddress,
    /// Vendor ID.
    pub vendor: Field<String>,
    /// Device ID.
    pub device: Field<String>,
    /// Class code (24 bits).
    pub class: Field<String>,
    /// Bound driver name, or `none`.
    pub driver: Field<String>,
    /// IOMMU group number.
    pub iommu_group: Field<u32>,
    /// `power_state`.
    pub power_state: Field<PowerState>,
    /// `power/runtime_status`.
    pub runtime_status: Field<RuntimeStatus>,
    /// `power/control` (`auto` or `on`).
    pub power_control: Field<String>,
    /// `power/runtime_active_time`, milliseconds.
    pub runtime_active_ms: Field<u64>,
    /// `power/runtime_suspended_time`, milliseconds.
    pub runtime_suspended_ms: Field<u64>,
    /// `d3cold_allowed`.
    pub d3cold_allowed: Field<bool>,
    /// Firmware power resources for D0 (`firmware_node/power_resources_D0`).
    pub power_resources_d0: Field<Vec<String>>,
    /// Firmware power resources for D3hot (`firmware_node/power_resources_D3hot`), i.e. `_PR3`.
    pub power_resources_d3hot: Field<Vec<String>>,
    /// The upstream bridge, when the device sits behind one.
    pub parent_bridge: Option<BridgeReport>,
    /// The `_PR3` of every upstream bridge that has an ACPI node, nearest first. Suspending a
    /// bridge with `_PR3` to D3cold cuts the power of everything below it: a laptop's dGPU
    /// commonly gets its `_PR3` on its root port, not its own node.
    pub upstream_power_resources: Vec<UpstreamPowerResources>,
}

/// An upstream bridge's D3hot power resources (`_PR3`) and whether it may runtime-suspend.
#[derive(Clone, Debug, Serialize)]
pub struct UpstreamPowerResources {
    /// Bridge address.
    pub address: PciAddress,
    /// Its `firmware_node/power_resources_D3hot`.
    pub power_resources_d3hot: Field<Vec<String>>,
    /// Its `power/control`.
    pub power_control: Field<String>,
}

/// Which power resources can remove the device's main power (D3cold), from a [`DeviceReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum D3coldPower {
    /// The device's own `_PR3`.
    Own(Vec<String>),
    /// No `_PR3` of its own, but an upstream bridge has one: suspending that bridge to D3cold
    /// powers the device off too.
    Upstream {
        /// The nearest bridge with `_PR3`.
        bridge: PciAddress,
        /// Its `_PR3` resources.
        resources: Vec<String>,
        /// The bridge's `power/control` (`auto` lets it suspend).
        power_control: Field<String>,
    },
    /// Neither the device nor any upstream bridge has `_PR3`: D3cold is impossible.
    None(String),
    /// Some node could not be read.
    Unknown(String),
}

/// The upstream bridge's runtime-PM state (it must be able to suspend for D3cold below it).
#[derive(Clone, Debug, Serialize)]
pub struct BridgeReport {
    /// Bridge address.
    pub address: PciAddress,
    /// Its `power/control`.
    pub power_control: Field<String>,
    /// Its `power/runtime_status`.
    pub runtime_status: Field<RuntimeStatus>,
    /// Its `power_state`.
    pub power_state: Field<PowerState>,
}

impl DeviceReport {
    /// True when the device is bound to vfio-pci.
    pub fn is_vfio(&self) -> bool {
        self.driver.known().is_some_and(|d| d == "vfio-pci")
    }

    /// Where the power resources for D3cold are: the device's own ACPI node first, then its
    /// upstream bridges nearest first (the kernel powers a device without `_PR3` off by
    /// suspending a bridge that has one).
    pub fn d3cold_power(&self) -> D3coldPower {
        let no_node = |why: &str| why == NO_FIRMWARE_NODE;
        let own = match &self.power_resources_d3hot {
            Field::Known(v) if !v.is_empty() => return D3coldPower::Own(v.clone()),
            Field::Known(_) => "no power resources for D3hot (_PR3) in the device's ACPI node",
            Field::Unknown { unknown } if no_node(unknown) => "the device has no ACPI node",
            Field::Unknown { unknown } => {
                return D3coldPower::Unknown(format!("the device's _PR3: {unknown}"))
            }
        };
        for up in &self.upstream_power_resources {
            match &up.power_resources_d3hot {
                Field::Known(v) if !v.is_empty() => {
                    return D3coldPower::Upstream {
                        bridge: up.address,
                        resources: v.clone(),
                        power_control: up.power_control.clone(),
                    }
                }
                Field::Known(_) => {}
                Field::Unknown { unknown } if no_node(unknown) => {}
                Field::Unknown { unknown } => {
                    return D3coldPower::Unknown(format!(
                        "upstream bridge {}'s _PR3: {unknown}",
                        up.address
                    ))
                }
            }
        }
        let bridges = if self.upstream_power_resources.is_empty() {
            ""
        } else {
            ", nor in any upstream bridge's"
        };
        D3coldPower::None(format!("{own}{bridges}"))
    }
}

const NO_FIRMWARE_NODE: &str = "no ACPI firmware node";

impl SysfsDevice {
    /// The device's address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The device directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// One attribute's text, trimmed (`unknown` with the reason when it cannot be read).
    pub fn attribute(&self, rel: &str) -> Field<String> {
        self.text(rel)
    }

    fn text(&self, rel: &str) -> Field<String> {
        match read_trimmed(&self.dir.join(rel)) {
            Ok(s) => Field::Known(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Field::unknown(format!("no {rel}")),
            Err(e) => Field::unknown(format!("{rel}: {e}")),
        }
    }

    fn parsed<T>(&self, rel: &str, parse: impl FnOnce(&str) -> Option<T>) -> Field<T> {
        match self.text(rel) {
            Field::Known(s) => match parse(&s) {
                Some(v) => Field::Known(v),
                None => Field::unknown(format!("{rel}: unexpected value {s:?}")),
            },
            Field::Unknown { unknown } => Field::Unknown { unknown },
        }
    }

    fn link_name(&self, rel: &str) -> Option<String> {
        let target = std::fs::read_link(self.dir.join(rel)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Bound driver name; `none` when unbound (no `driver` link in a readable directory).
    pub fn driver(&self) -> Field<String> {
        let p = self.dir.join("driver");
        match p.symlink_metadata() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Field::Known("none".into()),
            Err(e) => Field::unknown(format!("driver: {e}")),
            Ok(_) => match self.link_name("driver") {
                Some(name) => Field::Known(name),
                None => Field::unknown("driver is not a symlink"),
            },
        }
    }

    /// IOMMU group number.
    pub fn iommu_group(&self) -> Field<u32> {
        match self.link_name("iommu_group") {
            Some(name) => name
                .parse()
                .map(Field::Known)
                .unwrap_or_else(|_| Field::unknown(format!("odd iommu_group link {name:?}"))),
            None => Field::unknown("no iommu_group (IOMMU off?)"),
        }
    }

    /// `power_state`.
    pub fn power_state(&self) -> Field<PowerState> {
        self.parsed("power_state", |s| Some(PowerState::from_sysfs(s)))
    }

    /// `power/runtime_status`.
    pub fn runtime_status(&self) -> Field<RuntimeStatus> {
        self.parsed("power/runtime_status", |s| {
            Some(RuntimeStatus::from_sysfs(s))
        })
    }

    /// Power state and runtime status together, or the I/O error of the first that failed.
    ///
    /// The two files are separate reads, and a suspend or resume can land between them
    /// (giving "D0 suspended"). Reading status, state, status again and retrying until the
    /// two status reads agree returns a consistent pair.
    pub fn observe(&self) -> io::Result<PowerObservation> {
        let status = || -> io::Result<RuntimeStatus> {
            Ok(RuntimeStatus::from_sysfs(&read_trimmed(
                &self.dir.join("power/runtime_status"),
            )?))
        };
        let mut before = status()?;
        for _ in 0..8 {
            let power_state = PowerState::from_sysfs(&read_trimmed(&self.dir.join("power_state"))?);
            let after = status()?;
            if after == before && !after.is_transient() {
                return Ok(PowerObservation {
                    power_state,
                    runtime_status: after,
                });
            }
            before = after;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(PowerObservation {
            power_state: PowerState::from_sysfs(&read_trimmed(&self.dir.join("power_state"))?),
            runtime_status: status()?,
        })
    }

    /// Writes a file relative to the device directory.
    pub fn write(&self, rel: &str, value: &str) -> Result<(), SysfsError> {
        let path = self.dir.join(rel);
        std::fs::write(&path, value).map_err(|source| SysfsError::Io { path, source })
    }

    /// Reads the whole config space file, as `lspci -xxx` does (wakes a device in D3cold).
    pub fn read_config(&self) -> Result<Vec<u8>, SysfsError> {
        let path = self.dir.join("config");
        read_bounded(&path).map_err(|source| SysfsError::Io { path, source })
    }

    fn resources(&self, rel: &str) -> Field<Vec<String>> {
        let p = self.dir.join("firmware_node").join(rel);
        match std::fs::read_dir(&p) {
            Ok(entries) => {
                let mut v: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                v.sort();
                Field::Known(v)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let node = self.dir.join("firmware_node");
                match std::fs::metadata(&node) {
                    Ok(m) if m.is_dir() => Field::Known(Vec::new()),
                    Ok(_) => Field::unknown("firmware_node is not a directory"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        Field::unknown(NO_FIRMWARE_NODE)
                    }
                    Err(e) => Field::unknown(format!("firmware_node: {e}")),
                }
            }
            Err(e) => Field::unknown(format!("firmware_node/{rel}: {e}")),
        }
    }

    /// The upstream PCI bridge, from the device's real sysfs path.
    pub fn parent_bridge(&self) -> Option<SysfsDevice> {
        self.upstream_bridges().into_iter().next()
    }

    /// Every upstream PCI bridge, nearest first, from the device's real sysfs path.
    pub fn upstream_bridges(&self) -> Vec<SysfsDevice> {
        let Ok(real) = std::fs::canonicalize(&self.dir) else {
            return Vec::new();
        };
        real.ancestors()
            .skip(1)
            .map_while(|p| p.file_name()?.to_str()?.parse::<PciAddress>().ok())
            .filter_map(|a| self.sysfs.device(a).ok())
            .collect()
    }

    /// Reads everything at once.
    pub fn report(&self) -> DeviceReport {
        let hex = |s: &str| s.strip_prefix("0x").map(|h| h.to_string());
        DeviceReport {
            address: self.address,
            vendor: self.parsed("vendor", hex),
            device: self.parsed("device", hex),
            class: self.parsed("class", hex),
            driver: self.driver(),
            iommu_group: self.iommu_group(),
            power_state: self.power_state(),
            runtime_status: self.runtime_status(),
            power_control: self.text("power/control"),
            runtime_active_ms: self.parsed("power/runtime_active_time", |s| s.parse().ok()),
            runtime_suspended_ms: self.parsed("power/runtime_suspended_time", |s| s.parse().ok()),
            d3cold_allowed: match self.text("d3cold_allowed") {
                Field::Known(s) => parse_bool(&s),
                Field::Unknown { unknown } => Field::Unknown { unknown },
            },
            power_resources_d0: self.resources("power_resources_D0"),
            power_resources_d3hot: self.resources("power_resources_D3hot"),
            upstream_power_resources: self
                .upstream_bridges()
                .iter()
                .map(|b| UpstreamPowerResources {
                    address: b.address,
                    power_resources_d3hot: b.resources("power_resources_D3hot"),
                    power_control: b.text("power/control"),
                })
                .filter(|u| {
                    !matches!(&u.power_resources_d3hot, Field::Unknown { unknown } if unknown == NO_FIRMWARE_NODE)
                })
                .collect(),
            parent_bridge: self.parent_bridge().map(|b| BridgeReport {
                address: b.address,
                power_control: b.text("power/control"),
                runtime_status: b.runtime_status(),
                power_state: b.power_state(),
            }),
        }
    }
}

/// Bytes read from one attribute at most: sysfs attributes are at most a page.
pub const ATTRIBUTE_LIMIT: usize = 4096;

/// Reads a sysfs attribute without blocking and with a size bound: only a regular file is read
/// (a FIFO would block for ever, `/dev/zero` never ends), opened with `O_NONBLOCK`, and one
/// larger than [`ATTRIBUTE_LIMIT`] is an error.
fn read_bounded(p: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(p)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device node"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "a socket or other special file"
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file ({what})"),
        ));
    }
    let mut buf = Vec::new();
    file.take(ATTRIBUTE_LIMIT as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > ATTRIBUTE_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {ATTRIBUTE_LIMIT} bytes"),
        ));
    }
    Ok(buf)
}

fn read_trimmed(p: &Path) -> io::Result<String> {
    let bytes = read_bounded(p)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))?;
    Ok(text.trim().to_string())
}

fn parse_bool(s: &str) -> Field<bool> {
    match s {
        "1" | "Y" | "y" => Field::Known(true),
        "0" | "N" | "n" => Field::Known(false),
        other => Field::unknown(format!("unexpected boolean {other:?}")),
    }
}
