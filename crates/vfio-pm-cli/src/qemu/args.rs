//! Walking a QEMU command line: which words are options, which are their values, and the
//! options `vfio-pm qemu` cares about (`-device`, `-machine`/`-M`, `-acpitable`, `-chardev`,
//! `-global`, and the ones that hide devices from it: `-readconfig`, `-set`).
//!
//! QEMU has no self-describing syntax: an option either takes the next word or not. Every option
//! takes one except those in [`NO_VALUE`] (QEMU 7.2's flag options), which is what QEMU itself
//! does (`qemu-options.def`: `HAS_ARG` or not). `--opt` is the same as `-opt`.

use super::opts::{OptsError, Props};
use std::fmt;

/// The most words accepted (a real command line has a few hundred).
pub const MAX_ARGS: usize = 10_000;

/// QEMU 7.2's options that take no value (x86 system emulator).
pub const NO_VALUE: &[&str] = &[
    "nographic",
    "no-reboot",
    "no-shutdown",
    "S",
    "s",
    "snapshot",
    "enable-kvm",
    "daemonize",
    "nodefaults",
    "no-user-config",
    "full-screen",
    "no-hpet",
    "no-acpi",
    "usb",
    "no-fd-bootchk",
    "no-quit",
    "alt-grab",
    "ctrl-grab",
    "only-migratable",
    "preconfig",
    "version",
    "h",
    "help",
    "win2k-hack",
    "rtc-td-hack",
    "no-kvm-pit-reinjection",
    "enable-fips",
    "semihosting",
    "mem-prealloc",
    "singlestep",
    "no-frame",
    "curses",
    "portrait",
    "xen-attach",
    "xen-domid-restrict",
    "old-param",
    "nodefconfig",
    "no-kvm",
    "no-kvm-irqchip",
];

/// One option and its value, with the index of the option word in the arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuOption {
    /// Index of the option word (after the binary).
    pub index: usize,
    /// The name without leading dashes.
    pub name: String,
    /// The value word, for options that take one.
    pub value: Option<String>,
}

/// Why the arguments could not be walked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// More than [`MAX_ARGS`] words.
    TooMany(usize),
    /// The last word is an option that needs a value.
    MissingValue(String),
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany(n) => write!(f, "{n} arguments (at most {MAX_ARGS})"),
            Self::MissingValue(o) => write!(f, "-{o} needs a value"),
        }
    }
}

/// Splits `args` (without the QEMU binary) into options. Words that are not options (a disk
/// image given positionally) are skipped.
pub fn walk(args: &[String]) -> Result<Vec<QemuOption>, WalkError> {
    if args.len() > MAX_ARGS {
        return Err(WalkError::TooMany(args.len()));
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let word = &args[i];
        let name = word
            .strip_prefix("--")
            .or_else(|| word.strip_prefix('-'))
            .filter(|n| !n.is_empty());
        let Some(name) = name else {
            i += 1;
            continue;
        };
        let takes_value = !NO_VALUE.contains(&name);
        let value = if takes_value {
            let v = args
                .get(i + 1)
                .ok_or_else(|| WalkError::MissingValue(name.to_string()))?;
            Some(v.clone())
        } else {
            None
        };
        out.push(QemuOption {
            index: i,
            name: name.to_string(),
            value,
        });
        i += if takes_value { 2 } else { 1 };
    }
    Ok(out)
}

/// An option value that did not parse, with where it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadValue {
    /// The option (without dashes).
    pub option: String,
    /// Its index in the arguments.
    pub index: usize,
    /// What is wrong.
    pub error: OptsError,
}

/// A parsed option of interest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Index of the option word.
    pub index: usize,
    /// The raw value as given.
    pub raw: String,
    /// Its properties.
    pub props: Props,
}

