//! Debian kernel images, resolved by name through the meta packages, downloaded with
//! `apt-get download` and cached (kernel image plus the VFIO modules) under
//! `target/qemu/kernels/<release>/`.
//!
//! `VFIO_PM_KERNEL_DEBS=DIR` makes the harness take a `<package>_*.deb` from DIR before
//! downloading (for seeding the cache from already-downloaded packages).

use crate::run_cmd;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// Environment variable naming a folder of already-downloaded kernel `.deb`s.
pub const DEBS_ENV: &str = "VFIO_PM_KERNEL_DEBS";

/// Modules needed in the guest, in load order (paths under `kernel/`, without `.ko`).
/// A module missing from a kernel package is taken to be built in (e.g. `vfio_virqfd` on 6.12).
pub const MODULES: &[&str] = &[
    "virt/lib/irqbypass",
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
}

impl KernelSeries {
    /// Both series.
    pub const ALL: [KernelSeries; 2] = [Self::V6_1, Self::V6_12];

    /// The meta package that depends on the newest image of the series.
    pub fn meta_package(self) -> &'static str {
        match self {
            Self::V6_1 => "linux-image-amd64",
            Self::V6_12 => "linux-image-6.12-amd64",
        }
    }

    /// How the image packages of the series start.
    pub fn image_prefix(self) -> &'static str {
        match self {
            Self::V6_1 => "linux-image-6.1.0-",
            Self::V6_12 => "linux-image-6.12.",
        }
    }
}

impl FromStr for KernelSeries {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "6.1" => Ok(Self::V6_1),
            "6.12" => Ok(Self::V6_12),
            other => bail!("unknown kernel {other:?} (6.1, 6.12 or all)"),
        }
    }
}

impl fmt::Display for KernelSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
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
}

/// The image package named by a meta package's `apt-cache depends` output.
pub fn parse_depends(output: &str, prefix: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        (dep.starts_with(prefix) && dep.ends_with("-amd64")).then(|| dep.to_string())
    })
}

/// Resolves the newest image package of `series` (running `apt-get update` once if the package
/// lists do not know the meta package).
pub fn resolve(series: KernelSeries) -> Result<String> {
    let query = || {
        Command::new("apt-cache")
            .args(["depends", series.meta_package()])
            .output()
            .ok()
            .and_then(|o| parse_depends(&String::from_utf8_lossy(&o.stdout), series.image_prefix()))
    };
    if let Some(p) = query() {
        return Ok(p);
    }
    if crate::is_root() {
        eprintln!(
            "xtask kernels: {} unknown to apt-cache; running apt-get update",
            series.meta_package()
        );
        run_cmd(Command::new("apt-get").arg("update")).context("apt-get update")?;
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
    (vmlinuz.is_file() && modules.iter().all(|m| m.is_file())).then_some(KernelImage {
        series,
        package: package.to_string(),
        release,
        vmlinuz,
        modules,
    })
}

fn find_seeded_deb(package: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(DEBS_ENV)?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .collect();
    found.sort();
    found.pop()
}

fn download(package: &str, into: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(into)?;
    // Let apt's sandbox user write there (else apt warns and downloads unsandboxed as root).
    let _ = Command::new("chmod").arg("0777").arg(into).status();
    eprintln!("xtask kernels: apt-get download {package}");
    run_cmd(
        Command::new("apt-get")
            .current_dir(into)
            .args(["download", package]),
    )
    .with_context(|| format!("apt-get download {package}"))?;
    std::fs::read_dir(into)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
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
        Err(e) if crate::is_root() => {
            eprintln!("xtask kernels: {e:#}; running apt-get update and retrying");
            run_cmd(Command::new("apt-get").arg("update")).context("apt-get update")?;
            let package = resolve(series)?;
            ensure_package(series, &package)
        }
        Err(e) => Err(e),
    }
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
    let deb = match find_seeded_deb(package) {
        Some(d) => d,
        None => download(package, &tmp.join("deb"))?,
    };
    eprintln!("xtask kernels: extracting {}", deb.display());
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    // Only the image and the VFIO modules (what `dpkg -x` would unpack, restricted).
    let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" --wildcards \
                  '*boot/vmlinuz-*' '*/kernel/drivers/vfio/*' '*/kernel/virt/lib/*'";
    run_cmd(
        Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&deb)
            .arg(&root),
    )
    .with_context(|| format!("extracting {}", deb.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    std::fs::copy(&vmlinuz, dir.join(format!("vmlinuz-{release}")))?;
    let kroot = ["lib", "usr/lib"]
        .iter()
        .map(|l| root.join(l).join("modules").join(release).join("kernel"))
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no modules for {release}", deb.display()))?;
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
            eprintln!("xtask kernels: {release}: no {m}.ko; assuming it is built in");
            continue;
        }
        order.push_str(&name);
        order.push('\n');
    }
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
}
