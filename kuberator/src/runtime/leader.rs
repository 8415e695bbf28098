//! Leader election on a `coordination.k8s.io/v1` Lease, with controller-runtime's timing.
//!
//! One replica holds the Lease and renews it every retry period; the others are standbys that
//! keep their watch caches warm and take the Lease over once it has not been renewed for a lease
//! duration (or at once when the leader releases it on shutdown). The rules, as in client-go:
//!
//! - expiry is judged on the standby's own clock: a Lease counts as expired a lease duration
//!   after the standby *saw* its record change, so clock skew between nodes does not matter;
//! - a leader that has not renewed for the renew deadline reports "not leader" at once, which is
//!   before any standby can consider the Lease expired (renew deadline < lease duration): there
//!   are never two active leaders, provided the leader stops its work when told;
//! - every write carries the `resourceVersion` it was based on, so of two replicas racing for
//!   the Lease exactly one wins;
//! - a leader that lost the Lease becomes a standby again; it never exits.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anyhow::anyhow;
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use rand::Rng;
use tokio::{
    sync::{Notify, oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

use super::metrics::Metrics;
use crate::error::Result;

/// controller-runtime's default: how long a Lease is valid after its last renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// controller-runtime's default: how long the leader keeps trying to renew before it steps down.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// controller-runtime's default: the pause between attempts to acquire or renew.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Standbys wait up to this fraction of the retry period longer, so they do not poll in step.
const JITTER: f64 = 0.1;

/// Leader election on one `coordination.k8s.io/v1` Lease; configure it, then
/// [`start`](LeaderElection::start) it.
///
/// Defaults are controller-runtime's: lease duration 15 s, renew deadline 10 s, retry period
/// 2 s; the identity is the `POD_NAME` environment variable, or the hostname plus a random
/// suffix.
///
/// ```no_run
/// use std::sync::Arc;
/// use kuberator::runtime::LeaderElection;
///
/// # async fn reconcile_everything() {}
/// # async fn doc(client: kube::Client) -> kuberator::Result<()> {
/// let leadership = Arc::new(
///     LeaderElection::new(client, "operators", "websites-operator-lock").start()?,
/// );
/// // Each unit of work (e.g. each reconcile) runs only on the leader, and is cancelled if
/// // leadership is lost while it runs:
/// if let Some(()) = leadership.while_leader(reconcile_everything()).await {
///     // done as the leader
/// }
/// // On shutdown, once the work has stopped: a standby takes over at once.
/// leadership.release().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LeaderElection {
    client: Client,
    namespace: String,
    config: ElectionConfig,
    metrics: Option<Metrics>,
    watch_lease: bool,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
struct ElectionConfig {
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    /// Labels of the Lease when this replica creates it.
    labels: std::collections::BTreeMap<String, String>,
}

impl ElectionConfig {
    fn new(name: String, identity: String) -> Self {
        ElectionConfig {
            name,
            identity,
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            labels: std::collections::BTreeMap::new(),
        }
    }

    /// The lease duration in the Lease's whole seconds (rounded up, at least 1).
    fn lease_seconds(&self) -> i32 {
        let seconds =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
    }

    fn validate(&self) -> Result<()> {
        if self.identity.is_empty() {
            return Err(anyhow!("leader election identity must not be empty").into());
        }
        if self.name.is_empty() {
            return Err(anyhow!("leader election lease name must not be empty").into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(anyhow!(
                "leader election lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration,
                self.renew_deadline
            )
            .into());
        }
        if self.renew_deadline <= self.retry_period.mul_f64(1.0 + JITTER) {
            return Err(anyhow!(
                "leader election renew deadline ({:?}) must be longer than the retry period ({:?}) plus {}% jitter",
                self.renew_deadline,
                self.retry_period,
                JITTER * 100.0
            )
            .into());
        }
        if self.retry_period.is_zero() {
            return Err(anyhow!("leader election retry period must not be zero").into());
        }
        Ok(())
    }
}

impl LeaderElection {
    /// Election on the Lease `lease_name` in `namespace`, with controller-runtime's defaults.
    pub fn new(
        client: Client,
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
    ) -> Self {
        LeaderElection {
            client,
            namespace: namespace.into(),
            config: ElectionConfig::new(lease_name.into(), default_identity()),
            metrics: None,
            watch_lease: true,
        }
    }

    /// Election on the Lease `lease_name` in the operator's own namespace: `POD_NAMESPACE`, else
    /// the in-cluster service account's namespace, else the client's default namespace.
    pub fn in_operator_namespace(client: Client, lease_name: impl Into<String>) -> Self {
        let namespace = current_namespace(&client);
        Self::new(client, namespace, lease_name)
    }

    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// This replica's identity in the Lease's `holderIdentity` (must be unique among replicas).
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.config.identity = identity.into();
        self
    }

    /// How long a Lease stays valid after its last renewal (default 15 s; whole seconds in the
    /// Lease, rounded up).
    #[must_use]
    pub fn lease_duration(mut self, duration: Duration) -> Self {
        self.config.lease_duration = duration;
        self
    }

    /// How long the leader keeps trying to renew before it steps down (default 10 s; must be
    /// shorter than the lease duration).
    #[must_use]
    pub fn renew_deadline(mut self, deadline: Duration) -> Self {
        self.config.renew_deadline = deadline;
        self
    }

    /// The pause between attempts to acquire or renew (default 2 s; standbys add up to 10 %
    /// jitter).
    #[must_use]
    pub fn retry_period(mut self, period: Duration) -> Self {
        self.config.retry_period = period;
        self
    }

    /// Reports `leader_election_master_status{name=<lease>}` in `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether standbys also watch the Lease (default on), so that they see a release at once
    /// instead of at their next poll. Needs `list` and `watch` on leases; without them the
    /// watch fails quietly and standbys fall back to polling every retry period.
    #[must_use]
    pub fn watch_lease(mut self, enabled: bool) -> Self {
        self.watch_lease = enabled;
        self
    }

    /// Labels the Lease gets when this replica creates it (membership Leases of a shard group).
    #[must_use]
    pub(crate) fn labels(mut self, labels: std::collections::BTreeMap<String, String>) -> Self {
        self.config.labels = labels;
        self
    }

    /// The identity this replica will hold the Lease under.
    pub fn current_identity(&self) -> &str {
        &self.config.identity
    }

    /// Starts electing in the background (must be called inside a Tokio runtime) and returns
    /// the handle that says whether this replica leads.
    ///
    /// # Errors
    /// [`Error::Anyhow`](crate::Error::Anyhow) when the timing is inconsistent (the lease
    /// duration must exceed the renew deadline, which must exceed the retry period plus jitter)
    /// or the identity or lease name is empty.
    ///
    /// # Access control
    /// `get`, `create` and `update` on `coordination.k8s.io` `leases` in the namespace; `list`
    /// and `watch` there too for instant handover (see [`watch_lease`](Self::watch_lease)).
    pub fn start(self) -> Result<Leadership> {
        self.config.validate()?;
        let api: Api<Lease> = Api::namespaced(self.client, &self.namespace);
        let wake = Arc::new(Notify::new());
        let watch = self
            .watch_lease
            .then(|| spawn_lease_watch(api.clone(), &self.config.name, wake.clone()));
        let store = KubeLeases {
            api,
            name: self.config.name.clone(),
        };
        Ok(spawn_elector(store, self.config, self.metrics, wake, watch))
    }
}

/// Whether this replica leads, from [`LeaderElection::start`]. Share it in an `Arc` between the
/// work it gates and the shutdown path. Dropping it stops electing *without* releasing the
/// Lease (as a crash would: a standby takes over after the lease duration); call
/// [`release`](Leadership::release) on a graceful shutdown.
pub struct Leadership {
    name: String,
    identity: String,
    state: watch::Sender<bool>,
    /// Until when this replica may act as the leader: the last successful renewal's send time
    /// plus the renew deadline (`None` while not leading).
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// The current (or last) term.
    term: Arc<Mutex<Term>>,
    stopping: watch::Sender<bool>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    watch: Mutex<Option<JoinHandle<()>>>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .field("is_leader", &self.is_leader())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Whether this replica leads right now: it holds the Lease and its renew deadline has not
    /// passed since the last successful renewal. Judged on the clock at each call, so a replica
    /// that was paused (SIGSTOP, a long GC-like stall) past its deadline reports `false` the
    /// moment it runs again, before its election task had a chance to notice.
    pub fn is_leader(&self) -> bool {
        *self.state.borrow()
            && self
                .valid_until()
                .is_some_and(|until| Instant::now() < until)
    }

    /// Until when this replica may act as the leader (`None` while not leading).
    pub fn valid_until(&self) -> Option<Instant> {
        *lock(&self.valid_until)
    }

    /// How many terms this replica has begun leading (0 before the first). A replica that
    /// lost the Lease (or its renew deadline passed) and won it again is in a new term: work
    /// begun in one term never continues into the next (see [`while_leader`](Self::while_leader)).
    pub fn term(&self) -> u64 {
        lock(&self.term).number
    }

    /// When the current (or last) term began, and whether the Lease already existed then (it
    /// was not created for this term): some replica may have held it, or considered it
    /// expired, before.
    pub(crate) fn term_began(&self) -> Option<(Instant, bool)> {
        let term = lock(&self.term);
        term.began.map(|began| (began, term.resumed))
    }

    /// A receiver of every change of [`is_leader`](Self::is_leader).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }

    /// Waits until this replica leads and returns `true`; returns `false` instead once
    /// [`shutdown`](Self::shutdown) or [`release`](Self::release) was called and this replica
    /// does not lead.
    pub async fn acquired(&self) -> bool {
        let mut state = self.state.subscribe();
        let mut stopping = self.stopping.subscribe();
        loop {
            if *state.borrow_and_update() {
                return true;
            }
            if *stopping.borrow_and_update() {
                return false;
            }
            tokio::select! {
                changed = state.changed() => if changed.is_err() { return false },
                changed = stopping.changed() => if changed.is_err() { return false },
            }
        }
    }

    /// Waits until this replica does not lead (returns at once on a standby).
    pub async fn lost(&self) {
        let mut state = self.state.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = state.wait_for(|leader| !leader).await;
    }

    /// Runs `work` as the leader: waits for leadership, then runs `work` unless leadership is
    /// lost first, in which case `work` is dropped (cancelled) at its next `.await`. `None` when
    /// `work` did not complete as the leader (lost, or shutting down while on standby).
    ///
    /// Wrap each reconcile in it and only the leader reconciles, while standbys keep their
    /// watch caches warm and hold their pending objects until they lead.
    ///
    /// `work` is never polled once the renew deadline has passed without a renewal (checked on
    /// the clock before every poll), so a paused leader that wakes up past its deadline does not
    /// run one more step of it, nor once a new [`term`](Self::term) began (a replica that lost
    /// and won again between two polls).
    pub async fn while_leader<F: Future>(&self, work: F) -> Option<F::Output> {
        if !self.acquired().await {
            return None;
        }
        let term = self.term();
        let mut work = std::pin::pin!(work);
        let mut lost = std::pin::pin!(self.lost());
        let mut expiry = std::pin::pin!(tokio::time::sleep_until(Instant::now()));
        std::future::poll_fn(|cx| {
            if lost.as_mut().poll(cx).is_ready() || !self.is_leader() || self.term() != term {
                return std::task::Poll::Ready(None);
            }
            // Wake up at the deadline even if the election task is late to notice it.
            if let Some(until) = self.valid_until()
                && expiry.deadline() != until
            {
                expiry.as_mut().reset(until);
            }
            let _ = expiry.as_mut().poll(cx);
            work.as_mut().poll(cx).map(Some)
        })
        .await
    }

    /// Starts shutting down: standbys waiting in [`acquired`](Self::acquired) or
    /// [`while_leader`](Self::while_leader) give up, and the leader keeps leading (and renewing)
    /// until [`release`](Self::release), so that in-flight work can finish.
    pub fn shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Stops electing and, if this replica leads, steps down and releases the Lease (empty
    /// holder, 1 s duration) so that a standby takes over at once. Call it after this replica's
    /// work has stopped. Afterwards this replica never leads again; later calls do nothing.
    ///
    /// # Access control
    /// `get` and `update` on the Lease.
    pub async fn release(&self) {
        self.shutdown();
        let stop = lock(&self.stop).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = lock(&self.task).take();
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(lease = %self.name, %error, "leader election task failed");
        }
        if let Some(watch) = lock(&self.watch).take() {
            watch.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        if let Some(watch) = lock(&self.watch).take() {
            watch.abort();
        }
        self.state.send_replace(false);
        *lock(&self.valid_until) = None;
        self.stopping.send_replace(true);
        if let Some(metrics) = &self.metrics {
            metrics.set_leader(&self.name, false);
        }
    }
}

/// Why a Lease operation failed.
#[derive(Debug)]
enum StoreError {
    /// The Lease changed since it was read, or was created by someone else first.
    Conflict,
    /// Any other API error.
    Api(kube::Error),
    /// No answer in time.
    Timeout,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Conflict => f.write_str("the Lease changed concurrently"),
            StoreError::Api(error) => write!(f, "{error}"),
            StoreError::Timeout => f.write_str("no answer in time"),
        }
    }
}

impl From<kube::Error> for StoreError {
    fn from(error: kube::Error) -> Self {
        match &error {
            kube::Error::Api(status) if status.code == 409 => StoreError::Conflict,
            _ => StoreError::Api(error),
        }
    }
}

/// Where the Lease lives: the API server, or a fake in tests.
#[async_trait]
trait LeaseStore: Send + Sync + 'static {
    async fn get(&self) -> Result<Option<Lease>, StoreError>;
    /// Creates the Lease; `Conflict` when it exists.
    async fn create(&self, lease: &Lease) -> Result<Lease, StoreError>;
    /// Replaces the Lease if its `resourceVersion` still matches; `Conflict` otherwise.
    async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError>;
}

