//! `Manager`: many controllers in one process, sharing one leader election, one metrics registry,
//! one health server, one start-up permission check and one shutdown.

use std::{
    collections::BTreeMap, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use kube::Client;

use super::{
    health::{HealthRoutes, HealthServer, Readiness},
    leader::{LeaderElection, Leadership},
    metrics::Metrics,
    served::{WatchedKind, check_served},
    shard::{Sharding, Shards},
    shared::{Caches, SharedWatches},
    shutdown::shutdown_signal,
};
use crate::{
    error::{Error, Result},
    manifests::{Rbac, check_permissions},
};

/// How long the start-up checks (discovery of the watched kinds, permissions) retry an API
/// server that does not answer yet (connection refused, no answer in time, 5xx, 429) before
/// [`Manager::run`] gives up: 60 s. A definite answer (403, a kind not served) fails at once.
pub const STARTUP_RETRY_FOR: Duration = Duration::from_secs(60);
/// The first wait between start-up attempts; doubles up to [`STARTUP_RETRY_MAX_DELAY`].
const STARTUP_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between start-up attempts.
const STARTUP_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

pub(crate) type BoxedShutdown = Shared<Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>>>;

/// Runs several controllers in one process with one of each process-wide service: one leader
/// election (every controller reconciles only while the manager leads), one metrics registry
/// (each controller's series under its own `controller` label), one health server (`/readyz` is
/// ready once every controller's watches have listed), one start-up permission check (the union
/// of every controller's rules) and one shutdown (no new reconciles, in-flight ones of every
/// controller finish, then the Lease is released).
///
/// Settings of the process live on the manager. An [`Operator`](crate::Operator) added with
/// its own [`health`](crate::Operator::health), [`metrics`](crate::Operator::metrics),
/// [`leader_election`](crate::Operator::leader_election) or shutdown trigger hands them to the
/// manager when the manager has none (the first added operator wins; later conflicting ones are
/// logged and ignored). Permission checks of all operators are merged.
/// [`Operator::run`](crate::Operator::run) is a manager of one.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use kuberator::{Action, Operator, Reconciler, Result, runtime::Manager};
/// # use k8s_openapi::api::core::v1::{ConfigMap, Secret};
/// struct Noop;
/// #[async_trait::async_trait]
/// impl Reconciler<ConfigMap> for Noop {
///     async fn reconcile(&self, _cm: Arc<ConfigMap>) -> Result<Action> {
///         Ok(Action::await_change())
///     }
/// }
/// #[async_trait::async_trait]
/// impl Reconciler<Secret> for Noop {
///     async fn reconcile(&self, _s: Arc<Secret>) -> Result<Action> {
///         Ok(Action::await_change())
///     }
/// }
/// # async fn doc(client: kube::Client) -> kuberator::Result<()> {
/// Manager::new(client.clone())
///     .add(Operator::<ConfigMap>::with_reconciler(client.clone(), Noop))
///     .add(Operator::<Secret>::with_reconciler(client, Noop))
///     .health(([0, 0, 0, 0], 8080).into())
///     .shutdown_on_signal()
///     .run()
///     .await
/// # }
/// ```
pub struct Manager {
    client: Client,
    controllers: Vec<Box<dyn Controller>>,
    settings: ProcessSettings,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.controllers.iter().map(|c| c.name()).collect();
        f.debug_struct("Manager")
            .field("controllers", &names)
            .finish_non_exhaustive()
    }
}

/// The process-wide settings an operator can carry; the manager owns them.
#[derive(Default)]
pub(crate) struct ProcessSettings {
    pub(crate) shutdown: Option<BoxedShutdown>,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) health: Option<SocketAddr>,
    pub(crate) health_routes: Option<HealthRoutes>,
    pub(crate) leader_election: Option<LeaderElection>,
    pub(crate) leadership: Option<Arc<Leadership>>,
    pub(crate) sharding: Option<Sharding>,
    pub(crate) permissions: Option<Rbac>,
    /// The kinds to check by discovery before starting, with the controllers that watch them.
    pub(crate) served: Vec<WatchedKind>,
    pub(crate) watched_by: Vec<(WatchedKind, String)>,
    /// Admission webhooks and their server.
    pub(crate) webhooks: crate::webhook::Settings,
}

