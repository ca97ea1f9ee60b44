//! Debian kernel images, resolved by name through the meta packages, downloaded with
//! `apt-get download` and cached (kernel image plus the VFIO modules) under
//! `target/qemu/kernels/<release>/`.
//!
//! Debian 12's own kernels (6.1, 6.12) come through the machine's apt configuration. The newest
//! kernel comes from `trixie-backports` or `sid` through the project's own apt tree
//! ([`crate::apt::ProjectApt`], under `target/qemu/kernels/apt/`), so the machine's apt
//! configuration is never touched. From 6.x on Debian splits a kernel into `linux-image-R` (a
//! meta package), `linux-binary-R` (`usr/lib/modules/R/vmlinuz`) and `linux-modules-R`; the
//! harness downloads whichever packages the image package depends on.
//!
//! `VFIO_PM_KERNEL_DEBS=DIR` makes the harness take a `<package>_*.deb` from DIR before
//! downloading (for seeding the cache from already-downloaded packages).

use crate::apt::ProjectApt;
use crate::run_cmd;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// Environment variable naming a folder of already-downloaded kernel `.deb`s.
pub const DEBS_ENV: &str = "VFIO_PM_KERNEL_DEBS";

/// Modules needed in the guest, in load order (paths under `kernel/`, without `.ko`).
/// A module missing from a kernel package is taken to be built in (e.g. `vfio_virqfd` on 6.12)
/// or not configured (`iommufd`: no Debian kernel up to 7.3 sets `CONFIG_IOMMUFD`). Where it
/// exists, `iommufd` loads before `vfio`, whose device cdev code imports it.
pub const MODULES: &[&str] = &[
    "virt/lib/irqbypass",
    "drivers/iommu/iommufd/iommufd",
    "drivers/vfio/vfio",
    "drivers/vfio/vfio_virqfd",
    "drivers/vfio/vfio_iommu_type1",
    "drivers/vfio/pci/vfio-pci-core",
    "drivers/vfio/pci/vfio-pci",
];

/// A Debian kernel series the harness tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSeries {
    /// Debian 12's default kernel (`linux-image-amd64` → `linux-image-6.1.0-NN-amd64`).
    V6_1,
    /// The backported 6.12 kernel (`linux-image-6.12-amd64` → `linux-image-6.12.NNN+deb12-amd64`).
    V6_12,
    /// Debian's newest kernel: the higher of `linux-image-amd64` in `trixie-backports` and in
    /// `sid` (e.g. `linux-image-7.3.4+deb13-amd64`), resolved by name on every run through
    /// [`ProjectApt`]; never a pinned version.
    Newest,
}

impl KernelSeries {
    /// Every series, oldest first.
    pub const ALL: [KernelSeries; 3] = [Self::V6_1, Self::V6_12, Self::Newest];

    /// The meta package that depends on the newest image of the series.
    pub fn meta_package(self) -> &'static str {
        match self {
            Self::V6_1 | Self::Newest => "linux-image-amd64",
            Self::V6_12 => "linux-image-6.12-amd64",
        }
    }

    /// How the image packages of the series start.
    pub fn image_prefix(self) -> &'static str {
        match self {
            Self::V6_1 => "linux-image-6.1.0-",
            Self::V6_12 => "linux-image-6.12.",
            Self::Newest => "linux-image-",
        }
    }

    /// The apt tree the series resolves and downloads through: the project's own for
    /// [`KernelSeries::Newest`], the machine's for Debian 12's kernels.
    pub fn apt(self) -> Option<ProjectApt> {
        (self == Self::Newest).then(ProjectApt::in_cache)
    }
}

impl FromStr for KernelSeries {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "6.1" => Ok(Self::V6_1),
            "6.12" => Ok(Self::V6_12),
            "newest" => Ok(Self::Newest),
            other => bail!("unknown kernel {other:?} (6.1, 6.12, newest or all)"),
        }
    }
}

impl fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::Newest => "newest",
        })
    }
}

