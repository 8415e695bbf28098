//! The operator the fault suite (`tests/faults.rs`) and its replica process
//! (`tests/bin/fault_replica.rs`) run: what a user writes with the macro — a finalizer, a status
//! with `observedGeneration`, an owned ConfigMap per object (deleted again in `cleanup`, so that
//! "no orphan child" needs no garbage collector) and an event per apply.
#![allow(missing_docs)]

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DeleteParams;
use kuberator::prelude::*;

/// The finalizer of the fault operator.
pub const FINALIZER: &str = "faults.kuberator.dev/cleanup";
/// The label on every child, naming its owner.
pub const OWNER_LABEL: &str = "faults.kuberator.dev/owner";

/// The resource of the fault suite.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "faults.kuberator.dev",
    version = "v1",
    kind = "Sample",
    namespaced,
    status = "SampleStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct SampleSpec {
    /// Copied into the child and `status.appliedValue`.
    pub value: i32,
    /// While true, `apply` never returns (a hung handler).
    #[serde(default)]
    pub hang: bool,
    /// Fail with this message (a handler error).
    #[serde(default)]
    pub fail: Option<String>,
    /// The `fail` message repeated this many times: a huge error from a small spec (etcd would
    /// not store a 2 MiB spec).
    #[serde(default)]
    pub fail_repeat: Option<u32>,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct SampleStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    pub applied_value: Option<i32>,
}

/// The handler's error.
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum SampleError {
    /// `spec.fail` was set.
    #[error("{0}")]
    Asked(String),
}

/// What the handlers did, per object.
#[derive(Default)]
pub struct Journal {
    applies: Mutex<HashMap<String, usize>>,
    cleanups: Mutex<HashMap<String, usize>>,
    /// Print `apply start|end <name> <value> <unix nanos>` lines (the replica process does).
    pub print: bool,
}

impl Journal {
    /// A journal that also prints its lines.
    pub fn printing() -> Self {
        Journal {
            print: true,
            ..Journal::default()
        }
    }
    pub fn applies(&self, name: &str) -> usize {
        lock(&self.applies).get(name).copied().unwrap_or(0)
    }
    pub fn total_applies(&self) -> usize {
        lock(&self.applies).values().sum()
    }
    pub fn cleanups(&self, name: &str) -> usize {
        lock(&self.cleanups).get(name).copied().unwrap_or(0)
    }
    fn count(map: &Mutex<HashMap<String, usize>>, name: String) {
        *lock(map).entry(name).or_default() += 1;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The fault operator's state.
pub struct Samples {
    pub journal: Arc<Journal>,
    /// How long each apply works before writing (to be caught in flight).
    pub work: Duration,
}

#[kuberator::operator(
    resource = Sample,
    finalizer = "faults.kuberator.dev/cleanup",
    events = "faults.kuberator.dev/operator",
    namespaces("default"),
    owns(ConfigMap),
    concurrency = 4
)]
impl Samples {
    async fn apply(&self, sample: Arc<Sample>, ctx: &Ctx<Sample>) -> Result<Action> {
        let name = sample.name_any();
        let value = sample.spec.value;
        Journal::count(&self.journal.applies, name.clone());
        if self.journal.print {
            println!("apply start {name} {value} {}", unix_nanos());
        }
        if sample.spec.hang {
            std::future::pending::<()>().await;
        }
        if let Some(message) = &sample.spec.fail {
            let times = sample.spec.fail_repeat.unwrap_or(1) as usize;
            return Err(SampleError::Asked(message.repeat(times)).into());
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        if self.journal.print {
            println!("apply end {name} {value} {}", unix_nanos());
        }
        ctx.apply_child(&sample, child(&name, value)).await?;
        ctx.update_status(
            &sample,
            SampleStatus {
                applied_value: Some(value),
                ..SampleStatus::default()
            },
        )
        .await?;
        ctx.emit(
            &sample,
            EventData::normal("Applied", "Reconcile").note(format!("value {value}")),
        )
        .await;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, sample: Arc<Sample>, ctx: &Ctx<Sample>) -> Result<Action> {
        let name = sample.name_any();
        Journal::count(&self.journal.cleanups, name.clone());
        let namespace = sample.namespace().unwrap_or_default();
        let children: Api<ConfigMap> = Api::namespaced(ctx.client().clone(), &namespace);
        match children.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(Error::kube(
                    "deleting child",
                    ObjectKey::of(&*sample),
                    error,
                ));
            }
        }
        Ok(Action::await_change())
    }
}

/// The child ConfigMap of `name`.
pub fn child(name: &str, value: i32) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(OWNER_LABEL.to_owned(), name.to_owned())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".to_owned(), value.to_string())])),
        ..ConfigMap::default()
    }
}
