//! Reconciles per generation with owned children: the workload plus one owned `ConfigMap` per
//! object, applied in every reconcile and watched (`owns`), in kuberator, raw kube-rs and
//! controller-runtime (`--children`). The driver creates N objects, waits for their status,
//! bumps every spec (generation 2), waits again, lets the operator settle and divides its
//! reconcile count by the 2 N generations. Ideal: exactly 1 (the operator's own child, status
//! and finalizer writes trigger nothing).

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action as RawAction},
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        watcher,
    },
};
use kuberator::prelude::*;
use serde_json::json;

use super::{
    BenchObject, BenchObjectStatus, EVENT_ACTION, EVENT_REASON, FINALIZER, NAMESPACE,
    driver::{Bench, Impl, markdown},
    metrics::RequestKind,
};

/// The owned child of `object`: a `ConfigMap` of the same name carrying the spec's replicas
/// and the generation (so every generation changes it).
pub fn child(object: &BenchObject) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(object.name_any()),
            namespace: object.namespace(),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                ("replicas".to_owned(), object.spec.replicas.to_string()),
                (
                    "generation".to_owned(),
                    object.metadata.generation.unwrap_or_default().to_string(),
                ),
            ]
            .into(),
        ),
        ..ConfigMap::default()
    }
}

/// kuberator with `owns(ConfigMap)`: applies the child, writes the status, emits one event.
pub struct BenchKuberatorChildren {
    /// Calls of `apply` and `cleanup`.
    pub reconciles: Arc<AtomicU64>,
}

#[kuberator::operator(
    resource = BenchObject,
    finalizer = "bench.kuberator.dev/cleanup",
    namespaces("default"),
    caching = Strict,
    events = "bench.kuberator.dev/kuberator",
    owns(ConfigMap),
    concurrency = 8
)]
impl BenchKuberatorChildren {
    async fn apply(&self, object: Arc<BenchObject>, ctx: &Ctx<BenchObject>) -> Result<Action> {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        ctx.apply_child(&object, child(&object)).await?;
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

/// Runs the kuberator variant until SIGTERM; returns the reconcile count.
///
/// # Errors
/// The operator cannot start.
pub async fn run_kuberator(client: Client, concurrency: u16) -> anyhow::Result<u64> {
    let reconciles = Arc::new(AtomicU64::new(0));
    BenchKuberatorChildren {
        reconciles: reconciles.clone(),
    }
    .operator(client)?
    .concurrency(concurrency)
    .shutdown_on_signal()
    .run()
    .await?;
    Ok(reconciles.load(Ordering::Relaxed))
}

/// The raw kube-rs variant's context.
struct RawChildren {
    client: Client,
    recorder: Recorder,
    reconciles: AtomicU64,
}

/// A raw kube-rs reconcile error.
#[derive(Debug, thiserror::Error)]
enum RawChildrenError {
    #[error("kube: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<RawChildrenError>>),
}

async fn raw_reconcile(
    object: Arc<BenchObject>,
    ctx: Arc<RawChildren>,
) -> Result<RawAction, RawChildrenError> {
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    let api: Api<BenchObject> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => raw_apply(&object, &api, &ctx).await,
            Finalizer::Cleanup(_) => Ok(RawAction::await_change()),
        }
    })
    .await
    .map_err(|e| RawChildrenError::Finalizer(Box::new(e)))
}

async fn raw_apply(
    object: &BenchObject,
    api: &Api<BenchObject>,
    ctx: &RawChildren,
) -> Result<RawAction, RawChildrenError> {
    let mut config_map = child(object);
    config_map.metadata.owner_references = object.controller_owner_ref(&()).map(|r| vec![r]);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    config_maps
        .patch(
            &object.name_any(),
            &PatchParams::apply("bench.kuberator.dev/raw").force(),
            &Patch::Apply(&config_map),
        )
        .await?;
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
    Ok(RawAction::await_change())
}

fn raw_error_policy(
    _object: Arc<BenchObject>,
    error: &RawChildrenError,
    _ctx: Arc<RawChildren>,
) -> RawAction {
    tracing::warn!(%error, "reconcile failed");
    RawAction::requeue(Duration::from_secs(1))
}

/// Runs the raw kube-rs variant (`Controller::owns`) until SIGTERM; returns the reconcile count.
///
/// # Errors
/// None today.
pub async fn run_raw(client: Client, concurrency: u16) -> anyhow::Result<u64> {
    let ctx = Arc::new(RawChildren {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "bench.kuberator.dev/raw".into(),
                instance: Some("raw".into()),
            },
        ),
        client: client.clone(),
        reconciles: AtomicU64::new(0),
    });
    Controller::new(
        Api::<BenchObject>::namespaced(client.clone(), NAMESPACE),
        watcher::Config::default(),
    )
    .owns(
        Api::<ConfigMap>::namespaced(client, NAMESPACE),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(concurrency))
    .shutdown_on_signal()
    .run(raw_reconcile, raw_error_policy, ctx.clone())
    .for_each(|_| async {})
    .await;
    Ok(ctx.reconciles.load(Ordering::Relaxed))
}

