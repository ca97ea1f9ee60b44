//! A clean Debian root made by debootstrap, cached under `target/deb/roots`, throwaway copies
//! of it, and commands run in a copy with systemd-nspawn: one command, or a boot with the
//! root's own systemd as PID 1 (so that units run exactly as systemd runs them on a host).

use crate::run_cmd;
use anyhow::{bail, ensure, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The Debian release of the root.
pub const SUITE: &str = "bookworm";

/// What the root gets beyond debootstrap's minimal base: systemd as init (to boot it and run
/// the package's units), D-Bus as on any host, man-db (`man -w`), and the three shells whose
/// completions the package ships, with bash-completion's loader.
pub const ROOT_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "man-db",
    "bash-completion",
    "zsh",
    "fish",
];

/// Host packages: debootstrap, and systemd-nspawn (in systemd-container).
pub const HOST_PACKAGES: &[&str] = &["debootstrap", "systemd-container"];

/// The file in a cached root that records how it was made; a root whose record differs from
/// what this code would make is made again.
const STAMP: &str = ".vfio-pm-debootstrap";

/// Where the roots live.
pub fn roots_dir() -> PathBuf {
    super::deb_dir().join("roots")
}

fn stamp_text() -> String {
    format!(
        "debootstrap --variant=minbase --include={} {SUITE}\n",
        ROOT_PACKAGES.join(",")
    )
}

/// The cached pristine root, made by debootstrap from Debian's archive when missing or made
/// with other packages (about two minutes, once). The root is built under a temporary name
/// and renamed when complete, so an interrupted run never leaves a half root behind.
pub fn pristine() -> Result<PathBuf> {
    let dir = roots_dir().join(SUITE);
    if fs::read_to_string(dir.join(STAMP)).ok() == Some(stamp_text()) {
        return Ok(dir);
    }
    crate::deps::ensure_packages(HOST_PACKAGES)?;
    let partial = roots_dir().join(format!("{SUITE}.partial"));
    for d in [&partial, &dir] {
        remove_tree(d)?;
    }
    fs::create_dir_all(roots_dir())?;
    let log = roots_dir().join("debootstrap.log");
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "xtask deb: debootstrap {SUITE} into {} (log: {})",
        partial.display(),
        log.display()
    );
    let start = Instant::now();
    // No mirror argument: debootstrap's own default for Debian releases.
    let st = Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", ROOT_PACKAGES.join(",")))
        .arg(SUITE)
        .arg(&partial)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running debootstrap")?;
    if !st.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("debootstrap failed ({st}):\n{}", tail.join("\n"));
    }
    fs::write(partial.join(STAMP), stamp_text())?;
    fs::rename(&partial, &dir)
        .with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    eprintln!("xtask deb: debootstrap took {:.0?}", start.elapsed());
    Ok(dir)
}

fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// What a command in the root did. stderr has nspawn's own noise removed.
#[derive(Debug)]
pub struct Ran {
    /// Exit status (None when it was killed at the timeout).
    pub status: Option<ExitStatus>,
    /// Standard output.
    pub stdout: String,
    /// Standard error, without systemd-nspawn's own messages.
    pub stderr: String,
}

impl Ran {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// The status, stdout and stderr in one line each, for a failure message.
    pub fn describe(&self) -> String {
        let status = self
            .status
            .map_or("killed at the timeout".to_string(), |s| s.to_string());
        format!(
            "{status}; stdout: {}; stderr: {}",
            self.stdout.trim(),
            self.stderr.trim()
        )
    }
}

/// A throwaway copy of the pristine root.
pub struct Root {
    path: PathBuf,
    logs: PathBuf,
}

