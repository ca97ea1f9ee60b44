//! `vfio-pm man` and `vfio-pm completions`: one page per command, completions that know every
//! command, and clear errors instead of panics on a closed pipe or an unwritable directory.

use std::io::Read;
use std::process::{Command, Output, Stdio};

fn vfio_pm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(args)
        .output()
        .expect("run vfio-pm")
}

/// The subcommands `vfio-pm --help` lists (the lines of its "Commands:" block).
fn subcommands() -> Vec<String> {
    let out = vfio_pm(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let block = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands: block in --help");
    let names: Vec<String> = block
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() >= 11, "{names:?}");
    names
}

#[test]
fn man_out_writes_one_page_per_command_with_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("man1");
    let out = vfio_pm(&["man", "--out", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let listed = String::from_utf8(out.stdout).unwrap();
    let mut want: Vec<String> = subcommands()
        .iter()
        .map(|c| format!("vfio-pm-{c}.1"))
        .collect();
    want.push("vfio-pm.1".into());
    let have: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Every top-level command has its page; nested commands (`qemu attach`) have theirs too,
    // named vfio-pm-qemu-attach.1 and so on.
    for w in &want {
        assert!(have.contains(w), "{w} missing from {have:?}");
    }
    for h in &have {
        let stem = h.strip_suffix(".1").unwrap_or_else(|| panic!("{h}"));
        assert!(stem == "vfio-pm" || stem.starts_with("vfio-pm-"), "{h}");
    }
    assert_eq!(listed.lines().count(), have.len(), "{listed}");

    let status = std::fs::read_to_string(out_dir.join("vfio-pm-status.1")).unwrap();
    assert!(
        status.starts_with(".ie") || status.contains(".TH"),
        "{status}"
    );
    assert!(status.contains(".TH vfio-pm-status 1"), "{status}");
    assert!(
        status.contains("\\-\\-json"),
        "status page lacks --json:\n{status}"
    );
    assert!(
        status.contains("\\fBvfio\\-pm\\fR(1)"),
        "no SEE ALSO vfio-pm(1)"
    );
    let top = std::fs::read_to_string(out_dir.join("vfio-pm.1")).unwrap();
    assert!(top.contains("D3cold"), "the long help is the description");
    assert!(top.contains("\\fBvfio\\-pm\\-exporter\\fR(1)"), "{top}");
}

#[test]
fn man_without_out_prints_the_top_page() {
    let out = vfio_pm(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH vfio-pm 1"), "{page}");
    assert!(page.contains(&format!("vfio-pm {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn man_into_an_unwritable_place_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = vfio_pm(&["man", "--out", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("not-a-dir"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn completions_know_every_command() {
    let commands = subcommands();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = vfio_pm(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        for c in &commands {
            assert!(script.contains(c.as_str()), "{shell} completion lacks {c}");
        }
    }
    let out = vfio_pm(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn completions_into_a_closed_pipe_end_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    // As every vfio-pm command: a reader that went away (`| head`) is no error.
    assert!(err.is_empty(), "{err}");
    assert_eq!(status.code(), Some(0), "{err}");
}

/// Runs the bash completion function for `words` (the last one being completed) and returns
/// the candidates; `None` where bash is missing.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Option<Vec<String>> {
    let cword = words.len() - 1;
    let prev = words[cword - 1];
    let program = format!(
        "source {script} || exit 3; spec=$(complete -p vfio-pm) || exit 4; fn=${{spec##* -F }}; \
         fn=${{fn%% *}}; COMP_WORDS=({words}); COMP_CWORD={cword}; \"$fn\" vfio-pm {cur} {prev}; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        words = words.join(" "),
        cur = words[cword],
    );
    let out = Command::new("bash").args(["-c", &program]).output().ok()?;
    assert!(out.status.success(), "{out:?}");
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

#[test]
fn bash_completes_subcommands_and_their_options() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vfio-pm.bash");
    let out = vfio_pm(&["completions", "bash"]);
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&script, &out.stdout).unwrap();
    let Some(sub) = bash_complete(&script, &["vfio-pm", "st"]) else {
        eprintln!("SKIPPED: no bash on this machine");
        return;
    };
    assert_eq!(sub, ["status"]);
    // A subcommand's own option: broken in clap_complete's raw output for hyphenated names.
    let opt = bash_complete(&script, &["vfio-pm", "exporter", "--li"]).unwrap();
    assert_eq!(opt, ["--listen"]);
    let opt = bash_complete(&script, &["vfio-pm", "doctor", "--no"]).unwrap();
    assert_eq!(opt, ["--no-open"]);
}

#[test]
fn man_out_into_a_closed_pipe_still_writes_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfio-pm"))
        .args(["man", "--out"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert!(child.wait().unwrap().success());
    let pages = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(pages > subcommands().len(), "only {pages} pages");
}
