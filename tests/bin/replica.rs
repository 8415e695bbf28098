//! One operator replica for `operations::two_replica_processes_never_reconcile_at_the_same_time`:
//! an `Operator` with leader election (the runtime gates its reconciles), reconciling labelled
//! ConfigMaps and printing `leader <bool> <ns>`, `reconcile start|end <name> <ns>`,
//! `signal <ns>` and `exited <ns>` lines (unix nanoseconds) for the test to check.
//!
//! Settings come from `KUBERATOR_REPLICA_KUBECONFIG` and `KUBERATOR_REPLICA_IDENTITY`; the
//! process exits when its stdin closes (the test went away).
//!
//! With `KUBERATOR_REPLICA_MANAGER=1` the replica is a `Manager` of two controllers (labelled
//! ConfigMaps and labelled Secrets) under the manager's one leader election, for
//! `manager::two_manager_processes_hand_every_controller_over_on_sigterm`; reconcile lines then
//! name the kind: `reconcile start ConfigMap/<name> <ns>`.
//!
//! With `KUBERATOR_REPLICA_MODE=child` the replica keeps one child ConfigMap per primary (for
//! `scale_out::a_standby_that_wins_reconciles_the_current_object`); with
//! `KUBERATOR_REPLICA_MODE=shard` it is one member of the shard group `scale-test` (membership
//! Leases of 4 s), reconciling ConfigMaps labelled `kuberator-test=shard` for
//! `KUBERATOR_REPLICA_WORK_MS` (default 20) each, with `/metrics` on
//! `KUBERATOR_REPLICA_HEALTH` if set. With `KUBERATOR_REPLICA_WRITES=1` too, a shard member
//! applies `data.want` into `data.done` (see `Sharded`).
//!
//! Every replica sends the User-Agent `kuberator-replica/<identity>` (the audit log tells their
//! requests apart by it).

use std::{
    io::Read,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Client, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use kuberator::{
    Action, Operator, Reconciler,
    runtime::{LeaderElection, Manager},
};

/// The Lease the replicas compete for.
const LEASE: &str = "replica-test";
/// The Lease the manager replicas compete for.
const MANAGER_LEASE: &str = "replica-manager-test";
/// Only ConfigMaps with this label are reconciled.
const LABEL: &str = "kuberator-test=replica";
/// How long each reconcile takes: long enough to be caught in the act.
const WORK: Duration = Duration::from_millis(300);

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

struct Replica;

/// Reconciles any kind, printing `reconcile start|end <Kind>/<name>` lines.
struct Named;

#[async_trait::async_trait]
impl<K> Reconciler<K> for Named
where
    K: kuberator::finalize::Object,
{
    async fn reconcile(&self, object: Arc<K>) -> kuberator::Result<Action> {
        let name = format!("{}/{}", K::kind(&()), object.name_any());
        println!("reconcile start {name} {}", unix_nanos());
        tokio::time::sleep(WORK).await;
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }
}

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Replica {
    async fn reconcile(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let name = object.name_any();
        println!("reconcile start {name} {}", unix_nanos());
        tokio::time::sleep(WORK).await;
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kubeconfig = std::env::var("KUBERATOR_REPLICA_KUBECONFIG")?;
    let identity = std::env::var("KUBERATOR_REPLICA_IDENTITY")?;
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
    let mut config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    // Its own user agent, to tell its requests apart in the API server's audit log.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&format!("kuberator-replica/{identity}"))?,
    ));
    let client = Client::try_from(config)?;
    match std::env::var("KUBERATOR_REPLICA_MODE").as_deref() {
        Ok("child") => return run_children(client, identity).await,
        Ok("shard") => return run_shard(client, identity).await,
        _ => {}
    }
    let manager = std::env::var("KUBERATOR_REPLICA_MANAGER").is_ok_and(|v| v == "1");
    let lease = if manager { MANAGER_LEASE } else { LEASE };
    let leadership = Arc::new(
        LeaderElection::new(client.clone(), "default", lease)
            .identity(identity)
            .start()?,
    );
    print_leadership(&leadership);
    if manager {
        return run_manager(client, leadership).await;
    }
    Operator::with_reconciler(client, Replica)
        .namespaces(["default"])
        .label_selector(LABEL)
        .concurrency(4)
        .with_leadership(leadership)
        .shutdown_on(async {
            kuberator::shutdown_signal().await;
            println!("signal {}", unix_nanos());
        })
        .run()
        .await?;
    println!("exited {}", unix_nanos());
    Ok(())
}

