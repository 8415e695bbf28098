//! Sharding: several replicas split one kind's objects, each reconciling only its own.
//!
//! Every replica holds a membership Lease (`<group>-<identity>`, labelled
//! `kuberator.dev/shard-group=<group>`), renewed with leader election's timing (it is an
//! election nobody else runs for). Every replica watches the group's Leases; the live members
//! are the holders whose Lease was renewed within its duration, judged on the watcher's own
//! clock. An object belongs to the member with the highest rendezvous weight
//! `hash(member, namespace/name)` ([`rendezvous`]): a member that joins takes about `1/n` of the
//! objects, one that leaves hands out only its own.
//!
//! The owner of an object is recorded on the object, in the label
//! `kuberator.dev/shard-<group>` (`kubectl get … -L kuberator.dev/shard-<group>` shows who owns
//! what). Only the member the label names reconciles the object, and the label changes hands
//! in two steps, so that two replicas never reconcile one object at once:
//!
//! 1. the member the label names removes it (and notes itself in the annotation
//!    `kuberator.dev/shard-<group>-drained-by`) when the object no longer hashes to it — inside
//!    that object's reconcile slot, so its own reconcile of the object has finished: it drained;
//! 2. the member the object hashes to claims an object without the label, or one whose label
//!    names a replica that is no longer a member (its Lease expired or was released), by
//!    writing its own name conditionally on the `resourceVersion` it read: of two claimants
//!    one wins.
//!
//! A member whose Lease it could not renew for the renew deadline stops at once: its running
//! reconciles are dropped at their next `.await`, and the [`RequestGuard`](super::RequestGuard)
//! refuses its writes (the other members consider its Lease valid for the longer lease
//! duration, so it has stopped before anyone takes its objects over). When it renews again
//! (a new term: nothing begun in the old one continues), it decides about no object for a lease
//! duration, until the others have seen it back and its cache has caught up with what they
//! took over; then it gets its share back through the same drain-then-claim handshake.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::{
    OwnWrites,
    leader::{DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD},
    leader::{LeaderElection, Leadership, default_identity},
    metrics::Metrics,
};
use crate::{
    error::{Error, ObjectKey, Result},
    finalize::Object,
};

/// The label on membership Leases naming their group.
pub const GROUP_LABEL: &str = "kuberator.dev/shard-group";
/// The label on a membership Lease naming its member (the holder is cleared on release).
pub const MEMBER_LABEL: &str = "kuberator.dev/shard-member";

/// The group as one replica sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct View {
    /// Members whose Lease is held and not expired (this replica while its own is valid).
    live: BTreeSet<String>,
    /// Every member a Lease names, live or not.
    known: BTreeSet<String>,
    /// Whether the Leases have been listed once (no decision before).
    synced: bool,
}

/// Sharding of a controller's objects over the replicas of one group; give it to
/// [`Operator::sharding`](super::Operator::sharding) or
/// [`Manager::sharding`](super::Manager::sharding).
///
/// Defaults are leader election's: lease duration 15 s, renew deadline 10 s, retry period 2 s;
/// the identity is `POD_NAME`, or the hostname plus a random suffix. A member that dies is
/// replaced, for its objects, within about the lease duration.
///
/// ```
/// use std::time::Duration;
/// use kuberator::runtime::Sharding;
///
/// let sharding = Sharding::new("operators", "websites")
///     .identity("websites-operator-0")
///     .lease_duration(Duration::from_secs(15));
/// assert_eq!(sharding.label_key(), "kuberator.dev/shard-websites");
/// ```
#[derive(Clone, Debug)]
pub struct Sharding {
    namespace: String,
    group: String,
    identity: Option<String>,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

impl Sharding {
    /// Sharding over the members of `group` (a DNS label, e.g. the operator's name) whose
    /// membership Leases live in `namespace`.
    pub fn new(namespace: impl Into<String>, group: impl Into<String>) -> Self {
        Sharding {
            namespace: namespace.into(),
            group: group.into(),
            identity: None,
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Sharding over the members of `group` with membership Leases in the operator's own
    /// namespace: `POD_NAMESPACE`, else the in-cluster service account's namespace, else the
    /// client's default namespace (what `#[kuberator::operator(sharding = "…")]` uses).
    ///
    /// ```no_run
    /// # async fn doc() -> kuberator::Result<()> {
    /// use kuberator::runtime::Sharding;
    ///
    /// let client = kube::Client::try_default().await?;
    /// let sharding = Sharding::in_operator_namespace(&client, "websites");
    /// println!("membership Leases in {}", sharding.namespace());
    /// # Ok(())
    /// # }
    /// ```
    pub fn in_operator_namespace(client: &Client, group: impl Into<String>) -> Self {
        Self::new(super::leader::current_namespace(client), group)
    }

    /// The namespace of the membership Leases.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This replica's name among the members (unique per replica; a valid label value, at
    /// most 63 characters).
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// How long a membership Lease stays valid after its last renewal (default 15 s).
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.lease_duration = duration;
        self
    }

    /// How long a member keeps trying to renew before it stops working (default 10 s; shorter
    /// than the lease duration).
    #[must_use]
    pub fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.renew_deadline = deadline;
        self
    }