struct KubeLeases {
    api: Api<Lease>,
    name: String,
}

#[async_trait]
impl LeaseStore for KubeLeases {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        Ok(self.api.get_opt(&self.name).await?)
    }

    async fn create(&self, lease: &Lease) -> Result<Lease, StoreError> {
        Ok(self.api.create(&PostParams::default(), lease).await?)
    }

    async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError> {
        Ok(self
            .api
            .replace(&self.name, &PostParams::default(), lease)
            .await?)
    }
}

/// Wakes standbys when the Lease changes (a release, a renewal, a deletion).
fn spawn_lease_watch(api: Api<Lease>, name: &str, wake: Arc<Notify>) -> JoinHandle<()> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let name = name.to_owned();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(lease = %name, %error, "cannot watch the Lease; polling instead");
                }
            }
        }
    })
}

fn spawn_elector<S: LeaseStore>(
    store: S,
    config: ElectionConfig,
    metrics: Option<Metrics>,
    wake: Arc<Notify>,
    watch: Option<JoinHandle<()>>,
) -> Leadership {
    let state = watch::Sender::new(false);
    let valid_until = Arc::new(Mutex::new(None));
    let term = Arc::new(Mutex::new(Term::default()));
    let stopping = watch::Sender::new(false);
    let (stop, stopped) = oneshot::channel();
    if let Some(metrics) = &metrics {
        metrics.set_leader(&config.name, false);
    }
    let elector = Elector {
        store,
        config: config.clone(),
        state: state.clone(),
        valid_until: valid_until.clone(),
        term: term.clone(),
        metrics: metrics.clone(),
        wake,
        observed: None,
        created: false,
    };
    let task = tokio::spawn(elector.run(stopped));
    Leadership {
        name: config.name,
        identity: config.identity,
        state,
        valid_until,
        term,
        stopping,
        stop: Mutex::new(Some(stop)),
        task: Mutex::new(Some(task)),
        watch: Mutex::new(watch),
        metrics,
    }
}