/// A cached kernel: image and modules ready for an initramfs.
#[derive(Clone, Debug)]
pub struct KernelImage {
    /// The series.
    pub series: KernelSeries,
    /// The image package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub package: String,
    /// `uname -r`, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// Uncompressed modules, in load order.
    pub modules: Vec<PathBuf>,
    /// The kernel's build configuration (`boot/config-R` or `usr/lib/modules/R/config`).
    pub config: PathBuf,
}

/// The vfio-pci-core export through which vfio-pci hands its module parameters over once, at
/// module init (`vfio_pci_core_set_params`). Kernels with the per-device latch ("vfio/pci:
/// Latch disable_idle_d3 per device", 4575e9aac533, 2026, also sent to the stable trees) no
/// longer have it.
pub const MODULE_INIT_LATCH_SYMBOL: &[u8] = b"vfio_pci_core_set_params";

impl KernelImage {
    /// Whether this kernel's vfio-pci latches `disable_idle_d3` per device at bind time, read
    /// from the module itself (its `vfio-pci.ko` imports [`MODULE_INIT_LATCH_SYMBOL`] or not)
    /// rather than from the version, since the change reaches stable kernels too. None when
    /// the module cannot be read.
    pub fn latches_disable_idle_d3_per_device(&self) -> Option<bool> {
        let module = self.modules.iter().find(|m| {
            m.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("-vfio-pci.ko"))
        })?;
        let bytes = std::fs::read(module).ok()?;
        let imports = bytes
            .windows(MODULE_INIT_LATCH_SYMBOL.len())
            .any(|w| w == MODULE_INIT_LATCH_SYMBOL);
        Some(!imports)
    }

    /// `major.minor` of the release (`7.3` for `7.3.4+deb13-amd64`), if it parses.
    pub fn version(&self) -> Option<(u32, u32)> {
        release_version(&self.release)
    }

    /// The value of `CONFIG_<name>` in the kernel's configuration: `Some("y")`, `Some("m")`,
    /// `Some("")` for "is not set", None when it is not mentioned (or unreadable).
    pub fn config_value(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.config).ok()?;
        config_value(&text, name)
    }

    /// Whether the kernel is built with the VFIO device cdev and iommufd
    /// (`CONFIG_VFIO_DEVICE_CDEV=y`, `CONFIG_IOMMUFD=y|m`).
    pub fn has_cdev_iommufd(&self) -> bool {
        self.config_value("VFIO_DEVICE_CDEV").as_deref() == Some("y")
            && matches!(self.config_value("IOMMUFD").as_deref(), Some("y" | "m"))
    }
}

/// `major.minor` of a kernel release string.
pub fn release_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The value of `CONFIG_<name>` in a kernel `.config` text (see [`KernelImage::config_value`]).
pub fn config_value(config: &str, name: &str) -> Option<String> {
    let key = format!("CONFIG_{name}");
    config.lines().find_map(|l| {
        if let Some(v) = l.strip_prefix(&format!("{key}=")) {
            Some(v.to_string())
        } else {
            (l.trim() == format!("# {key} is not set")).then(String::new)
        }
    })
}

/// The image package named by a meta package's `apt-cache depends` output.
pub fn parse_depends(output: &str, prefix: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        (dep.starts_with(prefix) && dep.ends_with("-amd64")).then(|| dep.to_string())
    })
}

/// The packages that carry the files of image package `package` (release `release`): its
/// `linux-binary-R`, `linux-modules-R` and `linux-base-R` (the kernel's `config`) dependencies
/// where Debian splits the kernel (6.x from Debian 13 on), else the image package itself.
pub fn split_packages(depends_output: &str, package: &str, release: &str) -> Vec<String> {
    let dep = |prefix: &str| {
        let want = format!("{prefix}{release}");
        depends_output.lines().find_map(|l| {
            let dep = l.trim().strip_prefix("Depends:")?.trim();
            (dep == want).then(|| dep.to_string())
        })
    };
    match (dep("linux-binary-"), dep("linux-modules-")) {
        (Some(binary), Some(modules)) => [Some(binary), Some(modules), dep("linux-base-")]
            .into_iter()
            .flatten()
            .collect(),
        _ => vec![package.to_string()],
    }
}

/// `apt-cache` or `apt-get` for `series` (the project's own tree for the newest kernel).
fn apt(series: KernelSeries, program: &str) -> Command {
    match series.apt() {
        Some(a) => a.command(program),
        None => Command::new(program),
    }
}