impl ProcessSettings {
    /// Takes over what `other` sets and `self` does not; merges permissions and shutdowns.
    fn adopt(&mut self, other: ProcessSettings, controller: &str) {
        fn first<T>(mine: &mut Option<T>, theirs: Option<T>, what: &str, controller: &str) {
            match (mine.is_some(), theirs) {
                (false, theirs) => *mine = theirs,
                (true, Some(_)) => tracing::warn!(
                    controller,
                    "the manager already has a {what}; the controller's own one is ignored"
                ),
                (true, None) => {}
            }
        }
        self.shutdown = match (self.shutdown.take(), other.shutdown) {
            (Some(a), Some(b)) => Some(any_of(a, b)),
            (a, b) => a.or(b),
        };
        first(
            &mut self.metrics,
            other.metrics,
            "metrics registry",
            controller,
        );
        first(&mut self.health, other.health, "health address", controller);
        first(
            &mut self.health_routes,
            other.health_routes,
            "set of health routes",
            controller,
        );
        if self.leadership.is_none() {
            first(
                &mut self.leader_election,
                other.leader_election,
                "leader election",
                controller,
            );
        }
        if self.leader_election.is_none() {
            first(
                &mut self.leadership,
                other.leadership,
                "leader election",
                controller,
            );
        }
        first(&mut self.sharding, other.sharding, "sharding", controller);
        for kind in other.served {
            self.watched_by.push((kind.clone(), controller.to_owned()));
            if !self.served.contains(&kind) {
                self.served.push(kind);
            }
        }
        self.webhooks.adopt(other.webhooks, controller);
        self.permissions = match (self.permissions.take(), other.permissions) {
            (Some(mut a), Some(b)) => {
                a.merge(b);
                Some(a)
            }
            (a, b) => a.or(b),
        };
    }
}

fn any_of(a: BoxedShutdown, b: BoxedShutdown) -> BoxedShutdown {
    let either: Pin<Box<dyn Future<Output = ()> + Send + Sync>> =
        Box::pin(async move { futures::future::select(a, b).await.factor_first().0 });
    either.shared()
}

/// What every controller of a manager shares at run time.
pub(crate) struct Services {
    pub(crate) client: Client,
    pub(crate) metrics: Option<Metrics>,
    pub(crate) leadership: Option<Arc<Leadership>>,
    pub(crate) shards: Option<Arc<Shards>>,
    pub(crate) shutdown: Option<BoxedShutdown>,
    pub(crate) readiness: ReadinessGate,
}

/// What controllers register while they are built: watches, cache handles, declared reads.
pub(crate) struct Setup {
    pub(crate) watches: SharedWatches,
    pub(crate) caches: Vec<Caches>,
    pub(crate) reads: Vec<Read>,
}

/// A kind a controller reads from the shared cache ([`Operator::reads`](crate::Operator::reads)).
pub(crate) struct Read {
    pub(crate) controller: String,
    pub(crate) kind: String,
    pub(crate) type_id: std::any::TypeId,
}

/// A controller a [`Manager`] can run; implemented by [`Operator`](crate::Operator).
pub(crate) trait Controller: Send {
    /// The controller's name (the `controller` label, logs, errors).
    fn name(&self) -> &str;

    /// Hands the process-wide settings to the manager.
    fn take_settings(&mut self) -> ProcessSettings;

    /// Builds the controller's loop on the shared services; the future runs until shutdown.
    ///
    /// # Errors
    /// When the controller cannot start.
    fn start(
        self: Box<Self>,
        services: &Services,
        setup: &mut Setup,
    ) -> Result<BoxFuture<'static, ()>>;
}

/// Something [`Manager::add`] accepts: an [`Operator`](crate::Operator) (also what a
/// `#[kuberator::operator]` handler's generated `operator(client)` returns).
#[allow(private_bounds)]
pub trait IntoController: IntoControllerSealed {}

pub(crate) trait IntoControllerSealed {
    fn into_controller(self) -> Box<dyn Controller>;
}

