//! `Reconcile`: starts the controller for a [`Context`], sequentially or concurrently.

use std::{fmt, future::Future, marker::PhantomData, sync::Arc};

use async_trait::async_trait;
use kube::{
    Api,
    runtime::{controller::Action, watcher},
};

use crate::{
    cache::{ApiScope, ProvideApi},
    context::Context,
    error::{Error, Result},
    finalize::{Finalize, Object},
    runtime::{Backoff, Operator, Reconciler, default_error_policy},
};

/// Starts the controller loop for a [`Context`] `C`.
///
/// Implement [`destruct`](Reconcile::destruct); everything else has defaults. The watch covers
/// the namespace of the returned `Api` (or all namespaces / the cluster scope for `Api::all`).
///
/// ```no_run
/// # use std::sync::Arc;
/// # use kube::{Api, runtime::watcher};
/// # use kuberator::{Reconcile, Context, K8sRepository, StaticApiProvider};
/// # fn doc<R, C>(reconciler: impl Reconcile<R, C, K8sRepository<R>, StaticApiProvider<R>>)
/// # where R: kuberator::finalize::Object, R::Scope: kuberator::cache::ApiScope,
/// #       C: Context<R, K8sRepository<R>, StaticApiProvider<R>> {
/// # async {
/// reconciler.start(Some(kuberator::shutdown_signal())).await;
/// # };
/// # }
/// ```
#[async_trait]
pub trait Reconcile<R, C, F, P>: Sized + Send + 'static
where
    R: Object,
    R::Scope: ApiScope,
    C: Context<R, F, P>,
    F: Finalize<R, P>,
    P: ProvideApi<R>,
{
    /// The API handle to watch, the watch configuration and the context.
    fn destruct(self) -> (Api<R>, watcher::Config, Arc<C>);

    /// Runs the controller, one reconcile at a time, until `shutdown` resolves (then in-flight
    /// work finishes before this returns).
    async fn start<S>(self, shutdown: Option<S>)
    where
        S: Future<Output = ()> + Send + Sync + 'static,
    {
        self.start_concurrent(Some(1), shutdown).await;
    }

    /// Runs the controller with at most `limit` reconciles at once (`None`: 16).
    async fn start_concurrent<S>(self, limit: Option<usize>, shutdown: Option<S>)
    where
        S: Future<Output = ()> + Send + Sync + 'static,
    {
        let (api, config, context) = self.destruct();
        let namespace = api.namespace().map(str::to_owned);
        let limit = limit.unwrap_or(16).clamp(1, usize::from(u16::MAX));
        let reconciler = ContextReconciler::<Self, R, C, F, P> {
            context,
            _types: PhantomData,
        };
        let mut operator = Operator::with_reconciler(api.into_client(), reconciler)
            .watcher_config(config)
            .concurrency(u16::try_from(limit).unwrap_or(u16::MAX));
        if let Some(ns) = namespace {
            operator = operator.namespaces([ns]);
        }
        if let Some(shutdown) = shutdown {
            operator = operator.shutdown_on(shutdown);
        }
        if let Err(error) = operator.run().await {
            tracing::error!(error = %error, "controller failed");
        }
    }

    /// One reconcile; the default runs [`Context::handle_reconciliation`].
    ///
    /// # Errors
    /// The context's error.
    async fn reconcile(object: Arc<R>, context: Arc<C>) -> Result<Action> {
        context.handle_reconciliation(object).await
    }

    /// When to retry after `error` (`failures` consecutive failures of this object). The default
    /// honours the error's [`RetryPolicy`](crate::RetryPolicy) with exponential backoff.
    fn error_policy(object: Arc<R>, error: &Error, context: Arc<C>, failures: u32) -> Action {
        let _ = (object, context);
        Self::requeue_after_error(error, failures)
    }

    /// The retry for `error` after `failures` consecutive failures.
    fn requeue_after_error(error: &Error, failures: u32) -> Action {
        default_error_policy(error, failures, &Backoff::default())
    }
}

struct ContextReconciler<Rc, R, C, F, P> {
    context: Arc<C>,
    _types: PhantomData<fn() -> (Rc, R, F, P)>,
}

impl<Rc, R, C, F, P> fmt::Debug for ContextReconciler<Rc, R, C, F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContextReconciler")
    }
}

#[async_trait]
impl<Rc, R, C, F, P> Reconciler<R> for ContextReconciler<Rc, R, C, F, P>
where
    Rc: Reconcile<R, C, F, P>,
    R: Object,
    R::Scope: ApiScope,
    C: Context<R, F, P>,
    F: Finalize<R, P>,
    P: ProvideApi<R>,
{
    async fn reconcile(&self, object: Arc<R>) -> Result<Action> {
        Rc::reconcile(object, self.context.clone()).await
    }

    async fn on_error(&self, object: Arc<R>, error: &Error) {
        self.context.handle_error(object, error).await;
    }

    fn error_policy(&self, object: &R, error: &Error, failures: u32, _backoff: &Backoff) -> Action {
        Rc::error_policy(
            Arc::new(object.clone()),
            error,
            self.context.clone(),
            failures,
        )
    }
}