/// A term of leadership.
#[derive(Debug, Default)]
struct Term {
    /// Terms begun so far.
    number: u64,
    /// When the current (or last) one began.
    began: Option<Instant>,
    /// Whether the Lease existed when it began (not created for it).
    resumed: bool,
}

/// The result of one attempt to acquire or renew.
enum Attempt {
    /// This replica holds the Lease; the write that says so was sent at this instant.
    Held(Instant),
    /// Another replica holds it, valid until at least this instant on our clock.
    Busy(Instant),
}

/// How a leader's term ended.
enum TermEnd {
    /// Lost: another holder, or no renewal within the renew deadline.
    Lost,
    /// `release` was called.
    Released,
    /// The handle was dropped: stop without touching the Lease.
    Abandoned,
}

struct Elector<S> {
    store: S,
    config: ElectionConfig,
    state: watch::Sender<bool>,
    valid_until: Arc<Mutex<Option<Instant>>>,
    term: Arc<Mutex<Term>>,
    metrics: Option<Metrics>,
    wake: Arc<Notify>,
    /// The last Lease record seen and when (on our clock) it was first seen.
    observed: Option<(LeaseSpec, Instant)>,
    /// Whether the last successful attempt created the Lease.
    created: bool,
}

impl<S: LeaseStore> Elector<S> {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let lease = self.config.name.clone();
        let identity = self.config.identity.clone();
        loop {
            let Some(renewed) = self.stand_by(&mut stop).await else {
                return;
            };
            tracing::info!(%lease, %identity, "became leader");
            self.set_valid_until(Some(renewed + self.config.renew_deadline));
            {
                let mut term = lock(&self.term);
                term.number += 1;
                term.began = Some(renewed);
                term.resumed = !self.created;
            }
            self.set_leader(true);
            let end = self.lead(renewed, &mut stop).await;
            self.set_valid_until(None);
            self.set_leader(false);
            match end {
                TermEnd::Lost => tracing::warn!(%lease, %identity, "lost leadership; standing by"),
                TermEnd::Released => {
                    self.release().await;
                    return;
                }
                TermEnd::Abandoned => return,
            }
        }
    }

    /// Tries until this replica holds the Lease (returns when its write was sent) or stops.
    async fn stand_by(&mut self, stop: &mut oneshot::Receiver<()>) -> Option<Instant> {
        loop {
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.try_acquire())
                .await
                .unwrap_or(Err(StoreError::Timeout));
            let retry = Instant::now() + self.jittered_retry();
            let next = match attempt {
                Ok(Attempt::Held(sent_at)) => return Some(sent_at),
                Ok(Attempt::Busy(expires)) => retry.min(expires),
                Err(StoreError::Conflict) => {
                    // Another replica wrote first: normal when standbys race.
                    tracing::debug!(lease = %self.config.name, "lost a race for the Lease");
                    retry
                }
                Err(error) => {
                    tracing::warn!(lease = %self.config.name, %error, "cannot acquire the Lease");
                    retry
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.wake.notified() => {}
                _ = &mut *stop => return None,
            }
        }
    }

    /// Renews every retry period until a renewal has not succeeded for the renew deadline
    /// (counted from when the last successful write was sent), another replica holds the Lease,
    /// or this replica stops.
    async fn lead(&mut self, mut renewed: Instant, stop: &mut oneshot::Receiver<()>) -> TermEnd {
        let lease = self.config.name.clone();
        loop {
            let renew_deadline = self.config.renew_deadline;
            let deadline = renewed + renew_deadline;
            let retry_period = self.config.retry_period;
            let renewal = async {
                loop {
                    tokio::time::sleep(retry_period).await;
                    match self.try_acquire().await {
                        Ok(Attempt::Held(sent_at)) => return Some(sent_at),
                        Ok(Attempt::Busy(_)) => return None,
                        Err(error) => {
                            tracing::warn!(%lease, %error, "cannot renew the Lease; retrying");
                        }
                    }
                }
            };
            tokio::select! {
                result = tokio::time::timeout_at(deadline, renewal) => match result {
                    Ok(Some(sent_at)) => {
                        renewed = sent_at;
                        self.set_valid_until(Some(renewed + renew_deadline));
                    }
                    Ok(None) => {
                        tracing::warn!(%lease, "another replica holds the Lease");
                        return TermEnd::Lost;
                    }
                    Err(_) => {
                        tracing::warn!(%lease, deadline = ?renew_deadline, "no renewal within the renew deadline; stepping down");
                        return TermEnd::Lost;
                    }
                },
                stopped = &mut *stop => {
                    return if stopped.is_ok() { TermEnd::Released } else { TermEnd::Abandoned };
                }
            }
        }
    }

    /// One attempt, as client-go's `tryAcquireOrRenew`: read the Lease; if another replica
    /// holds it and it has not expired on our clock, back off; otherwise write ourselves in,
    /// conditional on the `resourceVersion` we read.
    async fn try_acquire(&mut self) -> Result<Attempt, StoreError> {
        let existing = self.store.get().await?;
        let now = Instant::now();
        let wall = MicroTime(Timestamp::now());
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    labels: (!self.config.labels.is_empty()).then(|| self.config.labels.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(self.config.lease_seconds()),
                    acquire_time: Some(wall.clone()),
                    renew_time: Some(wall),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            let sent_at = Instant::now();
            let created = self.store.create(&lease).await?;
            self.observe(created.spec.unwrap_or_default(), sent_at);
            self.created = true;
            return Ok(Attempt::Held(sent_at));
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed_at = self.observe(spec.clone(), now);
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.config.identity.as_str());
        if holder.is_some() && !mine {
            let seconds = spec
                .lease_duration_seconds
                .unwrap_or_else(|| self.config.lease_seconds());
            let expires =
                observed_at + Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1));
            if now < expires {
                return Ok(Attempt::Busy(expires));
            }
            tracing::info!(lease = %self.config.name, holder = ?holder, "the Lease expired; taking it over");
        }
        let mut next = spec.clone();
        next.holder_identity = Some(self.config.identity.clone());
        next.lease_duration_seconds = Some(self.config.lease_seconds());
        next.renew_time = Some(wall.clone());
        if !mine {
            next.acquire_time = Some(wall);
            next.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        lease.spec = Some(next);
        let sent_at = Instant::now();
        let written = self.store.replace(&lease).await?;
        self.observe(written.spec.unwrap_or_default(), sent_at);
        self.created = false;
        Ok(Attempt::Held(sent_at))
    }

    /// Remembers `spec`, and when it was first seen; returns that instant.
    fn observe(&mut self, spec: LeaseSpec, now: Instant) -> Instant {
        match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                self.observed = Some((spec, now));
                now
            }
        }
    }

    /// Clears the holder (and shortens the duration to 1 s) if this replica still holds it.
    async fn release(&mut self) {
        let lease = self.config.name.clone();
        let released = tokio::time::timeout(self.config.renew_deadline, async {
            let Some(mut current) = self.store.get().await? else {
                return Ok(false);
            };
            let mut spec = current.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            let wall = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.acquire_time = Some(wall.clone());
            spec.renew_time = Some(wall);
            current.spec = Some(spec);
            self.store.replace(&current).await.map(|_| true)
        })
        .await
        .unwrap_or(Err(StoreError::Timeout));
        match released {
            Ok(true) => tracing::info!(%lease, "released the Lease"),
            Ok(false) => tracing::debug!(%lease, "the Lease was not ours to release"),
            Err(error) => {
                tracing::warn!(%lease, %error, "cannot release the Lease; a standby takes over when it expires");
            }
        }
    }

    fn set_valid_until(&self, until: Option<Instant>) {
        *lock(&self.valid_until) = until;
    }

    fn set_leader(&self, leader: bool) {
        self.state.send_replace(leader);
        if let Some(metrics) = &self.metrics {
            metrics.set_leader(&self.config.name, leader);
        }
    }

    fn jittered_retry(&self) -> Duration {
        let factor = 1.0 + rand::rng().random_range(0.0..JITTER);
        self.config.retry_period.mul_f64(factor)
    }
}