impl<T: IntoControllerSealed> IntoController for T {}

impl Manager {
    /// A manager with no controllers yet.
    pub fn new(client: Client) -> Self {
        Manager {
            client,
            controllers: Vec::new(),
            settings: ProcessSettings::default(),
        }
    }

    /// Adds a controller. Its process-wide settings (health address, leader election, metrics,
    /// shutdown) go to the manager unless the manager already has them; its permission check is
    /// merged into the manager's.
    #[must_use]
    // A builder step, as controller-runtime's `mgr.Add`; not arithmetic.
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, controller: impl IntoController) -> Self {
        let mut controller = controller.into_controller();
        let settings = controller.take_settings();
        let name = controller.name().to_owned();
        self.settings.adopt(settings, &name);
        self.controllers.push(controller);
        self
    }

    /// The names of the controllers added so far.
    pub fn controller_names(&self) -> Vec<&str> {
        self.controllers.iter().map(|c| c.name()).collect()
    }

    /// Stops gracefully when `signal` resolves: no controller starts a new reconcile, in-flight
    /// ones finish, then [`run`](Manager::run) returns.
    #[must_use]
    pub fn shutdown_on(mut self, signal: impl Future<Output = ()> + Send + Sync + 'static) -> Self {
        let boxed: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(signal);
        self.settings.shutdown = Some(boxed.shared());
        self
    }

    /// Stops gracefully on SIGTERM or SIGINT.
    #[must_use]
    pub fn shutdown_on_signal(self) -> Self {
        self.shutdown_on(shutdown_signal())
    }

    /// Records every controller's metrics in `metrics` (each under its `controller` label).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.settings.metrics = Some(metrics);
        self
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `addr`; ready once every controller's
    /// watches have listed.
    #[must_use]
    pub fn health(mut self, addr: SocketAddr) -> Self {
        self.settings.health = Some(addr);
        self
    }

    /// The health server's paths and extra routes (see [`HealthRoutes`]; default: `/healthz`,
    /// `/readyz`, `/metrics`). Takes effect with [`health`](Manager::health).
    #[must_use]
    pub fn health_routes(mut self, routes: HealthRoutes) -> Self {
        self.settings.health_routes = Some(routes);
        self
    }

    /// Every controller reconciles only while the manager holds `election`'s Lease; standbys keep
    /// all caches warm.
    #[must_use]
    pub fn leader_election(mut self, election: LeaderElection) -> Self {
        self.settings.leader_election = Some(election);
        self.settings.leadership = None;
        self
    }

    /// Like [`leader_election`](Manager::leader_election), with an election started by hand.
    /// The manager releases it when every controller stopped.
    #[must_use]
    pub fn with_leadership(mut self, leadership: Arc<Leadership>) -> Self {
        self.settings.leadership = Some(leadership);
        self.settings.leader_election = None;
        self
    }

    /// Splits the objects of every controller of the manager over the replicas of
    /// `sharding`'s group: each replica reconciles only the objects that hash to it (see
    /// [`Sharding`]). Combine with leader election only to run one sharded group at a time.
    #[must_use]
    pub fn sharding(mut self, sharding: Sharding) -> Self {
        self.settings.sharding = Some(sharding);
        self
    }

    /// Checks at start-up that the manager holds every permission of `rbac` (merged with the
    /// permissions of the controllers that carry their own check).
    #[must_use]
    pub fn check_permissions(mut self, rbac: Rbac) -> Self {
        self.settings.permissions = Some(match self.settings.permissions.take() {
            Some(mut mine) => {
                mine.merge(rbac);
                mine
            }
            None => rbac,
        });
        self
    }

    /// Serves `webhook` (admission for any kind, built-in ones too) on the manager's
    /// [`webhook_server`](Manager::webhook_server). See [`crate::webhook`].
    #[must_use]
    pub fn webhook<K: crate::finalize::Object>(
        mut self,
        webhook: crate::webhook::Webhook<K>,
    ) -> Self {
        self.settings.webhooks.add(webhook);
        self
    }

    /// Serves the versions of a CRD through its hub (conversion webhook at `/convert` on the
    /// manager's [`webhook_server`](Manager::webhook_server)). See
    /// [`Conversion`](crate::webhook::Conversion).
    #[must_use]
    pub fn conversion<Hub>(mut self, conversion: crate::webhook::Conversion<Hub>) -> Self {
        self.settings.webhooks.add_conversion(conversion);
        self
    }

    /// The one HTTPS server of every admission webhook of the process (of the manager and of
    /// its controllers): started before the controllers, stopped after them.
    #[must_use]
    pub fn webhook_server(mut self, server: crate::webhook::WebhookServer) -> Self {
        self.settings.webhooks.set_server(server);
        self
    }

    /// Runs every controller until the shutdown signal (or forever without one).
    ///
    /// # Errors
    /// A watched kind the API server does not serve (a CRD not installed, see
    /// [`Operator::check_served`](crate::Operator::check_served)), missing permissions (one
    /// error naming each), a controller that cannot start (the error
    /// names it), a health address that cannot be bound, inconsistent leader-election timing,
    /// webhooks that cannot be served (no server, port taken, certificate Secret or webhook
    /// configurations that cannot be written).
    ///
    /// The start-up checks (discovery, permissions) retry transient failures — no connection,
    /// no answer in time, `5xx`, `429` — with backoff for up to [`STARTUP_RETRY_FOR`], so that
    /// an operator started while the API server restarts waits for it; a `403`, a `404` or a
    /// kind that is not served fails at once.
    ///
    /// # Access control
    /// What each controller needs (see [`Operator::run`](crate::Operator::run)); leases with
    /// leader election; with webhooks, see [`crate::webhook`].
    pub async fn run(self) -> Result<()> {
        let Manager {
            client,
            controllers,
            settings,
        } = self;
        // A bad path fails before anything starts, not after the first probe 404s.
        if let Some(routes) = &settings.health_routes {
            routes.check()?;
        }
        let metrics = match (settings.metrics, settings.health) {
            (Some(metrics), _) => Some(metrics),
            (None, Some(_)) => Some(Metrics::new()),
            (None, None) => None,
        };
        let readiness = Readiness::new();
        readiness.set_waiting_for("start-up: discovering the watched kinds");
        // The health server answers from the start (`/healthz` 200, `/readyz` 503), also while
        // discovery waits for an API server that does not answer yet: a liveness probe must
        // not restart a pod that is starting. It stops when `run` returns.
        let _health = match settings.health {
            Some(addr) => Some(
                serve_health(
                    addr,
                    metrics.clone(),
                    readiness.clone(),
                    settings.health_routes.clone().unwrap_or_default(),
                )
                .await?,
            ),
            None => None,
        };
        if let Err(error) =
            retry_transient("discovery", || check_served(&client, &settings.served)).await
        {
            return Err(name_controllers(error, &settings.watched_by));
        }
        if let Some(rbac) = &settings.permissions {
            readiness.set_waiting_for("start-up: checking permissions");
            retry_transient("permission check", || check_permissions(&client, rbac)).await?;
        }
        let webhooks = settings.webhooks.start(&client, metrics.as_ref()).await?;
        let leadership = match (settings.leadership, settings.leader_election) {
            (Some(leadership), _) => Some(leadership),
            (None, Some(election)) => {
                let election = match &metrics {
                    Some(m) => election.metrics(m.clone()),
                    None => election,
                };
                Some(Arc::new(election.start()?))
            }
            (None, None) => None,
        };
        let shards = settings
            .sharding
            .map(|sharding| sharding.start(client.clone(), metrics.as_ref()))
            .transpose()?;
        // When the user's signal fires, standbys waiting for leadership give up too.
        let shutdown: Option<BoxedShutdown> = settings.shutdown.map(|signal| {
            let leadership = leadership.clone();
            let membership = shards.as_ref().map(|shards| shards.membership().clone());
            let wrapped: Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(async move {
                signal.await;
                for election in leadership.iter().chain(membership.iter()) {
                    election.shutdown();
                }
            });
            wrapped.shared()
        });
        // `/readyz?verbose`: the member set and this replica's objects.
        if let Some(shards) = &shards {
            let shards = Arc::downgrade(shards);
            readiness.add_detail(move || {
                shards
                    .upgrade()
                    .map_or_else(|| "shard: left the group".to_owned(), |s| s.describe())
            });
        }
        let services = Services {
            client,
            metrics: metrics.clone(),
            leadership: leadership.clone(),
            shards: shards.clone(),
            shutdown: shutdown.clone(),
            readiness: ReadinessGate::new(readiness.clone()),
        };
        let mut setup = Setup {
            watches: SharedWatches::new(),
            caches: Vec::new(),
            reads: Vec::new(),
        };
        let mut loops = Vec::with_capacity(controllers.len());
        for controller in controllers {
            loops.push(controller.start(&services, &mut setup)?);
        }
        let unwatched: Vec<String> = setup
            .reads
            .iter()
            .filter(|read| !setup.watches.watches(read.type_id))
            .map(|read| format!("controller `{}` reads {}", read.controller, read.kind))
            .collect();
        if !unwatched.is_empty() {
            return Err(anyhow::anyhow!(
                "{} from the shared cache, but no controller of the manager watches it (a read \
                 never starts a watch): add `.owns::<…>()` or `.watches::<…>(…)` to a controller",
                unwatched.join("; ")
            )
            .into());
        }
        let caches = setup.watches.caches();
        for handle in &setup.caches {
            handle.install(caches.clone());
        }
        tracing::info!(
            controllers = loops.len(),
            watches = setup.watches.len(),
            "manager starting"
        );
        let watches = setup.watches.spawn(&services.readiness);
        futures::future::join_all(loops).await;
        // After the controllers: their last writes still pass the webhooks.
        if let Some(webhooks) = webhooks {
            webhooks.stop().await;
        }
        drop(watches);
        if let Some(shards) = &shards {
            shards.release().await;
        }
        if let Some(leadership) = &leadership {
            leadership.release().await;
        }
        Ok(())
    }
}

