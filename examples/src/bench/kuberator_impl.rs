//! (a) The workload with `#[kuberator::operator]`: the finalizer from the attribute, status and
//! one event from the handler.

use std::sync::atomic::{AtomicU64, Ordering};

use kuberator::prelude::*;

use super::{BenchObject, BenchObjectStatus, EVENT_ACTION, EVENT_REASON};

/// The handler: counts its calls, writes `status.observedGeneration`, emits one event.
pub struct BenchKuberator {
    /// Calls of `apply` and `cleanup`: the reconciles that reached the handler.
    pub reconciles: Arc<AtomicU64>,
}

#[kuberator::operator(
    resource = BenchObject,
    finalizer = "bench.kuberator.dev/cleanup",
    namespaces("default"),
    caching = Strict,
    events = "bench.kuberator.dev/kuberator",
    concurrency = 8
)]
impl BenchKuberator {
    async fn apply(&self, object: Arc<BenchObject>, ctx: &Ctx<BenchObject>) -> Result<Action> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        ctx.update_status(&object, BenchObjectStatus::default())
            .await?;
        ctx.emit(
            &object,
            EventData::normal(EVENT_REASON, EVENT_ACTION).note("status written"),
        )
        .await;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, _object: Arc<BenchObject>) -> Result<Action> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        Ok(Action::await_change())
    }
}

/// Runs the operator with `concurrency` until SIGTERM; returns the reconcile count.
///
/// # Errors
/// The operator cannot start.
pub async fn run(client: Client, concurrency: u16) -> anyhow::Result<u64> {
    let reconciles = Arc::new(AtomicU64::new(0));
    let handler = BenchKuberator {
        reconciles: reconciles.clone(),
    };
    handler
        .operator(client)?
        .concurrency(concurrency)
        .shutdown_on_signal()
        .run()
        .await?;
    Ok(reconciles.load(Ordering::Relaxed))
}
