//! Sharding: three replicas of one operator split a kind's objects, one crashes, the other two
//! take its objects over.
//!
//! Every replica holds a membership Lease in the group [`GROUP`]; an object belongs to the live
//! member with the highest rendezvous hash of its `namespace/name`, and the owner is written in
//! the label `kuberator.dev/shard-workers`, so `kubectl get -L` shows who owns what. Here the
//! replicas run on tasks of one process, each with its own identity; in a cluster they are the
//! pods of one Deployment (`Operator::sharding(Sharding::in_operator_namespace(..))` or the
//! macro's `sharding = "workers"`). The crash drops a replica without a graceful shutdown, as a
//! SIGKILL would: its Lease is not released, so the others take over once it expired.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use kuberator::{
    Action, ObjectKey, Operator, Reconciler,
    runtime::{Sharding, rendezvous},
    testing::TestEnv,
};

use crate::story::{self, Background};

/// The shard group of the three replicas.
pub const GROUP: &str = "workers";
/// The replicas' identities; the last one crashes.
pub const MEMBERS: [&str; 3] = ["worker-a", "worker-b", "worker-c"];
/// How many objects they split.
pub const OBJECTS: usize = 30;
/// The label selecting the example's objects.
const SELECTOR: &str = "app=shards-example";
/// The data key the handler stamps with the replica that reconciled the object.
pub const RECONCILED_BY: &str = "reconciled-by";
/// The membership Lease's duration: how long a crashed member's objects wait.
pub const LEASE: Duration = Duration::from_secs(4);

/// The handler: stamps each object with the replica that reconciled it (a write only when the
/// stamp changes, so reconciling again is a no-op).
struct Stamp {
    identity: &'static str,
    client: Client,
}

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Stamp {
    async fn reconcile(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let stamped = object
            .data
            .as_ref()
            .and_then(|data| data.get(RECONCILED_BY));
        if stamped.map(String::as_str) != Some(self.identity) {
            let api: Api<ConfigMap> =
                Api::namespaced(self.client.clone(), &object.namespace().unwrap_or_default());
            let patch = serde_json::json!({ "data": { RECONCILED_BY: self.identity } });
            api.patch(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|error| {
                kuberator::Error::kube("stamping", ObjectKey::of(object.as_ref()), error)
            })?;
        }
        Ok(Action::await_change())
    }
}

/// One replica of the operator, member `identity` of [`GROUP`].
fn replica(client: Client, identity: &'static str) -> Background<kuberator::Result<()>> {
    let operator = Operator::with_reconciler(
        client.clone(),
        Stamp {
            identity,
            client: client.clone(),
        },
    )
    .namespaces(["default"])
    .label_selector(SELECTOR)
    .sharding(
        Sharding::new("default", GROUP)
            .identity(identity)
            .lease_duration(LEASE)
            .renew_deadline(Duration::from_secs(3))
            .retry_period(Duration::from_secs(1)),
    );
    story::background(|stop| operator.shutdown_on(stop).run())
}

/// What the story saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Objects per member while all three ran (owner label and stamp agreeing).
    pub split: BTreeMap<String, usize>,
    /// Objects per member after [`MEMBERS`]`[2]` crashed.
    pub after_crash: BTreeMap<String, usize>,
    /// How many objects the crashed member owned (each taken over by another one).
    pub taken_over: usize,
    /// From the crash until the last of them was reconciled by its new owner.
    pub takeover: Duration,
    /// Objects that changed owner between the two survivors (rendezvous hashing: none).
    pub moved_between_survivors: usize,
}

/// Object name -> (owner label, stamp), once every object is labelled with its rendezvous owner
/// among `members` and stamped by it.
async fn settled(
    api: &Api<ConfigMap>,
    members: &[&str],
) -> anyhow::Result<BTreeMap<String, String>> {
    let label = Sharding::new("default", GROUP).label_key();
    let what = format!("every object owned and reconciled by one of {members:?}");
    story::poll(&what, || async {
        let list = api
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .ok()?;
        let mut owners = BTreeMap::new();
        for object in &list.items {
            let name = object.name_any();
            let expected = rendezvous(members.iter().copied(), &format!("default/{name}"))?;
            let owner = object.labels().get(&label)?;
            let stamp = object.data.as_ref()?.get(RECONCILED_BY)?;
            if owner != expected || stamp != expected {
                return None;
            }
            owners.insert(name, owner.clone());
        }
        (owners.len() == OBJECTS).then_some(owners)
    })
    .await
}

fn shares(owners: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut shares = BTreeMap::new();
    for owner in owners.values() {
        *shares.entry(owner.clone()).or_default() += 1;
    }
    shares
}

/// Prints how many objects each member owns, as the owner label says.
fn print_shares(title: &str, owners: &BTreeMap<String, String>) {
    let line: Vec<String> = shares(owners)
        .iter()
        .map(|(member, count)| format!("{member} {count}"))
        .collect();
    println!("{title}: {}", line.join(", "));
}

/// The story: create the objects, start three replicas, crash one, watch the others take over.
///
/// # Errors
/// A step whose result is not what the story says.
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let object = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("task-{i:02}")),
                        labels: Some([("app".to_owned(), "shards-example".to_owned())].into()),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("creating the objects")?;
    println!("{OBJECTS} ConfigMaps labelled {SELECTOR}; three replicas of one sharded operator:");
    let [a, b, c] = MEMBERS.map(|identity| replica(env.client(), identity));

    let owners = settled(&api, &MEMBERS).await?;
    print_shares("split by rendezvous hashing", &owners);
    let label = Sharding::new("default", GROUP).label_key();
    let column = format!("-L{label}");
    let table = story::kubectl(env, &["get", "configmaps", "-l", SELECTOR, &column]).await?;
    println!("$ kubectl get configmaps -l {SELECTOR} -L {label}   # (first rows)");
    for row in table.lines().take(6) {
        println!("{row}");
    }

    let crashed = MEMBERS[2];
    let crash = std::time::Instant::now();
    c.crash().await;
    println!(
        "{crashed} crashed (no graceful shutdown: its Lease stays until it expires after {LEASE:?})"
    );
    let survivors = &MEMBERS[..2];
    let after = settled(&api, survivors).await?;
    let takeover = crash.elapsed();
    let taken_over = owners.values().filter(|owner| *owner == crashed).count();
    let moved_between_survivors = owners
        .iter()
        .filter(|(name, owner)| *owner != crashed && after[*name] != **owner)
        .count();
    print_shares(
        &format!(
            "{taken_over} objects of {crashed} taken over within {:.1} s",
            takeover.as_secs_f64()
        ),
        &after,
    );
    a.stop().await??;
    b.stop().await??;
    Ok(Outcome {
        split: shares(&owners),
        after_crash: shares(&after),
        taken_over,
        takeover,
        moved_between_survivors,
    })
}
