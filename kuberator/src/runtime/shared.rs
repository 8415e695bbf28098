//! Shared watches: one watch and one cache per kind and scope, whatever number of controllers
//! of a [`Manager`](super::Manager) use them, and the cached reads handlers get from them.

use std::{
    any::{Any, TypeId},
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, OnceLock},
};

use futures::{
    Stream, StreamExt,
    channel::mpsc::{UnboundedSender, unbounded},
    stream::BoxStream,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher,
    },
};
use tokio::task::JoinHandle;

use crate::events::write_failures::{FailureLimiter, Report, WRITE_FAILURE_WINDOW};

use super::{
    dispatch::ListPhase,
    manager::ReadinessGate,
    served::{WatchedKind, is_not_found},
};

/// How many changes of one kind may wait for the slowest controller before the watch waits.
const BUFFER: usize = 1024;

/// A kind a shared watch and its [`Cache`] can hold (any static Kubernetes type; implemented for
/// every such type).
pub trait Cached: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static {}
impl<K: Resource<DynamicType = ()> + Clone + Debug + Send + Sync + 'static> Cached for K {}

/// Which watch: the Rust type (so a metadata-only watch is not a full one), the namespace and
/// the selectors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WatchKey {
    type_id: TypeId,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

type RootStream<K> = BoxStream<'static, watcher::Result<watcher::Event<K>>>;

struct SharedWatch<K: Cached> {
    writer: Writer<K>,
    make: Option<Box<dyn FnOnce(Store<K>) -> RootStream<K> + Send>>,
    listed: Vec<Box<dyn Fn() + Send + Sync>>,
    deletes: Vec<UnboundedSender<Arc<K>>>,
    phase: Arc<ListPhase>,
}

/// A shared watch with its kind erased.
trait AnyWatch: Send {
    fn as_any(&mut self) -> &mut dyn Any;
    fn reader(&self) -> Box<dyn Any + Send + Sync>;
    fn spawn(self: Box<Self>, what: String, readiness: ReadinessGate) -> JoinHandle<()>;
}

impl<K: Cached> AnyWatch for SharedWatch<K> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }

    fn reader(&self) -> Box<dyn Any + Send + Sync> {
        Box::new(self.writer.as_reader())
    }

    fn spawn(self: Box<Self>, what: String, readiness: ReadinessGate) -> JoinHandle<()> {
        let SharedWatch {
            writer,
            make,
            listed,
            mut deletes,
            phase,
        } = *self;
        let Some(make) = make else {
            return tokio::spawn(async {});
        };
        let reader = writer.as_reader();
        let events = make(writer.as_reader()).reflect_shared(writer);
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut failures = FailureLimiter::new(WRITE_FAILURE_WINDOW);
            while let Some(event) = events.next().await {
                // The server answered (`Init` comes before the list request is sent).
                if failures.is_failing()
                    && matches!(&event, Ok(e) if !matches!(e, watcher::Event::Init))
                {
                    for report in failures.succeeded(tokio::time::Instant::now()) {
                        log_watch_failures(&what, report);
                    }
                }
                match event {
                    // Seen before the list's objects are handed to the subscribers (at its end).
                    Ok(watcher::Event::Init) => phase.list_started(),
                    Ok(watcher::Event::InitDone) => {
                        // Seen after: the subscribers received `reader.len()` objects of it.
                        phase.list_done(reader.len());
                        tracing::debug!(watch = %what, "listed");
                        for listed in &listed {
                            listed();
                        }
                    }
                    // kube's shared streams carry applies only; deletions of owned and related
                    // objects still trigger their owners through this side channel.
                    Ok(watcher::Event::Delete(object)) => {
                        let object = Arc::new(object);
                        deletes.retain(|tx| tx.unbounded_send(object.clone()).is_ok());
                    }
                    Ok(_) => {}
                    // The kind is gone (its CRD deleted): say so and how to fix it, at each retry.
                    Err(error) if is_not_found(&error) => {
                        readiness.lost();
                        let hint = WatchedKind::of::<K>().not_served();
                        tracing::warn!(watch = %what, %error, "{hint}; retrying with backoff");
                    }
                    Err(error) => match failures.failed(tokio::time::Instant::now(), &error) {
                        Some(Report::First) => tracing::warn!(
                            watch = %what,
                            %error,
                            "watch failed, retrying with backoff (further failures are \
                             summarised every {:?} until it works again)",
                            WRITE_FAILURE_WINDOW
                        ),
                        Some(report) => log_watch_failures(&what, report),
                        None => tracing::debug!(watch = %what, %error, "watch failed again"),
                    },
                }
            }
        })
    }
}

