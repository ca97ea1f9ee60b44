//! Replays the kept fuzz inputs through the targets' checks under plain `cargo test` (stable, no
//! sanitizer, no libFuzzer): the hand-written seeds (`fuzz/seeds/<target>/`), the minimized
//! corpus (`fuzz/corpus/<target>/`) and every crash
//! reproducer (`fuzz/artifacts/<target>/`), so a fixed bug stays fixed and the invariants hold
//! for every input the fuzzer ever found interesting.

use cap::Cap;
use std::alloc::System;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use vfio_pm_fuzz::{artifacts_dir, corpus_dir, inputs_in, seeds_dir, target, TARGETS};

/// The same allocation limit as the fuzz targets: an input that allocates without bound aborts
/// this test too.
#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, vfio_pm_fuzz::MEMORY_LIMIT);

/// Every seed, corpus file and reproducer of `name` passes its check; there are seeds.
fn replay(name: &str) {
    let t = target(name).unwrap_or_else(|| panic!("no target {name}"));
    let seeds = inputs_in(&seeds_dir(name)).expect("reading the seeds");
    let mut corpus = inputs_in(&corpus_dir(name)).expect("reading the corpus");
    let artifacts = inputs_in(&artifacts_dir(name)).expect("reading the reproducers");
    assert!(
        !seeds.is_empty(),
        "{name}: no seeds in {} (docs/fuzzing.md)",
        seeds_dir(name).display()
    );
    let from_fuzzer = corpus.len();
    corpus.extend(seeds);
    let mut failures: Vec<String> = Vec::new();
    for path in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if data.len() > t.max_len {
            failures.push(format!(
                "{}: {} bytes, above the target's max_len {}",
                path.display(),
                data.len(),
                t.max_len
            ));
            continue;
        }
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (t.check)(&data))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} inputs fail:\n{}",
        failures.len(),
        corpus.len() + artifacts.len(),
        failures.join("\n")
    );
    println!(
        "{name}: {} seeds, {from_fuzzer} corpus inputs and {} reproducers replayed",
        corpus.len() - from_fuzzer,
        artifacts.len()
    );
}

#[test]
fn trap_corpus_and_reproducers() {
    replay("trap");
}

#[test]
fn mailbox_corpus_and_reproducers() {
    replay("mailbox");
}

#[test]
fn pm_config_corpus_and_reproducers() {
    replay("pm_config");
}

#[test]
fn config_aml_corpus_and_reproducers() {
    replay("config_aml");
}

#[test]
fn scenario_corpus_and_reproducers() {
    replay("scenario");
}

#[test]
fn sysfs_corpus_and_reproducers() {
    replay("sysfs");
}

#[test]
fn qemu_args_corpus_and_reproducers() {
    replay("qemu_args");
}

#[test]
fn vmm_exits_corpus_and_reproducers() {
    replay("vmm_exits");
}

/// The target list, the `cargo fuzz` entry points and the corpus directories agree, and the
/// kept corpus stays small (the repository stays lean: minimize with `cargo xtask fuzz --merge`).
#[test]
fn every_target_has_an_entry_point_and_a_small_corpus() {
    let dir = vfio_pm_fuzz::fuzz_dir();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let mut total = 0u64;
    for t in TARGETS {
        let entry: PathBuf = dir.join("fuzz_targets").join(format!("{}.rs", t.name));
        let source =
            std::fs::read_to_string(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
        assert!(
            source.contains(&format!("vfio_pm_fuzz::{}::check", t.name)),
            "{} does not call its check",
            entry.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{}\"", t.name)),
            "no [[bin]] {} in fuzz/Cargo.toml",
            t.name
        );
        let kept = [seeds_dir(t.name), corpus_dir(t.name), artifacts_dir(t.name)];
        for path in kept.iter().flat_map(|d| inputs_in(d).unwrap()) {
            total += std::fs::metadata(&path).unwrap().len();
        }
    }
    let fuzz_targets: Vec<_> = inputs_in(&dir.join("fuzz_targets")).unwrap();
    assert_eq!(fuzz_targets.len(), TARGETS.len(), "{fuzz_targets:?}");
    assert!(
        total <= 1 << 20,
        "the kept inputs are {total} bytes; keep them under 1 MiB"
    );
}

/// Every dictionary line is a comment, blank, or `name="..."` with only the escapes libFuzzer's
/// ParseDictionaryFile takes (`\\`, `\"`, `\xAB`): a bad line makes libFuzzer refuse to start.
#[test]
fn dictionaries_parse_as_libfuzzer_reads_them() {
    let dir = vfio_pm_fuzz::fuzz_dir().join("dicts");
    for path in inputs_in(&dir).unwrap() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        assert!(
            target(&name).is_some(),
            "{}: no target {name}",
            path.display()
        );
        for (n, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (_, quoted) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("{name}:{}: {l}", n + 1));
            let body = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or_else(|| panic!("{name}:{}: not quoted: {l}", n + 1));
            let b = body.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' {
                    let ok = match b.get(i + 1) {
                        Some(b'\\') | Some(b'"') => {
                            i += 2;
                            true
                        }
                        Some(b'x') => {
                            let hex = b.get(i + 2..i + 4).unwrap_or(&[]);
                            i += 4;
                            hex.len() == 2 && hex.iter().all(u8::is_ascii_hexdigit)
                        }
                        _ => false,
                    };
                    assert!(ok, "{name}:{}: escape libFuzzer refuses: {l}", n + 1);
                } else {
                    assert!(b[i] != b'"', "{name}:{}: unescaped quote: {l}", n + 1);
                    i += 1;
                }
            }
        }
    }
}
