//! `Operator`: the controller loop — watch, reconcile with bounded concurrency, per-object
//! backoff, panic guard, graceful shutdown.

use std::{
    any::TypeId, fmt::Debug, future::Future, net::SocketAddr, panic::AssertUnwindSafe, pin::Pin,
    sync::Arc, time::Duration,
};

use async_trait::async_trait;
use futures::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, SelectAll},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, Predicate,
        controller::Action,
        predicates,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::Instrument;

use super::{
    backoff::{Backoff, FailureCounts},
    child_changes::ChildChanges,
    dispatch::{Dispatch, Origin},
    health::HealthRoutes,
    leader::{LeaderElection, Leadership},
    live_map::LiveMap,
    manager::{
        BoxedShutdown, Controller as ManagedController, IntoControllerSealed, Manager,
        ProcessSettings, Read, ReadinessGate, Services, Setup,
    },
    metrics::{ControllerMetrics, Metrics},
    own_writes::OwnWrites,
    progress::{DEFAULT_STALLED_AFTER, Progress},
    request::RequestGuard,
    served::WatchedKind,
    shard::{Admission, Sharding, Shards},
    shared::{Caches, SharedWatches},
    shutdown::shutdown_signal,
    start_skip::{StartSkip, UpToDate},
    timeout::{DEFAULT_RECONCILE_TIMEOUT, with_timeout},
    watch::{OnUndecodable, typed_watch, with_watch_backoff},
};
use crate::{
    cache::ApiScope,
    error::{Error, ObjectKey, Result, RetryPolicy},
    finalize::Object,
    manifests::Rbac,
};

/// What the controller loop drives: one reconcile, what to do after an error, and the retry.
///
/// [`Operator::new`] adapts a [`Handler`](crate::Handler) (what the macro generates) and
/// [`Reconcile`](crate::Reconcile) adapts a [`Context`](crate::Context); implement it directly
/// for full control.
#[async_trait]
pub trait Reconciler<R: Object>: Send + Sync + 'static {
    /// One reconcile of `object`.
    ///
    /// # Errors
    /// Any error; it is passed to [`on_error`](Reconciler::on_error) and
    /// [`error_policy`](Reconciler::error_policy).
    async fn reconcile(&self, object: Arc<R>) -> Result<Action>;

    /// Called after a failed reconcile (e.g. to record the error in status).
    async fn on_error(&self, object: Arc<R>, error: &Error) {
        let _ = (object, error);
    }

    /// Called once after the loop stopped (e.g. to flush pending event counts).
    async fn shutdown(&self) {}

    /// When to retry after `error`; `failures` counts this object's consecutive failures.
    /// The default honours the error's [`RetryPolicy`].
    fn error_policy(&self, object: &R, error: &Error, failures: u32, backoff: &Backoff) -> Action {
        let _ = object;
        default_error_policy(error, failures, backoff)
    }
}

/// The default retry: backoff with jitter, never for terminal errors, fixed for `After`.
pub fn default_error_policy(error: &Error, failures: u32, backoff: &Backoff) -> Action {
    match error.retry_policy() {
        RetryPolicy::Backoff => Action::requeue(backoff.jittered(failures)),
        RetryPolicy::Terminal => Action::await_change(),
        RetryPolicy::After(delay) => Action::requeue(delay),
    }
}

type OwnsFn<R> = Box<
    dyn Fn(Controller<R>, &mut Wiring<'_>, Option<&str>, Option<&StartSkip<R>>) -> Controller<R>
        + Send
        + Sync,
>;

/// What an `owns`/`watches` step needs to subscribe to the manager's shared watches.
struct Wiring<'a> {
    watches: &'a mut SharedWatches,
    client: &'a Client,
    readiness: &'a ReadinessGate,
    name: &'a str,
    own_writes: &'a OwnWrites,
}

/// The controller loop for `R`, configured with a builder.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use kuberator::{Action, Operator, Reconciler, Result};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// struct Noop;
/// #[async_trait::async_trait]
/// impl Reconciler<ConfigMap> for Noop {
///     async fn reconcile(&self, _cm: Arc<ConfigMap>) -> Result<Action> {
///         Ok(Action::await_change())
///     }
/// }
/// # async fn doc(client: kube::Client) -> kuberator::Result<()> {
/// Operator::with_reconciler(client, Noop)
///     .namespaces(["default"])
///     .concurrency(4)
///     .shutdown_on_signal()
///     .run()
///     .await
/// # }
/// ```
pub struct Operator<R: Object> {
    reconciler: Arc<dyn Reconciler<R>>,
    client: Client,
    name: String,
    namespaces: Vec<String>,
    watcher_config: watcher::Config,
    concurrency: u16,
    generation_filter: bool,
    backoff: Backoff,
    owns: Vec<OwnsFn<R>>,
    caches: Vec<Caches>,
    reads: Vec<(TypeId, String)>,
    shutdown: Option<BoxedShutdown>,
    metrics: Option<Metrics>,
    health: Option<SocketAddr>,
    health_routes: Option<HealthRoutes>,
    leader_election: Option<LeaderElection>,
    leadership: Option<Arc<Leadership>>,
    sharding: Option<Sharding>,
    permissions: Option<Rbac>,
    watched: Vec<WatchedKind>,
    check_served: bool,
    reconcile_timeout: Option<Duration>,
    shutdown_timeout: Option<Duration>,
    stalled_after: Option<Duration>,
    guard: RequestGuard,
    own_writes: OwnWrites,
    webhooks: crate::webhook::Settings,
    release_undecodable: Option<String>,
    events: Option<crate::events::EventRecorder>,
    skip_observed: Option<UpToDate<R>>,
    finalizer: Option<String>,
}

/// controller-runtime's default graceful-shutdown timeout: 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl<R: Object> Operator<R>
where
    R::Scope: ApiScope,
{
    /// An operator driving `reconciler` over all namespaces (or the cluster scope), one reconcile
    /// at a time, with generation filtering on and no shutdown trigger.
    pub fn with_reconciler(client: Client, reconciler: impl Reconciler<R>) -> Self {
        Self {
            reconciler: Arc::new(reconciler),
            client,
            name: R::plural(&()).into_owned(),
            namespaces: Vec::new(),
            watcher_config: watcher::Config::default(),
            concurrency: 1,
            generation_filter: true,
            backoff: Backoff::default(),
            owns: Vec::new(),
            caches: Vec::new(),
            reads: Vec::new(),
            shutdown: None,
            metrics: None,
            health: None,
            health_routes: None,
            leader_election: None,
            leadership: None,
            sharding: None,
            permissions: None,
            watched: vec![WatchedKind::of::<R>()],
            check_served: true,
            reconcile_timeout: Some(DEFAULT_RECONCILE_TIMEOUT),
            shutdown_timeout: Some(DEFAULT_SHUTDOWN_TIMEOUT),
            stalled_after: Some(DEFAULT_STALLED_AFTER),
            guard: RequestGuard::new(),
            own_writes: OwnWrites::new(),
            webhooks: crate::webhook::Settings::default(),
            release_undecodable: None,
            events: None,
            skip_observed: None,
            finalizer: None,
        }
    }
}

