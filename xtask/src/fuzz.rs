//! `cargo xtask fuzz [--seconds N] [--merge] [TARGET...]`: builds the `cargo fuzz` targets of
//! `fuzz/` and runs each for a bounded time (docs/fuzzing.md).
//!
//! - cargo-fuzz is installed with `cargo install` when missing (CI starts from a fresh machine).
//! - The build is stable Rust: `--sanitizer none` needs no `-Z` flag, so no nightly toolchain
//!   and no `RUSTC_BOOTSTRAP`. It is a release build with debug assertions and overflow checks
//!   (`-O -a`): an arithmetic overflow is a crash.
//! - Each target runs with its dictionary (`fuzz/dicts/<target>.dict`, the words of a text
//!   format) and libFuzzer's memory and length limits (`-rss_limit_mb`,
//!   `-malloc_limit_mb`, `-max_len`, `-timeout`); within the process, the targets' allocator
//!   ([`vfio_pm_fuzz::MEMORY_LIMIT`]) fails any allocation beyond the limit, since libFuzzer's
//!   malloc limit needs a sanitizer runtime.
//! - New inputs go to `target/fuzz/corpus/<target>` (the repository's `fuzz/seeds/<target>` and
//!   `fuzz/corpus/<target>` are read, never written), crashes to `target/fuzz/artifacts/<target>`,
//!   libFuzzer's output to `target/fuzz/logs/<target>.log`. `--merge` then minimizes the
//!   repository corpus together with the new inputs (libFuzzer `-set_cover_merge=1
//!   -use_counters=0`: the fewest inputs that keep the edges covered) into
//!   `fuzz/corpus/<target>`: what adds to the seeds.

use crate::workspace_root;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vfio_pm_fuzz::{Target, TARGETS};

/// The cargo-fuzz release `cargo xtask fuzz` installs when none is there.
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Default run time per target (CI).
pub const DEFAULT_SECONDS: u64 = 60;
/// Environment variable that changes [`DEFAULT_SECONDS`] (e.g. for `cargo xtask test`).
pub const SECONDS_ENV: &str = "VFIO_PM_FUZZ_SECONDS";
/// libFuzzer's RSS limit for every target.
pub const RSS_LIMIT_MB: usize = 1024;
/// libFuzzer's per-input time limit, seconds.
pub const INPUT_TIMEOUT_SECS: u64 = 10;
/// The target triple cargo fuzz builds for.
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// What to run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    /// Time per target.
    pub seconds: u64,
    /// The targets (all when empty).
    pub targets: Vec<&'static Target>,
    /// Minimize the repository corpus with the new inputs afterwards.
    pub merge: bool,
}

impl FuzzOptions {
    /// Parses `[--seconds N] [--merge] [TARGET...]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts = FuzzOptions {
            seconds: default_seconds()?,
            targets: Vec::new(),
            merge: false,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--seconds" => {
                    let v = it.next().context("--seconds needs a value")?;
                    opts.seconds = v.parse().with_context(|| format!("--seconds {v:?}"))?;
                }
                "--merge" => opts.merge = true,
                name => match vfio_pm_fuzz::target(name) {
                    Some(t) => opts.targets.push(t),
                    None => bail!("unknown fuzz target {name:?} (targets: {})", names()),
                },
            }
        }
        if opts.targets.is_empty() {
            opts.targets = TARGETS.iter().collect();
        }
        Ok(opts)
    }
}

