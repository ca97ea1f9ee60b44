//! L1's initramfs: the VFIO modules and the 9p stack of the Debian kernel, static busybox, the
//! `vfio-pm-guest` program (phase `nested`), and an `/init` that binds the e1000e to vfio-pci,
//! mounts the machine's root read-only over 9p at `/host` (with `/proc`, `/sys`, `/dev` bound in
//! and a tmpfs on `/host/tmp`), runs the program and powers off.

use crate::kernels::{self, KernelImage};
use crate::run_cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The 9p client modules L1 needs besides the VFIO ones, in load order (paths under `kernel/`,
/// without `.ko`). One a kernel package lacks is built in (6.12 has virtio-pci and fscache
/// built in or merged into netfs; 6.1 has them as modules).
pub const NINEP_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/9p/9p",
];

/// The 9p share's tag (`-virtfs ...,mount_tag=`).
pub const MOUNT_TAG: &str = "hostroot";

/// Where L1 mounts the machine's root.
pub const HOST_ROOT: &str = "/host";

/// The 9p modules of `kernel`, uncompressed and cached in `<kernel cache>/nested/` (the kernel
/// cache keeps only the VFIO modules, so the package is fetched again once, like
/// [`kernels::ensure`] does: `$VFIO_PM_KERNEL_DEBS` first, else `apt-get download`).
pub fn ninep_modules(kernel: &KernelImage) -> Result<Vec<PathBuf>> {
    let dir = kernels::cache_root().join(&kernel.release).join("nested");
    let order = dir.join("modules.order");
    if let Ok(text) = std::fs::read_to_string(&order) {
        let mods: Vec<PathBuf> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join(l))
            .collect();
        if !mods.is_empty() && mods.iter().all(|m| m.is_file()) {
            return Ok(mods);
        }
    }
    let tmp = kernels::cache_root().join(format!(".nested-{}", kernel.release));
    let _ = std::fs::remove_dir_all(&tmp);
    let deb = match kernels::find_seeded_deb(&kernel.package) {
        Some(d) => d,
        None => kernels::download(kernel.series, &kernel.package, &tmp.join("deb"))?,
    };
    eprintln!(
        "xtask nested: extracting the 9p modules from {}",
        deb.display()
    );
    let root = tmp.join("root");
    std::fs::create_dir_all(&root)?;
    // Only the modules of NINEP_MODULES the package has (tar fails on a pattern it does not
    // find, and which ones exist differs between 6.1 and 6.12): list, pick, extract.
    let script = "dpkg-deb --fsys-tarfile \"$1\" | tar -t \
                  | grep -E '/kernel/(drivers/virtio|fs/9p|fs/netfs|fs/fscache|net/9p)/[^/]+\\.ko(\\.xz)?$' \
                  > \"$2/list\" && dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" -T \"$2/list\"";
    run_cmd(
        Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&deb)
            .arg(&root),
    )
    .with_context(|| format!("extracting {}", deb.display()))?;
    let kroot = ["lib", "usr/lib"]
        .iter()
        .map(|l| {
            root.join(l)
                .join("modules")
                .join(&kernel.release)
                .join("kernel")
        })
        .find(|p| p.is_dir())
        .with_context(|| format!("{} has no 9p modules for {}", deb.display(), kernel.release))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut names = String::new();
    for (i, m) in NINEP_MODULES.iter().enumerate() {
        let base = kroot.join(m);
        let file = Path::new(m)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("m");
        let name = format!("n{i}-{file}.ko");
        let (plain, xz) = (base.with_extension("ko"), base.with_extension("ko.xz"));
        if plain.is_file() {
            std::fs::copy(&plain, dir.join(&name))?;
        } else if xz.is_file() {
            let out = std::fs::File::create(dir.join(&name))?;
            if !Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .stdout(out)
                .status()?
                .success()
            {
                bail!("xz -d {} failed", xz.display());
            }
        } else {
            continue;
        }
        names.push_str(&name);
        names.push('\n');
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if !names.contains("9pnet_virtio") || !names.contains("-9p.ko") {
        bail!("{}: no 9p client modules in the package", kernel.release);
    }
    std::fs::write(&order, &names)?;
    Ok(names.lines().map(|l| dir.join(l)).collect())
}

/// L1's `/init`: `modules` in order (file names under `/lib/vfio-pm`), the device bound to
/// vfio-pci, the 9p root mounted, then `vfio-pm-guest --phases nested` and power-off.
pub fn init_script(modules: &[String], device: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp {root}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 1 > /proc/sys/kernel/printk
echo "VFIOPM INFO init-kernel $(uname -r)"
for m in {modules}; do
    insmod /lib/vfio-pm/$m || echo "VFIOPM CHECK insmod-$m FAIL insmod failed"
done
echo vfio-pci > /sys/bus/pci/devices/{device}/driver_override
echo {device} > /sys/bus/pci/drivers_probe
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 {tag} {root}; then
    mount --bind /proc {root}/proc && mount --bind /sys {root}/sys && mount --bind /dev {root}/dev \
        && mount -t tmpfs -o size=256m tmpfs {root}/tmp \
        || echo "VFIOPM CHECK l1-bind-mounts FAIL bind mounts or tmpfs under {root} failed"
else
    echo "VFIOPM CHECK l1-mount-9p FAIL mounting the machine's root over 9p failed"
fi
/bin/vfio-pm-guest --phases nested --platform d3cold --device {device}
echo "VFIOPM INFO guest-exit $?"
poweroff -f
"#,
        modules = modules.join(" "),
        root = HOST_ROOT,
        tag = MOUNT_TAG,
    )
}

/// Packs L1's initramfs for `kernel` into `work/initrd-l1-<release>.gz`.
pub fn initramfs(
    work: &Path,
    kernel: &KernelImage,
    guest_bin: &Path,
    device: &str,
) -> Result<PathBuf> {
    let root = work.join(format!("initramfs-l1-{}", kernel.release));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "lib/vfio-pm", "proc", "sys", "dev", "tmp", "host"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox: install busybox-static (cargo xtask deps)")?;
    std::fs::copy(busybox, root.join("bin/busybox"))?;
    let mut names = Vec::new();
    for m in kernel.modules.iter().chain(ninep_modules(kernel)?.iter()) {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?
            .to_string();
        std::fs::copy(m, root.join("lib/vfio-pm").join(&name))?;
        names.push(name);
    }
    let dst = root.join("bin/vfio-pm-guest");
    std::fs::copy(guest_bin, &dst)?;
    let _ = Command::new("strip")
        .arg("--strip-debug")
        .arg(&dst)
        .status();
    let out = work.join(format!("initrd-l1-{}.gz", kernel.release));
    crate::guest::pack(&root, &init_script(&names, device), &out, "L1's initramfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_mounts_the_share_and_runs_the_nested_phase() {
        let s = init_script(&["0-vfio.ko".into(), "n9-9p.ko".into()], "0000:00:05.0");
        assert!(s.contains("for m in 0-vfio.ko n9-9p.ko; do"));
        assert!(s.contains(
            "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host"
        ));
        assert!(s.contains("mount -t tmpfs -o size=256m tmpfs /host/tmp"));
        assert!(s.contains("--phases nested --platform d3cold --device 0000:00:05.0"));
        assert!(s.contains("echo 0000:00:05.0 > /sys/bus/pci/drivers_probe"));
    }
}
