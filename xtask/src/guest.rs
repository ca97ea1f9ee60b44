//! The guest side: static binaries built from this workspace and the initramfs that runs them.

use crate::kernels::KernelImage;
use crate::run_cmd;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target of the static guest binaries (glibc, linked statically).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The device the guest binds to vfio-pci: QEMU's e1000e at `-device e1000e,bus=pcie.0,addr=0x5`.
pub const DEVICE: &str = "0000:00:05.0";

/// A binary for the guest: the workspace package that builds it and its binary name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBinary {
    /// Cargo package.
    pub package: &'static str,
    /// Binary name (installed as `/bin/<name>` in the guest).
    pub bin: &'static str,
}

/// The in-guest check program (always included).
pub const GUEST: GuestBinary = GuestBinary {
    package: "vfio-pm-guest",
    bin: "vfio-pm-guest",
};

/// The `vfio-pm` command line tool.
pub const CLI: GuestBinary = GuestBinary {
    package: "vfio-pm-cli",
    bin: "vfio-pm",
};

/// The harness's own target dir for the static build (never the normal build's).
pub fn build_dir() -> PathBuf {
    crate::qemu_dir().join("build")
}

/// Builds `bins` statically in release mode; returns `(guest name, host path)` pairs.
pub fn build(bins: &[GuestBinary]) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::workspace_root())
        .env("CARGO_TARGET_DIR", build_dir())
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .args(["build", "--release", "--target", TARGET]);
    for b in bins {
        cmd.args(["-p", b.package]);
    }
    eprintln!(
        "xtask qemu: building {:?} (static, {TARGET})",
        bins.iter().map(|b| b.package).collect::<Vec<_>>()
    );
    let st = cmd
        .status()
        .context("running cargo build for the guest binaries")?;
    if !st.success() {
        bail!("static build of the guest binaries failed ({st})");
    }
    let dir = build_dir().join(TARGET).join("release");
    bins.iter()
        .map(|b| {
            let p = dir.join(b.bin);
            anyhow::ensure!(p.is_file(), "{} was not built", p.display());
            Ok((b.bin.to_string(), p))
        })
        .collect()
}

/// The `/init` script: mount, load the VFIO modules, bind the device to vfio-pci, run the guest
/// program (its phases and platform come from the kernel command line), power off.
/// `vfiopm.disable_idle_d3=1` on the kernel command line loads vfio-pci with
/// `disable_idle_d3=1` (the parameter is latched at module init, so it must be given to insmod).
pub fn init_script(modules: &[String]) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Keep kernel messages off the console the results are read from (emergencies only).
echo 1 > /proc/sys/kernel/printk
echo "VFIOPM INFO init-kernel $(uname -r)"
IDLE_D3=$(sed -n 's/.*vfiopm\.disable_idle_d3=\([^ ]*\).*/\1/p' /proc/cmdline)
for m in {modules}; do
    ARGS=
    case $m in vfio-pci.ko*|*-vfio-pci.ko*) [ -n "$IDLE_D3" ] && ARGS="disable_idle_d3=$IDLE_D3" ;; esac
    insmod /lib/vfio-pm/$m $ARGS || echo "VFIOPM CHECK insmod-$m FAIL insmod failed"
done
BDF=$(sed -n 's/.*vfiopm\.device=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$BDF" ] || BDF={device}
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
echo $BDF > /sys/bus/pci/drivers_probe
/bin/vfio-pm-guest
echo "VFIOPM INFO guest-exit $?"
poweroff -f
"#,
        modules = modules.join(" "),
        device = DEVICE,
    )
}

fn busybox() -> Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("no busybox: install busybox-static (cargo xtask deps)")
}

/// Packs the initramfs for `kernel` with `binaries` into `work/initrd-<release>.gz`.
pub fn initramfs(
    work: &Path,
    kernel: &KernelImage,
    binaries: &[(String, PathBuf)],
) -> Result<PathBuf> {
    let root = work.join(format!("initramfs-{}", kernel.release));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "lib/vfio-pm", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(busybox()?, root.join("bin/busybox"))?;
    let mut names = Vec::new();
    for m in &kernel.modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?
            .to_string();
        std::fs::copy(m, root.join("lib/vfio-pm").join(&name))?;
        names.push(name);
    }
    for (name, path) in binaries {
        let dst = root.join("bin").join(name);
        std::fs::copy(path, &dst)?;
        // Debug info only slows packing and booting (the release profile keeps it); best effort.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&dst)
            .status();
    }
    let out = work.join(format!("initrd-{}.gz", kernel.release));
    pack(&root, &init_script(&names), &out, "the initramfs")
}

/// Writes `init` as the root's `/init`, makes it and busybox executable, and packs `root` into
/// the gzip'd cpio archive `out` (`what` names it in errors). Shared by every boot's initramfs.
pub fn pack(root: &Path, init: &str, out: &Path, what: &str) -> Result<PathBuf> {
    std::fs::write(root.join("init"), init)?;
    run_cmd(
        Command::new("chmod")
            .arg("0755")
            .arg(root.join("init"))
            .arg(root.join("bin/busybox")),
    )?;
    run_cmd(
        Command::new("sh")
            .current_dir(root)
            .args([
                "-c",
                "find . | cpio -o -H newc --quiet | gzip -1 > \"$1\"",
                "sh",
            ])
            .arg(out),
    )
    .with_context(|| format!("packing {what} (cpio, gzip)"))?;
    Ok(out.to_path_buf())
}