    /// The pause between renewals, and between checks of the other members' Leases (default
    /// 2 s).
    #[must_use]
    pub fn retry_period(mut self, period: Duration) -> Self {
        self.retry_period = period;
        self
    }

    /// The label naming an object's owner: `kuberator.dev/shard-<group>`.
    pub fn label_key(&self) -> String {
        format!("kuberator.dev/shard-{}", self.group)
    }

    /// Joins the group: starts renewing this replica's membership Lease and watching the
    /// others'.
    pub(crate) fn start(self, client: Client, metrics: Option<&Metrics>) -> Result<Arc<Shards>> {
        let identity = self.identity.clone().unwrap_or_else(default_identity);
        if !valid_label_value(&identity) {
            return Err(anyhow::anyhow!(
                "shard identity `{identity}` is not a valid label value (at most 63 letters, \
                 digits, `-`, `_` or `.`, starting and ending with a letter or digit)"
            )
            .into());
        }
        if !valid_label_value(&self.group) || self.group.len() > 57 {
            return Err(anyhow::anyhow!(
                "shard group `{}` must be a DNS label of at most 57 characters",
                self.group
            )
            .into());
        }
        let lease_name = format!("{}-{}", self.group, dns_safe(&identity));
        let election = LeaderElection::new(client.clone(), &self.namespace, &lease_name)
            .identity(identity.clone())
            .lease_duration(self.lease_duration)
            .renew_deadline(self.renew_deadline)
            .retry_period(self.retry_period)
            .watch_lease(false)
            .labels(
                [
                    (GROUP_LABEL.to_owned(), self.group.clone()),
                    (MEMBER_LABEL.to_owned(), identity.clone()),
                ]
                .into(),
            );
        let membership = Arc::new(election.start()?);
        let label_key = self.label_key();
        let (members, _) = watch::channel(View::default());
        let shard_metrics = metrics.map(ShardMetrics::register);
        let shards = Arc::new(Shards {
            group: self.group.clone(),
            identity,
            label_key,
            membership,
            members,
            metrics: shard_metrics,
            watcher: Mutex::new(None),
            lease_duration: self.lease_duration,
            own: Mutex::new(BTreeMap::new()),
            unknown_since: Mutex::new(HashMap::new()),
            claims: OwnWrites::new(),
        });
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let task = tokio::spawn(watch_members(
            api,
            self.group,
            self.retry_period,
            shards.membership.subscribe(),
            Arc::downgrade(&shards),
        ));
        *lock(&shards.watcher) = Some(task);
        Ok(shards)
    }
}

/// A replica's view of its group: its own membership, the live members, and who owns what.
pub struct Shards {
    group: String,
    identity: String,
    label_key: String,
    membership: Arc<Leadership>,
    members: watch::Sender<View>,
    metrics: Option<ShardMetrics>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    lease_duration: Duration,
    /// Per controller, the objects this replica's caches see labelled with its name.
    own: Mutex<BTreeMap<String, i64>>,
    /// Owner labels naming a member no Lease names, and since when: a member that just joined
    /// may claim before its Lease reached this replica, so such a label is only taken over
    /// after a lease duration.
    unknown_since: Mutex<HashMap<String, Instant>>,
    /// This replica's claims, as own writes: the watch event of the version a claim wrote is
    /// its echo (the reconcile after the claim ran on it already), told the way an owner tells
    /// the echo of its child applies.
    claims: OwnWrites,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("group", &self.group)
            .field("identity", &self.identity)
            .field("members", &self.members())
            .finish_non_exhaustive()
    }
}

