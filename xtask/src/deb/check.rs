//! The package in a clean Debian root: installed with dpkg, then checked as an operator would
//! use it (`vfio-pm --version`, `man`, tab completion in bash, zsh and fish,
//! `systemd-analyze verify` of every unit), and its exporter unit started by the root's own
//! systemd, sandbox and all, and scraped on loopback ([`boot`]).

pub mod boot;

use super::root::{must_run, Root};
use crate::console::Check;
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

/// Where the package's directory is bind-mounted in the root.
const DEB_MOUNT: &str = "/mnt/vfio-pm-deb";

/// Time limit of one command in the root.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// The Debian package name (`[package.metadata.deb] name`).
pub const DEB_NAME: &str = "vfio-pm";

/// One check: `passed` decides, `detail` says what was seen.
pub(crate) fn check(name: &str, passed: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        passed,
        detail: detail.into(),
    }
}

/// Installs `deb` into a fresh copy of the cached root and runs every check. An error means a
/// check could not even run (no root, nspawn missing, dpkg failed); a failed check is a
/// `Check` with `passed: false`.
pub fn run(deb: &Path) -> Result<Vec<Check>> {
    let root = Root::fresh("package-test")?;
    let dir = deb.parent().context("the package path has no directory")?;
    let file = deb
        .file_name()
        .and_then(|f| f.to_str())
        .context("the package file name is not UTF-8")?;
    let inner = format!("{DEB_MOUNT}/{file}");
    must_run(
        &root,
        &[(dir, DEB_MOUNT)],
        &["dpkg", "--install", &inner],
        COMMAND_TIMEOUT,
    )?;
    let listing = must_run(&root, &[], &["dpkg", "-L", DEB_NAME], COMMAND_TIMEOUT)?.stdout;
    let files: Vec<&str> = listing.lines().collect();
    let mut checks = vec![version(&root)?];
    checks.extend(man_pages(&root, &files)?);
    checks.push(bash_completion(&root)?);
    checks.push(zsh_completion(&root)?);
    checks.push(fish_completion(&root)?);
    checks.extend(units_verify(&root, &files)?);
    checks.push(libvirt_hook(&root)?);
    checks.extend(boot::exporter_under_systemd(&root)?);
    Ok(checks)
}

/// Runs `script` with `sh -c` in the root; failures are the check's business.
fn sh(root: &Root, script: &str) -> Result<super::root::Ran> {
    root.run(&[], &["sh", "-c", script], COMMAND_TIMEOUT)
}

fn version(root: &Root) -> Result<Check> {
    let ran = root.run(&[], &["vfio-pm", "--version"], COMMAND_TIMEOUT)?;
    let want = format!("vfio-pm {}", env!("CARGO_PKG_VERSION"));
    Ok(check(
        "version",
        ran.success() && ran.stdout.trim() == want,
        format!(
            "`vfio-pm --version`: {:?} (want {want:?})",
            ran.stdout.trim()
        ),
    ))
}

/// Every page the package ships is found by `man -w`, and `man vfio-pm-status` renders its
/// options.
fn man_pages(root: &Root, files: &[&str]) -> Result<Vec<Check>> {
    let pages: Vec<&str> = files
        .iter()
        .filter_map(|f| f.strip_prefix("/usr/share/man/man1/"))
        .filter_map(|f| f.strip_suffix(".1.gz"))
        .collect();
    let mut unresolved = Vec::new();
    for page in &pages {
        let ran = root.run(&[], &["man", "-w", page], COMMAND_TIMEOUT)?;
        let want = format!("/usr/share/man/man1/{page}.1.gz");
        if !ran.success() || ran.stdout.trim() != want {
            unresolved.push(format!("{page}: {}", ran.describe()));
        }
    }
    let status = root.run(&[], &["man", "-w", "vfio-pm-status"], COMMAND_TIMEOUT)?;
    let rendered = sh(
        root,
        "MANPAGER=cat MANWIDTH=100 LC_ALL=C man vfio-pm-status",
    )?;
    let text = without_overstrike(&rendered.stdout);
    Ok(vec![
        check(
            "man-w-vfio-pm-status",
            status.success() && status.stdout.trim() == "/usr/share/man/man1/vfio-pm-status.1.gz",
            format!("`man -w vfio-pm-status`: {}", status.stdout.trim()),
        ),
        check(
            "man-w-every-page",
            pages.len() >= 12 && unresolved.is_empty(),
            format!("{} pages, unresolved: {unresolved:?}", pages.len()),
        ),
        check(
            "man-renders",
            rendered.success() && text.contains("--json") && text.contains("SEE ALSO"),
            format!(
                "`man vfio-pm-status`: {} lines, mentions --json: {}, SEE ALSO: {}",
                text.lines().count(),
                text.contains("--json"),
                text.contains("SEE ALSO")
            ),
        ),
    ])
}