/// Two controllers, one manager, one Lease: every controller reconciles only while it leads.
async fn run_manager(
    client: Client,
    leadership: Arc<kuberator::runtime::Leadership>,
) -> anyhow::Result<()> {
    Manager::new(client.clone())
        .add(
            Operator::<ConfigMap>::with_reconciler(client.clone(), Named)
                .name("replica-configmaps")
                .namespaces(["default"])
                .label_selector(LABEL),
        )
        .add(
            Operator::<Secret>::with_reconciler(client, Named)
                .name("replica-secrets")
                .namespaces(["default"])
                .label_selector(LABEL),
        )
        .with_leadership(leadership)
        .shutdown_on(async {
            kuberator::shutdown_signal().await;
            println!("signal {}", unix_nanos());
        })
        .run()
        .await?;
    println!("exited {}", unix_nanos());
    Ok(())
}

/// The Lease of the standby-correctness replicas (`KUBERATOR_REPLICA_MODE=child`).
const CHILD_LEASE: &str = "replica-child-test";
/// Primaries of the child mode carry this label; their children carry `kuberator-test/owner`.
const CHILD_LABEL: &str = "kuberator-test=standby";

/// Keeps exactly one child ConfigMap per primary, named by the primary's `data.child`, deleting
/// any other child it made before; prints `observed <name> <resourceVersion> <t>`,
/// `created <child> <t>` and `deleted <child> <t>`.
struct Children {
    client: Client,
}

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Children {
    async fn reconcile(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};

        let name = object.name_any();
        let namespace = object.namespace().unwrap_or_default();
        println!("reconcile start {name} {}", unix_nanos());
        println!(
            "observed {name} {} {}",
            object.resource_version().unwrap_or_default(),
            unix_nanos()
        );
        // Slow enough that a parked reconcile is still parked when the test acts.
        tokio::time::sleep(WORK).await;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(self.client.clone(), &namespace);
        let wanted = object
            .data
            .as_ref()
            .and_then(|data| data.get("child"))
            .cloned();
        let owner_label = format!("kuberator-test/owner={name}");
        let existing = api
            .list(&ListParams::default().labels(&owner_label))
            .await
            .map_err(kuberator::Error::from)?;
        for child in existing.items {
            let child_name = child.name_any();
            if Some(&child_name) != wanted.as_ref() {
                api.delete(&child_name, &DeleteParams::default())
                    .await
                    .map_err(kuberator::Error::from)?;
                println!("deleted {child_name} {}", unix_nanos());
            }
        }
        if let Some(wanted) = wanted
            && api
                .get_opt(&wanted)
                .await
                .map_err(kuberator::Error::from)?
                .is_none()
        {
            let child = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(wanted.clone()),
                    labels: Some([("kuberator-test/owner".to_owned(), name.clone())].into()),
                    ..ObjectMeta::default()
                },
                ..ConfigMap::default()
            };
            api.create(&PostParams::default(), &child)
                .await
                .map_err(kuberator::Error::from)?;
            println!("created {wanted} {}", unix_nanos());
        }
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }
}

/// The standby-correctness replica: leader election on its own Lease, the `Children` handler.
async fn run_children(client: Client, identity: String) -> anyhow::Result<()> {
    let leadership = Arc::new(
        LeaderElection::new(client.clone(), "default", CHILD_LEASE)
            .identity(identity)
            .start()?,
    );
    print_leadership(&leadership);
    Operator::with_reconciler(client.clone(), Children { client })
        .namespaces(["default"])
        .label_selector(CHILD_LABEL)
        .concurrency(4)
        .with_leadership(leadership)
        .shutdown_on(async {
            kuberator::shutdown_signal().await;
            println!("signal {}", unix_nanos());
        })
        .run()
        .await?;
    println!("exited {}", unix_nanos());
    Ok(())
}