/// Refreshes the package lists `series` resolves through (`apt-get update`, root only for
/// the machine's lists).
fn update_lists(series: KernelSeries) -> Result<()> {
    match series.apt() {
        Some(a) => a.update(),
        None => run_cmd(Command::new("apt-get").arg("update"))
            .map(drop)
            .context("apt-get update"),
    }
}

/// Resolves the newest image package of `series` (running `apt-get update` once if the package
/// lists do not know the meta package; the newest kernel's own lists are refreshed when stale).
pub fn resolve(series: KernelSeries) -> Result<String> {
    if let Some(a) = series.apt() {
        a.ensure_fresh(crate::apt::MAX_LIST_AGE)?;
    }
    let query = || {
        apt(series, "apt-cache")
            .args(["depends", series.meta_package()])
            .output()
            .ok()
            .and_then(|o| parse_depends(&String::from_utf8_lossy(&o.stdout), series.image_prefix()))
    };
    if let Some(p) = query() {
        return Ok(p);
    }
    if crate::is_root() || series.apt().is_some() {
        eprintln!(
            "xtask kernels: {} unknown to apt-cache; running apt-get update",
            series.meta_package()
        );
        update_lists(series)?;
        if let Some(p) = query() {
            return Ok(p);
        }
    }
    bail!(
        "cannot resolve the {series} kernel: `apt-cache depends {}` names no {}* package",
        series.meta_package(),
        series.image_prefix()
    )
}

/// The cache folder of all kernels.
pub fn cache_root() -> PathBuf {
    crate::qemu_dir().join("kernels")
}

fn load_cached(series: KernelSeries, package: &str, dir: &Path) -> Option<KernelImage> {
    let release = package.strip_prefix("linux-image-")?.to_string();
    let order = std::fs::read_to_string(dir.join("modules.order")).ok()?;
    let vmlinuz = dir.join(format!("vmlinuz-{release}"));
    let modules: Vec<PathBuf> = order
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| dir.join(l))
        .collect();
    let config = dir.join("config");
    (vmlinuz.is_file() && config.is_file() && modules.iter().all(|m| m.is_file())).then_some(
        KernelImage {
            series,
            package: package.to_string(),
            release,
            vmlinuz,
            modules,
            config,
        },
    )
}

pub(crate) fn find_seeded_deb(package: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(DEBS_ENV)?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_deb_of(p, package))
        .collect();
    found.sort();
    found.pop()
}

fn is_deb_of(path: &Path, package: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
}

pub(crate) fn download(series: KernelSeries, package: &str, into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    // Let apt's sandbox user write there (else apt warns and downloads unsandboxed as root).
    let _ = Command::new("chmod").arg("0777").arg(into).status();
    eprintln!("xtask kernels: apt-get download {package}");
    run_cmd(
        apt(series, "apt-get")
            .current_dir(into)
            .args(["download", package]),
    )
    .with_context(|| format!("apt-get download {package}"))?;
    std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| is_deb_of(p, package))
        .with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                into.display()
            )
        })
}

/// Makes sure the newest kernel of `series` is cached, downloading it if needed. A failed
/// download (stale package lists naming a version the archive no longer has) is retried once
/// after `apt-get update`.
pub fn ensure(series: KernelSeries) -> Result<KernelImage> {
    let package = resolve(series)?;
    match ensure_package(series, &package) {
        Ok(k) => Ok(k),
        Err(e) if crate::is_root() || series.apt().is_some() => {
            eprintln!("xtask kernels: {e:#}; running apt-get update and retrying");
            update_lists(series)?;
            let package = resolve(series)?;
            ensure_package(series, &package)
        }
        Err(e) => Err(e),
    }
}

/// Whether a member of a kernel package is one the harness keeps: the image, the kernel's
/// configuration, and the modules under the folders of [`MODULES`].
pub fn wanted_member(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    let in_modules_dir = name.contains("/modules/") && !name.contains("/kernel/");
    (name.contains("boot/vmlinuz-") || (in_modules_dir && file == "vmlinuz"))
        || (name.contains("boot/config-") || (in_modules_dir && file == "config"))
        || MODULES.iter().any(|m| {
            let dir = m.rsplit_once('/').map_or("", |(d, _)| d);
            name.contains(&format!("/kernel/{dir}/")) && file.contains(".ko")
        })
}