/// A summary or the recovery of a failing watch (the first failure is logged in full).
fn log_watch_failures(what: &str, report: Report) {
    match report {
        Report::First => {}
        Report::More {
            count,
            over,
            last_error,
        } => tracing::warn!(
            watch = %what,
            "{count} more failures of the watch in the last {:.1} s, retrying with backoff: {last_error}",
            over.as_secs_f64()
        ),
        Report::Recovered { failures, over } => tracing::info!(
            watch = %what,
            "watch works again after {failures} failures over {:.1} s",
            over.as_secs_f64()
        ),
    }
}

struct Entry {
    key: WatchKey,
    kind: String,
    watch: Box<dyn AnyWatch>,
}

/// The watches of one manager, registered by its controllers before any starts.
pub(crate) struct SharedWatches {
    entries: Vec<Entry>,
}

impl SharedWatches {
    pub(crate) fn new() -> Self {
        SharedWatches {
            entries: Vec::new(),
        }
    }

    /// Subscribes to the watch of `K` in `namespace` with `config`'s selectors, creating it with
    /// `make` (given the watch's own cache) if no controller watches it yet. Returns the cache and the stream of changed (and
    /// deleted) objects; `on_listed` is called after each complete list.
    pub(crate) fn subscribe<K: Cached>(
        &mut self,
        namespace: Option<&str>,
        config: &watcher::Config,
        make: impl FnOnce(Store<K>) -> RootStream<K> + Send + 'static,
        on_listed: impl Fn() + Send + Sync + 'static,
    ) -> (Store<K>, impl Stream<Item = Arc<K>> + Send + 'static) {
        let (reader, changed, deleted, _) =
            self.subscribe_split(namespace, config, make, on_listed);
        (reader, futures::stream::select(changed, deleted))
    }

    /// Like [`subscribe`](SharedWatches::subscribe), with the applies (in the order the watch
    /// dispatched them) apart from the deletions, and the watch's [`ListPhase`] to tell which
    /// applies belong to a (re)list.
    #[allow(clippy::type_complexity)]
    pub(crate) fn subscribe_split<K: Cached>(
        &mut self,
        namespace: Option<&str>,
        config: &watcher::Config,
        make: impl FnOnce(Store<K>) -> RootStream<K> + Send + 'static,
        on_listed: impl Fn() + Send + Sync + 'static,
    ) -> (
        Store<K>,
        BoxStream<'static, Arc<K>>,
        BoxStream<'static, Arc<K>>,
        Arc<ListPhase>,
    ) {
        let key = WatchKey {
            type_id: TypeId::of::<K>(),
            namespace: namespace.map(str::to_owned),
            labels: config.label_selector.clone(),
            fields: config.field_selector.clone(),
        };
        let index = match self.entries.iter().position(|e| e.key == key) {
            Some(index) => index,
            None => {
                let (_, writer) = reflector::store_shared::<K>(BUFFER);
                self.entries.push(Entry {
                    key,
                    kind: K::kind(&()).into_owned(),
                    watch: Box::new(SharedWatch {
                        writer,
                        make: Some(Box::new(make)),
                        listed: Vec::new(),
                        deletes: Vec::new(),
                        phase: Arc::default(),
                    }),
                });
                self.entries.len() - 1
            }
        };
        #[allow(clippy::expect_used)] // the entry at `index` was created for `K` above
        let watch = self.entries[index]
            .watch
            .as_any()
            .downcast_mut::<SharedWatch<K>>()
            .expect("watch keyed by its type");
        watch.listed.push(Box::new(on_listed));
        let (tx, deleted) = unbounded();
        watch.deletes.push(tx);
        let reader = watch.writer.as_reader();
        let changed = match watch.writer.subscribe() {
            Some(changed) => changed.boxed(),
            None => futures::stream::empty().boxed(),
        };
        (reader, changed, deleted.boxed(), watch.phase.clone())
    }

    /// How many watches the API server will see.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether some watch holds full objects of `type_id`.
    pub(crate) fn watches(&self, type_id: TypeId) -> bool {
        self.entries.iter().any(|e| e.key.type_id == type_id)
    }

    /// The caches of every watch, by kind.
    pub(crate) fn caches(&self) -> Arc<CacheMap> {
        let mut map: HashMap<TypeId, Vec<Box<dyn Any + Send + Sync>>> = HashMap::new();
        for entry in &self.entries {
            map.entry(entry.key.type_id)
                .or_default()
                .push(entry.watch.reader());
        }
        Arc::new(CacheMap { stores: map })
    }

    /// Starts every watch; they run until the returned guard is dropped.
    pub(crate) fn spawn(self, readiness: &ReadinessGate) -> RunningWatches {
        RunningWatches(
            self.entries
                .into_iter()
                .map(|entry| {
                    let what = match &entry.key.namespace {
                        Some(ns) => format!("{} in {ns}", entry.kind),
                        None => entry.kind.clone(),
                    };
                    entry.watch.spawn(what, readiness.clone())
                })
                .collect(),
        )
    }
}

