//! `Context`: the operator's core — what happens on apply, on cleanup and on error.

use std::sync::Arc;

use async_trait::async_trait;
use kube::runtime::controller::Action;

use crate::{
    cache::ProvideApi,
    error::{Error, Result},
    finalize::{Finalize, Object},
};

/// The operator's core: handles an applied object and the cleanup of a deleted one.
///
/// `F` is the repository (a [`Finalize`] implementation, usually
/// [`K8sRepository`](crate::K8sRepository)) and `P` its API provider.
#[async_trait]
pub trait Context<R: Object, F: Finalize<R, P>, P: ProvideApi<R>>: Send + Sync + 'static {
    /// The repository used for finalizers and status.
    fn k8s_repository(&self) -> Arc<F>;

    /// The finalizer this operator owns, e.g. `example.com/cleanup`; `None` to add none (then
    /// [`handle_cleanup`](Context::handle_cleanup) is never called).
    fn finalizer(&self) -> Option<&'static str>;

    /// Brings the world in line with `object` (created or changed).
    ///
    /// # Errors
    /// Whatever the handler returns; it goes to the controller's error policy.
    async fn handle_apply(&self, object: Arc<R>) -> Result<Action>;

    /// Cleans up after `object`, which is being deleted; the finalizer is removed afterwards.
    ///
    /// # Errors
    /// Whatever the handler returns; the finalizer stays and the cleanup is retried.
    async fn handle_cleanup(&self, object: Arc<R>) -> Result<Action> {
        let _ = object;
        Ok(Action::await_change())
    }

    /// One reconcile: the finalizer flow around [`handle_apply`](Context::handle_apply) and
    /// [`handle_cleanup`](Context::handle_cleanup).
    ///
    /// # Errors
    /// The handler's error or an API error.
    async fn handle_reconciliation(&self, object: Arc<R>) -> Result<Action> {
        match self.finalizer() {
            Some(finalizer) => {
                let repository = self.k8s_repository();
                repository.finalize(object, finalizer, self).await
            }
            None if object.meta().deletion_timestamp.is_some() => Ok(Action::await_change()),
            None => self.handle_apply(object).await,
        }
    }

    /// Called after a failed reconcile, before the retry is scheduled; e.g. record the error in
    /// status with [`Finalize::record_error`]. The default logs nothing more and does nothing.
    async fn handle_error(&self, object: Arc<R>, error: &Error) {
        let _ = (object, error);
    }
}
