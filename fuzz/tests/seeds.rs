//! Replays the seed corpus through the functions the fuzz targets call, so the seeds run with
//! plain `cargo test` on a stable toolchain too. A seed whose name starts with `signed` is a
//! correctly signed request, which proves the fuzzer starts past the signature check.

use hookrelay_fuzz::{SchemeName, identify, verify_outcome};
use std::path::{Path, PathBuf};

/// Returns the files of one target's corpus, sorted, with at least two present.
fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{target} has {} seeds", files.len());
    files
}

fn is_signed(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("signed"))
}

#[test]
fn verify_seeds_run() {
    for scheme in SchemeName::ALL {
        let files = seeds(scheme.target());
        assert!(
            files.iter().any(|path| is_signed(path)),
            "{} has no signed seed",
            scheme.target()
        );
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let outcome = verify_outcome(scheme, &data);
            if is_signed(&path) {
                assert!(outcome.is_ok(), "{}: {outcome:?}", path.display());
            }
        }
    }
}

#[test]
fn identify_seeds_run() {
    for path in seeds("identify") {
        identify(&std::fs::read(&path).unwrap());
    }
}
