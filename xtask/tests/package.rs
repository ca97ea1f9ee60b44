//! The crates are fit for crates.io: `cargo package` of the three library crates succeeds,
//! verification included (each packaged crate is built from its `.crate` alone; cargo resolves
//! the not yet published `vfio-pm` for the other two from a local overlay of the crates it just
//! packaged), and every crate's package carries its README and both license texts, with its
//! workspace path dependencies turned into version requirements. The command crate's file list
//! is checked too (its verification build would add a minute of compiling for little more).
//!
//! The nested cargo shares the surrounding `cargo test`'s target dir (cargo holds no lock while
//! tests run), so verification compiles only the three packaged crates, not their dependencies
//! again: seconds, not minutes, in CI.

use std::path::PathBuf;
use std::process::Command;

const LIBRARIES: [&str; 3] = ["vfio-pm", "vfio-pm-sim", "vfio-pm-vmm"];

/// The target dir cargo uses here: `$CARGO_TARGET_DIR` (relative to the workspace root, where
/// the nested cargo runs) or the workspace's `target/`.
fn target_dir() -> PathBuf {
    let root = xtask::workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

fn cargo_package(args: &[&str]) -> std::process::Output {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
        .current_dir(xtask::workspace_root())
        // A work tree with uncommitted changes packages what is on disk.
        .args(["package", "--allow-dirty"])
        .args(args)
        .output()
        .expect("run cargo package")
}

fn listing(package: &str) -> Vec<String> {
    let out = cargo_package(&["--list", "-p", package]);
    assert!(
        out.status.success(),
        "cargo package --list -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Cargo unpacks the crates of its local overlay registry into `$CARGO_HOME/registry/src/-HASH/`
/// (HASH of the overlay's path, which is the same on every run from this work tree) and, as
/// registry versions never change, reuses an earlier unpacking of the same version: a second
/// run would verify against the first run's `vfio-pm` sources. Removes those unpackings of this
/// workspace's crates (local registries are the `-` directories; crates.io's is never touched).
fn forget_stale_overlay_sources() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry").join("src")) else {
        return;
    };
    let Ok(registries) = std::fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for p in LIBRARIES {
            let dir = registry
                .path()
                .join(format!("{p}-{}", env!("CARGO_PKG_VERSION")));
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir)
                    .unwrap_or_else(|e| panic!("removing stale {}: {e}", dir.display()));
            }
        }
    }
}

/// Forgets what an earlier run built from the overlay: cargo takes registry packages to be
/// immutable, so a `vfio-pm 0.1.0` compiled from an older overlay (same version, other sources)
/// would be linked again and the verification would build against stale code. The builds are
/// told apart by their dep-info file, which names the overlay's extracted sources.
fn forget_stale_overlay_builds() {
    let debug = target_dir().join("debug");
    let Ok(entries) = std::fs::read_dir(debug.join("deps")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".d") else {
            continue;
        };
        let Some((lib, hash)) = stem.rsplit_once('-') else {
            continue;
        };
        let Some(krate) = LIBRARIES.iter().find(|p| p.replace('-', "_") == lib) else {
            continue;
        };
        let from_overlay = std::fs::read_to_string(e.path()).is_ok_and(|t| {
            t.lines()
                .next()
                .is_some_and(|l| l.contains("/registry/src/-"))
        });
        if !from_overlay {
            continue;
        }
        for f in [
            format!("lib{lib}-{hash}.rlib"),
            format!("lib{lib}-{hash}.rmeta"),
            name.clone(),
        ] {
            let _ = std::fs::remove_file(debug.join("deps").join(f));
        }
        let _ = std::fs::remove_dir_all(debug.join(".fingerprint").join(format!("{krate}-{hash}")));
    }
}

#[test]
fn every_crate_package_carries_readme_and_both_licenses() {
    for package in LIBRARIES.iter().copied().chain(["vfio-pm-cli"]) {
        let files = listing(package);
        for want in [
            "Cargo.toml",
            "README.md",
            "LICENSE-APACHE",
            "LICENSE-BSD",
            "src/lib.rs",
        ] {
            if want == "src/lib.rs" && package == "vfio-pm-cli" {
                continue;
            }
            assert!(
                files.iter().any(|f| f == want),
                "{package}: {want} missing from {files:?}"
            );
        }
    }
    // The model embeds the scenarios at build time: the package must carry every one.
    let scenarios = std::fs::read_dir(xtask::workspace_root().join("scenarios"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "scn"))
        })
        .count();
    let packaged = listing("vfio-pm-sim")
        .iter()
        .filter(|f| f.starts_with("scenarios/") && f.ends_with(".scn"))
        .count();
    assert!(scenarios > 0);
    assert_eq!(packaged, scenarios, "vfio-pm-sim's package lacks scenarios");
}

#[test]
fn the_library_crates_package_and_build_from_their_crate_files() {
    let mut args = Vec::new();
    for p in LIBRARIES {
        args.extend(["-p", p]);
    }
    let crate_file = |p: &str| {
        target_dir()
            .join("package")
            .join(format!("{p}-{}.crate", env!("CARGO_PKG_VERSION")))
    };
    for p in LIBRARIES {
        let _ = std::fs::remove_file(crate_file(p));
    }
    forget_stale_overlay_sources();
    forget_stale_overlay_builds();
    let out = cargo_package(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cargo package {args:?}:\n{stderr}");
    for p in LIBRARIES {
        assert!(
            stderr.contains(&format!("Verifying {p} v")),
            "{p} was not verified:\n{stderr}"
        );
        let krate = crate_file(p);
        assert!(krate.is_file(), "{} missing", krate.display());
    }
    // Path dependencies became version requirements in the published manifest.
    let manifest = target_dir()
        .join("package")
        .join(format!("vfio-pm-vmm-{}", env!("CARGO_PKG_VERSION")))
        .join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let section: Vec<&str> = text
        .split("\n\n")
        .filter(|block| block.starts_with("[dependencies.vfio-pm]"))
        .flat_map(str::lines)
        .collect();
    let version = format!("version = \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        section.contains(&version.as_str()) && !section.iter().any(|l| l.starts_with("path")),
        "{section:?}\n{text}"
    );
}
