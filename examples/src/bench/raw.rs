//! (b) The workload on raw kube-rs, as the kube-rs docs teach it: `Controller::new`, the
//! `finalizer` helper, a status patch and a `Recorder` for the event.
//!
//! One deliberate difference from kube-rs' `controller-rs` example: the status is written with a
//! JSON merge patch (as kuberator and the limit do) rather than server-side apply, so that the
//! three implementations send the API server the same writes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        watcher,
    },
};
use serde_json::json;

use super::{BenchObject, EVENT_ACTION, EVENT_REASON, FINALIZER, NAMESPACE};

/// What can go wrong in a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// An API call failed.
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<RawError>>),
}

/// The controller's context, shared by all reconciles.
pub struct RawContext {
    client: Client,
    recorder: Recorder,
    reconciles: AtomicU64,
}

async fn reconcile(object: Arc<BenchObject>, ctx: Arc<RawContext>) -> Result<Action, RawError> {
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<BenchObject> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply(object, &api, &ctx).await,
            Finalizer::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
    .map_err(|e| RawError::Finalizer(Box::new(e)))
}

async fn apply(
    object: Arc<BenchObject>,
    api: &Api<BenchObject>,
    ctx: &RawContext,
) -> Result<Action, RawError> {
    let status = json!({ "status": { "observedGeneration": object.metadata.generation } });
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    ctx.recorder
        .publish(
            &Event {
                type_: EventType::Normal,
                reason: EVENT_REASON.into(),
                note: Some("status written".into()),
                action: EVENT_ACTION.into(),
                secondary: None,
            },
            &object.object_ref(&()),
        )
        .await?;
    Ok(Action::await_change())
}

fn error_policy(_object: Arc<BenchObject>, error: &RawError, _ctx: Arc<RawContext>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(1))
}

/// Runs the controller with `concurrency` until SIGTERM; returns the reconcile count.
///
/// # Errors
/// None today.
pub async fn run(client: Client, concurrency: u16) -> anyhow::Result<u64> {
    let api: Api<BenchObject> = Api::namespaced(client.clone(), NAMESPACE);
    let reporter = Reporter {
        controller: "bench.kuberator.dev/raw".into(),
        instance: Some("raw".into()),
    };
    let ctx = Arc::new(RawContext {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        reconciles: AtomicU64::new(0),
    });
    Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile error");
            }
        })
        .await;
    Ok(ctx.reconciles.load(Ordering::Relaxed))
}