/// Prints `leader <bool> <t>` at start and on every change.
fn print_leadership(leadership: &kuberator::runtime::Leadership) {
    let mut state = leadership.subscribe();
    tokio::spawn(async move {
        loop {
            let leader = *state.borrow_and_update();
            println!("leader {leader} {}", unix_nanos());
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Shard members reconcile ConfigMaps with this label.
const SHARD_LABEL: &str = "kuberator-test=shard";

/// Prints `reconcile start|end <name> <t>` around `work` of (simulated) I/O. With a `writer`
/// (`KUBERATOR_REPLICA_WRITES=1`, the fencing test), the work is only done for an object whose
/// `data.want` differs from its `data.done`, and ends with a merge patch of `done = want`
/// through the operator's guarded client, printed as `wrote <name> <want> <t>`.
struct Sharded {
    work: Duration,
    writer: Option<Client>,
}

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Sharded {
    async fn reconcile(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let name = object.name_any();
        println!("reconcile start {name} {}", unix_nanos());
        let mut running = Unfinished(Some(name.clone()));
        let field = |key: &str| object.data.as_ref().and_then(|data| data.get(key)).cloned();
        match &self.writer {
            None => tokio::time::sleep(self.work).await,
            Some(client) => {
                if let Some(want) = field("want")
                    && field("done").as_ref() != Some(&want)
                {
                    tokio::time::sleep(self.work).await;
                    let api: kube::Api<ConfigMap> =
                        kube::Api::namespaced(client.clone(), "default");
                    let patch = serde_json::json!({ "data": { "done": want } });
                    api.patch(
                        &name,
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Merge(&patch),
                    )
                    .await
                    .map_err(kuberator::Error::from)?;
                    println!("wrote {name} {want} {}", unix_nanos());
                }
            }
        }
        running.0 = None;
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }
}

/// Prints `reconcile dropped <name> <t>` when a reconcile is dropped before its end (the
/// runtime cancelled it, e.g. its membership lapsed).
struct Unfinished(Option<String>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            println!("reconcile dropped {name} {}", unix_nanos());
        }
    }
}

/// The finalizer of `KUBERATOR_REPLICA_FINALIZER=1`.
const SHARD_FINALIZER: &str = "kuberator.dev/test-cleanup";

/// A shard member's handler with a finalizer: `apply` and `cleanup` print `reconcile
/// start|end <name> <t>` around `work`, and `cleanup` prints `cleanup <name> <t>` when done.
struct Finalizing {
    ctx: kuberator::Ctx<ConfigMap>,
    work: Duration,
}

#[async_trait::async_trait]
impl kuberator::Handler<ConfigMap> for Finalizing {
    fn ctx(&self) -> &kuberator::Ctx<ConfigMap> {
        &self.ctx
    }

    async fn apply(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let name = object.name_any();
        println!("reconcile start {name} {}", unix_nanos());
        let mut running = Unfinished(Some(name.clone()));
        tokio::time::sleep(self.work).await;
        running.0 = None;
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }

    async fn cleanup(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let name = object.name_any();
        println!("reconcile start {name} {}", unix_nanos());
        let mut running = Unfinished(Some(name.clone()));
        tokio::time::sleep(self.work).await;
        running.0 = None;
        println!("cleanup {name} {}", unix_nanos());
        println!("reconcile end {name} {}", unix_nanos());
        Ok(Action::await_change())
    }
}

/// One member of the shard group `scale-test`.
async fn run_shard(client: Client, identity: String) -> anyhow::Result<()> {
    let work = std::env::var("KUBERATOR_REPLICA_WORK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(20);
    let sharding = kuberator::runtime::Sharding::new("default", "scale-test")
        .identity(identity)
        .lease_duration(Duration::from_secs(4))
        .renew_deadline(Duration::from_secs(3))
        .retry_period(Duration::from_secs(1));
    // The handler's writes go through the operator's guard: refused once the membership lapsed.
    let guard = kuberator::runtime::RequestGuard::new();
    let writes = std::env::var("KUBERATOR_REPLICA_WRITES").is_ok_and(|v| v == "1");
    let handler = Sharded {
        work: Duration::from_millis(work),
        writer: writes.then(|| guard.client(client.clone())),
    };
    let finalizing = std::env::var("KUBERATOR_REPLICA_FINALIZER").is_ok_and(|v| v == "1");
    let operator = if finalizing {
        let ctx = kuberator::Ctx::<ConfigMap>::builder(client)
            .name("configmaps")
            .namespaces(["default"])
            .finalizer(Some(SHARD_FINALIZER))
            .build()?;
        Operator::new(Finalizing {
            ctx,
            work: handler.work,
        })
    } else {
        Operator::with_reconciler(client, handler).request_guard(guard)
    };
    let mut operator = operator
        .namespaces(["default"])
        .label_selector(SHARD_LABEL)
        .concurrency(8)
        .sharding(sharding)
        .shutdown_on(async {
            kuberator::shutdown_signal().await;
            println!("signal {}", unix_nanos());
        });
    if let Ok(addr) = std::env::var("KUBERATOR_REPLICA_HEALTH") {
        operator = operator.health(addr.parse()?);
    }
    println!("started {}", unix_nanos());
    operator.run().await?;
    println!("exited {}", unix_nanos());
    Ok(())
}