/// The tasks of a manager's watches: dropping it stops them, also when the manager's own future
/// is dropped half-way (a `select!`, an aborted task), so no watch outlives its controllers.
pub(crate) struct RunningWatches(Vec<JoinHandle<()>>);

impl Drop for RunningWatches {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The caches of a manager, by kind.
pub(crate) struct CacheMap {
    stores: HashMap<TypeId, Vec<Box<dyn Any + Send + Sync>>>,
}

/// A handle to the caches of the manager a controller runs in, filled when the manager starts.
/// Cheap to clone; handed out by [`Ctx::cache`](crate::Ctx::cache).
#[derive(Clone, Default)]
pub struct Caches {
    inner: Arc<OnceLock<Arc<CacheMap>>>,
}

impl Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("started", &self.inner.get().is_some())
            .finish()
    }
}

impl Caches {
    /// Empty until a manager running the controller starts.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn install(&self, map: Arc<CacheMap>) {
        // A controller runs in one manager; a second install keeps the first caches.
        let _ = self.inner.set(map);
    }

    /// The cache of `K` (full objects; `PartialObjectMeta<K>` for metadata-only watches).
    ///
    /// # Errors
    /// [`Error::Anyhow`](crate::Error::Anyhow) when the manager is not running yet or watches no
    /// `K`: declare the read with [`Operator::reads`](crate::Operator::reads) to have that
    /// checked at start-up.
    pub fn get<K: Cached>(&self) -> crate::Result<Cache<K>> {
        let Some(map) = self.inner.get() else {
            return Err(anyhow::anyhow!(
                "the cache of {} is not available: the controller is not running in a manager yet",
                K::kind(&())
            )
            .into());
        };
        let stores: Vec<Store<K>> = map
            .stores
            .get(&TypeId::of::<K>())
            .into_iter()
            .flatten()
            .filter_map(|store| store.downcast_ref::<Store<K>>().cloned())
            .collect();
        if stores.is_empty() {
            return Err(anyhow::anyhow!(
                "no controller of the manager watches {} ({}), so there is no cache to read it \
                 from: add `.owns::<…>()` or `.watches::<…>(…)` to a controller",
                K::kind(&()),
                std::any::type_name::<K>()
            )
            .into());
        }
        Ok(Cache { stores })
    }
}

/// Read access to the shared cache of one kind: what the manager's watches have seen, without a
/// request to the API server.
///
/// The cache follows the watch, so it lags behind writes: an object this reconcile just created
/// or changed shows up once its watch event arrived (usually milliseconds later, longer under
/// load or while a watch reconnects). Read your own writes from the API's response; use the cache
/// for objects other controllers or users write. Objects are shared (`Arc`); clone one to change
/// it.
#[derive(Clone)]
pub struct Cache<K: Cached> {
    stores: Vec<Store<K>>,
}

impl<K: Cached> Debug for Cache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("kind", &K::kind(&()))
            .field("scopes", &self.stores.len())
            .finish()
    }
}

impl<K: Cached> Cache<K> {
    /// The object `name` in `namespace` (`None` for cluster-scoped kinds).
    pub fn get(&self, name: &str, namespace: Option<&str>) -> Option<Arc<K>> {
        let mut key = ObjectRef::<K>::new(name);
        if let Some(namespace) = namespace {
            key = key.within(namespace);
        }
        self.stores.iter().find_map(|store| store.get(&key))
    }

    /// Every object in `namespace` (`None`: all the cache holds).
    pub fn list(&self, namespace: Option<&str>) -> Vec<Arc<K>> {
        self.filtered(|object| namespace.is_none() || object.namespace().as_deref() == namespace)
    }

    /// The objects in `namespace` (`None`: everywhere) carrying every one of `labels`.
    pub fn list_labeled(&self, namespace: Option<&str>, labels: &[(&str, &str)]) -> Vec<Arc<K>> {
        self.filtered(|object| {
            (namespace.is_none() || object.namespace().as_deref() == namespace)
                && labels.iter().all(|(key, value)| {
                    object.labels().get(*key).map(String::as_str) == Some(*value)
                })
        })
    }

    /// Whether every watch behind this cache has listed once.
    pub fn is_synced(&self) -> bool {
        self.stores
            .iter()
            .all(|store| futures::FutureExt::now_or_never(store.wait_until_ready()).is_some())
    }

    fn filtered(&self, keep: impl Fn(&K) -> bool) -> Vec<Arc<K>> {
        let mut seen = std::collections::HashSet::new();
        let mut objects = Vec::new();
        for store in &self.stores {
            for object in store.state() {
                if keep(&object) && seen.insert(ObjectRef::from_obj(object.as_ref())) {
                    objects.push(object);
                }
            }
        }
        objects
    }
}