/// Extracts the members of `deb` that [`wanted_member`] keeps into `root`.
fn extract_wanted(deb: &Path, root: &Path) -> Result<()> {
    eprintln!("xtask kernels: extracting {}", deb.display());
    let list = run_cmd(
        Command::new("sh")
            .args(["-c", "dpkg-deb --fsys-tarfile \"$1\" | tar -t", "sh"])
            .arg(deb),
    )
    .with_context(|| format!("listing {}", deb.display()))?;
    let wanted: Vec<&str> = list.lines().filter(|l| wanted_member(l)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let list_file = root.with_extension("members");
    std::fs::write(&list_file, wanted.join("\n") + "\n")?;
    run_cmd(
        Command::new("sh")
            .args([
                "-c",
                "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" -T \"$3\"",
                "sh",
            ])
            .arg(deb)
            .arg(root)
            .arg(&list_file),
    )
    .with_context(|| format!("extracting {}", deb.display()))?;
    Ok(())
}

/// The first of `candidates` (paths under `root`) that is a file.
fn first_file(root: &Path, candidates: &[String]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(|c| root.join(c))
        .find(|p| p.is_file())
}

/// Copies (decompressing `.ko.xz`) the [`MODULES`] found under `kroot` into `dir`, named
/// `<load position>-<name>.ko`; returns the `modules.order` text.
fn copy_modules(kroot: &Path, dir: &Path, release: &str) -> Result<String> {
    let mut order = String::new();
    for (i, m) in MODULES.iter().enumerate() {
        let base = kroot.join(m);
        let name = format!(
            "{i}-{}.ko",
            Path::new(m)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("m")
        );
        let plain = base.with_extension("ko");
        let xz = base.with_extension("ko.xz");
        if plain.is_file() {
            std::fs::copy(&plain, dir.join(&name))?;
        } else if xz.is_file() {
            let out = std::fs::File::create(dir.join(&name))?;
            let st = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .stdout(out)
                .status()?;
            if !st.success() {
                bail!("xz -d {} failed", xz.display());
            }
        } else {
            eprintln!("xtask kernels: {release}: no {m}.ko; built in or not configured");
            continue;
        }
        order.push_str(&name);
        order.push('\n');
    }
    Ok(order)
}

/// Makes sure `package` (an image package of `series`) is cached.
pub fn ensure_package(series: KernelSeries, package: &str) -> Result<KernelImage> {
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image package"))?;
    let dir = cache_root().join(release);
    if let Some(k) = load_cached(series, package, &dir) {
        return Ok(k);
    }
    let tmp = cache_root().join(format!(".download-{release}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let depends = apt(series, "apt-cache")
        .args(["depends", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    for p in split_packages(&depends, package, release) {
        let deb = match find_seeded_deb(&p) {
            Some(d) => d,
            None => download(series, &p, &tmp.join("deb"))?,
        };
        extract_wanted(&deb, &root)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let vmlinuz = first_file(
        &root,
        &[
            format!("boot/vmlinuz-{release}"),
            format!("usr/lib/modules/{release}/vmlinuz"),
            format!("lib/modules/{release}/vmlinuz"),
        ],
    )
    .with_context(|| format!("the packages of {package} have no vmlinuz for {release}"))?;
    std::fs::copy(&vmlinuz, dir.join(format!("vmlinuz-{release}")))?;
    let config = first_file(
        &root,
        &[
            format!("boot/config-{release}"),
            format!("usr/lib/modules/{release}/config"),
        ],
    )
    .with_context(|| format!("the packages of {package} have no kernel config"))?;
    std::fs::copy(config, dir.join("config"))?;
    let kroot = ["lib", "usr/lib"]
        .iter()
        .map(|l| root.join(l).join("modules").join(release).join("kernel"))
        .find(|p| p.is_dir())
        .with_context(|| format!("the packages of {package} have no modules for {release}"))?;
    let order = copy_modules(&kroot, &dir, release)?;
    std::fs::write(dir.join("modules.order"), order)?;
    let _ = std::fs::remove_dir_all(&tmp);
    load_cached(series, package, &dir)
        .with_context(|| format!("cache for {package} incomplete after extraction"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_image_package_from_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_depends(out, "linux-image-6.1.0-").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        let out = "linux-image-6.12-amd64\n  Depends: linux-image-6.12.117+deb12-amd64\n";
        assert_eq!(
            parse_depends(out, "linux-image-6.12.").as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(parse_depends("garbage\n Depends:\n", "linux-image-"), None);
    }

    #[test]
    fn a_split_kernel_downloads_its_binary_and_modules_packages() {
        let release = "7.3.4+deb13-amd64";
        let out = "linux-image-7.3.4+deb13-amd64\n \
                   |Depends: dracut\n  Depends: initramfs-tools\n \
                   Depends: linux-base-7.3.4+deb13-amd64\n \
                   Depends: linux-binary-7.3.4+deb13-amd64\n \
                   Depends: linux-modules-7.3.4+deb13-amd64\n";
        assert_eq!(
            split_packages(out, "linux-image-7.3.4+deb13-amd64", release),
            [
                "linux-binary-7.3.4+deb13-amd64",
                "linux-modules-7.3.4+deb13-amd64",
                "linux-base-7.3.4+deb13-amd64"
            ]
        );
        // Debian 12's kernels are one package.
        let old = "linux-image-6.1.0-56-amd64\n  Depends: kmod\n  Depends: linux-base\n";
        assert_eq!(
            split_packages(old, "linux-image-6.1.0-56-amd64", "6.1.0-56-amd64"),
            ["linux-image-6.1.0-56-amd64"]
        );
        // The newest kernel is picked from the meta package like the others.
        let meta = "linux-image-amd64\n  Depends: linux-base-amd64\n  \
                    Depends: linux-image-7.3.4+deb13-amd64\n";
        assert_eq!(
            parse_depends(meta, KernelSeries::Newest.image_prefix()).as_deref(),
            Some("linux-image-7.3.4+deb13-amd64")
        );
    }

    #[test]
    fn keeps_the_image_config_and_vfio_modules_only() {
        let r = "./usr/lib/modules/7.3.4+deb13-amd64";
        for keep in [
            format!("{r}/vmlinuz"),
            format!("{r}/config"),
            "./boot/vmlinuz-6.1.0-56-amd64".into(),
            "./boot/config-6.1.0-56-amd64".into(),
            format!("{r}/kernel/drivers/vfio/vfio.ko.xz"),
            format!("{r}/kernel/drivers/vfio/pci/vfio-pci-core.ko.xz"),
            format!("{r}/kernel/virt/lib/irqbypass.ko.xz"),
            format!("{r}/kernel/drivers/iommu/iommufd/iommufd.ko.xz"),
            "./lib/modules/6.1.0-56-amd64/kernel/drivers/vfio/vfio.ko".into(),
        ] {
            assert!(wanted_member(&keep), "{keep}");
        }
        for drop in [
            format!("{r}/kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko.xz"),
            format!("{r}/kernel/drivers/iommu/virtio-iommu.ko.xz"),
            format!("{r}/modules.order"),
            format!("{r}/kernel/drivers/vfio/"),
        ] {
            assert!(!wanted_member(&drop), "{drop}");
        }
    }

    #[test]
    fn reads_versions_and_config_values() {
        assert_eq!(release_version("7.3.4+deb13-amd64"), Some((7, 3)));
        assert_eq!(release_version("6.1.0-56-amd64"), Some((6, 1)));
        assert_eq!(release_version("garbage"), None);
        let cfg = "CONFIG_VFIO=m\n# CONFIG_IOMMUFD is not set\nCONFIG_VFIO_GROUP=y\n";
        assert_eq!(config_value(cfg, "VFIO").as_deref(), Some("m"));
        assert_eq!(config_value(cfg, "IOMMUFD").as_deref(), Some(""));
        assert_eq!(config_value(cfg, "VFIO_DEVICE_CDEV"), None);
    }
}
