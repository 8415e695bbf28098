//! Compile-fail and compile-pass cases for kuberator's macros.
//!
//! Cases live in `ui/<macro>/{fail,pass}/`, one mistake per file, each named for its mistake. Fail
//! cases run here, through trybuild, and are compared with their `.stderr` snapshots, which
//! belong to one rustc: the one recorded in `ui/RUSTC_VERSION`. On any other rustc this test
//! fails (rather than reporting spurious diffs, or skipping); regenerate the snapshots and the
//! recorded version with
//!
//! ```text
//! TRYBUILD=overwrite cargo test -p kuberator-trybuild
//! ```
//!
//! `UI_CASES` runs only some cases: comma-separated globs under `ui/`, e.g.
//! `UI_CASES=operator/fail/resource_*,observe_generation/fail/* cargo test -p kuberator-trybuild --test ui`.
//!
//! Pass cases are not run here: each is a test target of its own in `Cargo.toml`
//! (`cargo test -p kuberator-trybuild --test pass-operator-minimal`), built and run like a user's
//! crate. A pass case with no `[[test]]` entry fails this test.

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
                assert!(
                    !glob.contains("/pass/"),
                    "{glob}: pass cases are test targets, run them with `cargo test -p \
                     kuberator-trybuild --test pass-<macro>-<case>`"
                );
                cases.compile_fail(glob);
            }
        }
        Err(_) => cases.compile_fail("ui/*/fail/*.rs"),
    }
}

/// Every pass case is a `[[test]]` target in `Cargo.toml`, so none is silently left out.
#[test]
fn every_pass_case_is_a_test_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut missing = Vec::new();
    for group in std::fs::read_dir(root.join("ui")).expect("ui/") {
        let pass = group.expect("ui/ entry").path().join("pass");
        let Ok(cases) = std::fs::read_dir(&pass) else {
            continue;
        };
        for case in cases {
            let case = case.expect("pass case").path();
            let relative = case
                .strip_prefix(root)
                .expect("under the crate")
                .display()
                .to_string();
            if case.extension().is_some_and(|e| e == "rs")
                && !manifest.contains(&format!("path = \"{relative}\""))
            {
                missing.push(relative);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "pass cases without a [[test]] target in Cargo.toml: {missing:?}"
    );
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