/// What a replica does with an object it was asked to reconcile.
pub(crate) enum Admission<R> {
    /// Its own: reconcile this version (after a claim, the one the claim wrote).
    Run(Arc<R>),
    /// Someone else's, or handed over just now: nothing to do.
    Skip,
    /// Its own, but the label still names another live member that has not drained yet: look
    /// again after this delay (the drain's label change usually comes first).
    Wait(Duration),
}

impl Shards {
    /// This replica's identity in the group.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The label naming an object's owner.
    pub fn label_key(&self) -> &str {
        &self.label_key
    }

    /// The live members as this replica sees them (itself included while its membership is
    /// valid), sorted.
    pub fn members(&self) -> Vec<String> {
        self.members.borrow().live.iter().cloned().collect()
    }

    /// Whether this replica's own membership Lease is valid (renewed within the renew
    /// deadline).
    pub fn is_member(&self) -> bool {
        self.membership.is_leader()
    }

    /// The member an object with this namespace and name belongs to, in this replica's view.
    pub fn owner_of(&self, namespace: Option<&str>, name: &str) -> Option<String> {
        let view = self.members.borrow();
        rendezvous(
            view.live.iter().map(String::as_str),
            &shard_key(namespace, name),
        )
        .map(str::to_owned)
    }

    /// Whether `object` is labelled as this replica's (it claimed it, so its reconciles ran
    /// here).
    pub(crate) fn claimed<R: Resource>(&self, object: &R) -> bool {
        object.labels().get(&self.label_key).map(String::as_str) == Some(self.identity.as_str())
    }

    /// The membership Lease's election (to gate work on it).
    pub(crate) fn membership(&self) -> &Arc<Leadership> {
        &self.membership
    }