/// Where a pod finds its own namespace.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The operator's own namespace: `POD_NAMESPACE`, else the pod's service account namespace,
/// else the client's default namespace (from the kubeconfig).
pub(crate) fn current_namespace(client: &Client) -> String {
    operator_namespace(
        std::env::var("POD_NAMESPACE").ok(),
        std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok(),
        client.default_namespace(),
    )
}

fn operator_namespace(env: Option<String>, file: Option<String>, client_default: &str) -> String {
    [env, file]
        .into_iter()
        .flatten()
        .map(|namespace| namespace.trim().to_owned())
        .find(|namespace| !namespace.is_empty())
        .unwrap_or_else(|| client_default.to_owned())
}

/// `POD_NAME`, else the hostname plus a random suffix (as controller-runtime).
pub(crate) fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let suffix: u64 = rand::random();
    format!("{}_{suffix:016x}", hostname())
}

fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .chain(std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "kuberator".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// An in-memory API server for one Lease, with per-replica partitions and errors.
    #[derive(Default)]
    struct Server {
        lease: Option<Lease>,
        version: u64,
        /// Identities whose requests never get an answer.
        partitioned: HashSet<String>,
        /// Identities whose requests fail at once.
        failing: HashSet<String>,
        /// Woken on every write, as the Lease watch would.
        wakers: Vec<Arc<Notify>>,
        writes: usize,
    }

    #[derive(Clone, Default)]
    struct Cluster(Arc<Mutex<Server>>);

    impl Cluster {
        fn lock(&self) -> MutexGuard<'_, Server> {
            self.0.lock().unwrap()
        }

        fn holder(&self) -> Option<String> {
            self.lock()
                .lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        }

        fn transitions(&self) -> Option<i32> {
            self.lock()
                .lease
                .as_ref()
                .and_then(|l| l.spec.as_ref()?.lease_transitions)
        }

        fn elector(&self, identity: &str, watch: bool) -> Leadership {
            let wake = Arc::new(Notify::new());
            if watch {
                self.lock().wakers.push(wake.clone());
            }
            let store = FakeStore {
                cluster: self.clone(),
                identity: identity.to_owned(),
            };
            spawn_elector(
                store,
                ElectionConfig::new("lock".into(), identity.into()),
                None,
                wake,
                None,
            )
        }
    }

    struct FakeStore {
        cluster: Cluster,
        identity: String,
    }

    impl FakeStore {
        /// Hangs for partitioned replicas, fails for failing ones.
        async fn reach(&self) -> Result<(), StoreError> {
            let (partitioned, failing) = {
                let server = self.cluster.lock();
                (
                    server.partitioned.contains(&self.identity),
                    server.failing.contains(&self.identity),
                )
            };
            if partitioned {
                std::future::pending::<()>().await;
            }
            if failing {
                return Err(StoreError::Timeout);
            }
            // A round trip takes a little time.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        }

        fn write(&self, server: &mut Server, mut lease: Lease) -> Lease {
            server.version += 1;
            server.writes += 1;
            lease.metadata.resource_version = Some(server.version.to_string());
            server.lease = Some(lease.clone());
            for waker in &server.wakers {
                waker.notify_one();
            }
            lease
        }
    }

    #[async_trait]
    impl LeaseStore for FakeStore {
        async fn get(&self) -> Result<Option<Lease>, StoreError> {
            self.reach().await?;
            Ok(self.cluster.lock().lease.clone())
        }

        async fn create(&self, lease: &Lease) -> Result<Lease, StoreError> {
            self.reach().await?;
            let mut server = self.cluster.lock();
            if server.lease.is_some() {
                return Err(StoreError::Conflict);
            }
            Ok(self.write(&mut server, lease.clone()))
        }

        async fn replace(&self, lease: &Lease) -> Result<Lease, StoreError> {
            self.reach().await?;
            let mut server = self.cluster.lock();
            let current = server
                .lease
                .as_ref()
                .and_then(|l| l.metadata.resource_version.clone());
            if current != lease.metadata.resource_version {
                return Err(StoreError::Conflict);
            }
            Ok(self.write(&mut server, lease.clone()))
        }
    }

    /// Records every flip of `leadership` with its instant.
    fn record(leadership: &Leadership) -> Arc<Mutex<Vec<(Instant, bool)>>> {
        let flips = Arc::new(Mutex::new(Vec::new()));
        let mut state = leadership.subscribe();
        let log = flips.clone();
        tokio::spawn(async move {
            while state.changed().await.is_ok() {
                let leader = *state.borrow_and_update();
                log.lock().unwrap().push((Instant::now(), leader));
            }
        });
        flips
    }

    async fn wait_leader(leadership: &Leadership, within: Duration) -> Duration {
        let start = Instant::now();
        tokio::time::timeout(within, leadership.acquired())
            .await
            .unwrap_or_else(|_| panic!("{} not leader within {within:?}", leadership.identity()));
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn first_replica_acquires_and_keeps_renewing() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        assert_eq!(cluster.holder().as_deref(), Some("a"));
        assert_eq!(cluster.transitions(), Some(0));
        let writes = cluster.lock().writes;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(a.is_leader());
        let renewals = cluster.lock().writes - writes;
        assert!(
            (28..=30).contains(&renewals),
            "one renewal per retry period, got {renewals} in 60 s"
        );
        let spec = cluster.lock().lease.clone().unwrap().spec.unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert!(spec.acquire_time <= spec.renew_time);
    }

    #[tokio::test(start_paused = true)]
    async fn two_replicas_racing_for_a_new_lease_elect_exactly_one() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        let b = cluster.elector("b", true);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(a.is_leader() ^ b.is_leader(), "exactly one leader");
        let leader = if a.is_leader() { "a" } else { "b" };
        assert_eq!(cluster.holder().as_deref(), Some(leader));
        assert_eq!(cluster.transitions(), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_crashed_leader_is_replaced_after_the_lease_duration() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        let b = cluster.elector("b", true);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!b.is_leader());

        drop(a); // no release: the Lease still names `a`
        let crashed = Instant::now();
        let took = wait_leader(&b, Duration::from_secs(30)).await;
        // `a` last renewed at most one retry period before the crash; `b` takes over a lease
        // duration after it saw that renewal, and never earlier.
        assert!(
            took >= DEFAULT_LEASE_DURATION - DEFAULT_RETRY_PERIOD - SECOND,
            "took over after {took:?}: too early"
        );
        assert!(
            took <= DEFAULT_LEASE_DURATION + DEFAULT_RETRY_PERIOD,
            "took over after {took:?}"
        );
        assert_eq!(crashed.elapsed(), took);
        assert_eq!(cluster.holder().as_deref(), Some("b"));
        assert_eq!(cluster.transitions(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn without_the_watch_a_standby_still_takes_over_by_polling() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", false);
        wait_leader(&a, SECOND).await;
        let b = cluster.elector("b", false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(a);
        let took = wait_leader(&b, Duration::from_secs(30)).await;
        assert!(
            took <= DEFAULT_LEASE_DURATION + DEFAULT_RETRY_PERIOD.mul_f64(1.0 + JITTER),
            "took over after {took:?}"
        );
    }

    /// The partitioned leader must say "not leader" before the standby can say "leader".
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_the_lease_expires() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        let b = cluster.elector("b", true);
        let (a_flips, b_flips) = (record(&a), record(&b));
        tokio::time::sleep(Duration::from_secs(9)).await;

        cluster.lock().partitioned.insert("a".into());
        let partitioned = Instant::now();
        wait_leader(&b, Duration::from_secs(30)).await;

        let a_down = a_flips
            .lock()
            .unwrap()
            .iter()
            .find(|(_, leader)| !leader)
            .map(|(at, _)| *at)
            .expect("a stepped down");
        let b_up = b_flips.lock().unwrap()[0].0;
        assert!(!a.is_leader());
        assert!(
            a_down < b_up,
            "a stepped down at {:?}, b took over at {:?}",
            a_down - partitioned,
            b_up - partitioned
        );
        // `a` steps down within the renew deadline of its last renewal (≤ 2 s before the
        // partition); `b` waits a lease duration after seeing that renewal: ≥ 5 s apart.
        assert!(a_down - partitioned <= DEFAULT_RENEW_DEADLINE);
        assert!(b_up - a_down >= DEFAULT_LEASE_DURATION - DEFAULT_RENEW_DEADLINE - SECOND);

        // Healed, `a` stays a standby (it did not exit) and does not steal the Lease.
        cluster.lock().partitioned.clear();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!a.is_leader() && b.is_leader());
        assert_eq!(cluster.holder().as_deref(), Some("b"));

        // And it takes over again when `b` goes away.
        drop(b);
        wait_leader(&a, Duration::from_secs(30)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_within_the_deadline_keep_leadership() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        let flips = record(&a);
        // Errors for 7 s: renewals fail, but one succeeds before the 10 s deadline.
        cluster.lock().failing.insert("a".into());
        tokio::time::sleep(Duration::from_secs(7)).await;
        cluster.lock().failing.clear();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(a.is_leader());
        assert!(flips.lock().unwrap().is_empty(), "never stepped down");

        // Errors for longer than the deadline: step down, then come back once it heals
        // (nobody else took the Lease; it is still ours).
        cluster.lock().failing.insert("a".into());
        tokio::time::sleep(Duration::from_secs(13)).await;
        assert!(!a.is_leader());
        cluster.lock().failing.clear();
        wait_leader(&a, Duration::from_secs(5)).await;
        assert_eq!(cluster.transitions(), Some(0), "re-acquired its own lease");
    }

    #[tokio::test(start_paused = true)]
    async fn release_hands_over_at_once() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        let b = cluster.elector("b", true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut a_state = a.subscribe();
        a.release().await;
        assert!(!*a_state.borrow_and_update(), "not leader after release");
        assert!(!a.acquired().await, "never again");
        a.release().await; // a second call does nothing
        let took = wait_leader(&b, SECOND).await;
        assert!(took < Duration::from_millis(100), "handover took {took:?}");
        assert_eq!(cluster.transitions(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn release_without_the_watch_hands_over_within_a_retry_period() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", false);
        wait_leader(&a, SECOND).await;
        let b = cluster.elector("b", false);
        tokio::time::sleep(Duration::from_secs(5)).await;
        a.release().await;
        let took = wait_leader(&b, Duration::from_secs(5)).await;
        assert!(
            took <= DEFAULT_RETRY_PERIOD.mul_f64(1.0 + JITTER),
            "handover took {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn while_leader_waits_runs_and_cancels() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        assert_eq!(a.while_leader(async { 7 }).await, Some(7));

        // Work in progress is cancelled when leadership is lost.
        cluster.lock().partitioned.insert("a".into());
        let started = Instant::now();
        let out = a
            .while_leader(tokio::time::sleep(Duration::from_secs(3600)))
            .await;
        assert_eq!(out, None);
        assert!(started.elapsed() <= DEFAULT_RENEW_DEADLINE);

        // A standby that shuts down stops waiting.
        let b = cluster.elector("b", true);
        let waiting = b.while_leader(async { 1 });
        b.shutdown();
        assert_eq!(waiting.await, None);
        assert!(!b.acquired().await);
    }

    #[tokio::test(start_paused = true)]
    async fn work_begun_in_one_term_never_continues_into_the_next() {
        let cluster = Cluster::default();
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        assert_eq!(a.term(), 1);
        assert!(
            matches!(a.term_began(), Some((_, false))),
            "the first term created the Lease"
        );
        let mut work = std::pin::pin!(a.while_leader(tokio::time::sleep(SECOND * 3600)));
        assert!(futures::poll!(work.as_mut()).is_pending());

        // Not polled while `a` is cut off past its renew deadline and wins its Lease back.
        cluster.lock().partitioned.insert("a".into());
        tokio::time::sleep(DEFAULT_RENEW_DEADLINE + SECOND).await;
        assert!(!a.is_leader());
        cluster.lock().partitioned.clear();
        wait_leader(&a, Duration::from_secs(30)).await;
        assert_eq!(a.term(), 2);
        assert!(
            matches!(a.term_began(), Some((_, true))),
            "the second term took over an existing Lease"
        );
        assert_eq!(work.await, None, "work of term 1 went on in term 2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_holder_is_taken_at_once_and_counts_a_transition() {
        let cluster = Cluster::default();
        cluster.lock().lease = Some(Lease {
            metadata: ObjectMeta {
                name: Some("lock".into()),
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                lease_duration_seconds: Some(15),
                lease_transitions: Some(4),
                ..LeaseSpec::default()
            }),
        });
        cluster.lock().version = 1;
        let a = cluster.elector("a", true);
        wait_leader(&a, SECOND).await;
        assert_eq!(cluster.transitions(), Some(5));
    }

    #[test]
    fn timing_is_validated_and_seconds_round_up() {
        let config = |lease: u64, renew: u64, retry: u64| ElectionConfig {
            lease_duration: Duration::from_millis(lease),
            renew_deadline: Duration::from_millis(renew),
            retry_period: Duration::from_millis(retry),
            ..ElectionConfig::new("lock".into(), "me".into())
        };
        assert!(config(15_000, 10_000, 2_000).validate().is_ok());
        assert!(config(10_000, 10_000, 2_000).validate().is_err());
        assert!(config(15_000, 2_100, 2_000).validate().is_err());
        assert!(config(15_000, 10_000, 0).validate().is_err());
        assert!(
            ElectionConfig::new("lock".into(), String::new())
                .validate()
                .is_err()
        );
        assert_eq!(config(2_500, 1_000, 200).lease_seconds(), 3);
        assert_eq!(config(15_000, 1_000, 200).lease_seconds(), 15);
    }

    #[test]
    fn the_operator_namespace_comes_from_the_pod_then_the_client() {
        let pick = |env: Option<&str>, file: Option<&str>| {
            operator_namespace(env.map(Into::into), file.map(Into::into), "default")
        };
        assert_eq!(pick(Some("ops"), Some("other\n")), "ops");
        assert_eq!(pick(None, Some("operators\n")), "operators");
        assert_eq!(pick(Some(""), None), "default");
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        // Only when POD_NAME is unset (the test environment).
        if std::env::var("POD_NAME").is_err() {
            let (a, b) = (default_identity(), default_identity());
            assert_ne!(a, b);
            assert!(a.starts_with(&hostname()));
        }
    }
}
