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
/// The members' retry period (`tests/bin/replica.rs`).
const SHARD_RETRY: Duration = Duration::from_secs(1);
/// Objects the sharding test spreads.
const OBJECTS: usize = 3_000;

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

/// A sharded object whose handler (`KUBERATOR_REPLICA_WRITES=1`) applies `want` into `done`.
fn wanting(i: usize, want: u32) -> ConfigMap {
    let mut object = sharded(i);
    object.data = Some([("want".to_owned(), want.to_string())].into());
    object
}

/// Sets `data.want` on every sharded object.
async fn set_want(api: &Api<ConfigMap>, names: &[String], want: u32) {
    let patch = serde_json::json!({ "data": { "want": want.to_string() } });
    for name in names {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
}

/// Waits until every object of `names` has `done == want == value`.
async fn wait_done(api: &Api<ConfigMap>, names: &[String], value: u32, within: Duration) {
    let end = std::time::Instant::now() + within;
    loop {
        let list = api
            .list(&kube::api::ListParams::default().labels("kuberator-test=shard"))
            .await
            .unwrap();
        let field = |cm: &ConfigMap, key: &str| cm.data.as_ref().and_then(|d| d.get(key)).cloned();
        let pending: Vec<String> = list
            .items
            .iter()
            .filter(|cm| names.contains(&cm.name_any()))
            .filter(|cm| {
                field(cm, "want") != Some(value.to_string())
                    || field(cm, "done") != Some(value.to_string())
            })
            .map(|cm| format!("{} {:?}", cm.name_any(), cm.data))
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{} objects not done at {value} within {within:?}, e.g. {:?}",
            pending.len(),
            &pending[..pending.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The unix nanoseconds of an audit event's RFC 3339 timestamp.
fn unix_nanos_of(timestamp: &str) -> u128 {
    let parsed: k8s_openapi::jiff::Timestamp = timestamp.parse().unwrap();
    u128::try_from(parsed.as_nanosecond()).unwrap()
}

/// The audit events of the replica `member` (by its User-Agent): `(received, verb, resource,
/// name, code)`.
fn requests_of(env: &TestEnv, member: &str) -> Vec<(u128, String, String, String, i64)> {
    let agent = format!("kuberator-replica/{member}");
    env.audit_events()
        .unwrap()
        .iter()
        .filter(|e| e["userAgent"] == agent.as_str())
        .map(|e| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            (
                unix_nanos_of(e["requestReceivedTimestamp"].as_str().unwrap()),
                text(&e["verb"]),
                text(&e["objectRef"]["resource"]),
                text(&e["objectRef"]["name"]),
                e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// Object name -> owner label, for the sharded objects.
async fn owners(api: &Api<ConfigMap>) -> std::collections::BTreeMap<String, String> {
    // Only the labels are needed: a metadata list costs the API server less, while it serves the
    // replicas on the same 2 cores.
    let list = api
        .list_metadata(&kube::api::ListParams::default().labels("kuberator-test=shard"))
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

/// Per object, the first reconcile start by `replica` at or after `since` (unix ns).
fn starts_since(replica: &Replica, since: u128) -> std::collections::HashMap<String, u128> {
    let mut starts = std::collections::HashMap::new();
    for line in replica.lines() {
        let Some(rest) = line.strip_prefix("reconcile start ") else {
            continue;
        };
        let Some((name, at)) = rest.split_once(' ') else {
            continue;
        };
        if let Ok(at) = at.parse::<u128>()
            && at >= since
        {
            starts.entry(name.to_owned()).or_insert(at);
        }
    }
    starts
}

/// Waits until every object is labelled with its rendezvous owner among `replicas` and that
/// owner reconciled it at or after `since` — or, for an object whose owner is the one it had in
/// `before`, at any time (a change of the member set does not reconcile what stays where it
/// is); returns the owners and, per object, when its owner started on it (at or after `since`
/// for the objects that moved).
async fn settled(
    api: &Api<ConfigMap>,
    replicas: &[(&str, &Replica)],
    since: u128,
    before: Option<&std::collections::BTreeMap<String, String>>,
    count: usize,
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
        let starts: Vec<_> = replicas
            .iter()
            .map(|(member, replica)| {
                let ever = before.map(|_| starts_since(replica, 0));
                (*member, starts_since(replica, since), ever)
            })
            .collect();
        for (name, owner) in &owners {
            let expected =
                kuberator::runtime::rendezvous(members.iter().copied(), &format!("default/{name}"));
            let stayed = before.is_some_and(|before| before.get(name) == Some(owner));
            let at = starts
                .iter()
                .find(|(member, _, _)| member == owner && Some(*member) == expected)
                .and_then(|(_, starts, ever)| match ever {
                    Some(ever) if stayed => ever.get(name).copied(),
                    _ => starts.get(name).copied(),
                });
            match at {
                Some(at) => {
                    started.insert(name.clone(), at);
                }
                None => missing.push(format!("{name} ({owner:?})")),
            }
        }
        if missing.is_empty() && owners.len() == count {
            return (owners, started);
        }
        if std::time::Instant::now() >= end {
            // What each replica printed about the first object missing.
            let first = missing[0].split(' ').next().unwrap_or_default().to_owned();
            let about: Vec<String> = replicas
                .iter()
                .flat_map(|(member, replica)| {
                    replica
                        .lines()
                        .into_iter()
                        .filter(|line| {
                            line.contains(&first) || line.contains("WARN") || line.contains("ERROR")
                        })
                        .map(move |line| format!("{member}: {line}"))
                })
                .collect();
            panic!(
                "not settled within {within:?}: {} objects unowned or not reconciled by their \
                 owner, e.g. {:?}; since {since}, the replicas printed about {first}:\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                about.join("\n")
            );
        }
        // What is measured comes from the replicas' timestamps, not from this poll: a slower
        // poll loads the 2 cores less (3,000 objects listed and every log line parsed).
        tokio::time::sleep(SECOND).await;
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

/// Three members split 3,000 objects (each reconciled by its owner, shares within ±15 % of a
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
    let (initial, _) = settled(&api, &three, begin, None, OBJECTS, 60 * SECOND).await;
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
    // And its `/readyz?verbose`: the member set and its own share.
    let expected = format!(
        "shard scale-test: identity shard-a, member true, members [shard-a, shard-b, shard-c], \
         own objects configmaps={}",
        split["shard-a"]
    );
    let end = std::time::Instant::now() + 10 * SECOND;
    loop {
        let (status, body) = crate::operations::http_get(health, "/readyz?verbose").await;
        if status == 200 && body.lines().any(|line| line == expected) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "/readyz?verbose of shard-a ({status}):\n{body}\nexpected the line: {expected}"
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
        let d_starts = starts_since(&d, joined);
        let reconciled = to_d
            .iter()
            .filter(|name| d_starts.contains_key(name.as_str()))
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
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let moved_count = moved
        .iter()
        .filter(|(name, owner)| initial[*name] != **owner)
        .count();
    let d_runs = lines_with(&d, "reconcile start ").len();
    // From the spawn of shard-d to its first reconcile of the last object it took (its own
    // timestamps; process start included).
    let d_starts = starts_since(&d, joined);
    let rebalanced = moved
        .iter()
        .filter(|(_, owner)| *owner == "shard-d")
        .filter_map(|(name, _)| d_starts.get(name))
        .max()
        .map(|at| crate::operations::millis(at - joined));
    eprintln!(
        "shard-d joined: {moved_count} of {OBJECTS} objects moved, the last reconciled by \
         shard-d {rebalanced:?} after its spawn, {d_runs} reconciles on shard-d; shares {:?}",
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
    let (after_kill, started) = settled(
        &api,
        &three,
        killed,
        Some(&moved),
        OBJECTS,
        SHARD_LEASE + 25 * SECOND,
    )
    .await;
    let mut taken: Vec<Duration> = orphans
        .iter()
        .map(|name| crate::operations::millis(started[name] - killed))
        .collect();
    taken.sort();
    let takeover = *taken.last().unwrap();
    eprintln!(
        "SIGKILL of shard-c: its {} objects taken over within {takeover:?} (the first after \
         {:?}, half after {:?}); shares {:?}",
        orphans.len(),
        taken[0],
        taken[taken.len() / 2],
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

/// Objects of the fencing test.
const FENCED: usize = 30;

/// Fencing for shards: one of three members is SIGSTOPped with reconciles in flight (each works
/// 2 s before its write), past its membership Lease; the other two take its objects over within
/// lease duration + retry period and apply the newest spec; on SIGCONT the stalled member writes
/// nothing for the objects it lost (counted from the API server's audit log, by its User-Agent)
/// until it is a member again, its in-flight reconciles are dropped unfinished, and it writes no
/// stale value afterwards either.
#[tokio::test]
async fn a_stalled_shard_owner_writes_nothing_for_the_objects_it_lost() {
    init_tracing();
    let env = TestEnv::builder()
        .audit_log(true)
        .start()
        .await
        .expect("control plane");
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let vars = [
        ("KUBERATOR_REPLICA_WRITES", "1".to_owned()),
        ("KUBERATOR_REPLICA_WORK_MS", "2000".to_owned()),
    ];
    let a = Replica::spawn_mode("shard-a", &env, "shard", &vars);
    let b = Replica::spawn_mode("shard-b", &env, "shard", &vars);
    let c = Replica::spawn_mode("shard-c", &env, "shard", &vars);
    for replica in [&a, &b, &c] {
        wait_line(replica, "started", 30 * SECOND).await;
    }
    members_hold_leases(&env, 3).await;
    tokio::time::sleep(2 * SECOND).await;
    let begin = crate::operations::unix_nanos_now();
    for i in 0..FENCED {
        api.create(&PostParams::default(), &wanting(i, 1))
            .await
            .unwrap();
    }
    let three = [("shard-a", &a), ("shard-b", &b), ("shard-c", &c)];
    let (initial, _) = settled(&api, &three, begin, None, FENCED, 60 * SECOND).await;
    wait_done(
        &api,
        &initial.keys().cloned().collect::<Vec<_>>(),
        1,
        60 * SECOND,
    )
    .await;
    let lost: Vec<String> = initial
        .iter()
        .filter(|(_, owner)| *owner == "shard-c")
        .map(|(name, _)| name.clone())
        .collect();
    assert!(!lost.is_empty(), "shard-c owns nothing: {initial:?}");

    // Catch shard-c's reconciles of want 2 in flight (each works 2 s before it writes), then
    // stall it.
    let changed = crate::operations::unix_nanos_now();
    // Only shard-c's objects change, so the other two have slots free for the takeover.
    set_want(&api, &lost, 2).await;
    let end = std::time::Instant::now() + 30 * SECOND;
    while {
        let starts = starts_since(&c, changed);
        lost.iter().all(|name| !starts.contains_key(name))
    } {
        assert!(
            std::time::Instant::now() < end,
            "shard-c started none of its reconciles"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopped = c.signal("STOP");
    let c_starts = starts_since(&c, changed);
    let in_flight: Vec<String> = lost
        .iter()
        .filter(|name| c_starts.contains_key(name.as_str()))
        .cloned()
        .collect();
    assert!(
        lines_with(&c, "wrote ")
            .iter()
            .all(|line| !line.contains(" 2 ")),
        "shard-c wrote before it was stalled; the test caught nothing in flight"
    );
    // The newest spec, which only the other two can apply.
    set_want(&api, &lost, 3).await;
    let two = [("shard-a", &a), ("shard-b", &b)];
    let (taken, started) = settled(
        &api,
        &two,
        stopped,
        Some(&initial),
        FENCED,
        SHARD_LEASE + 30 * SECOND,
    )
    .await;
    wait_done(&api, &lost, 3, 60 * SECOND).await;
    // Taken over: the new owner's claim (its first write on the object after the stop, in
    // the audit log); its reconcile then waits for a free slot behind its own objects' work.
    let claims: Vec<(u128, String, String, String, i64)> = ["shard-a", "shard-b"]
        .iter()
        .flat_map(|member| requests_of(&env, member))
        .collect();
    let takeover = lost
        .iter()
        .map(|name| {
            let claimed = claims
                .iter()
                .filter(|(at, verb, resource, object, code)| {
                    *at > stopped
                        && verb == "patch"
                        && resource == "configmaps"
                        && object == name
                        && *code < 300
                })
                .map(|(at, ..)| *at)
                .min()
                .unwrap_or_else(|| panic!("nobody claimed {name}"));
            crate::operations::millis(claimed - stopped)
        })
        .max()
        .unwrap();
    let reconciled = lost
        .iter()
        .map(|name| crate::operations::millis(started[name] - stopped))
        .max()
        .unwrap();
    eprintln!(
        "stalled shard-c: its {} objects ({} reconciles in flight) claimed by the others within \
         {takeover:?}, reconciled within {reconciled:?}",
        lost.len(),
        in_flight.len()
    );
    assert!(
        takeover <= SHARD_LEASE + SHARD_RETRY,
        "shard-c's objects were taken over after {takeover:?} (bound: lease duration {SHARD_LEASE:?} + retry period {SHARD_RETRY:?})"
    );

    // Wake it up: it finds its membership lapsed, drops what was in flight, joins again and
    // gets its share back through the drain handshake.
    tokio::time::sleep(SECOND).await;
    let resumed = c.signal("CONT");
    let (back, _) = settled(
        &api,
        &three,
        resumed,
        Some(&taken),
        FENCED,
        SHARD_LEASE + 30 * SECOND,
    )
    .await;
    assert_eq!(
        shares(&back).get("shard-c"),
        Some(&lost.len()),
        "shard-c got back its share"
    );
    wait_done(&api, &lost, 3, 30 * SECOND).await;

    let requests = requests_of(&env, "shard-c");
    // Its membership is back with its first successful Lease write after SIGCONT.
    let rejoined = requests
        .iter()
        .filter(|(at, verb, resource, _, code)| {
            *at > resumed && is_write(verb) && resource == "leases" && *code < 300
        })
        .map(|(at, ..)| *at)
        .min()
        .expect("shard-c renewed its Lease after SIGCONT");
    let fenced: Vec<String> = requests
        .iter()
        .filter(|(at, verb, resource, _, _)| {
            *at > stopped && *at < rejoined && is_write(verb) && resource != "leases"
        })
        .map(|(at, verb, resource, name, code)| format!("{verb} {resource}/{name} {code} at {at}"))
        .collect();
    let after: Vec<&(u128, String, String, String, i64)> = requests
        .iter()
        .filter(|(at, verb, resource, _, _)| {
            *at >= rejoined && is_write(verb) && resource != "leases"
        })
        .collect();
    let dropped = lines_with(&c, "reconcile dropped ");
    eprintln!(
        "shard-c after SIGCONT: {} writes before it rejoined {:?} after the stop, {} after \
         (audit log); {} reconciles dropped",
        fenced.len(),
        crate::operations::millis(rejoined - stopped),
        after.len(),
        dropped.len()
    );
    assert!(
        fenced.is_empty(),
        "shard-c wrote while it was no member: {fenced:#?}"
    );
    // Every reconcile in flight at the stop was dropped, none finished or wrote.
    for name in &in_flight {
        assert!(
            dropped
                .iter()
                .any(|line| line.starts_with(&format!("reconcile dropped {name} "))),
            "shard-c's reconcile of {name} in flight at the stop was not dropped: {:?}",
            c.lines()
        );
    }
    let stale: Vec<String> = lines_with(&c, "wrote ")
        .into_iter()
        .filter(|line| !line.contains(" 3 ") && !line.contains(" 1 "))
        .collect();
    assert_eq!(stale, Vec::<String>::new(), "shard-c wrote a stale value");
    // Once back, it only claimed its own share (one label write each, the rendezvous owner
    // among three), never an object of another member.
    for (_, verb, _, name, _) in &after {
        assert_eq!(verb, "patch");
        assert_eq!(
            back.get(name).map(String::as_str),
            Some("shard-c"),
            "{name}"
        );
    }
}

/// Objects of the finalizer test.
const FINALIZED: usize = 90;

/// Waits until no sharded object is left (each cleaned up and its finalizer removed).
async fn all_gone(api: &Api<ConfigMap>, within: Duration) {
    let end = std::time::Instant::now() + within;
    loop {
        let left = owners(api).await;
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{} objects still there after {within:?} (finalizer leaked?), e.g. {:?}",
            left.len(),
            left.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Finalizers and deletes during a rebalance: three members with a finalizer own 90 objects; a
/// third of them is deleted while a fourth member joins, a third while one member leaves
/// (SIGTERM), the rest once the group settled. Every object is cleaned up exactly once, no
/// finalizer is left behind, and no object is reconciled by two members at once.
#[tokio::test]
async fn finalizers_and_deletes_keep_working_while_members_join_and_leave() {
    let env = env().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let vars = [
        ("KUBERATOR_REPLICA_FINALIZER", "1".to_owned()),
        ("KUBERATOR_REPLICA_WORK_MS", "200".to_owned()),
    ];
    let a = Replica::spawn_mode("shard-a", &env, "shard", &vars);
    let b = Replica::spawn_mode("shard-b", &env, "shard", &vars);
    let mut c = Replica::spawn_mode("shard-c", &env, "shard", &vars);
    for replica in [&a, &b, &c] {
        wait_line(replica, "started", 30 * SECOND).await;
    }
    members_hold_leases(&env, 3).await;
    tokio::time::sleep(2 * SECOND).await;
    let begin = crate::operations::unix_nanos_now();
    for i in 0..FINALIZED {
        api.create(&PostParams::default(), &sharded(i))
            .await
            .unwrap();
    }
    let three = [("shard-a", &a), ("shard-b", &b), ("shard-c", &c)];
    settled(&api, &three, begin, None, FINALIZED, 60 * SECOND).await;
    // Every object carries the finalizer before the deletes start.
    let end = std::time::Instant::now() + 30 * SECOND;
    loop {
        let list = api
            .list(&kube::api::ListParams::default().labels("kuberator-test=shard"))
            .await
            .unwrap();
        let finalized = list
            .items
            .iter()
            .filter(|cm| {
                cm.finalizers()
                    .iter()
                    .any(|f| f == "kuberator.dev/test-cleanup")
            })
            .count();
        if finalized == FINALIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "{finalized} of {FINALIZED} objects got the finalizer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<String> = (0..FINALIZED).map(|i| format!("obj-{i:04}")).collect();
    let delete = |names: Vec<String>| {
        let api = api.clone();
        async move {
            for name in names {
                api.delete(&name, &kube::api::DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
    };
    let thirds: Vec<Vec<String>> = names
        .chunks(FINALIZED / 3)
        .map(<[String]>::to_vec)
        .collect();

    // A fourth member joins while the first third is deleted.
    let d = Replica::spawn_mode("shard-d", &env, "shard", &vars);
    delete(thirds[0].clone()).await;
    wait_line(&d, "started", 30 * SECOND).await;
    members_hold_leases(&env, 4).await;
    // One member leaves (SIGTERM: it finishes what runs, then releases its Lease) while the
    // second third is deleted.
    let left = c.signal("TERM");
    delete(thirds[1].clone()).await;
    c.wait_exit(30 * SECOND).await;
    let exited = crate::operations::unix_nanos_now();
    delete(thirds[2].clone()).await;
    all_gone(&api, 60 * SECOND).await;

    let replicas = [
        ("shard-a", &a),
        ("shard-b", &b),
        ("shard-c", &c),
        ("shard-d", &d),
    ];
    let mut cleanups: std::collections::BTreeMap<String, Vec<&str>> =
        std::collections::BTreeMap::new();
    for (member, replica) in &replicas {
        for line in lines_with(replica, "cleanup ") {
            let name = line.split(' ').nth(1).unwrap().to_owned();
            cleanups.entry(name).or_default().push(*member);
        }
    }
    let by_member = |member: &str| cleanups.values().filter(|m| m.contains(&member)).count();
    eprintln!(
        "deletes during a join and a leave: {} objects cleaned up (a {}, b {}, c {}, d {}), c left in {:?}",
        cleanups.len(),
        by_member("shard-a"),
        by_member("shard-b"),
        by_member("shard-c"),
        by_member("shard-d"),
        crate::operations::millis(exited - left)
    );
    for name in &names {
        assert_eq!(
            cleanups.get(name).map(Vec::len),
            Some(1),
            "{name} was cleaned up by {:?}",
            cleanups.get(name)
        );
    }
    assert_never_two_at_once(&[
        ("shard-a", &a, None),
        ("shard-b", &b, None),
        ("shard-c", &c, Some(exited)),
        ("shard-d", &d, None),
    ]);
}