impl<R: Object> Operator<R> {
    /// Watches only these namespaces (ignored for cluster-scoped resources).
    #[must_use]
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Self {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// The controller's name, used in logs.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The watch configuration (label and field selectors, page size …).
    #[must_use]
    pub fn watcher_config(mut self, config: watcher::Config) -> Self {
        self.watcher_config = config;
        self
    }

    /// Watches only objects matching this label selector.
    #[must_use]
    pub fn label_selector(mut self, selector: &str) -> Self {
        self.watcher_config = self.watcher_config.labels(selector);
        self
    }

    /// At most `limit` reconciles at once (1 = sequential, the default; 0 is treated as 1).
    /// One object is never reconciled twice at the same time.
    #[must_use]
    pub fn concurrency(mut self, limit: u16) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Whether to skip watch events that do not change `metadata.generation` (status writes,
    /// finalizer and label changes). On by default: the operator's own status writes then cause
    /// no extra reconcile. Deletion still triggers (it bumps the generation).
    #[must_use]
    pub fn generation_filter(mut self, enabled: bool) -> Self {
        self.generation_filter = enabled;
        self
    }

    /// Skips, on the initial list after a start, the objects whose `status.observedGeneration`
    /// already equals `metadata.generation` (off by default): a restarted operator then does
    /// not re-apply every object it reconciled before (no thundering herd on restart). An
    /// object that is being deleted, or that lacks the operator's finalizer (set by
    /// [`Operator::new`] from the handler's), is reconciled as usual, as is every object whose
    /// generation moved on while the operator was down. With [`owns`](Operator::owns), the
    /// children's initial list does not re-trigger their owners either (each owner's own entry
    /// decides); a change of a child after its first sighting, a deletion, still does.
    ///
    /// Skipped objects are reconciled again at their next change only: an `apply` that relies
    /// on [`Action::requeue`] to correct drift gets no periodic run for them until then.
    /// Without the opt-in every object is applied again after a restart, which is why `apply`
    /// must be idempotent either way.
    ///
    /// Macro key: `skip_observed_on_start = true`.
    #[must_use]
    pub fn skip_observed_on_start(mut self, enabled: bool) -> Self
    where
        R: kube::core::object::HasStatus,
        R::Status: crate::status::ObserveGeneration,
    {
        self.skip_observed = enabled.then(|| -> UpToDate<R> {
            Arc::new(|object: &R| {
                use crate::status::ObserveGeneration as _;
                let observed = kube::core::object::HasStatus::status(object)
                    .and_then(|status| status.observed_generation());
                observed.is_some() && observed == object.meta().generation
            })
        });
        self
    }

    /// The operator's finalizer: an object without it is never skipped at start
    /// ([`skip_observed_on_start`](Operator::skip_observed_on_start)).
    pub(crate) fn own_finalizer(mut self, finalizer: Option<&str>) -> Self {
        self.finalizer = finalizer.map(str::to_owned);
        self
    }

    /// The retry backoff after errors.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Reconciles the owner when the spec of an owned `Child` (one with a controller owner
    /// reference to an `R`) changes or the child is deleted ([`ChildChanges::Spec`]; status
    /// updates do not re-trigger, see [`owns_with`](Operator::owns_with) for those). Children
    /// are watched metadata-only. The echo of the operator's own child writes
    /// ([`Ctx::apply_child`](crate::Ctx::apply_child), see [`OwnWrites`]) does not re-trigger
    /// the owner: one spec change is one reconcile, while a change by any other writer (a
    /// `kubectl edit`, a deletion) still reconciles the owner.
    #[must_use]
    pub fn owns<Child>(self) -> Self
    where
        Child:
            Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Child::Scope: ApiScope,
    {
        self.owns_with::<Child>(ChildChanges::Spec)
    }

    /// Like [`owns`](Operator::owns), choosing which changes of a child re-trigger its owner:
    /// [`ChildChanges::Status`] for every change, status included (an owner reporting its
    /// Deployment's ready replicas). The operator's own writes never re-trigger it.
    #[must_use]
    pub fn owns_with<Child>(mut self, changes: ChildChanges) -> Self
    where
        Child:
            Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Child::Scope: ApiScope,
    {
        self.watched.push(WatchedKind::of::<Child>());
        self.owns.push(Box::new(
            move |controller, wiring, namespace, start_skip| {
                let client = wiring.client.clone();
                let ns = namespace.map(str::to_owned);
                let make = move |_| {
                    // `PartialObjectMeta` makes the watch metadata-only.
                    let api: Api<PartialObjectMeta<Child>> =
                        <Child::Scope as ApiScope>::api(client, ns.as_deref());
                    with_watch_backoff(watcher(api, watcher::Config::default())).boxed()
                };
                let (cache, applied, deleted, _) =
                    wiring.watches.subscribe_split::<PartialObjectMeta<Child>>(
                        namespace,
                        &watcher::Config::default(),
                        make,
                        wiring.readiness.expect(wiring.name),
                    );
                // A deleted child's own writes are forgotten: the registry holds live children.
                let writes = wiring.own_writes.clone();
                let deleted = deleted.inspect(move |child| writes.forget(child.as_ref()));
                let children = futures::stream::select(applied, deleted);
                // Which changes count first (it must see the own writes' generations too),
                // then the echo of own writes is dropped.
                let children = wiring
                    .own_writes
                    .filter(changes.filter(children, cache.clone()));
                match start_skip {
                    Some(skip) => {
                        controller.owns_shared_stream(skip.clone().children(children, cache))
                    }
                    None => controller.owns_shared_stream(children),
                }
            },
        ));
        self
    }

    /// Reconciles the primaries `mapper` names whenever a related `Other` object changes or is
    /// deleted (e.g. a Secret several resources refer to). Watched in the same namespaces as the
    /// primaries.
    ///
    /// ```no_run
    /// # use kuberator::{Operator, Reconciler};
    /// # use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    /// # use kube::{ResourceExt, runtime::reflector::ObjectRef};
    /// # fn doc(operator: Operator<ConfigMap>) -> Operator<ConfigMap> {
    /// // Each Secret `x-credentials` re-triggers the ConfigMap `x` next to it.
    /// operator.watches::<Secret, _, _>(|secret| {
    ///     let name = secret.name_any().strip_suffix("-credentials")?.to_owned();
    ///     Some(ObjectRef::new(&name).within(&secret.namespace()?))
    /// })
    /// # }
    /// ```
    #[must_use]
    pub fn watches<Other, I, F>(mut self, mapper: F) -> Self
    where
        Other:
            Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
        Other::Scope: ApiScope,
        F: Fn(Other) -> I + Clone + Send + Sync + 'static,
        I: IntoIterator<Item = ObjectRef<R>> + 'static,
        I::IntoIter: Send,
    {
        self.watched.push(WatchedKind::of::<Other>());
        self.owns
            .push(Box::new(move |controller, wiring, namespace, _| {
                let client = wiring.client.clone();
                let ns = namespace.map(str::to_owned);
                let make = move |_| {
                    let api: Api<Other> = <Other::Scope as ApiScope>::api(client, ns.as_deref());
                    with_watch_backoff(watcher(api, watcher::Config::default())).boxed()
                };
                let (_, related) = wiring.watches.subscribe::<Other>(
                    namespace,
                    &watcher::Config::default(),
                    make,
                    wiring.readiness.expect(wiring.name),
                );
                let mapper = mapper.clone();
                controller.watches_shared_stream(related, move |other: Arc<Other>| {
                    mapper(Other::clone(&other))
                })
            }));
        self
    }

    /// Declares that the reconciler reads `K` from the manager's shared cache
    /// ([`Ctx::cache`](crate::Ctx::cache)): the manager then fails at start-up, naming this
    /// controller and the kind, unless one of its controllers watches `K` (as primary, owned or
    /// related kind). A read is never a silent new watch.
    #[must_use]
    pub fn reads<K: Resource<DynamicType = ()> + 'static>(mut self) -> Self {
        self.reads
            .push((TypeId::of::<K>(), K::kind(&()).into_owned()));
        self
    }

    /// Fills `caches` with the manager's shared caches when the manager starts; hand a clone to a
    /// hand-written [`Reconciler`] to read them ([`Operator::new`] does this for a handler's
    /// [`Ctx`](crate::Ctx)).
    #[must_use]
    pub fn share_caches(mut self, caches: Caches) -> Self {
        self.caches.push(caches);
        self
    }

    /// Stops gracefully when `signal` resolves: no new reconcile starts, in-flight ones finish,
    /// then [`run`](Operator::run) returns.
    #[must_use]
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + Sync + 'static) -> Self {
        let boxed: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(signal);
        self.shutdown = Some(boxed.shared());
        self
    }

