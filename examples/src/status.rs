//! Status the way Kubernetes tools read it: `status.observedGeneration` plus the kstatus
//! conditions `Ready`, `Reconciling` and `Stalled` from [`kuberator::conditions`], so that
//! `kubectl wait --for=condition=Ready` (and Argo CD, Flux, kstatus) can tell when a change is
//! done.
//!
//! A `Database` is provisioned one replica per reconcile: while it grows, `Reconciling` is `True`
//! and `Ready` is `Unknown`; when all replicas are up, `Ready` is `True`. Scaling it is a new
//! generation, and `kubectl wait` only believes a `Ready` computed for that generation (it
//! compares `observedGeneration`). Zero replicas is a terminal error: `Stalled` is `True`,
//! `Ready` is `False`, and the operator waits for the next spec change.
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin status
//! ```

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    api::PostParams,
    runtime::watcher::{self, watch_object},
};
use kuberator::{
    conditions::{self, READY, STALLED},
    prelude::*,
    testing::TestEnv,
};

use crate::story::{self, kubectl};

/// A database with some replicas.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "status.kuberator.dev",
    version = "v1",
    kind = "Database",
    namespaced,
    status = "DatabaseStatus",
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Up","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#
)]
pub struct DatabaseSpec {
    /// How many replicas to run (at least 1).
    pub replicas: i32,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// Replicas up so far.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus).
    #[serde(default)]
    #[schemars(schema_with = "kuberator::conditions::schema")]
    pub conditions: Vec<Condition>,
}

/// Why a database cannot be provisioned.
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum DatabaseError {
    /// Nothing to run until the spec changes.
    #[error("spec.replicas is {0}: a database needs at least one replica")]
    #[status_error(terminal)]
    NoReplicas(i32),
}

/// The operator (no state of its own).
pub struct Databases;

#[kuberator::operator(resource = Database, namespaces("default"))]
impl Databases {
    async fn apply(&self, db: Arc<Database>, ctx: &Ctx<Database>) -> Result<Action> {
        let generation = db.metadata.generation;
        let wanted = db.spec.replicas;
        let mut status = db.status.clone().unwrap_or_default();
        if wanted < 1 {
            let error = DatabaseError::NoReplicas(wanted);
            let (reason, message) = (error.reason(), error.to_string());
            conditions::mark_stalled(&mut status.conditions, generation, &reason, &message);
            ctx.update_status(&db, status).await?;
            return Err(error.into());
        }
        // One more replica per reconcile, as if each took a while to start.
        status.ready_replicas = (status.ready_replicas + 1).min(wanted);
        let progress = format!("{}/{wanted} replicas ready", status.ready_replicas);
        if status.ready_replicas < wanted {
            conditions::mark_reconciling(&mut status.conditions, generation, "Scaling", &progress);
            ctx.update_status(&db, status).await?;
            return Ok(Action::requeue(Duration::from_millis(300)));
        }
        conditions::mark_ready(&mut status.conditions, generation, "Available", &progress);
        ctx.update_status(&db, status).await?;
        Ok(Action::await_change())
    }
}

/// What the story observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The `Ready` condition as a watching client saw it change while provisioning, e.g.
    /// `Unknown Scaling: 1/3 replicas ready`, …, `True Available: 3/3 replicas ready`.
    pub progress: Vec<String>,
    /// The status when the first `kubectl wait --for=condition=Ready` returned.
    pub ready: DatabaseStatus,
    /// The status when `kubectl wait` returned after scaling to 5 (generation 2).
    pub scaled: DatabaseStatus,
    /// The status when `kubectl wait --for=condition=Stalled` returned after scaling to 0.
    pub stalled: DatabaseStatus,
    /// `kubectl get databases` at the end.
    pub table: String,
}

/// Runs the `Database` operator in the background and tells the story.
///
/// # Errors
/// An API or kubectl error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Database>().await?;
    let operator = Databases.operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    let outcome = tell(env).await;
    running.stop().await??;
    outcome
}

async fn tell(env: &TestEnv) -> anyhow::Result<Outcome> {
    let databases: Api<Database> = Api::namespaced(env.client(), "default");
    println!("1. create database/orders with 3 replicas, and watch its Ready condition");
    let mut changes = watch_object(databases.clone(), "orders").boxed();
    changes.try_next().await?; // the initial list, without `orders`: watching from here on
    let watching = tokio::spawn(ready_changes(changes));
    let orders = Database::new("orders", DatabaseSpec { replicas: 3 });
    databases.create(&PostParams::default(), &orders).await?;
    let ready = kubectl_wait(env, &databases, READY).await?;
    let progress = watching.await??;
    for line in &progress {
        println!("   Ready: {line}");
    }

    println!("2. scale to 5 (generation 2): kubectl wait wants Ready for generation 2");
    let scale =
        |replicas: i32| Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
    databases
        .patch("orders", &PatchParams::default(), &scale(5))
        .await?;
    let scaled = kubectl_wait(env, &databases, READY).await?;
    println!(
        "   readyReplicas {}, observedGeneration {:?}",
        scaled.ready_replicas, scaled.observed_generation
    );

    println!("3. scale to 0: a terminal error, Stalled until the spec changes");
    databases
        .patch("orders", &PatchParams::default(), &scale(0))
        .await?;
    let stalled = kubectl_wait(env, &databases, STALLED).await?;
    let table = kubectl(env, &["get", "databases"]).await?;
    println!("   $ kubectl get databases");
    for line in table.lines() {
        println!("   {line}");
    }
    Ok(Outcome {
        progress,
        ready,
        scaled,
        stalled,
        table,
    })
}

/// `kubectl wait --for=condition=<condition> database/orders`, then the status it waited for.
async fn kubectl_wait(
    env: &TestEnv,
    databases: &Api<Database>,
    condition: &str,
) -> anyhow::Result<DatabaseStatus> {
    let condition = format!("--for=condition={condition}");
    let args = ["wait", &condition, "database/orders", "--timeout=30s"];
    let out = kubectl(env, &args).await?;
    println!("   $ kubectl {}\n   {}", args.join(" "), out.trim());
    let orders = databases.get_status("orders").await?;
    Ok(orders.status.unwrap_or_default())
}

/// The distinct states of `orders`' `Ready` condition, as a client watching it sees them, until
/// it is `True`.
async fn ready_changes(
    mut changes: BoxStream<'static, watcher::Result<Option<Database>>>,
) -> anyhow::Result<Vec<String>> {
    let mut seen: Vec<String> = Vec::new();
    let watch = async {
        while let Some(db) = changes.try_next().await? {
            let Some(ready) = db
                .and_then(|db| db.status)
                .and_then(|status| conditions::find(&status.conditions, READY).cloned())
            else {
                continue;
            };
            let line = format!("{} {}: {}", ready.status, ready.reason, ready.message);
            if seen.last() != Some(&line) {
                seen.push(line);
            }
            if ready.status == "True" {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(story::TIMEOUT, watch).await??;
    Ok(seen)
}
