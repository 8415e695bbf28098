//! What the examples share: running an operator in the background of a story, and waiting for
//! an object to reach a state (kube's `await_condition` with a timeout).

use std::{fmt::Debug, future::Future, time::Duration};

use anyhow::{Context as _, anyhow};
use kube::{
    Api, Resource,
    runtime::wait::{Condition, await_condition, conditions},
};
use serde::de::DeserializeOwned;

/// How long a story waits for the operator before giving up.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Running an operator in the background of a story: the library's test helper
/// ([`kuberator::testing::background`]).
pub use kuberator::testing::{Background, StopSignal, background};

/// Waits until object `name` satisfies `condition` (checked on every watch event) and returns it.
///
/// # Errors
/// A timeout after [`TIMEOUT`] (naming `what`), a watch error, or the object being absent when
/// the condition matched.
pub async fn until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> anyhow::Result<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, condition))
        .await
        .map_err(|_| anyhow!("timed out after {TIMEOUT:?} waiting for {what}"))?
        .with_context(|| format!("waiting for {what}"))?
        .ok_or_else(|| anyhow!("{name} is gone while waiting for {what}"))
}

/// Waits until object `name` (with this `uid`) is deleted.
///
/// # Errors
/// A timeout after [`TIMEOUT`] or a watch error.
pub async fn until_deleted<K>(api: &Api<K>, name: &str, uid: &str) -> anyhow::Result<()>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    tokio::time::timeout(
        TIMEOUT,
        await_condition(api.clone(), name, conditions::is_deleted(uid)),
    )
    .await
    .map_err(|_| anyhow!("timed out after {TIMEOUT:?} waiting for {name} to be deleted"))?
    .with_context(|| format!("waiting for {name} to be deleted"))?;
    Ok(())
}

/// Runs `kubectl <args>` against `env` and returns its standard output.
///
/// # Errors
/// When kubectl cannot be started or exits unsuccessfully (with its standard error).
pub async fn kubectl(env: &kuberator::testing::TestEnv, args: &[&str]) -> anyhow::Result<String> {
    let output = env
        .kubectl()
        .args(args)
        .output()
        .await
        .context("starting kubectl")?;
    anyhow::ensure!(
        output.status.success(),
        "`kubectl {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Calls `check` every 200 ms until it returns `Some`, for up to [`TIMEOUT`].
///
/// # Errors
/// A timeout (naming `what`).
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let polling = async {
        loop {
            if let Some(value) = check().await {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(TIMEOUT, polling)
        .await
        .map_err(|_| anyhow!("timed out after {TIMEOUT:?} waiting for {what}"))
}

/// The `main` of each example binary: logs from `RUST_LOG` (default off), a fresh local control
/// plane, the story, the time it took.
///
/// # Errors
/// When the control plane cannot start or the story fails.
pub async fn main_on_local_control_plane<T>(
    story: impl AsyncFnOnce(&kuberator::testing::TestEnv) -> anyhow::Result<T>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let started = std::time::Instant::now();
    println!("Starting a local control plane (etcd + kube-apiserver) …");
    let env = kuberator::testing::TestEnv::start().await?;
    story(&env).await?;
    drop(env);
    println!("Done in {:.1}s.", started.elapsed().as_secs_f64());
    Ok(())
}
