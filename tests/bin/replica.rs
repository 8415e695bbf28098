//! One operator replica for `operations::two_replica_processes_never_reconcile_at_the_same_time`:
//! an `Operator` with leader election (the runtime gates its reconciles), reconciling labelled
//! ConfigMaps and printing `leader <bool> <ns>`, `reconcile start|end <name> <ns>`,
//! `signal <ns>` and `exited <ns>` lines (unix nanoseconds) for the test to check.
//!
//! Settings come from `KUBERATOR_REPLICA_KUBECONFIG` and `KUBERATOR_REPLICA_IDENTITY`; the
//! process exits when its stdin closes (the test went away).

use std::{
    io::Read,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Client, ResourceExt,
    config::{KubeConfigOptions, Kubeconfig},
};
use kuberator::{Action, Operator, Reconciler, runtime::LeaderElection};

/// The Lease the replicas compete for.
const LEASE: &str = "replica-test";
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
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let leadership = Arc::new(
        LeaderElection::new(client.clone(), "default", LEASE)
            .identity(identity)
            .start()?,
    );
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