/// One implementation's reconciles over two generations of `n` objects.
#[derive(Clone, Debug)]
pub struct GenerationsResult {
    /// Which implementation.
    pub implementation: Impl,
    /// Objects.
    pub n: usize,
    /// Reconcile calls the process reported.
    pub reconciles: Option<u64>,
    /// API writes of the operator (the driver's creates and spec patches excluded).
    pub writes: f64,
    /// First create → last generation-2 status seen.
    pub wall: Duration,
}

impl GenerationsResult {
    fn per_generation(&self) -> Option<f64> {
        Some(self.reconciles? as f64 / (2 * self.n) as f64)
    }
}

/// How long the operator runs on after the last status, so that reconciles its own writes
/// trigger late are counted too.
const SETTLE: Duration = Duration::from_secs(3);

impl Bench {
    /// Two generations of `n` objects with an owned child each, through `implementation`.
    pub(super) async fn generations(
        &self,
        implementation: Impl,
        n: usize,
    ) -> anyhow::Result<GenerationsResult> {
        let prefix = format!("gen-{}-", implementation.name());
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        eprintln!(
            "[bench] generations: {} with owned children, {n} objects …",
            implementation.name()
        );
        let before = self.requests().await?;
        let extra: &[&str] = match implementation {
            Impl::ControllerRuntime => &["--children"],
            _ => &["--children", "true"],
        };
        let operator = self.spawn_with(implementation, extra).await?;
        let start = Instant::now();
        let timeout = Duration::from_secs(60) + Duration::from_millis(40) * n as u32;
        let mut observed = self.observer.track_generation(&prefix, 1);
        self.create(&names, None).await?;
        if tokio::time::timeout(timeout, observed.wait_for(|seen| *seen >= n))
            .await
            .is_err()
        {
            operator.stop().await?;
            bail!("generations: {} missed generation 1", implementation.name());
        }
        self.observer.take();
        let mut observed = self.observer.track_generation(&prefix, 2);
        let api: Api<BenchObject> = Api::namespaced(self.env.client(), NAMESPACE);
        let bump = json!({ "spec": { "replicas": 4 } });
        let (api, bump) = (&api, &bump);
        futures::stream::iter(names.iter())
            .map(|name| async move {
                api.patch(name, &PatchParams::default(), &Patch::Merge(bump))
                    .await
            })
            .buffer_unordered(usize::from(self.concurrency))
            .try_collect::<Vec<_>>()
            .await?;
        if tokio::time::timeout(timeout, observed.wait_for(|seen| *seen >= n))
            .await
            .is_err()
        {
            operator.stop().await?;
            bail!("generations: {} missed generation 2", implementation.name());
        }
        let seen = self.observer.take();
        let wall = seen
            .values()
            .max()
            .map_or(Duration::ZERO, |end| end.saturating_duration_since(start));
        tokio::time::sleep(SETTLE).await;
        let reconciles = operator.stop().await?;
        let requests = self.requests().await?.since(&before);
        self.cleanup().await?;
        Ok(GenerationsResult {
            implementation,
            n,
            reconciles,
            writes: requests.sum(RequestKind::is_write) - 2.0 * n as f64,
            wall,
        })
    }
}

/// The reconciles-per-generation table.
pub fn generations_table(n: usize, results: &[GenerationsResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.implementation.name().to_owned(),
                r.reconciles.map_or_else(|| "-".into(), |c| c.to_string()),
                r.per_generation()
                    .map_or_else(|| "-".into(), |p| format!("{p:.2}")),
                format!("{:.0}", r.writes),
                format!("{:.2}", r.writes / (2 * r.n) as f64),
                format!("{:.2}", r.wall.as_secs_f64()),
            ]
        })
        .collect();
    let mut out = format!(
        "## Reconciles per generation with owned children ({n} objects × 2 generations, one owned ConfigMap each; goal 1.00)\n\n"
    );
    out += &markdown(
        &[
            "",
            "reconcile calls",
            "per generation",
            "API writes (operator)",
            "writes per generation",
            "wall time (s)",
        ],
        &rows,
    );
    let find = |i: Impl| results.iter().find(|r| r.implementation == i);
    if let Some(k) = find(Impl::Kuberator).and_then(GenerationsResult::per_generation) {
        for other in [Impl::Raw, Impl::ControllerRuntime] {
            if let Some(b) = find(other).and_then(GenerationsResult::per_generation) {
                let _ = writeln!(
                    out,
                    "\nkuberator/{} reconciles per generation: {:.2}",
                    other.name(),
                    k / b
                );
            }
        }
    }
    out
}
