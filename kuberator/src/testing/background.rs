//! Running an operator in a test: start it on a background task, wait for what it should do, stop
//! it gracefully.

use std::{fmt::Debug, future::Future, pin::Pin, time::Duration};

use kube::{
    Api, Resource,
    runtime::wait::{Condition, await_condition},
};
use serde::de::DeserializeOwned;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{Error, Result};

/// How long [`Background::stop`] and [`until`] wait by default: 30 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves when the test asks the operator to stop: pass it to
/// [`Operator::shutdown_on`](crate::Operator::shutdown_on) (or a `Manager`'s, or
/// `Reconcile::start`).
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// An operator running on a background task until [`stop`](Background::stop).
#[must_use = "dropping it leaves the operator running until the test ends; call `stop`"]
pub struct Background<T> {
    stop: oneshot::Sender<()>,
    task: JoinHandle<T>,
    timeout: Duration,
}

impl<T> Debug for Background<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background")
            .field("finished", &self.task.is_finished())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Starts `run` on a background task; it gets the signal that [`Background::stop`] fires.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # use kuberator::{Action, Operator, Reconciler, Result};
/// use kuberator::testing::{TestEnv, background, until};
/// # struct Noop;
/// # #[async_trait::async_trait]
/// # impl Reconciler<ConfigMap> for Noop {
/// #     async fn reconcile(&self, _cm: Arc<ConfigMap>) -> Result<Action> { Ok(Action::await_change()) }
/// # }
///
/// # async fn doc() -> kuberator::Result<()> {
/// let env = TestEnv::start().await?;
/// let operator = Operator::with_reconciler(env.client(), Noop);
/// let running = background(|stop| operator.shutdown_on(stop).run());
/// // … create objects, then wait for the operator's work:
/// let api: kube::Api<ConfigMap> = kube::Api::namespaced(env.client(), "default");
/// let _root_ca = until(&api, "kube-root-ca.crt", "the CA bundle", |cm: Option<&ConfigMap>| {
///     cm.is_some()
/// })
/// .await;
/// running.stop().await??; // the operator's own result, after a graceful shutdown
/// # Ok(()) }
/// ```
pub fn background<F, Fut>(run: F) -> Background<Fut::Output>
where
    F: FnOnce(StopSignal) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let signal: StopSignal = Box::pin(async move {
        let _ = stopped.await;
    });
    Background {
        stop,
        task: tokio::spawn(run(signal)),
        timeout: DEFAULT_TIMEOUT,
    }
}

impl<T> Background<T> {
    /// How long [`stop`](Self::stop) waits for the operator to return (default
    /// [`DEFAULT_TIMEOUT`]).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether the operator returned already (it failed to start, or stopped by itself).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Drops the operator without a graceful shutdown, as a SIGKILL of its process would: its
    /// reconciles stop at their next await, its watches end, and nothing is released, so a
    /// standby or the other shard members take over only once its Leases expired. Returns when
    /// the task is gone.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Signals shutdown and waits until in-flight reconciles finished and the operator returned;
    /// returns what it returned.
    ///
    /// # Errors
    /// When it does not return within the stop timeout, or its task panicked.
    pub async fn stop(self) -> Result<T> {
        let _ = self.stop.send(());
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(join)) => Err(Error::Anyhow(anyhow::anyhow!(
                "the operator's task failed: {join}"
            ))),
            Err(_) => Err(Error::Anyhow(anyhow::anyhow!(
                "the operator did not stop within {timeout:?} of the stop signal"
            ))),
        }
    }
}

/// Waits until object `name` satisfies `condition` (checked on every watch event, so no polling
/// interval) and returns it, for up to [`DEFAULT_TIMEOUT`].
///
/// # Errors
/// A timeout (naming `what`), a watch error, or the object being absent when the condition
/// matched (a condition that accepts `None`).
pub async fn until<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    condition: impl Condition<K>,
) -> Result<K>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let waited = tokio::time::timeout(
        DEFAULT_TIMEOUT,
        await_condition(api.clone(), name, condition),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out after {DEFAULT_TIMEOUT:?} waiting for {what}"))?;
    waited
        .map_err(|error| anyhow::anyhow!("waiting for {what}: {error}"))?
        .ok_or_else(|| anyhow::anyhow!("{name} is absent after waiting for {what}").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_fires_the_signal_and_returns_the_output() {
        let running = background(|stop| async move {
            stop.await;
            7
        });
        assert!(!running.is_finished());
        assert_eq!(running.stop().await.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn an_operator_that_does_not_stop_is_an_error() {
        let running =
            background(|_stop| std::future::pending::<()>()).stop_timeout(Duration::from_secs(1));
        let error = running.stop().await.unwrap_err();
        assert!(
            error.to_string().contains("did not stop within 1s"),
            "{error}"
        );
    }
}
