//! Compile-fail and compile-pass cases for kuberator's macros.
//!
//! Cases live in `ui/<macro>/{fail,pass}/`, one mistake per file, each named for its mistake. Pass
//! cases are compiled and run. Fail cases are compared with their `.stderr` snapshots, which
//! belong to one rustc: the one recorded in `ui/RUSTC_VERSION`. On any other rustc this test
//! fails (rather than reporting spurious diffs, or skipping); regenerate the snapshots and the
//! recorded version with
//!
//! ```text
//! TRYBUILD=overwrite cargo test -p kuberator-trybuild
//! ```
//!
//! `UI_CASES` runs only some cases: comma-separated globs under `ui/`, e.g.
//! `UI_CASES=operator/fail/resource_*,observe_generation/*/* cargo test -p kuberator-trybuild`.

use std::path::Path;
use std::process::Command;

#[test]
fn ui() {
    check_rustc_version();
    let cases = trybuild::TestCases::new();
    match std::env::var("UI_CASES") {
        Ok(filter) => {
            for glob in filter.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                let glob = format!("ui/{}.rs", glob.trim_end_matches(".rs"));
                if glob.contains("/pass/") {
                    cases.pass(glob);
                } else {
                    cases.compile_fail(glob);
                }
            }
        }
        Err(_) => {
            cases.pass("ui/*/pass/*.rs");
            cases.compile_fail("ui/*/fail/*.rs");
        }
    }
}

/// Fails loudly when the `.stderr` snapshots were recorded with another rustc; with
/// `TRYBUILD=overwrite`, records this one instead.
fn check_rustc_version() {
    let recorded_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui/RUSTC_VERSION");
    let current = rustc_version();
    let overwrite = std::env::var_os("TRYBUILD").is_some_and(|value| value == "overwrite");
    if overwrite {
        std::fs::write(&recorded_path, format!("{current}\n"))
            .unwrap_or_else(|error| panic!("cannot write {}: {error}", recorded_path.display()));
        return;
    }
    let recorded = std::fs::read_to_string(&recorded_path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", recorded_path.display()));
    let recorded = recorded.trim();
    assert!(
        recorded == current,
        "`.stderr` snapshots were recorded with {recorded}, this is {current}: regenerate with \
         `TRYBUILD=overwrite cargo test -p kuberator-trybuild` and review the diff"
    );
}

/// `rustc --version` of the compiler trybuild will use (`$RUSTC`, else `rustc` on the path, which
/// rustup resolves to the same toolchain as the running cargo).
fn rustc_version() -> String {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("cannot run `{} --version`: {error}", rustc.display()));
    assert!(output.status.success(), "`rustc --version` failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
