//! `cargo xtask deb`: the Debian package of the `vfio-pm` command, built by cargo-deb from the
//! `[package.metadata.deb]` table of crates/vfio-pm-cli/Cargo.toml.
//!
//! The man pages and shell completions are made by the freshly built binary itself
//! (`vfio-pm man --out`, `vfio-pm completions`), so they come from the same clap definitions as
//! its `--help`. [`root`] makes the clean Debian root the package is tested in, [`check`] the
//! checks run there (xtask/tests/deb.rs).

pub mod check;
pub mod root;

use anyhow::{bail, ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The cargo-deb release installed when `cargo deb` is missing (`cargo install --locked`).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// The workspace package the `.deb` is made from, and its binary.
const PACKAGE: &str = "vfio-pm-cli";
const BIN: &str = "vfio-pm";

/// The shells whose completions the package ships, with the file name each one's loader
/// looks for (the directory is in the cargo-deb asset list).
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "vfio-pm.bash"),
    ("zsh", "_vfio-pm"),
    ("fish", "vfio-pm.fish"),
];

/// `target/deb` under the workspace root: the package build, the cached Debian root and the
/// test's copies of it.
pub fn deb_dir() -> PathBuf {
    crate::workspace_root().join("target").join("deb")
}

/// The package build's own cargo target dir: a release build that never waits for, nor
/// invalidates, the lock of a `cargo test` running this from inside it.
pub fn build_dir() -> PathBuf {
    deb_dir().join("build")
}

/// Where the `.deb` files go.
pub fn output_dir() -> PathBuf {
    crate::workspace_root().join("target").join("debian")
}

/// A cargo command for the package build: the workspace root, the package's target dir, and
/// none of the flags of a surrounding cargo invocation.
fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::workspace_root())
        .env("CARGO_TARGET_DIR", build_dir())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    cmd
}

/// The installed cargo-deb's version line, or `None` when `cargo deb` does not run.
fn cargo_deb_version() -> Option<String> {
    let out = cargo().args(["deb", "--version"]).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Makes sure `cargo deb` runs, installing cargo-deb [`CARGO_DEB_VERSION`] from crates.io with
/// its own lock file when it does not (a few minutes, once per machine).
pub fn ensure_cargo_deb() -> Result<String> {
    if let Some(v) = cargo_deb_version() {
        return Ok(v);
    }
    eprintln!("xtask deb: installing cargo-deb {CARGO_DEB_VERSION} (cargo install --locked)");
    let st = cargo()
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        // Its own build dir: installing must not reuse the package build's.
        .env("CARGO_TARGET_DIR", deb_dir().join("cargo-deb-build"))
        .status()
        .context("running cargo install cargo-deb")?;
    ensure!(st.success(), "cargo install cargo-deb failed ({st})");
    cargo_deb_version().context("cargo-deb was installed but `cargo deb --version` fails")
}

/// Builds the release binary, generates its man pages and completions next to it, and packs
/// the `.deb`; returns its path.
pub fn build() -> Result<PathBuf> {
    let cargo_deb = ensure_cargo_deb()?;
    eprintln!("xtask deb: building {PACKAGE} (release) with {cargo_deb}");
    let st = cargo()
        .args(["build", "--release", "--locked", "-p", PACKAGE])
        // The package's binary is stripped: line tables would only cost build time.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .status()
        .context("running cargo build")?;
    ensure!(
        st.success(),
        "cargo build --release -p {PACKAGE} failed ({st})"
    );
    let release = build_dir().join("release");
    generate_assets(&release.join(BIN), &release.join("deb-generated"))?;
    let out_dir = output_dir();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = cargo()
        .args(["deb", "-p", PACKAGE, "--no-build", "--strip", "--output"])
        .arg(&out_dir)
        .output()
        .context("running cargo deb")?;
    if !out.status.success() {
        bail!(
            "cargo deb failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // cargo-deb prints the path of the package it wrote as its last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb did not name the package it wrote: {stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        crate::workspace_root().join(deb)
    };
    ensure!(deb.is_file(), "{} was not written", deb.display());
    Ok(deb)
}

/// `dir/man/*.1.gz` (one page per command, compressed as Debian policy wants) and
/// `dir/completions/*`, made by running `bin`. The directory is emptied first so that a page
/// of a command that no longer exists is never packaged.
pub fn generate_assets(bin: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let man = dir.join("man");
    let listed = crate::run_cmd(Command::new(bin).arg("man").arg("--out").arg(&man))?;
    let pages: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        pages.len() > 1,
        "{} man wrote only {pages:?}",
        bin.display()
    );
    // -n: no name or time stamp in the header, so the package is reproducible.
    crate::run_cmd(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for (shell, file) in COMPLETIONS {
        let script = crate::run_cmd(Command::new(bin).args(["completions", shell]))?;
        ensure!(!script.is_empty(), "empty {shell} completion script");
        let path = completions.join(file);
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// [`build`] and, at the same time, the cached Debian root of [`root::pristine`] (debootstrap
/// mostly waits for the network and the disk while cargo uses the CPUs); returns the package.
pub fn build_with_root() -> Result<PathBuf> {
    std::thread::scope(|s| {
        let root = s.spawn(root::pristine);
        let deb = build();
        let root = root
            .join()
            .map_err(|_| anyhow::anyhow!("the debootstrap thread panicked"))?;
        root.context("preparing the Debian root")?;
        deb
    })
}

/// `cargo xtask deb [--check]`: builds the package and prints its path; with `--check`, also
/// installs it in a clean Debian root and runs every check there, failing when one fails.
pub fn cli(args: &[String]) -> Result<()> {
    let check = match args {
        [] => false,
        [a] if a == "--check" => true,
        other => bail!("usage: cargo xtask deb [--check] (got {other:?})"),
    };
    let deb = if check { build_with_root()? } else { build()? };
    println!("{}", deb.display());
    if check {
        let checks = self::check::run(&deb)?;
        for c in &checks {
            println!("{c}");
        }
        let failed = checks.iter().filter(|c| !c.passed).count();
        ensure!(
            failed == 0,
            "{failed} of {} package checks failed",
            checks.len()
        );
        println!("all {} package checks passed", checks.len());
    }
    Ok(())
}
