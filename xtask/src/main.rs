//! `cargo xtask deps | kernels | qemu | conformance | tour | test | fuzz | deb`: see the
//! library documentation.

use anyhow::{bail, Context, Result};
use std::time::Duration;
use xtask::{KernelSeries, Options, Platform};

const USAGE: &str = "usage: cargo xtask <command>
  deps                         install missing host packages (apt-get)
  kernels [--kernel 6.1|6.12|newest|all]
                               resolve, download and cache the Debian kernels
  qemu [--kernel 6.1|6.12|newest|all] [--platform d3hot|d3cold|all] [--no-cli]
       [--phases checks,...] [--timeout SECS] [--idle-d3 also|skip|only]
                               run vfio-pm against the real kernels in QEMU
                               (--idle-d3: the extra boot per kernel with vfio-pci
                               disable_idle_d3=1, scenarios only; default also)
  tour                         write docs/cli.md from real output of the CLI in the
                               newest kernel on the D3cold platform
  conformance [--kernel ...] [--platform ...]
                               run the scenarios in QEMU, compare with the model and
                               write docs/conformance.md (full matrix only; otherwise
                               target/qemu/conformance.md); exit 1 on any difference
  deb [--check]                build the Debian package (target/debian/); --check: install
                               it in a clean bookworm root and check it there (root)
  nested [--kernel 6.1|6.12|all] [--runs control,agent,attach]
                               a real host kernel in QEMU running the machine's QEMU
                               with a real guest on the passed-through device
  test [ARGS...]               install Debian packages, then cargo test --workspace ARGS
                               (includes the QEMU test;
                               VFIO_PM_SKIP_QEMU=1 skips it loudly), then every fuzz
                               target for VFIO_PM_FUZZ_SECONDS (default 60) s each
                               (VFIO_PM_SKIP_FUZZ=1 skips them loudly)
  fuzz [--seconds N] [--merge] [TARGET...]
                               build the cargo fuzz targets (stable, no sanitizer) and
                               run each for N s (default 60); --merge minimizes the new
                               inputs into fuzz/corpus (docs/fuzzing.md)";

fn kernels_arg(v: &str) -> Result<Vec<KernelSeries>> {
    if v == "all" {
        Ok(KernelSeries::ALL.to_vec())
    } else {
        Ok(vec![v.parse()?])
    }
}

fn platforms_arg(v: &str) -> Result<Vec<Platform>> {
    if v == "all" {
        Ok(Platform::ALL.to_vec())
    } else {
        Ok(vec![v.parse()?])
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    if cmd == "deb" {
        return xtask::deb::cli(rest);
    }
    if cmd == "test" {
        // A fresh machine gets its Debian packages (QEMU, acpica-tools, ...) before any test
        // needs them; the kernel images are fetched by the QEMU test itself.
        if std::env::var_os("VFIO_PM_SKIP_QEMU").is_none() {
            xtask::deps::ensure()?;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = std::process::Command::new(cargo)
            .current_dir(xtask::workspace_root())
            .args(["test", "--workspace"])
            .args(rest)
            .status()
            .context("running cargo test")?;
        if !st.success() {
            std::process::exit(st.code().unwrap_or(1));
        }
        if std::env::var_os("VFIO_PM_SKIP_FUZZ").is_some() {
            eprintln!("xtask test: VFIO_PM_SKIP_FUZZ is set: the fuzz targets were NOT run");
            return Ok(());
        }
        xtask::fuzz::run(&xtask::fuzz::FuzzOptions::parse(&[])?)?;
        return Ok(());
    }
    if cmd == "fuzz" {
        xtask::fuzz::run(&xtask::fuzz::FuzzOptions::parse(rest)?)?;
        return Ok(());
    }
    let mut opts = Options::default();
    let mut nested_runs: Option<Vec<String>> = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--kernel" => opts.kernels = kernels_arg(value()?)?,
            "--platform" => opts.platforms = platforms_arg(value()?)?,
            "--with-cli" => opts.with_cli = true,
            "--no-cli" => opts.with_cli = false,
            "--phases" | "--mode" => {
                opts.phases = value()?.split(',').map(str::to_string).collect()
            }
            "--idle-d3" => opts.idle_d3 = value()?.parse()?,
            "--runs" => nested_runs = Some(value()?.split(',').map(str::to_string).collect()),
            "--timeout" => {
                opts.timeout = Duration::from_secs(value()?.parse().context("--timeout SECS")?)
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    match cmd.as_str() {
        "deps" => {
            xtask::deps::ensure()?;
            println!("all of {:?} installed", xtask::deps::PACKAGES);
        }
        "kernels" => {
            for s in &opts.kernels {
                let k = xtask::kernels::ensure(*s)?;
                println!(
                    "{s}: {} ({} modules) in {}",
                    k.release,
                    k.modules.len(),
                    k.vmlinuz
                        .parent()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                );
            }
        }
        "qemu" => {
            let summary = xtask::run(&opts)?;
            println!("{summary}");
            let timings = xtask::timing::table(&summary);
            if !timings.is_empty() {
                println!("\n{timings}");
            }
            if !summary.all_passed() {
                std::process::exit(1);
            }
        }
        "conformance" => {
            let opts = Options {
                phases: vec!["scenarios".into()],
                with_cli: false,
                ..opts
            };
            let full = opts.kernels.len() == KernelSeries::ALL.len()
                && opts.platforms.len() == Platform::ALL.len()
                && opts.idle_d3 == xtask::IdleD3Boots::Also;
            let summary = xtask::run(&opts)?;
            println!("{summary}");
            print!("{}", xtask::conformance::report(&summary));
            let table = xtask::conformance::table(&xtask::conformance::runs(&summary));
            let path = if full {
                xtask::conformance::doc_path()
            } else {
                xtask::conformance::generated_path()
            };
            std::fs::write(&path, table).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
            if !summary.all_passed() {
                std::process::exit(1);
            }
        }
        "tour" => {
            // Real output for docs/cli.md on the D3cold platform.
            let opts = Options {
                phases: vec!["tour".into()],
                with_cli: true,
                // 6.12, the kernel README.md and docs/cli.md name.
                kernels: vec![KernelSeries::V6_12],
                platforms: vec![Platform::D3Cold],
                idle_d3: xtask::IdleD3Boots::Skip,
                ..opts
            };
            let summary = xtask::run(&opts)?;
            println!("{summary}");
            anyhow::ensure!(
                summary.all_passed(),
                "the tour's commands did not all succeed"
            );
            let path = xtask::workspace_root().join("docs/cli.md");
            let doc = xtask::tour::document(&summary)?;
            std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
        "nested" => {
            // `--kernel all` (the default) means the kernels the nested harness boots.
            let kernels: Vec<KernelSeries> = opts
                .kernels
                .iter()
                .copied()
                .filter(|k| opts.kernels.len() == 1 || xtask::nested::NESTED_KERNELS.contains(k))
                .collect();
            let summary = xtask::nested::run(&xtask::nested::NestedOptions {
                kernels,
                runs: nested_runs,
            })?;
            println!("{summary}");
            if !summary.all_passed() {
                std::process::exit(1);
            }
        }
        "-h" | "--help" | "help" => println!("{USAGE}"),
        other => bail!("unknown command {other:?}\n{USAGE}"),
    }
    Ok(())
}