    /// Ticks at every change of the member set (for a full re-check of every object's owner).
    pub(crate) fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let receiver = self.members.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.changed().await.ok()?;
            Some(((), receiver))
        })
    }

    /// Whether `object` needs nothing from this replica, for certain: the member view is complete,
    /// the object is not labelled as this replica's (nothing to drain) and another live member
    /// owns it (nothing to claim). Such a change is dropped before it takes a reconcile slot;
    /// every change of the member set re-checks the whole cache, so a later owner still sees it.
    pub(crate) fn surely_elsewhere<R: Resource>(&self, object: &R) -> bool {
        !self.claimed(object) && self.owned_in_settled_view(object) == Some(false)
    }

    /// Whether `object` is labelled as this replica's and is still its own in a complete member
    /// view: a change of the member set gives it nothing to do (no claim, no drain).
    pub(crate) fn holds_and_owns<R: Resource>(&self, object: &R) -> bool {
        self.claimed(object) && self.owned_in_settled_view(object) == Some(true)
    }

    /// Whether `object` hashes to this replica in the current member view; `None` while no
    /// decision is taken (the view incomplete, or back after a lapse).
    fn owned_in_settled_view<R: Resource>(&self, object: &R) -> Option<bool> {
        let view = self.members.borrow();
        if !self.decides_on(&view) {
            return None;
        }
        let key = shard_key(object.namespace().as_deref(), &object.name_any());
        Some(rendezvous(view.live.iter().map(String::as_str), &key) == Some(self.identity.as_str()))
    }

    /// Whether this change of `object` is the echo of this replica's own claim of it (waiting
    /// for the claim's answer if it is still in flight): no reason to reconcile again.
    pub(crate) async fn is_claim_echo<R: Resource<DynamicType = ()>>(&self, object: &R) -> bool {
        self.claims.caused_by_us(object).await
    }

    /// The part of an object's shard label that should trigger a reconcile when it changes: a
    /// label naming this replica counts as no label (this replica wrote it, in a reconcile).
    pub(crate) fn trigger_hash<R: Resource>(&self, object: &R) -> u64 {
        match object.labels().get(&self.label_key) {
            Some(owner) if *owner != self.identity => fnv1a(owner.as_bytes(), FNV_OFFSET),
            _ => 0,
        }
    }

    /// Decides, and claims or hands over, before a reconcile of `object`. Called in the
    /// object's reconcile slot, so this replica runs no other reconcile of it meanwhile.
    pub(crate) async fn admit<R: Object>(
        &self,
        client: &Client,
        object: Arc<R>,
    ) -> Result<Admission<R>> {
        let Some(view) = self.settled_view().await else {
            // Not a member yet, the others' Leases not listed, or back after a lapse: no
            // decision.
            return Ok(Admission::Wait(WAIT));
        };
        let key = shard_key(object.namespace().as_deref(), &object.name_any());
        let owner = rendezvous(view.live.iter().map(String::as_str), &key);
        let label = object.labels().get(&self.label_key).cloned();
        let mine = owner == Some(self.identity.as_str());
        let labelled_mine = label.as_deref() == Some(self.identity.as_str());
        let patch = |labels: serde_json::Value, annotations: serde_json::Value| {
            serde_json::json!({
                "metadata": {
                    "resourceVersion": object.resource_version(),
                    "labels": labels,
                    "annotations": annotations,
                }
            })
        };
        match (mine, labelled_mine) {
            (true, true) => Ok(Admission::Run(object)),
            (false, false) => Ok(Admission::Skip),
            (false, true) => {
                // Drain: this replica's reconcile of the object is not running (we hold its
                // slot), so the next owner may start once the label is gone.
                let drained = patch(
                    serde_json::json!({ self.label_key.clone(): null }),
                    serde_json::json!({ format!("{}-drained-by", self.label_key): self.identity }),
                );
                match patch_object(client, object.as_ref(), &drained).await {
                    Ok(_) => {
                        tracing::debug!(object = %key, next = ?owner, "drained");
                        Ok(Admission::Skip)
                    }
                    // Changed meanwhile: its next event brings this decision again.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        Ok(Admission::Wait(WAIT))
                    }
                    Err(error) => Err(Error::kube(
                        "handing over",
                        ObjectKey::of(object.as_ref()),
                        error,
                    )),
                }
            }
            (true, false) => {
                if let Some(holder) = &label
                    && !self.may_take_from(holder, &view)
                {
                    return Ok(Admission::Wait(WAIT));
                }
                let claim = patch(
                    serde_json::json!({ self.label_key.clone(): self.identity }),
                    serde_json::json!({}),
                );
                let write = self.claims.begin(object.as_ref());
                let written = patch_object::<R>(client, object.as_ref(), &claim).await;
                write.answered(
                    written
                        .as_ref()
                        .ok()
                        .and_then(|claimed| claimed.meta().resource_version.as_deref()),
                );
                match written {
                    Ok(claimed) => {
                        tracing::debug!(object = %key, previous = ?label, "claimed");
                        Ok(Admission::Run(Arc::new(claimed)))
                    }
                    // Someone else changed it first (another claimant, a drain): look again.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        Ok(Admission::Wait(WAIT))
                    }
                    Err(error) => Err(Error::kube(
                        "claiming",
                        ObjectKey::of(object.as_ref()),
                        error,
                    )),
                }
            }
        }
    }

    /// The member view to decide on, once it is complete: the group's Leases listed and this
    /// replica in it. Right after this replica becomes a member its own Lease may not be in the
    /// view yet; rather than putting every object off by [`WAIT`], this waits (at most that long)
    /// for the view to catch up, so the first reconciles start the moment it does. `None`: still
    /// incomplete, or back after a lapse (see [`Self::rejoining`]).
    async fn settled_view(&self) -> Option<View> {
        if self.rejoining() {
            return None;
        }
        let view = self.members.borrow().clone();
        if self.decides_on(&view) {
            return Some(view);
        }
        let mut receiver = self.members.subscribe();
        let view = tokio::time::timeout(WAIT, receiver.wait_for(|view| self.decides_on(view)))
            .await
            .ok()?
            .ok()?
            .clone();
        Some(view)
    }

    /// Whether this replica takes decisions on `view`: the group's Leases listed, this replica
    /// a member in it, and not back after a lapse.
    fn decides_on(&self, view: &View) -> bool {
        view.synced && view.live.contains(&self.identity) && !self.rejoining()
    }

    /// Whether this replica is a member again after a lapse (or took over a Lease of its
    /// identity that existed before it started) for less than a lease duration. Meanwhile the
    /// others may still be taking over objects labelled with its name, deciding on views from
    /// before they saw its Lease renewed (any such claim is written within their renew
    /// deadline, shorter than the lease duration), and its own cache may still hold labels from
    /// before the lapse: it decides nothing until both have settled.
    fn rejoining(&self) -> bool {
        self.membership
            .term_began()
            .is_some_and(|(began, resumed)| resumed && began.elapsed() < self.lease_duration)
    }

    /// Whether an object labelled with `holder` may be claimed: `holder` is no live member, and
    /// either a Lease names it (expired or released) or its label has been seen for a lease
    /// duration without any Lease naming it.
    fn may_take_from(&self, holder: &str, view: &View) -> bool {
        if view.live.contains(holder) {
            return false;
        }
        if view.known.contains(holder) {
            return true;
        }
        let mut unknown = lock(&self.unknown_since);
        if unknown.len() > 1024 {
            unknown.clear();
        }
        let since = *unknown
            .entry(holder.to_owned())
            .or_insert_with(Instant::now);
        since.elapsed() >= self.lease_duration
    }

    /// Per controller, how many objects this replica's caches see labelled with its name
    /// (counted every 2 s).
    pub fn own_objects(&self) -> BTreeMap<String, i64> {
        lock(&self.own).clone()
    }

    /// One line on this replica's view of its group, for `/readyz?verbose`:
    /// `shard <group>: identity <me>, member <bool>, members [a, b], own objects <controller>=<n>`.
    pub fn describe(&self) -> String {
        let own: Vec<String> = self
            .own_objects()
            .iter()
            .map(|(controller, count)| format!("{controller}={count}"))
            .collect();
        format!(
            "shard {}: identity {}, member {}, members [{}], own objects {}",
            self.group,
            self.identity,
            self.is_member(),
            self.members().join(", "),
            if own.is_empty() {
                "none counted yet".to_owned()
            } else {
                own.join(", ")
            }
        )
    }

    /// Counts the objects per owner label in `objects` into
    /// `kuberator_shard_objects{controller, shard}` and [`own_objects`](Self::own_objects).
    pub(crate) fn count<'a, R: Resource + 'a>(
        &self,
        controller: &str,
        objects: impl Iterator<Item = &'a R>,
    ) {
        let mut counts: BTreeMap<String, i64> = BTreeMap::new();
        for object in objects {
            let owner = object
                .labels()
                .get(&self.label_key)
                .cloned()
                .unwrap_or_default();
            *counts.entry(owner).or_default() += 1;
        }
        let mine = counts.get(&self.identity).copied().unwrap_or(0);
        lock(&self.own).insert(controller.to_owned(), mine);
        if let Some(metrics) = &self.metrics {
            metrics.set_objects(controller, &counts);
        }
    }

    /// Leaves the group: releases the membership Lease (the other members take this replica's
    /// objects over at once). Call it once this replica's reconciles have stopped.
    pub(crate) async fn release(&self) {
        self.membership.release().await;
        if let Some(task) = lock(&self.watcher).take() {
            task.abort();
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.watcher).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long an undecided object waits before it is looked at again (its next event usually
/// comes first).
const WAIT: Duration = Duration::from_secs(1);

/// Merge-patches `object` (conditional when the patch carries a `resourceVersion`); returns
/// the object as written.
async fn patch_object<R: Object>(
    client: &Client,
    object: &R,
    patch: &serde_json::Value,
) -> std::result::Result<R, kube::Error> {
    let api = super::watch::erased_api::<R>(client.clone(), object.namespace().as_deref());
    let written = api
        .patch(
            &object.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await?;
    serde_json::to_value(written)
        .and_then(serde_json::from_value)
        .map_err(kube::Error::SerdeError)
}

/// Keeps `shards.members` up to date from the group's Leases: on every Lease event, at every
/// change of this replica's own membership, and every retry period for expiries.
async fn watch_members(
    api: Api<Lease>,
    group: String,
    retry_period: Duration,
    mut membership: watch::Receiver<bool>,
    shards: std::sync::Weak<Shards>,
) {
    let config = watcher::Config::default().labels(&format!("{GROUP_LABEL}={group}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    // Lease name -> (its member, its spec, when this replica first saw that spec).
    let mut seen: HashMap<String, (String, LeaseSpec, Instant)> = HashMap::new();
    let mut synced = false;
    let mut tick = tokio::time::interval(retry_period / 2);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                    let spec = lease.spec.clone().unwrap_or_default();
                    let member = lease.labels().get(MEMBER_LABEL).cloned().unwrap_or_default();
                    let name = lease.name_any();
                    if seen.get(&name).is_none_or(|(_, known, _)| *known != spec) {
                        seen.insert(name, (member, spec, Instant::now()));
                    }
                }
                Some(Ok(watcher::Event::Delete(lease))) => {
                    seen.remove(&lease.name_any());
                }
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Ok(watcher::Event::Init)) => {}
                Some(Err(error)) => {
                    tracing::debug!(%group, %error, "cannot watch the membership Leases; retrying");
                }
                None => return,
            },
            _ = tick.tick() => {}
            // Our own membership enters the view the moment our election has it.
            Ok(()) = membership.changed() => {}
        }
        let Some(shards) = shards.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut view = View {
            live: BTreeSet::new(),
            known: seen.values().map(|(member, _, _)| member.clone()).collect(),
            synced,
        };
        view.live = seen
            .values()
            .filter_map(|(_, spec, at)| {
                let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
                let seconds =
                    u64::try_from(spec.lease_duration_seconds.unwrap_or(1).max(1)).unwrap_or(1);
                (now < *at + Duration::from_secs(seconds)).then(|| holder.to_owned())
            })
            .collect();
        // Our own membership as our election knows it (never from a Lease event that lags).
        if shards.is_member() {
            view.live.insert(shards.identity.clone());
        } else {
            view.live.remove(&shards.identity);
        }
        view.known.insert(shards.identity.clone());
        let live = view.live.clone();
        let changed = shards.members.send_if_modified(|current| {
            if *current == view {
                false
            } else {
                let rebalance = current.live != view.live || current.synced != view.synced;
                *current = view.clone();
                rebalance
            }
        });
        if changed {
            tracing::info!(group = %shards.group, members = ?live, "shard members changed; rebalancing");
            if let Some(metrics) = &shards.metrics {
                metrics.rebalanced(&live);
            }
        }
    }
}

