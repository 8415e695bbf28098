//! The throughput, memory and event-storm benchmarks behind `make bench` (see `BENCHMARKS.md`).
//!
//! One workload, three implementations, each run as its own process (`bench_operator <impl>`):
//!
//! - [`kuberator_impl`]: an operator written with `#[kuberator::operator]`;
//! - [`raw`]: a hand-written `kube::runtime::Controller` as the kube-rs docs teach it (the
//!   `finalizer` helper, a status patch, a `kube::runtime::events::Recorder`);
//! - [`limit`]: a plain client doing the same writes per object with no watch and no
//!   controller, fed the created objects by the driver: the API server's own limit.
//!
//! The driver ([`driver`]) starts a `TestEnv`, runs the workload through each implementation
//! and prints the tables. [`manager`] adds the manager row: two controllers sharing a kind in one
//! `Manager` against the same two as separate operators; [`shards`] the sharding rows: 1, 2 and 4
//! replicas of a sharded operator over one kind's objects; [`webhooks`] the admission-latency
//! row: creates with and without kuberator's validating and mutating webhooks.

pub mod children;
pub mod controller_runtime;
pub mod driver;
pub mod kuberator_impl;
pub mod limit;
pub mod manager;
pub mod metrics;
pub mod proc;
pub mod raw;
pub mod scale;
pub mod shards;
pub mod webhooks;

use kuberator::prelude::*;

/// The finalizer every implementation adds.
pub const FINALIZER: &str = "bench.kuberator.dev/cleanup";
/// The namespace the benchmark objects live in.
pub const NAMESPACE: &str = "default";
/// Reconciles at once, in every implementation (and the driver's create concurrency).
pub const DEFAULT_CONCURRENCY: u16 = 8;
/// The event every reconcile emits.
pub const EVENT_REASON: &str = "Reconciled";
/// The event's action.
pub const EVENT_ACTION: &str = "Reconcile";
/// What a child prints on exit, followed by its reconcile count.
pub const RECONCILES_LINE: &str = "reconciles=";

/// The benchmark's resource: a spec worth a few hundred bytes, like a small real CR.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "bench.kuberator.dev",
    version = "v1",
    kind = "BenchObject",
    namespaced,
    status = "BenchObjectStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct BenchObjectSpec {
    /// Filler, so that objects have a realistic size.
    pub payload: String,
    /// A number, as real specs have.
    pub replicas: i32,
}

/// What every implementation writes: the generation it has seen.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct BenchObjectStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
}

/// A fresh object named `name` (spec of about 256 bytes).
pub fn bench_object(name: &str) -> BenchObject {
    let mut object = BenchObject::new(
        name,
        BenchObjectSpec {
            payload: "x".repeat(256),
            replicas: 3,
        },
    );
    object.metadata.namespace = Some(NAMESPACE.to_owned());
    object
}

/// Whether `object`'s status reports its current generation.
pub fn is_observed(object: &BenchObject) -> bool {
    let observed = object
        .status
        .as_ref()
        .and_then(|status| status.observed_generation);
    observed.is_some() && observed == object.metadata.generation
}

/// A client from a kubeconfig file (what the operator processes get from the driver).
///
/// # Errors
/// The file cannot be read or the client cannot be built.
pub async fn client_from_kubeconfig(path: &str) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}