/// grotty's bold and underline (`c\bc`, `_\bc`) reduced to the plain characters.
fn without_overstrike(text: &str) -> String {
    let mut out: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    // After a backspace the next character replaces the popped one.
    out.into_iter().collect()
}

/// bash-completion's loader finds the script by command name, and the completion function
/// completes a subcommand and an option.
fn bash_completion(root: &Root) -> Result<Check> {
    let script = r#"
        source /usr/share/bash-completion/bash_completion || exit 3
        _completion_loader vfio-pm
        spec=$(complete -p vfio-pm) || exit 4
        fn=$(printf '%s\n' "$spec" | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
        COMP_WORDS=(vfio-pm st); COMP_CWORD=1; COMPREPLY=()
        "$fn" vfio-pm st vfio-pm
        echo "sub: ${COMPREPLY[*]}"
        COMP_WORDS=(vfio-pm exporter --li); COMP_CWORD=2; COMPREPLY=()
        "$fn" vfio-pm --li exporter
        echo "opt: ${COMPREPLY[*]}"
    "#;
    let ran = root.run(&[], &["bash", "-c", script], COMMAND_TIMEOUT)?;
    let sub = ran.stdout.lines().any(|l| l == "sub: status");
    let opt = ran.stdout.lines().any(|l| l == "opt: --listen");
    Ok(check(
        "bash-completion",
        ran.success() && sub && opt,
        format!(
            "`vfio-pm st<TAB>`, `vfio-pm exporter --li<TAB>`: {}",
            ran.describe()
        ),
    ))
}

/// zsh's compinit finds `_vfio-pm` in the vendor completions and binds it to `vfio-pm`.
fn zsh_completion(root: &Root) -> Result<Check> {
    let ran = root.run(
        &[],
        &[
            "zsh",
            "-fc",
            "autoload -U compinit && compinit -u -d /tmp/zcompdump && print -r -- ${_comps[vfio-pm]}",
        ],
        COMMAND_TIMEOUT,
    )?;
    Ok(check(
        "zsh-completion",
        ran.success() && ran.stdout.trim() == "_vfio-pm",
        format!("compinit binds vfio-pm to: {}", ran.describe()),
    ))
}

/// fish loads the vendor completion and completes a subcommand.
fn fish_completion(root: &Root) -> Result<Check> {
    let ran = root.run(
        &[],
        &["fish", "-c", "complete -C'vfio-pm st'"],
        COMMAND_TIMEOUT,
    )?;
    Ok(check(
        "fish-completion",
        ran.success() && ran.stdout.lines().any(|l| l.starts_with("status\t")),
        format!("`vfio-pm st<TAB>`: {}", ran.describe()),
    ))
}

/// `systemd-analyze verify` of every unit the package ships: exit 0 and not one warning (it
/// only warns about unknown or misspelt settings, and checks that ExecStart's binary and the
/// Documentation= man pages exist).
fn units_verify(root: &Root, files: &[&str]) -> Result<Vec<Check>> {
    let units: Vec<&str> = files
        .iter()
        .copied()
        .filter(|f| f.starts_with("/usr/lib/systemd/system/") && f.contains('.'))
        .collect();
    let mut checks = vec![check(
        "units-shipped",
        units.contains(&"/usr/lib/systemd/system/vfio-pm-exporter.service"),
        format!("{units:?}"),
    )];
    for unit in units {
        let ran = root.run(&[], &["systemd-analyze", "verify", unit], COMMAND_TIMEOUT)?;
        let name = unit.rsplit('/').next().unwrap_or(unit);
        checks.push(check(
            &format!("systemd-analyze-verify-{name}"),
            ran.success() && ran.stderr.trim().is_empty(),
            ran.describe(),
        ));
    }
    Ok(checks)
}

/// The libvirt hook is installed executable in libvirt's hook directory, parses, and leaves a
/// domain that `vfio-pm qemu print-args` never prepared alone (exit 0, no unit started: there
/// is no systemd running in this unbooted root to start one).
fn libvirt_hook(root: &Root) -> Result<Check> {
    let hook = "/etc/libvirt/hooks/qemu.d/vfio-pm";
    let ran = sh(
        root,
        &format!(
            "test -x {hook} && sh -n {hook} && {hook} unprepared-domain started begin - </dev/null"
        ),
    )?;
    Ok(check(
        "libvirt-hook",
        ran.success() && ran.stdout.trim().is_empty() && ran.stderr.trim().is_empty(),
        format!("{hook}: {}", ran.describe()),
    ))
}