impl Root {
    /// A fresh copy of [`pristine`] named `name` under [`roots_dir`] (a previous copy of that
    /// name is removed first).
    pub fn fresh(name: &str) -> Result<Root> {
        // Also when the cached root exists: systemd-nspawn must be there to use it.
        crate::deps::ensure_packages(HOST_PACKAGES)?;
        let pristine = pristine()?;
        let path = roots_dir().join(name);
        let logs = roots_dir().join(format!("{name}.logs"));
        remove_tree(&path)?;
        remove_tree(&logs)?;
        fs::create_dir_all(&logs)?;
        run_cmd(
            Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(&pristine)
                .arg(&path),
        )?;
        fs::remove_file(path.join(STAMP))?;
        Ok(Root { path, logs })
    }

    /// The root's directory on the host.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A host path for `inner`, an absolute path inside the root.
    pub fn host_path(&self, inner: &str) -> PathBuf {
        self.path.join(inner.trim_start_matches('/'))
    }

    /// systemd-nspawn on this root: no machine registration and no scope unit (there is no
    /// systemd on the host to ask), its own network namespace with only loopback, `binds` as
    /// read-only bind mounts `(host path, path in the root)`.
    fn nspawn(&self, binds: &[(&Path, &str)]) -> Command {
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args([
            "--quiet",
            "--register=no",
            "--keep-unit",
            "--private-network",
        ])
        .arg("--directory")
        .arg(&self.path)
        .env("SYSTEMD_COLORS", "0");
        for (host, inner) in binds {
            cmd.arg(format!("--bind-ro={}:{inner}", host.display()));
        }
        cmd
    }

    /// Runs `argv` in the root (not booted: PID 1 is the command), killed after `timeout`.
    pub fn run(&self, binds: &[(&Path, &str)], argv: &[&str], timeout: Duration) -> Result<Ran> {
        let mut cmd = self.nspawn(binds);
        cmd.arg("--").args(argv);
        self.capture(cmd, timeout)
    }

    /// Boots the root (its systemd as PID 1) and waits until it powers itself off or
    /// `timeout` passes; the console output is the stdout of the result (a read-only pseudo
    /// terminal: on a plain pipe systemd prints no boot status).
    pub fn boot(&self, timeout: Duration) -> Result<Ran> {
        let mut cmd = self.nspawn(&[]);
        cmd.args(["--boot", "--console=read-only", "--setenv=SYSTEMD_COLORS=0"]);
        self.capture(cmd, timeout)
    }

    /// Runs `cmd` with stdout and stderr in log files of this root, SIGTERM at the timeout
    /// (nspawn then halts a booted root), SIGKILL 10 s later.
    fn capture(&self, mut cmd: Command, timeout: Duration) -> Result<Ran> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out_path = self.logs.join(format!("{n}.out"));
        let err_path = self.logs.join(format!("{n}.err"));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path)?)
            .stderr(fs::File::create(&err_path)?)
            .spawn()
            .context("running systemd-nspawn")?;
        let start = Instant::now();
        let mut termed = false;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break Some(st);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout + Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            if elapsed >= timeout && !termed {
                termed = true;
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = if termed { None } else { status };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = fs::read_to_string(&err_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !is_nspawn_noise(l))
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Ran {
            status,
            stdout,
            stderr,
        })
    }
}

/// Messages systemd-nspawn prints on every run in this kind of sandbox that say nothing about
/// the command: the propagation directory it may not remove, and cgroup v1 controller links.
fn is_nspawn_noise(line: &str) -> bool {
    line.starts_with("Attempted to remove disk file system under \"/run/systemd/nspawn/")
        || (line.starts_with("Failed to create symlink /sys/fs/cgroup/"))
}

/// Runs `argv` in `root` and fails unless it exits 0 within `timeout`.
pub fn must_run(
    root: &Root,
    binds: &[(&Path, &str)],
    argv: &[&str],
    timeout: Duration,
) -> Result<Ran> {
    let ran = root.run(binds, argv, timeout)?;
    ensure!(
        ran.success(),
        "{argv:?} in {}: {}",
        root.path.display(),
        ran.describe()
    );
    Ok(ran)
}