/// The rendezvous (highest random weight) owner of `key` among `members`: the member with the
/// highest `hash(member, key)`, ties broken by the smaller name. Stable across processes and
/// versions (FNV-1a with a SplitMix64 finish, not `std`'s hasher).
///
/// ```
/// use kuberator::runtime::rendezvous;
///
/// let owner = rendezvous(["a", "b", "c"], "default/site").unwrap();
/// // A member other than the owner leaving never moves the object.
/// let others: Vec<&str> = ["a", "b", "c"].into_iter().filter(|m| *m != owner).collect();
/// assert_eq!(rendezvous([owner, others[0]], "default/site"), Some(owner));
/// assert_eq!(rendezvous([], "default/site"), None);
/// ```
pub fn rendezvous<'a>(members: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    members
        .into_iter()
        .map(|member| (weight(member, key), member))
        .max_by(|(wa, ma), (wb, mb)| wa.cmp(wb).then_with(|| mb.cmp(ma)))
        .map(|(_, member)| member)
}

/// The key objects are hashed by: `namespace/name`, or `name` for cluster-scoped objects.
fn shard_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(namespace) => format!("{namespace}/{name}"),
        None => name.to_owned(),
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn weight(member: &str, key: &str) -> u64 {
    let hash = fnv1a(
        key.as_bytes(),
        fnv1a(&[0xff], fnv1a(member.as_bytes(), FNV_OFFSET)),
    );
    // SplitMix64's finaliser: FNV alone mixes the last bytes poorly.
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A Lease name from an identity: lower-case letters, digits and `-` (the identity itself may
/// hold `_` or upper case).
fn dns_safe(identity: &str) -> String {
    let mut name: String = identity
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(200);
    name.trim_matches('-').to_owned()
}

fn valid_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ShardLabels {
    controller: String,
    shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    member: String,
}

/// `kuberator_shard_objects{shard}`, `kuberator_shard_rebalances_total`,
/// `kuberator_shard_member{member}`.
#[derive(Clone)]
struct ShardMetrics {
    objects: Family<ShardLabels, Gauge>,
    rebalances: Counter,
    members: Family<MemberLabels, Gauge>,
    /// The `objects` series set last, to zero those that vanished.
    set: Arc<Mutex<BTreeSet<ShardLabels>>>,
}

impl ShardMetrics {
    fn register(metrics: &Metrics) -> Self {
        let this = ShardMetrics {
            objects: Family::default(),
            rebalances: Counter::default(),
            members: Family::default(),
            set: Arc::default(),
        };
        let copy = this.clone();
        metrics.register(move |registry| {
            registry.register(
                "kuberator_shard_objects",
                "Objects per owner as this replica's cache sees them (shard=\"\": not yet claimed)",
                copy.objects,
            );
            registry.register(
                "kuberator_shard_rebalances",
                "Changes of the live member set this replica rebalanced on",
                copy.rebalances,
            );
            registry.register(
                "kuberator_shard_member",
                "The live members of the shard group as this replica sees them (1 = live)",
                copy.members,
            );
        });
        this
    }

    fn set_objects(&self, controller: &str, counts: &BTreeMap<String, i64>) {
        let mut set = lock(&self.set);
        for labels in set.iter().filter(|labels| labels.controller == controller) {
            if !counts.contains_key(&labels.shard) {
                self.objects.get_or_create(labels).set(0);
            }
        }
        for (shard, count) in counts {
            let labels = ShardLabels {
                controller: controller.to_owned(),
                shard: shard.clone(),
            };
            self.objects.get_or_create(&labels).set(*count);
            set.insert(labels);
        }
    }

    fn rebalanced(&self, members: &BTreeSet<String>) {
        self.rebalances.inc();
        self.members.clear();
        for member in members {
            self.members
                .get_or_create(&MemberLabels {
                    member: member.clone(),
                })
                .set(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("default/object-{i}")).collect()
    }

    #[test]
    fn objects_spread_evenly_and_only_a_joiners_share_moves() {
        let three = ["shard-a", "shard-b", "shard-c"];
        let four = ["shard-a", "shard-b", "shard-c", "shard-d"];
        let keys = names(3000);
        let mut shares: BTreeMap<&str, usize> = BTreeMap::new();
        let mut moved = 0;
        for key in &keys {
            let before = rendezvous(three, key).unwrap();
            *shares.entry(before).or_default() += 1;
            let after = rendezvous(four, key).unwrap();
            if after != before {
                assert_eq!(after, "shard-d", "{key} moved between old members");
                moved += 1;
            }
        }
        for (member, share) in &shares {
            assert!(
                (850..=1150).contains(share),
                "{member} holds {share} of 3000"
            );
        }
        assert!(
            (600..=850).contains(&moved),
            "{moved} of 3000 moved to the fourth"
        );
    }

    #[test]
    fn identities_must_be_label_values() {
        assert!(valid_label_value("operator-0"));
        assert!(valid_label_value("host_0123abcd"));
        assert!(!valid_label_value("-x"));
        assert!(!valid_label_value(&"x".repeat(64)));
        assert_eq!(dns_safe("Host_01"), "host-01");
    }
}
