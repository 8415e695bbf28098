//! [`EmitEvent`]: what reconcilers call, implemented by the real and the mock recorder.

use async_trait::async_trait;
use kube::Resource;

use super::data::EventData;
use crate::error::Result;

/// Emits Kubernetes events about objects.
///
/// Implemented by [`EventRecorder`](super::EventRecorder) (writes `events.k8s.io/v1` Events) and
/// [`MockEventRecorder`](super::MockEventRecorder) (records in memory, for tests). Make your
/// operator generic over it to test reconcilers without a server:
///
/// ```
/// use kuberator::events::{EmitEvent, EventData};
/// use k8s_openapi::api::core::v1::ConfigMap;
///
/// struct Operator<E> { events: E }
///
/// impl<E: EmitEvent> Operator<E> {
///     async fn apply(&self, cm: &ConfigMap) {
///         // Never fails the reconcile: a failure is logged.
///         self.events.emit(cm, EventData::normal("Applied", "Reconcile")).await;
///     }
/// }
/// ```
#[async_trait]
pub trait EmitEvent: Send + Sync {
    /// Emits `data` about `object`, returning any error.
    ///
    /// Events about cluster-scoped objects go to the `default` namespace. Repeats of the same
    /// event (same object UID, type, reason and action) are deduplicated.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`](crate::Error::Kube) if the API server rejects the Event.
    ///
    /// # Access control
    ///
    /// `create` and `patch` on `events` in the `events.k8s.io` group, in the object's namespace
    /// (`default` for cluster-scoped objects).
    async fn try_emit<R>(&self, object: &R, data: EventData) -> Result<()>
    where
        R: Resource<DynamicType = ()> + Sync;

    /// Emits `data` about `object`; never fails. An error is logged as a warning with the object's
    /// kind, namespace and name, the event's reason and the error.
    ///
    /// # Access control
    ///
    /// As [`try_emit`](Self::try_emit).
    async fn emit<R>(&self, object: &R, data: EventData)
    where
        R: Resource<DynamicType = ()> + Sync,
    {
        let reason = data.reason.clone();
        if let Err(error) = self.try_emit(object, data).await {
            let meta = object.meta();
            tracing::warn!(
                kind = %R::kind(&()),
                namespace = meta.namespace.as_deref().unwrap_or_default(),
                name = meta.name.as_deref().unwrap_or_default(),
                reason = %reason,
                %error,
                "failed to emit event",
            );
        }
    }
}
