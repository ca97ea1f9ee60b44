//! The project's own apt tree for kernels the machine's apt sources do not carry (Debian's
//! newest kernel, from `trixie-backports` and `sid`).
//!
//! Everything apt reads or writes for it lives in one folder (`target/qemu/kernels/apt/`): a
//! sources list naming the two suites, signed by Debian's archive keyring; a preferences file
//! that ranks both suites equally, so that the higher version wins; package lists, cache and
//! an empty dpkg status. apt is pointed at it with `-c <folder>/apt.conf`, so the machine's apt
//! configuration and lists are never changed.

use crate::run_cmd;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

/// The suites searched for the newest kernel.
pub const SUITES: &[&str] = &["trixie-backports", "sid"];

/// The Debian archive mirror.
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// Debian's archive keyring (package `debian-archive-keyring`), which signs both suites.
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Package lists older than this are refreshed before resolving (a new kernel appears in
/// these suites every few days).
pub const MAX_LIST_AGE: Duration = Duration::from_secs(12 * 3600);

/// An apt tree confined to one folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectApt {
    dir: PathBuf,
}

impl ProjectApt {
    /// The tree in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The tree under the kernel cache (`target/qemu/kernels/apt/`).
    pub fn in_cache() -> Self {
        Self::new(crate::kernels::cache_root().join("apt"))
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sources list: each of [`SUITES`], `main`, signed by [`KEYRING`].
    pub fn sources_list() -> String {
        SUITES
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {MIRROR} {s} main\n"))
            .collect()
    }

    /// The preferences: every suite at the default priority 500 (backports suites are 100
    /// otherwise), so the candidate of a package is its highest version in any suite.
    pub fn preferences() -> String {
        SUITES
            .iter()
            .map(|s| format!("Package: *\nPin: release n={s}\nPin-Priority: 500\n\n"))
            .collect()
    }

    /// The `apt.conf` that confines apt to the folder.
    pub fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            "Dir::Etc::SourceList \"{d}/sources.list\";\n\
             Dir::Etc::SourceParts \"{d}/sources.list.d\";\n\
             Dir::Etc::Preferences \"{d}/preferences\";\n\
             Dir::Etc::PreferencesParts \"{d}/preferences.d\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n"
        )
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.join("apt.conf")
    }

    /// Writes the tree's files (idempotent).
    pub fn write_files(&self) -> Result<()> {
        for sub in [
            "sources.list.d",
            "preferences.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))
                .with_context(|| format!("creating {}", self.dir.join(sub).display()))?;
        }
        std::fs::write(self.dir.join("sources.list"), Self::sources_list())?;
        std::fs::write(self.dir.join("preferences"), Self::preferences())?;
        let status = self.dir.join("status");
        if !status.exists() {
            std::fs::write(&status, "")?;
        }
        std::fs::write(self.conf_path(), self.config())?;
        Ok(())
    }

    /// `program` (`apt-get` or `apt-cache`) reading the tree's configuration.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.arg("-c").arg(self.conf_path());
        c
    }

    /// `apt-get update` of the tree's lists.
    pub fn update(&self) -> Result<()> {
        self.write_files()?;
        anyhow::ensure!(
            Path::new(KEYRING).is_file(),
            "{KEYRING} is missing: install debian-archive-keyring"
        );
        eprintln!(
            "xtask kernels: apt-get update of {} ({})",
            SUITES.join(", "),
            self.dir.display()
        );
        run_cmd(self.command("apt-get").arg("update"))
            .with_context(|| format!("apt-get update in {}", self.dir.display()))?;
        Ok(())
    }

    /// When the lists were last updated (the newest `InRelease`), if ever.
    fn lists_updated(&self) -> Option<SystemTime> {
        std::fs::read_dir(self.dir.join("lists"))
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("InRelease"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .max()
    }

    /// Updates the lists when they are missing or older than `max_age`.
    pub fn ensure_fresh(&self, max_age: Duration) -> Result<()> {
        self.write_files()?;
        let fresh = self
            .lists_updated()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < max_age);
        if fresh {
            Ok(())
        } else {
            self.update()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_names_both_suites_signed_and_ranked_equally() {
        let s = ProjectApt::sources_list();
        assert_eq!(s.lines().count(), SUITES.len());
        for suite in SUITES {
            assert!(
                s.contains(&format!("[signed-by={KEYRING}] {MIRROR} {suite} main")),
                "{s}"
            );
            assert!(ProjectApt::preferences()
                .contains(&format!("Pin: release n={suite}\nPin-Priority: 500")));
        }
    }

    #[test]
    fn every_apt_path_stays_inside_the_folder() {
        let tmp = std::env::temp_dir().join(format!("xtask-apt-test-{}", std::process::id()));
        let apt = ProjectApt::new(tmp.join("apt"));
        apt.write_files().unwrap();
        let conf = std::fs::read_to_string(tmp.join("apt/apt.conf")).unwrap();
        let dirs: Vec<&str> = conf.lines().filter(|l| l.starts_with("Dir::")).collect();
        assert_eq!(dirs.len(), 7, "{conf}");
        for l in dirs {
            let path = l.split('"').nth(1).unwrap();
            assert!(path.starts_with(apt.dir().to_str().unwrap()), "{l}");
        }
        assert!(tmp.join("apt/lists/partial").is_dir());
        assert_eq!(std::fs::read_to_string(tmp.join("apt/status")).unwrap(), "");
        let args: Vec<String> = apt
            .command("apt-cache")
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "-c");
        assert!(args[1].ends_with("apt/apt.conf"));
        // No lists yet: not fresh (ensure_fresh would update).
        assert!(apt.lists_updated().is_none());
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
