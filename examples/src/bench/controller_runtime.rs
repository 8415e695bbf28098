//! (d) The workload on Go's controller-runtime: `examples/bench/controller-runtime/main.go`, its
//! own Go module (controller-runtime v0.24.1, pinned by its `go.sum`), built with the machine's
//! Go by `examples/bench/controller-runtime/build.sh` and cached outside the repository.
//!
//! The process takes the same arguments as `bench_operator` minus the implementation name
//! (`--kubeconfig PATH --concurrency C`) and prints the same `reconciles=<count>` line on
//! SIGTERM, so the driver measures it exactly as it measures the Rust implementations.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use tokio::process::Command;

/// The build script, relative to the examples crate.
const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/bench/controller-runtime/build.sh"
);

/// The controller-runtime operator binary: `explicit`, or the cached build (built first if
/// missing; the script prints its progress on stderr).
///
/// # Errors
/// No Go toolchain, or the build fails (with the tail of the build log).
pub async fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let output = Command::new(BUILD_SCRIPT)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .with_context(|| format!("running {BUILD_SCRIPT}"))?;
    if !output.status.success() {
        bail!(
            "building the controller-runtime baseline failed ({}); leave it out with \
             `--impls kuberator,raw,limit`",
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .last()
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .with_context(|| format!("{BUILD_SCRIPT} printed no binary path"))?;
    Ok(path)
}
