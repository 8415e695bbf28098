//! Scale out across replicas (issue 14), each replica a separate process (`tests/bin/
//! replica.rs`): a standby that wins the Lease acts on the cache's current objects, never on
//! the snapshots its reconciles were parked with.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use kuberator::testing::TestEnv;

use crate::{
    operations::{Replica, wait_line},
    support::*,
};

const SECOND: Duration = Duration::from_secs(1);

async fn env() -> TestEnv {
    init_tracing();
    TestEnv::start().await.expect("control plane")
}

/// The lines of `replica` starting with `prefix`.
fn lines_with(replica: &Replica, prefix: &str) -> Vec<String> {
    replica
        .lines()
        .into_iter()
        .filter(|line| line.starts_with(prefix))
        .collect()
}

/// A primary of the replica's child mode: it wants one child ConfigMap named `child`.
fn primary(name: &str, child: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kuberator-test".to_owned(), "standby".to_owned())].into()),
            ..ObjectMeta::default()
        },
        data: Some([("child".to_owned(), child.to_owned())].into()),
        ..ConfigMap::default()
    }
}

/// The standby parked a reconcile of `site` when `site` wanted the child `first`; then `site`
/// changed to want `second` and the leader deleted `first`. When the standby wins, its first
/// reconcile of `site` sees the current `resourceVersion`, and `first` is not recreated.
#[tokio::test]
async fn a_standby_that_wins_reconciles_the_current_object() {
    let env = env().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let mut a = Replica::spawn_mode("standby-a", &env, "child", &[]);
    wait_line(&a, "leader true", 30 * SECOND).await;
    let b = Replica::spawn_mode("standby-b", &env, "child", &[]);
    wait_line(&b, "leader false", 30 * SECOND).await;

    api.create(&PostParams::default(), &primary("site", "first"))
        .await
        .unwrap();
    wait_line(&a, "created first", 30 * SECOND).await;
    // The standby saw `site` too and parked its reconcile (it waits for the Lease).
    tokio::time::sleep(2 * SECOND).await;
    let patch = serde_json::json!({ "data": { "child": "second" } });
    api.patch("site", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_line(&a, "deleted first", 30 * SECOND).await;
    wait_line(&a, "created second", 30 * SECOND).await;
    let current = api.get("site").await.unwrap().resource_version().unwrap();
    assert!(
        api.get_opt("first").await.unwrap().is_none(),
        "the leader deleted `first`"
    );
    assert_eq!(lines_with(&b, "reconcile start"), Vec::<String>::new());

    a.signal("TERM");
    a.wait_exit(30 * SECOND).await;
    wait_line(&b, "leader true", 30 * SECOND).await;
    wait_line(&b, "reconcile end site", 30 * SECOND).await;
    let observed = lines_with(&b, "observed site ");
    let first_seen = observed[0].split(' ').nth(2).unwrap();
    assert_eq!(
        first_seen,
        current,
        "the new leader's first reconcile of `site` ran on an old snapshot; its output:\n{}",
        b.lines().join("\n")
    );
    assert_eq!(
        lines_with(&b, "created"),
        Vec::<String>::new(),
        "the new leader recreated a child"
    );
    assert_eq!(lines_with(&b, "deleted"), Vec::<String>::new());
    assert!(api.get_opt("first").await.unwrap().is_none());
    assert!(api.get_opt("second").await.unwrap().is_some());
}