/// Prefixes a not-served error with the controllers that watch the kind.
/// Runs `check` until it succeeds, fails for good, or [`STARTUP_RETRY_FOR`] has passed while it
/// failed transiently (see [`is_transient`]).
async fn retry_transient<T, F, Fut>(what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = STARTUP_RETRY_DELAY;
    loop {
        match check().await {
            Err(error) if is_transient(&error) && started.elapsed() + delay < STARTUP_RETRY_FOR => {
                tracing::warn!(
                    %error,
                    retry_in = ?delay,
                    waited = ?started.elapsed(),
                    "{what} at start-up: the API server does not answer yet; retrying"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(STARTUP_RETRY_MAX_DELAY);
            }
            result => return result,
        }
    }
}

/// Whether `error` may go away by itself: no connection or no answer in time (the API server is
/// starting or restarting), `5xx`, `429`. Any other answer (403, 404, …) is definite.
fn is_transient(error: &Error) -> bool {
    let (Error::Client { source, .. } | Error::Kube { source, .. }) = error else {
        return false;
    };
    match source.as_ref() {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) => true,
        kube::Error::Service(_) => !matches!(
            super::request::request_error(source),
            Some(super::request::RequestError::NotLeader { .. })
        ),
        _ => false,
    }
}

fn name_controllers(error: crate::Error, watched_by: &[(WatchedKind, String)]) -> crate::Error {
    match error {
        crate::Error::NotServed { resource, message } => {
            let mut controllers: Vec<&str> = watched_by
                .iter()
                .filter(|(kind, _)| kind.resource_name() == resource)
                .map(|(_, controller)| controller.as_str())
                .collect();
            controllers.dedup();
            let message = format!(
                "controller `{}` cannot start: {message}",
                controllers.join("`, `")
            );
            crate::Error::NotServed { resource, message }
        }
        other => other,
    }
}

