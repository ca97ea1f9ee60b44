//! `vfio-pm man` and `vfio-pm completions`: manual pages and shell completions generated from
//! the command's own clap definitions, so the packaged pages (`cargo xtask deb` runs these two
//! commands) and the `--help` text can never disagree.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Options of `vfio-pm man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write every page (vfio-pm.1 and one vfio-pm-COMMAND.1 per command) into this directory,
    /// creating it; without it, the page of `vfio-pm` itself goes to standard output.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Options of `vfio-pm completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write the completion script for.
    pub shell: clap_complete::Shell,
}

/// The roff source of one manual page: `name` is the page name (`vfio-pm-status`), the file is
/// `name.1`.
pub struct ManPage {
    /// Page name, as `man` takes it.
    pub name: String,
    /// The page in roff.
    pub roff: Vec<u8>,
}

/// Every page: `vfio-pm` first, then one per visible subcommand (recursively), each with a
/// SEE ALSO section linking the top page and its siblings.
pub fn pages(mut top: clap::Command) -> Result<Vec<ManPage>> {
    top = top.disable_help_subcommand(true);
    top.build();
    let top_name = top.get_name().to_string();
    // Every page's footer names the package and version, subcommand pages included.
    let source = format!("{top_name} {}", top.get_version().unwrap_or_default());
    let mut commands = vec![top.clone()];
    collect_subcommands(&top, &mut commands);
    let names: Vec<String> = commands.iter().map(page_name).collect();
    commands
        .into_iter()
        .zip(&names)
        .map(|(cmd, name)| {
            let mut roff = Vec::new();
            clap_mangen::Man::new(cmd)
                .manual("vfio-pm manual")
                .source(source.clone())
                .render(&mut roff)
                .with_context(|| format!("rendering the manual page {name}"))?;
            let others = names.iter().filter(|n| *n != name);
            roff.extend_from_slice(see_also(&top_name, name, others).as_bytes());
            Ok(ManPage {
                name: name.clone(),
                roff,
            })
        })
        .collect()
}

fn collect_subcommands(cmd: &clap::Command, out: &mut Vec<clap::Command>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out.push(sub.clone());
        collect_subcommands(sub, out);
    }
}

/// `vfio-pm` for the top command, `vfio-pm-status` for a subcommand (clap's display name after
/// `build`, which is also what clap_mangen names the page).
fn page_name(cmd: &clap::Command) -> String {
    cmd.get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string()
}

/// A roff SEE ALSO section: the top page from every subcommand page, and every subcommand page
/// from the top page (subcommand pages do not list each other, to stay short).
fn see_also<'a>(top: &str, this: &str, others: impl Iterator<Item = &'a String>) -> String {
    let refs: Vec<String> = if this == top {
        others.map(|n| roff_page_ref(n)).collect()
    } else {
        vec![roff_page_ref(top)]
    };
    format!(".SH \"SEE ALSO\"\n{}\n", refs.join(",\n"))
}

/// `\%\fBvfio\-pm\-status\fR(1)`: bold name, never hyphenated (`\%`), hyphens as roff minus
/// signs (so they copy as `-`).
fn roff_page_ref(name: &str) -> String {
    format!("\\%\\fB{}\\fR(1)", name.replace('-', "\\-"))
}

/// `vfio-pm man [--out DIR]`.
pub fn man(cmd: clap::Command, args: ManArgs) -> Result<ExitCode> {
    let pages = pages(cmd)?;
    match args.out {
        None => {
            let top = pages.first().context("no manual page was generated")?;
            crate::out::write_bytes(&top.roff)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // Every page first, the list after: a reader that stops early (`| head -1`) must
            // not leave the directory half written.
            let paths = pages
                .iter()
                .map(|page| write_page(&dir, page))
                .collect::<Result<Vec<_>>>()?;
            for path in paths {
                crate::outln!("{}", path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_page(dir: &Path, page: &ManPage) -> Result<PathBuf> {
    let path = dir.join(format!("{}.1", page.name));
    std::fs::write(&path, &page.roff).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `vfio-pm completions SHELL`: the script on standard output.
pub fn completions(mut cmd: clap::Command, args: CompletionsArgs) -> Result<ExitCode> {
    let bin = cmd.get_name().to_string();
    // Generated into memory first: clap_complete panics when its writer fails, and standard
    // output may be a closed pipe (which ends the command quietly, as everywhere in vfio-pm).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, &bin, &mut script);
    if args.shell == clap_complete::Shell::Bash {
        script = respell_bash_arms(&String::from_utf8_lossy(&script), &bin).into_bytes();
    }
    crate::out::write_bytes(&script)?;
    Ok(ExitCode::SUCCESS)
}

/// clap_complete 4.6's bash script spells the `case` arms of a hyphenated binary's subcommands
/// (`vfio__subcmd__pm__subcmd__status`) differently from the state its word loop computes
/// (`vfio__pm__subcmd__status`), so no option of any subcommand ever completes
/// (clap-rs/clap issue 6421). Respells the arms the loop's way; a no-op once upstream agrees
/// with itself. The package test and tests/manpages.rs complete a subcommand's option in bash.
fn respell_bash_arms(script: &str, bin: &str) -> String {
    if !bin.contains('-') {
        return script.to_string();
    }
    let wrong = format!("{}__subcmd__", bin.replace('-', "__subcmd__"));
    let right = format!("{}__subcmd__", bin.replace('-', "__"));
    script.replace(&wrong, &right)
}
