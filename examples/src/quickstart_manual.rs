//! Quickstart by hand: the operator of [`quickstart_macro`](crate::quickstart_macro) (same
//! `Greeting` resource, same behaviour) written with the traits the macro generates, in the
//! shape of the original crate: a [`Context`] (what happens on apply, cleanup and error) over a
//! [`K8sRepository`] (finalizer and status writes through a [`StaticApiProvider`]), started by a
//! [`Reconcile`] (where to watch).
//!
//! Use this form when you want to replace one piece, e.g. your own repository (see
//! [`custom_repository`](crate::custom_repository)) or your own `error_policy`.
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin quickstart_manual
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use kube::{Api, Client, runtime::watcher};
use kuberator::{
    Action, CachingStrategy, Context, Error, Finalize, K8sRepository, Reconcile, Result,
    StaticApiProvider, testing::TestEnv,
};

use crate::{
    quickstart_macro::{
        Call, FINALIZER, Greeting, GreetingStatus, Journal, Outcome, message, scenario,
    },
    story,
};

/// The repository and provider types, spelled out (the macro names them `GreeterRepository`).
pub type Repository = K8sRepository<Greeting, StaticApiProvider<Greeting>>;

/// The operator's core: the repository and the operator's own state.
pub struct Greeter {
    repository: Arc<Repository>,
    journal: Journal,
}

impl Greeter {
    /// Pre-caches the API handle for `default` (`Strict`: other namespaces are an error) and
    /// writes as the field manager the macro would pick.
    pub fn new(client: Client, journal: Journal) -> Self {
        let provider = StaticApiProvider::new(client.clone(), ["default"], CachingStrategy::Strict);
        let repository = K8sRepository::new(
            client,
            provider,
            "greetings.quickstart.kuberator.dev-operator",
        );
        Self {
            repository: Arc::new(repository),
            journal,
        }
    }
}

#[async_trait]
impl Context<Greeting, Repository, StaticApiProvider<Greeting>> for Greeter {
    fn k8s_repository(&self) -> Arc<Repository> {
        self.repository.clone()
    }

    fn finalizer(&self) -> Option<&'static str> {
        Some(FINALIZER)
    }

    async fn handle_apply(&self, greeting: Arc<Greeting>) -> Result<Action> {
        self.journal.record(Call::apply(&greeting));
        let status = GreetingStatus {
            message: Some(message(&greeting.spec)),
            ..GreetingStatus::default()
        };
        self.repository.update_status(&greeting, status).await?;
        Ok(Action::await_change())
    }

    async fn handle_cleanup(&self, greeting: Arc<Greeting>) -> Result<Action> {
        self.journal.record(Call::cleanup(&greeting));
        Ok(Action::await_change())
    }

    /// What the macro does after a failed reconcile: record the error in status (here only
    /// `observedGeneration`, as the status has no `#[status_error]` field).
    async fn handle_error(&self, greeting: Arc<Greeting>, error: &Error) {
        if let Err(e) = self.repository.record_error(&greeting, Some(error)).await {
            tracing::warn!(error = %e, "cannot record the error in status");
        }
    }
}

/// Where to watch: greetings in `default`.
pub struct GreeterReconciler {
    api: Api<Greeting>,
    context: Arc<Greeter>,
}

impl GreeterReconciler {
    /// Watches `default` with `context`.
    pub fn new(client: Client, context: Greeter) -> Self {
        Self {
            api: Api::namespaced(client, "default"),
            context: Arc::new(context),
        }
    }
}

impl Reconcile<Greeting, Greeter, Repository, StaticApiProvider<Greeting>> for GreeterReconciler {
    fn destruct(self) -> (Api<Greeting>, watcher::Config, Arc<Greeter>) {
        (self.api, watcher::Config::default(), self.context)
    }
}

/// Installs the CRD, runs the hand-written operator in the background and tells the same
/// [`scenario`] as the macro quickstart.
///
/// # Errors
/// As [`scenario`], or the operator failing to stop.
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Greeting>().await?;
    let journal = Journal::default();
    let reconciler =
        GreeterReconciler::new(env.client(), Greeter::new(env.client(), journal.clone()));
    // `start` runs one reconcile at a time, like the macro's default `concurrency = 1`; in a
    // real `main`: `reconciler.start(Some(kuberator::shutdown_signal())).await`.
    let running = story::background(|stop| reconciler.start(Some(stop)));
    let outcome = scenario(env, &journal).await;
    running.stop().await?;
    outcome
}