    /// Records controller-runtime's metrics (`controller_runtime_reconcile_total` …) in
    /// `metrics`; serve them with [`health`](Operator::health) or encode them yourself.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr` (ready once every watch has listed
    /// its objects, leader or warm standby). Uses the operator's [`metrics`](Operator::metrics),
    /// or fresh ones.
    #[must_use]
    pub fn health(mut self, addr: SocketAddr) -> Self {
        self.health = Some(addr);
        self
    }

    /// Moves the health server's endpoints and adds routes of your own (see [`HealthRoutes`]);
    /// takes effect with [`health`](Operator::health). Replaces earlier
    /// [`route`](Operator::route)s.
    ///
    /// ```no_run
    /// # use kuberator::{Operator, runtime::{HealthRoutes, health::{Request, Response}}};
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// async fn index(_request: Request<()>) -> Response<String> {
    ///     Response::new("configmap operator\n".to_owned())
    /// }
    /// # fn doc(operator: Operator<ConfigMap>) -> Operator<ConfigMap> {
    /// // controller-rs's layout: `/health`, `/metrics` and a page on `/`.
    /// operator
    ///     .health(([0, 0, 0, 0], 8080).into())
    ///     .health_routes(HealthRoutes::new().liveness("/health").readiness("/health/ready"))
    ///     .route("/", index)
    /// # }
    /// ```
    ///
    /// A bad path (one not starting with `/`, or used twice) makes [`run`](Operator::run) fail
    /// before anything starts.
    #[must_use]
    pub fn health_routes(mut self, routes: HealthRoutes) -> Self {
        self.health_routes = Some(routes);
        self
    }

    /// Answers `GET`/`HEAD` on `path` of the health server with `handler`'s response (see
    /// [`health_routes`](Operator::health_routes) for an example).
    #[must_use]
    pub fn route<F, Fut>(mut self, path: impl Into<String>, handler: F) -> Self
    where
        F: Fn(super::health::Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = super::health::Response<String>> + Send + 'static,
    {
        self.health_routes = Some(
            self.health_routes
                .take()
                .unwrap_or_default()
                .route(path, handler),
        );
        self
    }

    /// Reconciles only while holding `election`'s Lease. Standbys keep their watches warm and
    /// take over at once when the leader releases the Lease (on shutdown) or within the lease
    /// duration when it dies. A leader that cannot renew stops reconciling before its Lease can
    /// expire.
    #[must_use]
    pub fn leader_election(mut self, election: LeaderElection) -> Self {
        self.leader_election = Some(election);
        self
    }

    /// Like [`leader_election`](Operator::leader_election), with an election you started
    /// yourself (to watch [`Leadership::subscribe`] or share it). The operator releases it when
    /// the loop stops.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Arc<Leadership>) -> Self {
        self.leadership = Some(leadership);
        self
    }

