//! Scale out across replicas (issue 14), each replica a separate process (`tests/bin/
//! replica.rs`): a standby that wins the Lease acts on the cache's current objects, never on
//! the snapshots its reconciles were parked with; shard members split the objects, take over
//! those of a killed member and hand some to a member that joins, never two on one object.

use std::time::Duration;

use futures::StreamExt;
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

// ---------------------------------------------------------------------------------------------
// Sharding: replicas of the shard group `scale-test` (`KUBERATOR_REPLICA_MODE=shard`).

/// The label naming an object's owner in the group `scale-test`.
const OWNER: &str = "kuberator.dev/shard-scale-test";
/// The members' lease duration (`tests/bin/replica.rs`).
const SHARD_LEASE: Duration = Duration::from_secs(4);
/// Objects the sharding test spreads.
const OBJECTS: usize = 300;

fn sharded(i: usize) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("obj-{i:04}")),
            labels: Some([("kuberator-test".to_owned(), "shard".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

/// Object name -> owner label, for the sharded objects.
async fn owners(api: &Api<ConfigMap>) -> std::collections::BTreeMap<String, String> {
    let list = api
        .list(&kube::api::ListParams::default().labels("kuberator-test=shard"))
        .await
        .unwrap();
    list.items
        .into_iter()
        .map(|cm| {
            let owner = cm.labels().get(OWNER).cloned().unwrap_or_default();
            (cm.name_any(), owner)
        })
        .collect()
}

/// The first reconcile start of `name` by `replica` at or after `since` (unix ns).
fn started_since(replica: &Replica, name: &str, since: u128) -> Option<u128> {
    let prefix = format!("reconcile start {name} ");
    replica
        .lines()
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix)?.parse::<u128>().ok())
        .find(|at| *at >= since)
}

/// Waits until every object is labelled with its rendezvous owner among `replicas` and that
/// owner reconciled it at or after `since`; returns the owners and, per object, when its owner
/// started on it.
async fn settled(
    api: &Api<ConfigMap>,
    replicas: &[(&str, &Replica)],
    since: u128,
    within: Duration,
) -> (
    std::collections::BTreeMap<String, String>,
    std::collections::BTreeMap<String, u128>,
) {
    let end = std::time::Instant::now() + within;
    loop {
        let owners = owners(api).await;
        let mut started = std::collections::BTreeMap::new();
        let mut missing = Vec::new();
        let members: Vec<&str> = replicas.iter().map(|(member, _)| *member).collect();
        for (name, owner) in &owners {
            let expected =
                kuberator::runtime::rendezvous(members.iter().copied(), &format!("default/{name}"));
            let at = replicas
                .iter()
                .find(|(member, _)| member == owner && Some(*member) == expected)
                .and_then(|(_, replica)| started_since(replica, name, since));
            match at {
                Some(at) => {
                    started.insert(name.clone(), at);
                }
                None => missing.push(format!("{name} ({owner:?})")),
            }
        }
        if missing.is_empty() && owners.len() == OBJECTS {
            return (owners, started);
        }
        assert!(
            std::time::Instant::now() < end,
            "not settled within {within:?}: {} objects unowned or not reconciled by their owner, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `count` membership Leases of `scale-test` have a holder.
async fn members_hold_leases(env: &TestEnv, count: usize) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(env.client(), "default");
    let end = std::time::Instant::now() + 30 * SECOND;
    loop {
        let held = leases
            .list(&kube::api::ListParams::default().labels("kuberator.dev/shard-group=scale-test"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|lease| {
                lease
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.holder_identity.as_deref())
                    .is_some_and(|holder| !holder.is_empty())
            })
            .count();
        if held >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{held} of {count} members hold a Lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No object was reconciled by two replicas at once: per-object reconcile intervals of
/// different replicas never overlap (an interval still open ends at `until`).
fn assert_never_two_at_once(replicas: &[(&str, &Replica, Option<u128>)]) {
    let mut by_object: std::collections::BTreeMap<String, Vec<(u128, u128, &str)>> =
        std::collections::BTreeMap::new();
    for (member, replica, until) in replicas {
        for (start, end, name) in replica.intervals(*until) {
            by_object
                .entry(name)
                .or_default()
                .push((start, end, member));
        }
    }
    for (name, mut intervals) in by_object {
        intervals.sort();
        for pair in intervals.windows(2) {
            let ((_, first_end, first), (second_start, _, second)) = (pair[0], pair[1]);
            assert!(
                first == second || first_end < second_start,
                "{name} was reconciled by {first} and {second} at once"
            );
        }
    }
}

fn shares(
    owners: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, usize> {
    let mut shares = std::collections::BTreeMap::new();
    for owner in owners.values() {
        *shares.entry(owner.clone()).or_default() += 1;
    }
    shares
}

/// Three members split 300 objects (each reconciled by its owner, shares within ±15 % of a
/// third); a fourth joins and takes about a quarter, each moved object drained by its old owner
/// before the new one starts; SIGKILL one and the others take its objects over within the lease
/// duration + 5 s. Never two replicas on one object at once.
#[tokio::test]
async fn three_shards_split_the_objects_hand_a_quarter_to_a_fourth_and_take_over_a_killed_one() {
    let env = env().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let health = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let a = Replica::spawn_mode(
        "shard-a",
        &env,
        "shard",
        &[("KUBERATOR_REPLICA_HEALTH", health.to_string())],
    );
    let b = Replica::spawn_mode("shard-b", &env, "shard", &[]);
    let mut c = Replica::spawn_mode("shard-c", &env, "shard", &[]);
    for replica in [&a, &b, &c] {
        wait_line(replica, "started", 30 * SECOND).await;
    }
    members_hold_leases(&env, 3).await;
    // Each member's view of the others follows within a retry period (1 s).
    tokio::time::sleep(2 * SECOND).await;
    let begin = crate::operations::unix_nanos_now();
    let creates = (0..OBJECTS).map(|i| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &sharded(i))
                .await
                .unwrap()
        }
    });
    futures::stream::iter(creates)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let three = [("shard-a", &a), ("shard-b", &b), ("shard-c", &c)];
    let (initial, _) = settled(&api, &three, begin, 60 * SECOND).await;
    let settled_in = crate::operations::millis(crate::operations::unix_nanos_now() - begin);
    let split = shares(&initial);
    eprintln!("3 shards, {OBJECTS} objects: settled in {settled_in:?}, shares {split:?}");
    assert_eq!(split.len(), 3, "{split:?}");
    // shard-a's /metrics: the member set and every member's objects, as its cache sees them.
    let end = std::time::Instant::now() + 10 * SECOND;
    loop {
        let (_, metrics) = crate::operations::http_get(health, "/metrics").await;
        let members = ["shard-a", "shard-b", "shard-c"]
            .iter()
            .all(|m| metrics.contains(&format!("kuberator_shard_member{{member=\"{m}\"}} 1")));
        let objects = split.iter().all(|(m, share)| {
            metrics.contains(&format!(
                "kuberator_shard_objects{{controller=\"configmaps\",shard=\"{m}\"}} {share}"
            ))
        });
        let rebalanced = metrics.contains("kuberator_shard_rebalances_total ");
        if members && objects && rebalanced {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "shard metrics of shard-a:\n{}",
            metrics
                .lines()
                .filter(|l| l.starts_with("kuberator_shard"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (member, share) in &split {
        let third = OBJECTS as f64 / 3.0;
        assert!(
            (*share as f64 - third).abs() <= 0.15 * third,
            "{member} holds {share} of {OBJECTS}: {split:?}"
        );
    }

    // A fourth member joins: about a quarter moves to it, each drained first.
    let joined = crate::operations::unix_nanos_now();
    let d = Replica::spawn_mode("shard-d", &env, "shard", &[]);
    let end = std::time::Instant::now() + 30 * SECOND;
    let moved = loop {
        let now_owners = owners(&api).await;
        let to_d: Vec<&String> = now_owners
            .iter()
            .filter(|(_, owner)| *owner == "shard-d")
            .map(|(name, _)| name)
            .collect();
        let reconciled = to_d
            .iter()
            .filter(|name| started_since(&d, name, joined).is_some())
            .count();
        let expected = now_owners
            .keys()
            .filter(|name| {
                kuberator::runtime::rendezvous(
                    ["shard-a", "shard-b", "shard-c", "shard-d"],
                    &format!("default/{name}"),
                ) == Some("shard-d")
            })
            .count();
        if !to_d.is_empty() && reconciled == to_d.len() && to_d.len() == expected {
            break now_owners;
        }
        assert!(
            std::time::Instant::now() < end,
            "shard-d took {} of {expected} objects ({reconciled} reconciled)",
            to_d.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let moved_count = moved
        .iter()
        .filter(|(name, owner)| initial[*name] != **owner)
        .count();
    eprintln!(
        "shard-d joined: {moved_count} of {OBJECTS} objects moved in {:?}; shares {:?}",
        crate::operations::millis(crate::operations::unix_nanos_now() - joined),
        shares(&moved)
    );
    assert!(
        moved_count as f64 <= (0.25 + 0.10) * OBJECTS as f64,
        "{moved_count} objects moved"
    );
    for (name, owner) in &moved {
        if owner != "shard-d" {
            assert_eq!(&initial[name], owner, "{name} moved between old members");
        }
    }
    // SIGKILL one member: the others take its objects over once its Lease expired.
    let killed = c.signal("KILL");
    c.wait_exit(10 * SECOND).await;
    let orphans: Vec<String> = moved
        .iter()
        .filter(|(_, owner)| *owner == "shard-c")
        .map(|(name, _)| name.clone())
        .collect();
    let three = [("shard-a", &a), ("shard-b", &b), ("shard-d", &d)];
    let (after_kill, started) = settled(&api, &three, killed, SHARD_LEASE + 25 * SECOND).await;
    let takeover = orphans
        .iter()
        .map(|name| crate::operations::millis(started[name] - killed))
        .max()
        .unwrap();
    eprintln!(
        "SIGKILL of shard-c: its {} objects taken over within {takeover:?}; shares {:?}",
        orphans.len(),
        shares(&after_kill)
    );
    assert!(
        takeover <= SHARD_LEASE + 5 * SECOND,
        "takeover took {takeover:?}"
    );
    for (name, owner) in &moved {
        if owner != "shard-c" {
            assert_eq!(
                &after_kill[name], owner,
                "{name} moved between live members"
            );
        }
    }

    assert_never_two_at_once(&[
        ("shard-a", &a, None),
        ("shard-b", &b, None),
        ("shard-c", &c, Some(killed)),
        ("shard-d", &d, None),
    ]);
}