/// Readiness of the whole manager: ready once every registered watch of every controller has
/// listed its objects once.
#[derive(Clone)]
pub(crate) struct ReadinessGate {
    readiness: Readiness,
    pending: Arc<std::sync::Mutex<BTreeMap<String, usize>>>,
}

impl ReadinessGate {
    fn new(readiness: Readiness) -> Self {
        ReadinessGate {
            readiness,
            pending: Arc::default(),
        }
    }

    /// Tells `/readyz` which controllers it waits for; ready when none.
    fn publish(&self, pending: &BTreeMap<String, usize>) {
        if pending.is_empty() {
            tracing::info!("every controller synced: ready");
            self.readiness.set_waiting_for("");
            self.readiness.set_ready(true);
        } else {
            let names: Vec<&str> = pending.keys().map(String::as_str).collect();
            self.readiness.set_waiting_for(format!(
                "waiting for the initial list of controller(s) {}",
                names.join(", ")
            ));
        }
    }

    /// Registers one more watch of `controller` that must list before the manager is ready; the
    /// returned callback marks it listed (calls after the first do nothing).
    pub(crate) fn expect(&self, controller: &str) -> impl Fn() + Send + Sync + 'static {
        *lock(&self.pending)
            .entry(controller.to_owned())
            .or_default() += 1;
        let gate = self.clone();
        let controller = controller.to_owned();
        let once = std::sync::atomic::AtomicBool::new(false);
        move || {
            if once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                // A relist (e.g. after a CRD came back): ready again once all have synced.
                if lock(&gate.pending).is_empty() {
                    gate.readiness.set_ready(true);
                }
                return;
            }
            let mut pending = lock(&gate.pending);
            if let Some(count) = pending.get_mut(&controller) {
                *count -= 1;
                if *count == 0 {
                    pending.remove(&controller);
                    tracing::info!(controller = %controller, "initial lists synced");
                }
            }
            gate.publish(&pending);
        }
    }
}