fn names() -> String {
    TARGETS
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$VFIO_PM_FUZZ_SECONDS`, else [`DEFAULT_SECONDS`].
pub fn default_seconds() -> Result<u64> {
    match std::env::var(SECONDS_ENV) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .with_context(|| format!("{SECONDS_ENV}={v:?} is not a number of seconds")),
        _ => Ok(DEFAULT_SECONDS),
    }
}

/// One target's run.
#[derive(Clone, Debug)]
pub struct FuzzRun {
    /// The target.
    pub name: &'static str,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Inputs executed (libFuzzer `stat::number_of_executed_units`).
    pub executions: u64,
    /// Peak RSS, MiB.
    pub peak_rss_mb: u64,
    /// Inputs kept in the repository before the run (seeds and corpus).
    pub kept_corpus: usize,
    /// Inputs in the run's corpus directory after the run (new and earlier runs').
    pub new_corpus: usize,
    /// Inputs in the repository corpus after `--merge`.
    pub merged_corpus: Option<usize>,
    /// Crash reproducers written, if the target failed.
    pub crashes: Vec<PathBuf>,
    /// libFuzzer's log.
    pub log: PathBuf,
    /// Whether libFuzzer exited cleanly.
    pub passed: bool,
}

impl fmt::Display for FuzzRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(0.001);
        write!(
            f,
            "{:<11} {:>5.0}s {:>10} execs {:>8.0}/s  corpus {:>4} kept + {:>4} new",
            self.name,
            secs,
            self.executions,
            self.executions as f64 / secs,
            self.kept_corpus,
            self.new_corpus,
        )?;
        if let Some(m) = self.merged_corpus {
            write!(f, " -> {m} merged")?;
        }
        write!(f, "  rss {:>4} MiB  ", self.peak_rss_mb)?;
        if self.passed {
            write!(f, "ok")
        } else {
            write!(f, "FAILED ({} reproducer(s))", self.crashes.len())
        }
    }
}

/// `target/fuzz`: the runs' corpus, artifacts and logs.
pub fn work_dir() -> PathBuf {
    workspace_root().join("target").join("fuzz")
}

fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// Installs cargo-fuzz unless `cargo fuzz --version` already works.
pub fn ensure_cargo_fuzz() -> Result<()> {
    let ok = Command::new(cargo())
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    let st = Command::new(cargo())
        .args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ])
        .status()
        .context("running cargo install cargo-fuzz")?;
    if !st.success() {
        bail!("cargo install cargo-fuzz failed ({st})");
    }
    Ok(())
}

/// The arguments of `cargo fuzz build` for `target` (all targets when `None`).
pub fn build_args(target: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "fuzz",
        "build",
        "--release",
        "--debug-assertions",
        "--sanitizer",
        "none",
        "--features",
        "libfuzzer",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(target.map(str::to_string));
    args
}

/// Builds the targets with `cargo fuzz build`.
pub fn build(targets: &[&Target]) -> Result<()> {
    let all = targets.len() == TARGETS.len();
    let builds: Vec<Option<&str>> = if all {
        vec![None]
    } else {
        targets.iter().map(|t| Some(t.name)).collect()
    };
    for target in builds {
        let st = Command::new(cargo())
            .current_dir(workspace_root())
            .args(build_args(target))
            .status()
            .context("running cargo fuzz build")?;
        if !st.success() {
            bail!("cargo fuzz build {} failed ({st})", target.unwrap_or(""));
        }
    }
    Ok(())
}

/// Where cargo fuzz put the target's binary.
pub fn binary(name: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target_dir.join(TRIPLE).join("release").join(name)
}

/// `fuzz/dicts/<target>.dict`: a libFuzzer dictionary of the input format's words, if any.
pub fn dict(t: &Target) -> Option<PathBuf> {
    let p = vfio_pm_fuzz::fuzz_dir()
        .join("dicts")
        .join(format!("{}.dict", t.name));
    p.is_file().then_some(p)
}

/// libFuzzer's arguments for a time-bounded run of `t`, corpus directories last.
pub fn run_args(t: &Target, seconds: u64, artifacts: &Path) -> Vec<String> {
    let mut args = vec![
        format!("-max_total_time={seconds}"),
        format!("-max_len={}", t.max_len),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-malloc_limit_mb={}", vfio_pm_fuzz::MEMORY_LIMIT >> 20),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
    ];
    args.extend(dict(t).map(|d| format!("-dict={}", d.display())));
    args
}

/// The value of libFuzzer's final `stat::NAME: N` line.
pub fn stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(&key)?.trim().parse().ok())
}

/// The repository's corpus and seed directories of `t` that exist (libFuzzer refuses a
/// missing one; git keeps no empty directory).
fn kept_dirs(t: &Target) -> Vec<PathBuf> {
    [
        vfio_pm_fuzz::corpus_dir(t.name),
        vfio_pm_fuzz::seeds_dir(t.name),
    ]
    .into_iter()
    .filter(|d| d.is_dir())
    .collect()
}

fn count(dir: &Path) -> Result<usize> {
    Ok(vfio_pm_fuzz::inputs_in(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .len())
}

/// Runs one built target for `seconds`.
pub fn run_one(t: &'static Target, seconds: u64, merge: bool) -> Result<FuzzRun> {
    let work = work_dir();
    let corpus = work.join("corpus").join(t.name);
    let artifacts = work.join("artifacts").join(t.name);
    let logs = work.join("logs");
    for d in [&corpus, &artifacts, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let kept = vfio_pm_fuzz::corpus_dir(t.name);
    let before: Vec<PathBuf> = vfio_pm_fuzz::inputs_in(&artifacts)?;
    let log = logs.join(format!("{}.log", t.name));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let exe = binary(t.name);
    let start = Instant::now();
    let st = Command::new(&exe)
        .args(run_args(t, seconds, &artifacts))
        .arg(&corpus)
        .args(kept_dirs(t))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    let elapsed = start.elapsed();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let crashes: Vec<PathBuf> = vfio_pm_fuzz::inputs_in(&artifacts)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    let mut run = FuzzRun {
        name: t.name,
        elapsed,
        executions: stat(&text, "number_of_executed_units").unwrap_or(0),
        peak_rss_mb: stat(&text, "peak_rss_mb").unwrap_or(0),
        kept_corpus: count(&kept)? + count(&vfio_pm_fuzz::seeds_dir(t.name))?,
        new_corpus: count(&corpus)?,
        merged_corpus: None,
        crashes,
        log,
        passed: st.success(),
    };
    if run.passed && merge {
        run.merged_corpus = Some(merge_corpus(t, &corpus)?);
    }
    Ok(run)
}

/// Minimizes `fuzz/corpus/<target>` plus the run's new inputs into `fuzz/corpus/<target>`:
/// the inputs that add coverage beyond the seeds (`fuzz/seeds/<target>`), one per feature.
fn merge_corpus(t: &Target, new: &Path) -> Result<usize> {
    let kept = vfio_pm_fuzz::corpus_dir(t.name);
    let seeds = vfio_pm_fuzz::inputs_in(&vfio_pm_fuzz::seeds_dir(t.name))?;
    let staging = work_dir().join("merge").join(t.name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    std::fs::create_dir_all(&kept)?;
    // The seeds go in first, so that only what adds to them is merged.
    let mut seed_copies = Vec::new();
    for (i, s) in seeds.iter().enumerate() {
        let copy = staging.join(format!("seed-{i}"));
        std::fs::copy(s, &copy)?;
        seed_copies.push(copy);
    }
    let st = Command::new(binary(t.name))
        .arg("-set_cover_merge=1")
        // Edges only, not hit counts: a few times fewer files for the same code covered.
        .arg("-use_counters=0")
        .arg(format!("-max_len={}", t.max_len))
        .arg(&staging)
        .arg(&kept)
        .arg(new)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running the libFuzzer merge")?;
    if !st.success() {
        bail!("{}: corpus merge failed ({st})", t.name);
    }
    for copy in &seed_copies {
        std::fs::remove_file(copy)?;
    }
    for old in vfio_pm_fuzz::inputs_in(&kept)? {
        std::fs::remove_file(&old)?;
    }
    for p in vfio_pm_fuzz::inputs_in(&staging)? {
        let name = p.file_name().context("merged file without a name")?;
        std::fs::copy(&p, kept.join(name))?;
    }
    count(&kept)
}

/// Builds and runs `opts`' targets one after the other; prints a summary line per target.
/// Fails when a target found a crash (after running the others).
pub fn run(opts: &FuzzOptions) -> Result<Vec<FuzzRun>> {
    ensure_cargo_fuzz()?;
    build(&opts.targets)?;
    let mut runs = Vec::new();
    for t in &opts.targets {
        eprintln!("xtask fuzz: {} for {} s ({})", t.name, opts.seconds, t.what);
        let r = run_one(t, opts.seconds, opts.merge)?;
        println!("{r}");
        if !r.passed {
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- last lines of {}:", r.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            for c in &r.crashes {
                eprintln!(
                    "reproducer: {} (keep it: cp it to fuzz/artifacts/{}/ and fix the bug)",
                    c.display(),
                    t.name
                );
            }
        }
        runs.push(r);
    }
    let failed: Vec<&str> = runs.iter().filter(|r| !r.passed).map(|r| r.name).collect();
    println!(
        "fuzz: {} passed, {} failed",
        runs.len() - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_stats() {
        let o = FuzzOptions::parse(&["--seconds".into(), "5".into(), "trap".into()]).unwrap();
        assert_eq!(
            (o.seconds, o.targets.len(), o.targets[0].name),
            (5, 1, "trap")
        );
        assert_eq!(
            FuzzOptions::parse(&[]).unwrap().targets.len(),
            TARGETS.len()
        );
        assert!(FuzzOptions::parse(&["nope".into()]).is_err());
        assert!(FuzzOptions::parse(&["--seconds".into()]).is_err());
        let log = "#2\tINITED\nstat::number_of_executed_units: 12345\nstat::peak_rss_mb: 42\n";
        assert_eq!(stat(log, "number_of_executed_units"), Some(12345));
        assert_eq!(stat(log, "peak_rss_mb"), Some(42));
        assert_eq!(stat(log, "slowest_unit_time_sec"), None);
        let t = vfio_pm_fuzz::target("scenario").unwrap();
        let args = run_args(t, 60, Path::new("/a"));
        assert!(args.contains(&"-max_len=4096".to_string()));
        assert!(args.contains(&"-artifact_prefix=/a/".to_string()));
        assert!(args.iter().any(|a| a.ends_with("fuzz/dicts/scenario.dict")));
        assert!(build_args(None).contains(&"none".to_string()));
    }
}