/// The options `vfio-pm qemu` looks at, parsed, in command line order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// `-device` (implied key `driver`).
    pub devices: Vec<Parsed>,
    /// `-machine` / `-M` (implied key `type`).
    pub machines: Vec<Parsed>,
    /// `-acpitable`.
    pub acpi_tables: Vec<Parsed>,
    /// `-chardev` (implied key `backend`).
    pub chardevs: Vec<Parsed>,
    /// `-global` (raw `driver.property=value`).
    pub globals: Vec<String>,
    /// Options that can add or change devices out of sight (`-readconfig`, `-set`).
    pub hidden: Vec<String>,
}

/// Collects and parses the options of interest.
pub fn collect(options: &[QemuOption]) -> Result<Collected, BadValue> {
    let mut c = Collected::default();
    for o in options {
        let Some(raw) = &o.value else { continue };
        let parse = |implied: Option<&str>| {
            Props::parse(raw, implied)
                .map(|props| Parsed {
                    index: o.index,
                    raw: raw.clone(),
                    props,
                })
                .map_err(|error| BadValue {
                    option: o.name.clone(),
                    index: o.index,
                    error,
                })
        };
        match o.name.as_str() {
            "device" => c.devices.push(parse(Some("driver"))?),
            "machine" | "M" => c.machines.push(parse(Some("type"))?),
            "acpitable" => c.acpi_tables.push(parse(None)?),
            "chardev" => c.chardevs.push(parse(Some("backend"))?),
            "global" => c.globals.push(raw.clone()),
            "readconfig" | "set" => c.hidden.push(format!("-{} {raw}", o.name)),
            _ => {}
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn options_values_flags_and_double_dashes() {
        let a = words(&[
            "-nographic",
            "--device",
            "vfio-pci,host=01:00.0",
            "disk.img",
            "-M",
            "q35",
            "-S",
            "-m",
            "512",
        ]);
        let o = walk(&a).unwrap();
        let names: Vec<(&str, Option<&str>)> = o
            .iter()
            .map(|o| (o.name.as_str(), o.value.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("nographic", None),
                ("device", Some("vfio-pci,host=01:00.0")),
                ("M", Some("q35")),
                ("S", None),
                ("m", Some("512")),
            ]
        );
        assert_eq!(o[1].index, 1);
        // A value that looks like an option is still the value.
        let o = walk(&words(&["-append", "-x", "-nographic"])).unwrap();
        assert_eq!(o[0].value.as_deref(), Some("-x"));
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn walk_errors() {
        assert_eq!(
            walk(&words(&["-device"])),
            Err(WalkError::MissingValue("device".into()))
        );
        let many = vec!["-S".to_string(); MAX_ARGS + 1];
        assert_eq!(walk(&many), Err(WalkError::TooMany(MAX_ARGS + 1)));
        assert!(walk(&words(&["-", "--"])).unwrap().is_empty());
    }

    #[test]
    fn collects_the_options_of_interest() {
        let a = words(&[
            "-machine",
            "pc-q35-7.2,accel=kvm",
            "-device",
            r#"{"driver":"vfio-pci","host":"0000:01:00.0"}"#,
            "-chardev",
            "socket,id=c,path=/x",
            "-acpitable",
            "file=a.aml",
            "-global",
            "ICH9-LPC.disable_s3=1",
            "-set",
            "device.x.addr=1",
        ]);
        let c = collect(&walk(&a).unwrap()).unwrap();
        assert_eq!(c.machines[0].props.get("type"), Some("pc-q35-7.2"));
        assert_eq!(c.devices[0].props.get("driver"), Some("vfio-pci"));
        assert_eq!(c.devices[0].index, 2);
        assert_eq!(c.chardevs[0].props.get("backend"), Some("socket"));
        assert_eq!(c.acpi_tables[0].props.get("file"), Some("a.aml"));
        assert_eq!(c.globals, ["ICH9-LPC.disable_s3=1"]);
        assert_eq!(c.hidden, ["-set device.x.addr=1"]);
        let bad = collect(&walk(&words(&["-device", "{"])).unwrap()).unwrap_err();
        assert_eq!((bad.option.as_str(), bad.index), ("device", 0));
    }
}
