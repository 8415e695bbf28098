//! A new user's first build: a fresh crate with exactly the README's `cargo add` line and its
//! quickstart as `src/main.rs` must compile on the first try (no missing `kube` / `serde_json`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The README's `## Quickstart` section: the arguments of its `cargo add` line and its first
/// Rust block.
fn quickstart(readme: &str) -> (Vec<String>, String) {
    let section = &readme[readme.find("## Quickstart").expect("a Quickstart section")..];
    let block = |fence: &str| {
        let start = section
            .find(fence)
            .unwrap_or_else(|| panic!("no {fence} block"));
        let body = &section[start..];
        let body = &body[body.find('\n').unwrap() + 1..];
        body[..body.find("```").unwrap()].to_owned()
    };
    let command = block("```sh").replace("\\\n", " ");
    let args = command
        .split_whitespace()
        .skip_while(|w| *w != "add")
        .skip(1)
        .map(str::to_owned)
        .collect();
    (args, block("```rust"))
}

fn cargo(dir: &Path, args: &[&str], target: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`cargo {}` failed in the fresh crate:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn readme_dependencies_and_quickstart_build_in_a_fresh_crate() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let (add_args, main_rs) = quickstart(&readme);
    assert!(
        add_args.iter().any(|a| a == "kuberator"),
        "the README's `cargo add` names kuberator: {add_args:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"website-operator\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), main_rs).unwrap();
    // The workspace's versions, so the (offline) build reuses what is already downloaded.
    std::fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();

    // Its own target dir (the workspace's is locked by this test run), kept between runs.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("fresh-crate");
    let kuberator = root.join("kuberator");
    // kuberator comes from this checkout instead of the registry; the rest is the README's line.
    cargo(
        dir.path(),
        &["add", "--offline", "--path", kuberator.to_str().unwrap()],
        &target,
    );
    let mut args = vec!["add", "--offline"];
    args.extend(
        add_args
            .iter()
            .map(String::as_str)
            .filter(|a| *a != "kuberator"),
    );
    cargo(dir.path(), &args, &target);
    cargo(dir.path(), &["check", "--offline", "--quiet"], &target);
}