impl ReadinessGate {
    /// Adds a check `/readyz` runs (see [`Readiness::add_check`]).
    pub(crate) fn add_check(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.readiness.add_check(check);
    }

    /// A watch lost its kind (a CRD deleted): not ready until it lists again.
    pub(crate) fn lost(&self) {
        self.readiness.set_ready(false);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Binds the health server and serves it until the returned sender is dropped.
async fn serve_health(
    addr: std::net::SocketAddr,
    metrics: Option<Metrics>,
    readiness: Readiness,
    routes: HealthRoutes,
) -> Result<tokio::sync::oneshot::Sender<()>> {
    let server = HealthServer::bind(addr, metrics, readiness)
        .await?
        .routes(routes)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let stop = async move {
            let _ = stopped.await;
        };
        if let Err(error) = server.serve(stop).await {
            tracing::error!(%error, "health server failed");
        }
    });
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::client(
            "discovering v1",
            kube::Error::Api(
                kube::core::Status::failure("answer", "Reason")
                    .with_code(code)
                    .boxed(),
            ),
        )
    }

    #[test]
    fn transient_start_up_errors_are_retried_definite_ones_are_not() {
        assert!(is_transient(&api(503)) && is_transient(&api(500)) && is_transient(&api(429)));
        assert!(!is_transient(&api(403)) && !is_transient(&api(404)) && !is_transient(&api(401)));
        let refused = Error::client(
            "discovering v1",
            kube::Error::Service("connection refused".into()),
        );
        assert!(is_transient(&refused));
        let not_served = Error::NotServed {
            resource: "things.x.dev".into(),
            message: "CRD things.x.dev is not installed".into(),
        };
        assert!(!is_transient(&not_served));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_for_a_bounded_time() {
        let mut attempts = 0;
        let result: Result<()> = retry_transient("discovery", || {
            attempts += 1;
            std::future::ready(Err(api(503)))
        })
        .await;
        assert!(result.is_err());
        // 200 ms doubling to 5 s within 60 s: 0.2+0.4+0.8+1.6+3.2 = 6.2 s, then 5 s steps.
        assert_eq!(attempts, 16, "attempts within {STARTUP_RETRY_FOR:?}");
        let mut calls = 0;
        let definite: Result<()> = retry_transient("discovery", || {
            calls += 1;
            std::future::ready(Err(api(403)))
        })
        .await;
        assert!(definite.is_err());
        assert_eq!(calls, 1);
    }
}
