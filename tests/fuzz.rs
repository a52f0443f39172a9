//! The committed fuzz corpus (tests/fuzz/corpus/, made by scripts/make_fuzz_corpus.py:
//! seeded mutants of the quickstart manifest and hand-made hostile inputs): `check` and
//! `plan` of every file end in a result or diagnostics, never a panic, a stack overflow
//! or a hang, and the diagnostics render.

use std::path::Path;
use std::time::{Duration, Instant};

/// Loads, plans and renders one manifest; returns how it ended.
fn check(path: &Path) -> &'static str {
    let reg = goosepipe::steps::registry();
    match goosepipe::app::load_plan(path, &reg, &goosepipe::store::HashCache::in_memory()) {
        Ok(_) => "valid",
        Err(report) => {
            let mut out = String::new();
            miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
                .render_report(&mut out, report.as_ref())
                .expect("a diagnostic renders");
            assert!(!out.is_empty());
            "diagnostics"
        }
    }
}

#[test]
fn every_corpus_file_ends_in_a_result_or_diagnostics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/fuzz/corpus exists")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 100, "{} files", files.len());
    let (mut valid, mut invalid) = (0, 0);
    for f in &files {
        // A small stack, as a worker thread has: deep input must not overflow it. A
        // hang fails the test after 10 s instead of blocking it.
        let path = f.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t0 = Instant::now();
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let outcome = std::panic::catch_unwind(|| check(&path));
                let _ = tx.send(outcome);
            })
            .unwrap();
        let outcome = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(o)) => o,
            Ok(Err(_)) => panic!("{} panicked", f.display()),
            Err(_) => panic!("{} did not finish in {:?}", f.display(), t0.elapsed()),
        };
        match outcome {
            "valid" => valid += 1,
            _ => invalid += 1,
        }
    }
    // The corpus exercises both sides: mutants that still mean something, and broken ones.
    assert!(
        valid >= 3 && invalid >= 50,
        "{valid} valid, {invalid} with diagnostics"
    );
}