    /// Splits the objects over the replicas of `sharding`'s group: each replica reconciles only
    /// the objects that hash to it, and an object moves between replicas only after its old
    /// owner drained it (see [`Sharding`]). In a [`Manager`], set it on the manager.
    ///
    /// ```no_run
    /// # use kuberator::{Operator, runtime::Sharding};
    /// # use k8s_openapi::api::core::v1::ConfigMap;
    /// # fn doc(operator: Operator<ConfigMap>) -> Operator<ConfigMap> {
    /// operator.sharding(Sharding::new("operators", "websites"))
    /// # }
    /// ```
    #[must_use]
    pub fn sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = Some(sharding);
        self
    }

    /// Checks at start-up (SelfSubjectAccessReview) that the operator holds every permission of
    /// `rbac`; [`run`](Operator::run) fails with one error naming each missing one.
    #[must_use]
    pub fn check_permissions(mut self, rbac: Rbac) -> Self {
        self.permissions = Some(rbac);
        self
    }

    /// Whether [`run`](Operator::run) first checks by discovery that the API server serves every
    /// watched kind (on by default): a CRD that is not installed is then the start-up error
    /// `CRD websites.example.com is not installed: kubectl apply -f …` instead of a watch
    /// retrying `404 page not found` forever.
    #[must_use]
    pub fn check_served(mut self, enabled: bool) -> Self {
        self.check_served = enabled;
        self
    }

    /// How long one reconcile may take (default
    /// [`DEFAULT_RECONCILE_TIMEOUT`](crate::runtime::DEFAULT_RECONCILE_TIMEOUT), 5 minutes;
    /// `None`: no limit). A reconcile still running then is cancelled, counted in
    /// `controller_runtime_reconcile_timeouts_total`, recorded as an
    /// [`Error::ReconcileTimeout`] (status, event) and retried with backoff; its slot is free
    /// at once. Like controller-runtime's `ReconciliationTimeout`, which is off by default.
    #[must_use]
    pub fn reconcile_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.reconcile_timeout = timeout.into();
        self
    }

    /// How long a graceful shutdown waits for in-flight reconciles (default
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`], 30 s as controller-runtime's; `None`: forever). Those still
    /// running then are cancelled and counted in `kuberator_shutdown_cancelled_reconciles_total`;
    /// events are flushed and the Lease released either way.
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.shutdown_timeout = timeout.into();
        self
    }

    /// How long reconciles may be queued or running without a single one finishing before
    /// `/readyz` answers 503 naming the stalled controller (default
    /// [`DEFAULT_STALLED_AFTER`](crate::runtime::DEFAULT_STALLED_AFTER), 2 minutes; `None`:
    /// never). Every finished reconcile counts as progress, whether it succeeded, failed or
    /// timed out; an idle controller is never stalled. Keep it above the longest reconcile you
    /// expect to run alone. Like [`unready_after`](Self::unready_after) this is readiness only:
    /// `/healthz` (liveness) stays 200, so a stall takes the pod out of service instead of
    /// getting it restarted.
    #[must_use]
    pub fn stalled_after(mut self, after: impl Into<Option<Duration>>) -> Self {
        self.stalled_after = after.into();
        self
    }

    /// The deadline of each API request made through the operator's [`guard`](Self::guard)
    /// (a [`Ctx`](crate::Ctx)'s client; default
    /// [`DEFAULT_REQUEST_TIMEOUT`](crate::runtime::DEFAULT_REQUEST_TIMEOUT), 30 s; `None`:
    /// none). See [`RequestGuard`].
    #[must_use]
    pub fn request_timeout(self, timeout: impl Into<Option<Duration>>) -> Self {
        self.guard.set_timeout(timeout.into());
        self
    }

    /// Shares `guard` (e.g. a [`Ctx`](crate::Ctx)'s, which [`Operator::new`] does for you): the
    /// operator attaches its leadership to it, so every client it wrapped refuses writes past
    /// the renew deadline.
    #[must_use]
    pub fn request_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = guard;
        self
    }

    /// Shares `writes` (e.g. a [`Ctx`](crate::Ctx)'s, which [`Operator::new`] does for you): the
    /// child writes recorded there do not re-trigger their owner through
    /// [`owns`](Operator::owns).
    #[must_use]
    pub fn own_writes(mut self, writes: OwnWrites) -> Self {
        self.own_writes = writes;
        self
    }

    /// How long the watches may keep failing (API server unreachable, 5xx, throttled lists) or
    /// the API server may leave a request unanswered (a paused server: the operator asks for
    /// `/version` every `after / 2`, at most every 5 s) before `/readyz` answers 503 naming
    /// the failing watch (default
    /// [`DEFAULT_UNREADY_AFTER`](crate::runtime::DEFAULT_UNREADY_AFTER), 10 s). It is 200 again
    /// as soon as they succeed. `/healthz` is not affected: an API server outage takes the pod
    /// out of service, it does not get it restarted.
    #[must_use]
    pub fn unready_after(self, after: Duration) -> Self {
        self.guard.set_unready_after(after);
        self
    }

    /// What happens to an object of `R` that no longer decodes into `R` (e.g. its stored spec
    /// does not match the Rust type after a schema change). It is always left out of the cache
    /// (no reconcile runs on a stale copy), logged, counted in
    /// `kuberator_undecodable_objects_total` and, with `events`, given a `Warning` event
    /// `Undecodable`. When it is deleted and carries `finalizer`, the finalizer is removed
    /// **without calling cleanup** (there is no `R` to give it), so the deletion completes;
    /// children with owner references are then garbage-collected by Kubernetes. `None` keeps
    /// the finalizer until someone repairs the object.
    ///
    /// [`Operator::new`] sets the handler's finalizer and event recorder.
    #[must_use]
    pub fn on_undecodable(
        mut self,
        finalizer: Option<&str>,
        events: Option<crate::events::EventRecorder>,
    ) -> Self {
        self.release_undecodable = finalizer.map(str::to_owned);
        self.events = events;
        self
    }

    /// The operator's [`RequestGuard`]: wrap your own clients with it
    /// ([`RequestGuard::client`]) so that they too stop writing when leadership is in doubt.
    pub fn guard(&self) -> &RequestGuard {
        &self.guard
    }

    /// Stops gracefully on SIGTERM or SIGINT.
    #[must_use]
    pub fn shutdown_on_signal(self) -> Self {
        self.shutdown_on(shutdown_signal())
    }

    /// Validates and/or defaults objects of `R` before they are stored (admission webhooks on
    /// the [`webhook_server`](Operator::webhook_server)). See [`crate::webhook`].
    #[must_use]
    pub fn webhook(mut self, webhook: crate::webhook::Webhook<R>) -> Self {
        self.webhooks.add(webhook);
        self
    }

    /// Serves the other versions of `R`'s CRD (conversion webhook at `/convert` on the
    /// [`webhook_server`](Operator::webhook_server), `R` the storage version). See
    /// [`Conversion`](crate::webhook::Conversion).
    #[must_use]
    pub fn conversion(mut self, conversion: crate::webhook::Conversion<R>) -> Self {
        self.webhooks.add_conversion(conversion);
        self
    }

    /// The HTTPS server of the webhooks; added to a [`Manager`], the manager's own one wins.
    #[must_use]
    pub fn webhook_server(mut self, server: crate::webhook::WebhookServer) -> Self {
        self.webhooks.set_server(server);
        self
    }

    /// The webhook server set with [`webhook_server`](Operator::webhook_server), if any.
    pub(crate) fn webhook_server_ref(&self) -> Option<&crate::webhook::WebhookServer> {
        self.webhooks.server()
    }

    /// Runs until the shutdown signal (or forever without one): a [`Manager`] of this one
    /// controller.
    ///
    /// Errors of single objects never stop the loop: they are logged with the object's name and
    /// retried with backoff. A panicking handler is caught and treated as an error.
    ///
    /// A kind that stops being served while running (its CRD deleted) is logged at each retry of
    /// the watch with the same hint, and `/readyz` answers 503 until it is back.
    ///
    /// # Errors
    /// A watched kind the API server does not serve ([`Error::NotServed`], see
    /// [`check_served`](Operator::check_served)), missing permissions (with
    /// [`check_permissions`](Operator::check_permissions)), a health
    /// address that cannot be bound, inconsistent leader-election timing.
    ///
    /// # Access control
    /// `list` and `watch` on the resource (and on owned and related kinds); `patch` on it and its
    /// status for the finalizer and status writes; leases with leader election.
    pub async fn run(self) -> Result<()> {
        Manager::new(self.client.clone()).add(self).run().await
    }
}

impl<R: Object> IntoControllerSealed for Operator<R> {
    fn into_controller(self) -> Box<dyn ManagedController> {
        Box::new(self)
    }
}

impl<R: Object> ManagedController for Operator<R> {
    fn name(&self) -> &str {
        &self.name
    }

    fn take_settings(&mut self) -> ProcessSettings {
        ProcessSettings {
            shutdown: self.shutdown.take(),
            metrics: self.metrics.take(),
            health: self.health.take(),
            health_routes: self.health_routes.take(),
            leader_election: self.leader_election.take(),
            leadership: self.leadership.take(),
            sharding: self.sharding.take(),
            permissions: self.permissions.take(),
            webhooks: std::mem::take(&mut self.webhooks),
            served: if self.check_served {
                std::mem::take(&mut self.watched)
            } else {
                Vec::new()
            },
            ..ProcessSettings::default()
        }
    }

    fn start(
        self: Box<Self>,
        services: &Services,
        setup: &mut Setup,
    ) -> Result<BoxFuture<'static, ()>> {
        let this = *self;
        let name = this.name;
        if let Some(metrics) = &services.metrics {
            this.guard.register_metrics(metrics);
        }
        if let Some(leadership) = &services.leadership {
            this.guard.attach(leadership.clone());
        }
        // A shard owner whose membership lapsed writes nothing either.
        if let Some(shards) = &services.shards {
            this.guard.attach(shards.membership().clone());
        }
        let controller_metrics = services.metrics.as_ref().map(|m| {
            let cm = m.controller(name.clone());
            cm.set_max_concurrent_reconciles(this.concurrency);
            cm
        });
        // Watches go through the guard too: a deadline on each list and watch request, 429s
        // counted and retried at the server's pace, and `/readyz` 503 while they keep failing.
        let watch_client = this.guard.watch_client(services.client.clone());
        let guard = this.guard.clone();
        services.readiness.add_check(move || guard.unreachable());
        // A paused API server fails nothing, it only stops answering: a request of our own
        // notices.
        let heartbeat = {
            let (guard, client) = (this.guard.clone(), watch_client.clone());
            async move { guard.heartbeat(client).await }
        };
        let progress = Arc::new(Progress::new(this.stalled_after));
        let stalled = progress.clone();
        let controller = name.clone();
        services.readiness.add_check(move || {
            stalled
                .stalled()
                .map(|problem| format!("controller {controller}: {problem}"))
        });
        let undecodable = OnUndecodable {
            finalizer: this.release_undecodable,
            events: this.events,
            metrics: controller_metrics.clone(),
            client: Some(this.guard.client(services.client.clone())),
        };
        let scopes: Vec<Option<String>> = if this.namespaces.is_empty() {
            vec![None]
        } else {
            this.namespaces.iter().cloned().map(Some).collect()
        };
        let mut subscribed = Vec::with_capacity(scopes.len());
        // Objects deleted while they still carried the finalizer, when their turn comes.
        let (orphans, mut orphaned) = futures::channel::mpsc::unbounded::<Arc<R>>();
        // Set when a primary watch works again after failing (an API server outage).
        let recovered = Arc::new(tokio::sync::Notify::new());
        for scope in &scopes {
            let client = watch_client.clone();
            let (ns, config) = (scope.clone(), this.watcher_config.clone());
            let undecodable = undecodable.clone();
            let recovered = recovered.clone();
            let make = move |cache| {
                let on_recovered = move || recovered.notify_one();
                typed_watch::<R>(
                    client,
                    ns.as_deref(),
                    config,
                    || {},
                    on_recovered,
                    cache,
                    undecodable,
                )
                .boxed()
            };
            // Ready once every scope has listed its objects (a warm cache, leader or standby).
            let (reader, applied, deleted, phase) = setup.watches.subscribe_split::<R>(
                scope.as_deref(),
                &this.watcher_config,
                make,
                services.readiness.expect(&name),
            );
            let dispatch = Dispatch::new(usize::from(this.concurrency), orphans.clone());
            // A deletion of an object that carries the finalizer but was never marked for
            // deletion: its cleanup never ran. (An ordinary deletion's last copy carries the
            // finalizer too, with its `deletionTimestamp`: the cleanup ran and released it.)
            let (finalizer, lost_to) = (this.finalizer.clone(), dispatch.clone());
            let deleted = deleted.map(move |object| {
                if let Some(finalizer) = &finalizer
                    && object.meta().deletion_timestamp.is_none()
                    && object.finalizers().iter().any(|f| f == finalizer)
                {
                    lost_to.lost(Arc::new(as_deleted(object.as_ref())));
                }
                if let Some(uid) = &object.meta().uid {
                    lost_to.forget_released(uid);
                }
                (object, Origin::Live)
            });
            // A (re)list's objects queue behind the changes made while the controller runs.
            let changed = futures::stream::select(phase.tag(applied), deleted);
            subscribed.push((scope, reader, changed, dispatch));
        }
        let shared = Arc::new(LoopState {
            reconciler: this.reconciler,
            failures: FailureCounts::new(),
            backoff: this.backoff,
            permits: Arc::new(Semaphore::new(usize::from(this.concurrency))),
            kind: R::kind(&()).into_owned(),
            finalizer: this.finalizer.clone(),
            metrics: controller_metrics,
            leadership: services.leadership.clone(),
            reconcile_timeout: this.reconcile_timeout,
            in_flight: std::sync::atomic::AtomicU64::new(0),
            progress,
            stores: subscribed
                .iter()
                .map(|(_, reader, _, _)| reader.clone())
                .collect(),
            dispatch: subscribed
                .iter()
                .map(|(scope, _, _, dispatch)| ((*scope).clone(), dispatch.clone()))
                .collect(),
            shards: services.shards.clone(),
            writer: this.guard.client(services.client.clone()),
        });
        let mut loops = SelectAll::new();
        for (scope, reader, changed, dispatch) in subscribed {
            let start_skip = this.skip_observed.clone().map(|up_to_date| {
                StartSkip::new(up_to_date, this.finalizer.clone(), reader.clone())
            });
            let changed: BoxStream<'static, (Arc<R>, Origin)> = match &start_skip {
                Some(skip) => skip.clone().primaries(changed).boxed(),
                None => changed.boxed(),
            };
            let changed: BoxStream<'static, (Arc<R>, Origin)> = if this.generation_filter {
                generation_filtered(changed, reader.clone(), services.shards.clone()).boxed()
            } else {
                changed.boxed()
            };
            // With sharding, every change of the member set re-checks every object's owner: a
            // batch like a relist, queued behind the live changes. What is surely another
            // member's never takes a reconcile slot (with 4 members, 3 of 4 objects).
            let changed = match &services.shards {
                Some(shards) => {
                    let (mine, settled) = (shards.clone(), shards.clone());
                    // A re-check is about ownership: an object this replica holds and still owns
                    // has nothing to re-check (its reconciles come from its own changes).
                    let recheck = move |object: &R| !settled.holds_and_owns(object);
                    with_rechecks(changed, shards.changes(), reader.clone(), recheck)
                        .filter(move |(object, _)| {
                            futures::future::ready(!mine.surely_elsewhere(object.as_ref()))
                        })
                        .boxed()
                }
                None => changed,
            };
            // FIFO among ready objects, live changes first; the controller's scheduler then
            // holds only what runs next, and the retries it times.
            let trigger = dispatch.stream(changed, reader.clone());
            let mut controller = Controller::for_shared_stream(trigger, reader).with_config(
                kube::runtime::controller::Config::default().concurrency(this.concurrency),
            );
            let mut wiring = Wiring {
                watches: &mut setup.watches,
                client: &watch_client,
                readiness: &services.readiness,
                name: &name,
                own_writes: &this.own_writes,
            };
            for owns in &this.owns {
                controller = owns(
                    controller,
                    &mut wiring,
                    scope.as_deref(),
                    start_skip.as_ref(),
                );
            }
            if let Some(shutdown) = &services.shutdown {
                controller = controller.graceful_shutdown_on(shutdown.clone());
            }
            loops.push(
                controller
                    .run(reconcile::<R>, error_policy::<R>, shared.clone())
                    .boxed(),
            );
        }
        setup.caches.extend(this.caches);
        setup
            .reads
            .extend(this.reads.into_iter().map(|(type_id, kind)| Read {
                controller: name.clone(),
                kind,
                type_id,
            }));
        tracing::info!(controller = %name, scopes = ?scopes, concurrency = this.concurrency, "controller started");
        // After the shutdown signal, in-flight reconciles get `shutdown_timeout` to finish.
        let shutdown_timeout = this.shutdown_timeout;
        let deadline = services.shutdown.clone().map(|signal| async move {
            signal.await;
            match shutdown_timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        });
        Ok(async move {
            let mut deadline = std::pin::pin!(async move {
                match deadline {
                    Some(deadline) => deadline.await,
                    None => std::future::pending().await,
                }
            });
            // With sharding: `kuberator_shard_objects` from the cache, every few seconds.
            let mut census = tokio::time::interval(Duration::from_secs(2));
            let mut heartbeat = std::pin::pin!(heartbeat);
            let mut cleanups = futures::stream::FuturesUnordered::new();
            let mut expired = false;
            loop {
                tokio::select! {
                    () = &mut heartbeat => {}
                    () = recovered.notified() => retry_failed(&name, &shared),
                    Some(lost) = orphaned.next() => {
                        cleanups.push(clean_up_lost(lost, shared.clone()));
                    }
                    Some(()) = cleanups.next(), if !cleanups.is_empty() => {}
                    _ = census.tick(), if shared.shards.is_some() => {
                        if let Some(shards) = &shared.shards {
                            let objects: Vec<Arc<R>> =
                                shared.stores.iter().flat_map(reflector::Store::state).collect();
                            shards.count(&name, objects.iter().map(AsRef::as_ref));
                        }
                    }
                    result = loops.next() => match result {
                        Some(result) => log_result(&name, &shared, result),
                        None => break,
                    },
                    () = &mut deadline => {
                        let cancelled = shared.in_flight.load(std::sync::atomic::Ordering::SeqCst);
                        tracing::warn!(controller = %name, cancelled, timeout = ?shutdown_timeout, "shutdown deadline reached; cancelling the reconciles still running");
                        if let Some(metrics) = &shared.metrics {
                            metrics.shutdown_cancelled(cancelled);
                        }
                        drop(loops);
                        expired = true;
                        break;
                    }
                }
            }
            // Cleanups of lost objects still running finish like reconciles (within the
            // shutdown deadline; past it they are cancelled like them).
            if !cleanups.is_empty() && !expired {
                tokio::select! {
                    () = async { while cleanups.next().await.is_some() {} } => {}
                    () = &mut deadline => {}
                }
            }
            shared.reconciler.shutdown().await;
            tracing::info!(controller = %name, "controller stopped");
        }
        .boxed())
    }
}

fn log_result<R: Object>(
    name: &str,
    shared: &LoopState<R>,
    result: std::result::Result<
        (ObjectRef<R>, Action),
        kube::runtime::controller::Error<Error, watcher::Error>,
    >,
) {
    match result {
        Ok((object, action)) => {
            tracing::debug!(controller = %name, object = %object, ?action, "reconciled");
        }
        Err(kube::runtime::controller::Error::ReconcilerFailed(error, object)) => {
            // Logged with its context where it happened; this is the controller's echo.
            tracing::debug!(
                controller = %name,
                object = %object,
                error = %crate::status::bounded(error.to_string(), crate::status::LOG_ERROR_MAX_BYTES),
                "reconcile failed"
            );
        }
        Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
            if let Some(dispatch) = shared.dispatch_for(object.namespace.as_deref()) {
                dispatch.forget(object.namespace.as_deref(), &object.name);
            }
            tracing::debug!(controller = %name, object = %object, "object gone before its reconcile");
        }
        Err(error) => {
            tracing::warn!(controller = %name, error = %error, "controller error");
        }
    }
}

/// Drops changes that keep an object's [`generation_or_deletion`] (status, finalizer and label
/// writes), as kube-runtime's `predicate_filter` does for unshared streams; forgets objects the
/// cache no longer holds.
fn generation_filtered<R: Object>(
    changed: impl futures::Stream<Item = (Arc<R>, Origin)> + Send + 'static,
    cache: reflector::Store<R>,
    shards: Option<Arc<Shards>>,
) -> impl futures::Stream<Item = (Arc<R>, Origin)> + Send + 'static {
    let mut seen = LiveMap::new(cache);
    changed.filter_map(move |(object, origin)| {
        // With sharding, an owner label another replica wrote (a drain, a claim) counts too.
        let shard = shards
            .as_ref()
            .map_or(0, |shards| shards.trigger_hash(object.as_ref()));
        let keep = match generation_or_deletion(object.as_ref()).map(|hash| hash ^ shard) {
            Some(hash) => seen.insert(ObjectRef::from_obj(object.as_ref()), hash) != Some(hash),
            None => true,
        };
        let shards = shards.clone();
        async move {
            // The echo of this replica's own claim: the claiming reconcile ran on it.
            let echo = match &shards {
                Some(shards) if keep => shards.is_claim_echo(object.as_ref()).await,
                _ => false,
            };
            (keep && !echo).then_some((object, origin))
        }
    })
}

/// `changed`, plus every object of `cache` that `recheck` selects, in the backlog lane, at each
/// tick of `rechecks`; ends with `changed`.
fn with_rechecks<R: Object>(
    changed: BoxStream<'static, (Arc<R>, Origin)>,
    rechecks: impl futures::Stream<Item = ()> + Send + 'static,
    cache: reflector::Store<R>,
    recheck: impl Fn(&R) -> bool + Send + 'static,
) -> BoxStream<'static, (Arc<R>, Origin)> {
    let everything = rechecks.flat_map(move |()| {
        let objects: Vec<_> = cache
            .state()
            .into_iter()
            .filter(|object| recheck(object))
            .map(|object| Some((object, Origin::Backlog)))
            .collect();
        futures::stream::iter(objects)
    });
    let until_done = changed
        .map(Some)
        .chain(futures::stream::once(async { None }));
    futures::stream::select(until_done, everything)
        .take_while(|item| futures::future::ready(item.is_some()))
        .filter_map(futures::future::ready)
        .boxed()
}

/// Generation for change detection, plus the deletion mark: status writes are filtered out,
/// spec changes and deletions are not.
fn generation_or_deletion<R: Resource>(object: &R) -> Option<u64> {
    let deleting = object.meta().deletion_timestamp.is_some();
    predicates::generation
        .fallback(predicates::resource_version)
        .hash_property(object)
        .map(|h| h ^ u64::from(deleting))
}

struct LoopState<R: Object> {
    reconciler: Arc<dyn Reconciler<R>>,
    failures: FailureCounts<ObjectRef<R>>,
    backoff: Backoff,
    permits: Arc<Semaphore>,
    kind: String,
    /// The handler's finalizer (its cleanup runs once per object).
    finalizer: Option<String>,
    metrics: Option<ControllerMetrics>,
    leadership: Option<Arc<Leadership>>,
    reconcile_timeout: Option<Duration>,
    /// Reconciles holding a slot right now.
    in_flight: std::sync::atomic::AtomicU64,
    /// Reconciles queued or running, and when one last finished (`/readyz`'s stall check).
    progress: Arc<Progress>,
    /// The caches of `R`, one per scope: a reconcile runs on the object they hold when it gets
    /// its slot, not on the one it was dispatched with.
    stores: Vec<reflector::Store<R>>,
    /// With sharding: this replica's view of its group.
    shards: Option<Arc<Shards>>,
    /// The dispatch queue of each scope's loop (`None`: all namespaces).
    dispatch: Vec<(Option<String>, Arc<Dispatch<R>>)>,
    /// The guarded client for the shard label writes.
    writer: Client,
}

impl<R: Object> LoopState<R> {
    /// The cache's current version of `object` (`None`: gone since it was dispatched).
    fn current(&self, object: &R) -> Option<Arc<R>> {
        let key = ObjectRef::from_obj(object);
        self.stores.iter().find_map(|store| store.get(&key))
    }

    /// Whether `object` is being deleted and still carries the handler's finalizer: a
    /// reconcile of it runs the cleanup.
    fn cleans_up(&self, object: &R) -> bool {
        object.meta().deletion_timestamp.is_some()
            && self
                .finalizer
                .as_ref()
                .is_some_and(|finalizer| object.finalizers().iter().any(|f| f == finalizer))
    }

    /// Whether `object` is a copy from before this loop released its finalizer (see
    /// [`Dispatch::released`]).
    fn already_released(&self, object: &R) -> bool {
        let meta = object.meta();
        match (&meta.uid, self.dispatch_for(meta.namespace.as_deref())) {
            (Some(uid), Some(dispatch)) => self.cleans_up(object) && dispatch.is_released(uid),
            _ => false,
        }
    }

    /// The dispatch queue of the loop watching `namespace`.
    fn dispatch_for(&self, namespace: Option<&str>) -> Option<&Arc<Dispatch<R>>> {
        self.dispatch
            .iter()
            .find(|(scope, _)| scope.is_none() || scope.as_deref() == namespace)
            .map(|(_, dispatch)| dispatch)
    }
}

/// The watch works again after failing: the objects whose reconciles failed meanwhile (most of
/// them because the API server was unreachable) run now, not at the end of their backoff
/// (after a few failures in a row that is 8 s or more after the server answers again). Their
/// failure counts stay until they succeed, so an object that keeps failing for its own reasons
/// gets one extra attempt per outage and the same backoff afterwards.
fn retry_failed<R: Object>(name: &str, shared: &LoopState<R>) {
    let failed = shared.failures.keys();
    if failed.is_empty() {
        return;
    }
    tracing::info!(
        controller = %name,
        objects = failed.len(),
        "watch works again: retrying now the objects whose reconciles failed meanwhile"
    );
    for key in failed {
        if let Some(dispatch) = shared.dispatch_for(key.namespace.as_deref()) {
            dispatch.retry_now(key.namespace.as_deref(), &key.name);
        }
    }
}

/// Counts a reconcile in [`LoopState::in_flight`] while alive (also when cancelled).
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a std::sync::atomic::AtomicU64) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What a deleted object looked like to a [`Dispatch::lost`]: the last copy the watch had,
/// marked as being deleted, so the handler's finalizer flow runs its cleanup.
fn as_deleted<R: Object>(object: &R) -> R {
    let mut deleted = object.clone();
    deleted
        .meta_mut()
        .deletion_timestamp
        .get_or_insert_with(|| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now())
        });
    deleted
}

/// Runs the cleanup of an object deleted while it carried the operator's finalizer (see
/// [`Dispatch::lost`]): the reconcile of its last copy, marked as being deleted, holding the
/// object's slot and, with leader election or sharding, only where it may write. A failed
/// cleanup is retried with the object's backoff.
async fn clean_up_lost<R: Object>(object: Arc<R>, shared: Arc<LoopState<R>>) {
    // An object that stopped decoding leaves the cache the same way: only one gone from the
    // server (or replaced by a new one of the same name) was lost.
    match still_stored(object.as_ref(), &shared.writer).await {
        Ok(false) => {}
        Ok(true) => {
            tracing::debug!(object = %display_ref(object.as_ref()), "left the cache but not deleted (it no longer decodes)");
            return;
        }
        Err(error) => {
            tracing::warn!(object = %display_ref(object.as_ref()), %error, "cannot tell whether an object that left the cache was deleted; asking again with backoff");
            retry_lost(object, &shared).await;
            return;
        }
    }
    tracing::warn!(
        object = %display_ref(object.as_ref()),
        "deleted although it carried the finalizer (a deletion racing the finalizer's addition, \
         kubernetes/kubernetes#77988): running its cleanup now"
    );
    if reconcile_as(object.clone(), shared.clone(), Snapshot::Lost)
        .await
        .is_err()
    {
        retry_lost(object, &shared).await;
    }
}

/// Whether the server still has `object` (the same one: its uid), read as metadata only.
async fn still_stored<R: Object>(object: &R, client: &Client) -> Result<bool> {
    let meta = object.meta();
    let api = super::watch::erased_api::<R>(client.clone(), meta.namespace.as_deref());
    let name = meta.name.as_deref().unwrap_or("");
    let stored = api
        .get_metadata_opt(name)
        .await
        .map_err(|source| Error::kube("read", ObjectKey::of(object), source))?;
    Ok(stored.is_some_and(|stored| stored.metadata.uid == meta.uid))
}

/// After the object's backoff, hands a lost object to its dispatch queue again.
async fn retry_lost<R: Object>(object: Arc<R>, shared: &LoopState<R>) {
    let failures = shared.failures.fail(ObjectRef::from_obj(object.as_ref()));
    tokio::time::sleep(shared.backoff.jittered(failures)).await;
    if let Some(dispatch) = shared.dispatch_for(object.meta().namespace.as_deref()) {
        let meta = object.meta();
        dispatch.lost(object.clone());
        dispatch.retry_now(
            meta.namespace.as_deref(),
            meta.name.as_deref().unwrap_or(""),
        );
    }
}

/// Which copy of the object a reconcile runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Snapshot {
    /// What the cache holds when the reconcile gets its slot (none: it is dropped).
    Cached,
    /// The given one: the object is gone from the server and the cache.
    Lost,
}

/// Whether `error` is a 404 on `object` itself (not on a child or another kind).
fn is_gone<R: Object>(error: &Error, object: &R) -> bool {
    matches!(error, Error::Kube { object: key, .. } if *key == ObjectKey::of(object))
        && error.status_code() == Some(404)
}

async fn reconcile<R: Object>(object: Arc<R>, shared: Arc<LoopState<R>>) -> Result<Action> {
    reconcile_as(object, shared, Snapshot::Cached).await
}

async fn reconcile_as<R: Object>(
    object: Arc<R>,
    shared: Arc<LoopState<R>>,
    snapshot: Snapshot,
) -> Result<Action> {
    // Holds the object's place in its dispatch queue until this ends (parked standbys too).
    let _running = shared
        .dispatch_for(object.meta().namespace.as_deref())
        .map(|dispatch| dispatch.running(object.as_ref()));
    let leadership = shared.leadership.clone();
    // A shard member runs only while its membership Lease is valid, like a leader.
    let gated = match shared.shards.clone() {
        Some(shards) => async move {
            shards
                .membership()
                .while_leader(reconcile_counted(object, shared, snapshot))
                .await
                .unwrap_or_else(|| Ok(Action::requeue(Duration::from_secs(1))))
        }
        .boxed(),
        None => reconcile_counted(object, shared, snapshot).boxed(),
    };
    match leadership {
        // A standby parks here with a warm cache and runs the moment it leads; a leader that
        // loses the Lease drops the reconcile at its next await.
        Some(leadership) => leadership
            .while_leader(gated)
            .await
            .unwrap_or_else(|| Ok(Action::requeue(Duration::from_secs(1)))),
        None => gated.await,
    }
}

async fn reconcile_counted<R: Object>(
    object: Arc<R>,
    shared: Arc<LoopState<R>>,
    snapshot: Snapshot,
) -> Result<Action> {
    // The controller bounds concurrency per scope; the semaphore bounds it across scopes.
    let _working = shared.progress.enter();
    let queued = shared.metrics.as_ref().map(ControllerMetrics::queued);
    let _permit = shared.permits.clone().acquire_owned().await;
    drop(queued);
    // A reconcile may have waited long for its slot (a standby parks until it leads, hours
    // perhaps): it runs on what the cache holds now, never on the snapshot it was dispatched
    // with, and not at all for an object deleted meanwhile.
    let current = match snapshot {
        Snapshot::Cached => shared.current(object.as_ref()),
        Snapshot::Lost => Some(object.clone()),
    };
    let Some(object) = current else {
        tracing::debug!(object = %display_ref(object.as_ref()), "object gone while its reconcile waited; dropped");
        return Ok(Action::await_change());
    };
    if shared.already_released(object.as_ref()) {
        tracing::debug!(object = %display_ref(object.as_ref()), "a copy from before its cleanup ran and its finalizer was removed (the watch has not caught up); skipped");
        return Ok(Action::await_change());
    }
    // With sharding: only the owner runs it, after claiming it if need be; a lost object only
    // where it was claimed (the replica that added the finalizer).
    let object = match &shared.shards {
        Some(shards) if snapshot == Snapshot::Lost => {
            if !shards.claimed(object.as_ref()) {
                return Ok(Action::await_change());
            }
            object
        }
        Some(shards) => match shards.admit(&shared.writer, object.clone()).await {
            Ok(Admission::Run(object)) => object,
            Ok(Admission::Skip) => return Ok(Action::await_change()),
            Ok(Admission::Wait(delay)) => return Ok(Action::requeue(delay)),
            Err(error) => {
                tracing::warn!(object = %display_ref(object.as_ref()), %error, "cannot claim or hand over; retrying");
                return Err(error);
            }
        },
        None => object,
    };
    let timer = shared
        .metrics
        .as_ref()
        .map(ControllerMetrics::reconcile_started);
    let _in_flight = InFlight::enter(&shared.in_flight);
    let key = ObjectRef::from_obj(object.as_ref());
    let span = reconcile_span(&shared.kind, object.as_ref());
    let handler = AssertUnwindSafe(shared.reconciler.reconcile(object.clone()))
        .catch_unwind()
        .instrument(span.clone())
        .map(|outcome| {
            outcome.unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                Err(Error::Panic {
                    object: ObjectKey::of(object.as_ref()),
                    message,
                })
            })
        });
    let result = with_timeout(
        shared.reconcile_timeout,
        || ObjectKey::of(object.as_ref()),
        handler,
    )
    .await;
    // A 404 on the object itself: it was deleted while this ran, and its deletion (or, with
    // the finalizer still on it, its lost cleanup) is handled from the watch.
    let result = match result {
        Err(error) if is_gone(&error, object.as_ref()) => {
            tracing::debug!(object = %display_ref(object.as_ref()), %error, "object deleted during its reconcile");
            Ok(Action::await_change())
        }
        result => result,
    };
    // The cleanup ran and the finalizer is off (or the object is gone): never again for it.
    if result.is_ok()
        && shared.cleans_up(object.as_ref())
        && let (Some(uid), Some(dispatch)) = (
            &object.meta().uid,
            shared.dispatch_for(object.meta().namespace.as_deref()),
        )
    {
        dispatch.released(uid);
    }
    match &result {
        Ok(_) => shared.failures.reset(&key),
        // The object is gone: there is no status to record the error in.
        Err(_) if snapshot == Snapshot::Lost => {}
        Err(error) => {
            async {
                tracing::warn!(
                    object = %display_ref(object.as_ref()),
                    error = %crate::status::bounded(error.to_string(), crate::status::LOG_ERROR_MAX_BYTES),
                    reason = %error.reason(),
                    "reconcile failed"
                );
                let on_error = AssertUnwindSafe(shared.reconciler.on_error(object.clone(), error))
                    .catch_unwind()
                    .await;
                if on_error.is_err() {
                    tracing::error!(object = %display_ref(object.as_ref()), "error handler panicked");
                }
            }
            .instrument(span)
            .await;
        }
    }
    if let Some(timer) = timer {
        timer.finish(&result);
    }
    result
}

fn error_policy<R: Object>(object: Arc<R>, error: &Error, shared: Arc<LoopState<R>>) -> Action {
    let failures = shared.failures.fail(ObjectRef::from_obj(object.as_ref()));
    let live = shared.stores.iter().map(reflector::Store::len).sum();
    shared.failures.retain_live(live, |key| {
        shared.stores.iter().any(|store| store.get(key).is_some())
    });
    let action = shared
        .reconciler
        .error_policy(object.as_ref(), error, failures, &shared.backoff);
    tracing::debug!(object = %display_ref(object.as_ref()), failures, ?action, "retry scheduled");
    action
}

/// The span every reconcile, cleanup and error handling of `object` runs in: the handler's own
/// `tracing` lines carry the object's kind, namespace, name and generation, and one id per
/// reconcile to tell attempts apart. With the `opentelemetry` feature and its layer installed,
/// it is exported and records its OpenTelemetry `trace_id` too.
pub(crate) fn reconcile_span<R: Resource>(kind: &str, object: &R) -> tracing::Span {
    let meta = object.meta();
    let span = tracing::info_span!(
        "reconcile",
        kind = %kind,
        namespace = %meta.namespace.as_deref().unwrap_or(""),
        name = %meta.name.as_deref().unwrap_or(""),
        generation = meta.generation.unwrap_or(0),
        reconcile_id = %format_args!("{:08x}", rand::random::<u32>()),
        trace_id = tracing::field::Empty,
    );
    record_trace_id(&span);
    span
}

/// Records `span`'s OpenTelemetry trace id in its `trace_id` field (feature `opentelemetry`).
fn record_trace_id(span: &tracing::Span) {
    #[cfg(feature = "opentelemetry")]
    crate::telemetry::record_trace_id(span);
    #[cfg(not(feature = "opentelemetry"))]
    let _ = span;
}

fn display_ref<R: Resource>(object: &R) -> String {
    match object.meta().namespace.as_deref() {
        Some(ns) => format!("{ns}/{}", object.name_any()),
        None => object.name_any(),
    }
}
