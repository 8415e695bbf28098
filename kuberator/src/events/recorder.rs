//! [`EventRecorder`]: writes `events.k8s.io/v1` Events, deduplicated and coalesced.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use k8s_openapi::{
    api::events::v1::{Event as K8sEvent, EventSeries},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};
use tokio::{task::AbortHandle, time::Instant};

use super::{
    data::{EventData, keep_tail},
    dedup::{DedupCache, PendingWrite},
    emit::EmitEvent,
    key::{AsKeyRef, KeyRef, object_identity, regarding},
    write_failures::{FailedEmit, WriteFailureLog},
};
use crate::error::{Error, ObjectKey, Result};

/// How long an event is remembered after it was last emitted.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(6 * 60);
/// How often repeats are written.
const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How many distinct events are remembered at most.
const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The API server rejects longer `reportingInstance`s.
const REPORTING_INSTANCE_MAX_BYTES: usize = 128;
/// Where cluster-scoped objects' events go, as with kube-rs and client-go.
const CLUSTER_SCOPED_NAMESPACE: &str = "default";
/// Object names are DNS subdomains (≤ 253 bytes); leave room for `.` and 16 hex digits.
const EVENT_NAME_PREFIX_MAX_BYTES: usize = 253 - 17;

/// Writes Kubernetes events (`events.k8s.io/v1`) about objects, deduplicating repeats and
/// coalescing storms.
///
/// The first emit of an event (per object UID, type, reason and action) creates an Event at once.
/// Repeats within the [cache TTL](Self::with_cache_ttl) only bump a counter in memory; a
/// background task writes the counters as the Event's `series.count` and
/// `series.lastObservedTime` once per [flush interval](Self::with_flush_interval), so 10,000
/// identical emits in a loop cost one create and one patch. `series.count` is the number of emits
/// (the first included).
///
/// Cheap to clone; clones share the cache. Configure it before cloning or emitting: each
/// `with_*` call starts a new, empty cache.
///
/// **Call [`flush`](Self::flush) on shutdown**: repeats counted since the last tick are written
/// by it, and lost when the recorder is dropped.
///
/// ```no_run
/// use std::time::Duration;
/// use kuberator::events::{EmitEvent, EventData, EventRecorder};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn doc(client: kube::Client, cm: ConfigMap) -> kuberator::Result<()> {
///
/// let recorder = EventRecorder::new(client, "websites.example.com/operator")
///     .with_flush_interval(Duration::from_secs(2));
/// recorder.emit(&cm, EventData::normal("Applied", "Reconcile").note("all good")).await;
/// // … on shutdown:
/// recorder.flush().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct EventRecorder {
    shared: Arc<Shared>,
}

/// The recorder's settings.
#[derive(Clone, Debug)]
struct Config {
    reporting_controller: String,
    reporting_instance: String,
    cache_ttl: Duration,
    flush_interval: Duration,
    max_entries: usize,
}

/// What an entry needs to (re)create its Event.
#[derive(Debug)]
struct Template {
    /// The Event as first created (its name is the entry's first name).
    event: K8sEvent,
    /// The object, for errors and logs.
    object: ObjectKey,
}

impl Template {
    fn namespace(&self) -> &str {
        self.event
            .metadata
            .namespace
            .as_deref()
            .unwrap_or(CLUSTER_SCOPED_NAMESPACE)
    }

    fn object_name(&self) -> &str {
        &self.object.name
    }
}

/// State shared by clones and (weakly) by the flush task.
struct Shared {
    client: Client,
    config: Config,
    cache: Mutex<DedupCache<Template>>,
    /// Serializes flushes (tick and explicit), so that each dirty entry has one writer.
    flush_lock: tokio::sync::Mutex<()>,
    /// Fast path for "the flush task runs".
    flusher_started: AtomicBool,
    flusher: Mutex<Option<AbortHandle>>,
    /// Failed writes, logged rate-limited.
    failures: WriteFailureLog,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.failures.finish();
        if let Some(task) = lock(&self.flusher).take() {
            task.abort();
        }
    }
}

/// Locks a std mutex; a panic elsewhere while holding it leaves consistent-enough bookkeeping.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EventRecorder {
    /// A recorder reporting as `reporting_controller` (the Event's `reportingController`, a
    /// qualified name such as `websites.example.com/operator`).
    ///
    /// The `reportingInstance` is `<reporting_controller>-<instance>`, where the instance is the
    /// `POD_NAME` environment variable (set it from the downward API), else `HOSTNAME`, else
    /// `/etc/hostname`; cut to 128 bytes, keeping the end. Override it with
    /// [`with_reporting_instance`](Self::with_reporting_instance).
    ///
    /// Defaults: cache TTL 6 minutes, flush interval 1 second, at most 10,000 cached events.
    pub fn new(client: Client, reporting_controller: impl Into<String>) -> Self {
        let reporting_controller = reporting_controller.into();
        let instance = detect_instance(
            |var| std::env::var(var).ok(),
            || std::fs::read_to_string("/etc/hostname").ok(),
        );
        let reporting_instance = reporting_instance(&reporting_controller, instance.as_deref());
        Self::from_config(
            client,
            Config {
                reporting_controller,
                reporting_instance,
                cache_ttl: DEFAULT_CACHE_TTL,
                flush_interval: DEFAULT_FLUSH_INTERVAL,
                max_entries: DEFAULT_MAX_ENTRIES,
            },
        )
    }

    fn from_config(client: Client, config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                cache: Mutex::new(DedupCache::new(config.cache_ttl, config.max_entries)),
                config,
                flush_lock: tokio::sync::Mutex::new(()),
                flusher_started: AtomicBool::new(false),
                flusher: Mutex::new(None),
                failures: WriteFailureLog::default(),
            }),
        }
    }

    fn reconfigure(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.shared.config.clone();
        change(&mut config);
        Self::from_config(self.shared.client.clone(), config)
    }

    /// How long an event is remembered after it was last emitted (default 6 minutes, as
    /// kube-rs). A repeat after that creates a new Event.
    #[must_use]
    pub fn with_cache_ttl(self, ttl: Duration) -> Self {
        self.reconfigure(|c| c.cache_ttl = ttl)
    }

    /// How often the background task writes repeat counts (default 1 second): at most one patch
    /// per event per interval. `Duration::ZERO` disables the task; then only
    /// [`flush`](Self::flush) writes repeats.
    #[must_use]
    pub fn with_flush_interval(self, interval: Duration) -> Self {
        self.reconfigure(|c| c.flush_interval = interval)
    }

    /// How many distinct events are remembered at most (default 10,000); when full, expired
    /// entries go first, then the least recently seen.
    #[must_use]
    pub fn with_max_entries(self, max_entries: usize) -> Self {
        self.reconfigure(|c| c.max_entries = max_entries.max(1))
    }

    /// Sets the Event's `reportingInstance` (cut to 128 bytes, keeping the end).
    #[must_use]
    pub fn with_reporting_instance(self, instance: impl Into<String>) -> Self {
        let instance = instance.into();
        self.reconfigure(|c| {
            c.reporting_instance = keep_tail(&instance, REPORTING_INSTANCE_MAX_BYTES).to_owned();
        })
    }

    /// The Events' `reportingController`.
    pub fn reporting_controller(&self) -> &str {
        &self.shared.config.reporting_controller
    }

    /// The Events' `reportingInstance`.
    pub fn reporting_instance(&self) -> &str {
        &self.shared.config.reporting_instance
    }

    /// Writes every pending repeat count now, and drops expired cache entries. Call it on
    /// shutdown, after the last reconcile: counts not yet written are lost when the recorder is
    /// dropped.
    ///
    /// An Event that was deleted on the server (or expired by its event TTL) is created anew for
    /// the repeats it had not yet recorded.
    ///
    /// # Errors
    ///
    /// The first [`Error::Kube`] among the writes that failed (the others are logged); failed
    /// counts stay pending and are retried on the next flush.
    ///
    /// # Access control
    ///
    /// `create` and `patch` on `events` in the `events.k8s.io` group, in the namespaces of the
    /// objects with pending events.
    pub async fn flush(&self) -> Result<()> {
        let mut errors = self.shared.flush().await.into_iter();
        let first = errors.next();
        for error in errors {
            self.shared.failures.series_failed(&error);
        }
        first.map_or(Ok(()), Err)
    }

    /// Starts the flush task on the first repeat, unless it runs or is disabled.
    fn ensure_flusher(&self) {
        let shared = &self.shared;
        if shared.flusher_started.load(Ordering::Acquire) || shared.config.flush_interval.is_zero()
        {
            return;
        }
        let mut slot = lock(&shared.flusher);
        if slot.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(flush_loop(
            Arc::downgrade(shared),
            shared.config.flush_interval,
        ));
        *slot = Some(task.abort_handle());
        shared.flusher_started.store(true, Ordering::Release);
    }

    #[cfg(test)]
    pub(crate) fn cache_len(&self) -> usize {
        lock(&self.shared.cache).len()
    }
}

impl fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRecorder")
            .field(
                "reporting_controller",
                &self.shared.config.reporting_controller,
            )
            .field("reporting_instance", &self.shared.config.reporting_instance)
            .field("cache_ttl", &self.shared.config.cache_ttl)
            .field("flush_interval", &self.shared.config.flush_interval)
            .field("max_entries", &self.shared.config.max_entries)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EmitEvent for EventRecorder {
    /// Emits `data` about `object`; never fails. A failed write is logged, rate-limited: the
    /// first failure since writes last worked as a warning with the object, its event reason and
    /// the error; further failures (of any object) as one warning per 10 s with their count and
    /// the latest error; and an info line once a write succeeds again. An API server outage is
    /// a handful of lines, not one per object.
    ///
    /// # Access control
    ///
    /// As [`try_emit`](Self::try_emit).
    async fn emit<R>(&self, object: &R, data: EventData)
    where
        R: Resource<DynamicType = ()> + Sync,
    {
        let reason = data.reason.clone();
        if let Err(error) = self.try_emit(object, data).await {
            let meta = object.meta();
            let kind = R::kind(&());
            let failed = FailedEmit {
                kind: &kind,
                namespace: meta.namespace.as_deref().unwrap_or_default(),
                name: meta.name.as_deref().unwrap_or_default(),
                reason: reason.as_ref(),
            };
            self.shared.failures.emit_failed(&failed, &error);
        }
    }

    /// Emits `data` about `object`. The first occurrence creates the Event now; repeats are
    /// counted in memory and written by the flush task (see [`EventRecorder::flush`]).
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] if creating the Event failed (the next emit tries again). Repeats never
    /// fail here; their write errors are logged by the flush task or returned by `flush`.
    ///
    /// # Access control
    ///
    /// `create` on `events.k8s.io` `events` in the object's namespace (`default` for
    /// cluster-scoped objects); the flush task needs `patch`.
    async fn try_emit<R>(&self, object: &R, mut data: EventData) -> Result<()>
    where
        R: Resource<DynamicType = ()> + Sync,
    {
        data.normalize();
        let identity = object_identity(object);
        let now = Instant::now();
        let wall = Timestamp::now();

        let key = KeyRef::new(&identity, &data);
        let (generation, template) = {
            let mut cache = lock(&self.shared.cache);
            if cache.repeat(key, now, wall) {
                drop(cache);
                self.ensure_flusher();
                return Ok(());
            }
            let template = Arc::new(self.shared.template(object, &data, wall));
            let name = template.event.metadata.name.clone().unwrap_or_default();
            let generation = cache.insert(
                key.to_owned_with(&data),
                Arc::clone(&template),
                name,
                now,
                wall,
            );
            (generation, template)
        };

        let mut interrupted = CreateGuard {
            recorder: self,
            key,
            generation,
            armed: true,
        };
        let api: Api<K8sEvent> = Api::namespaced(self.shared.client.clone(), template.namespace());
        let created = api.create(&PostParams::default(), &template.event).await;
        interrupted.armed = false;

        let mut cache = lock(&self.shared.cache);
        match created {
            Ok(_) => {
                let dirty = cache.mark_written(key, generation, 1);
                drop(cache);
                self.shared.failures.succeeded();
                if dirty {
                    self.ensure_flusher();
                }
                Ok(())
            }
            Err(source) => {
                cache.forget(key, generation);
                Err(Error::kube(
                    "creating event for",
                    template.object.clone(),
                    source,
                ))
            }
        }
    }
}

/// Hands a first create whose `try_emit` future was dropped mid-request over to the flush task,
/// which creates the Event under the same name (a 409 means the request got through), so that
/// the entry does not stay "creating" forever.
struct CreateGuard<'a> {
    recorder: &'a EventRecorder,
    key: KeyRef<'a>,
    generation: u64,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let pending = lock(&self.recorder.shared.cache).abandon_create(self.key, self.generation);
        if pending {
            self.recorder.ensure_flusher();
        }
    }
}

impl Shared {
    /// The Event for the first occurrence of `data` about `object`.
    fn template<R: Resource<DynamicType = ()>>(
        &self,
        object: &R,
        data: &EventData,
        wall: Timestamp,
    ) -> Template {
        let meta = object.meta();
        let regarding = regarding(object);
        let object_key = ObjectKey::of(object);
        let namespace = meta
            .namespace
            .clone()
            .unwrap_or_else(|| CLUSTER_SCOPED_NAMESPACE.to_owned());
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(event_name(&object_key.name)),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(wall)),
            type_: Some(data.event_type.as_str().to_owned()),
            reason: Some(data.reason.clone().into_owned()),
            action: Some(data.action.clone().into_owned()),
            note: data.note.clone(),
            regarding: Some(regarding),
            related: data.related.clone(),
            reporting_controller: Some(self.config.reporting_controller.clone()),
            reporting_instance: Some(self.config.reporting_instance.clone()),
            ..K8sEvent::default()
        };
        Template {
            event,
            object: object_key,
        }
    }

    /// Writes every dirty entry, then evicts expired ones. Returns the errors.
    async fn flush(&self) -> Vec<Error> {
        let _one_flush_at_a_time = self.flush_lock.lock().await;
        let pending = lock(&self.cache).pending();
        let mut errors = Vec::new();
        for write in pending {
            if let Err(error) = self.write(write).await {
                errors.push(error);
            }
        }
        let (evicted, lost) = lock(&self.cache).evict_expired(Instant::now());
        if lost > 0 {
            tracing::warn!(
                evicted,
                lost,
                "dropped expired events with unwritten repeats"
            );
        }
        errors
    }

    /// Patches the entry's series, or creates its Event if it has none (anymore).
    ///
    /// A patch answered 404 (the Event was deleted, or expired by the server's event TTL) turns
    /// into a create of a new Event; a create answered 409 (an earlier create whose answer was
    /// lost got through) into a patch. At most three requests per write.
    async fn write(&self, mut write: PendingWrite<Template>) -> Result<()> {
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), write.payload.namespace());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let may_switch = attempts < 3;
            if write.written > 0 {
                let patch = serde_json::json!({
                    "series": EventSeries {
                        count: series_count(write.count),
                        last_observed_time: MicroTime(write.last_observed),
                    }
                });
                match api
                    .patch(&write.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    Ok(_) => break,
                    Err(kube::Error::Api(status)) if status.code == 404 && may_switch => {
                        tracing::debug!(
                            object = %write.payload.object,
                            event = write.name,
                            "event is gone from the server; creating a new one",
                        );
                        let name = event_name(write.payload.object_name());
                        let restarted =
                            lock(&self.cache).restart(write.key.key_ref(), write.generation, name);
                        match restarted {
                            Some(create) => write = create,
                            None => return Ok(()),
                        }
                    }
                    Err(source) => {
                        return Err(Error::kube(
                            "updating event series for",
                            write.payload.object.clone(),
                            source,
                        ));
                    }
                }
            } else {
                let mut event = write.payload.event.clone();
                event.metadata.name = Some(write.name.clone());
                event.event_time = Some(MicroTime(write.last_observed));
                event.series = (write.count > 1).then(|| EventSeries {
                    count: series_count(write.count),
                    last_observed_time: MicroTime(write.last_observed),
                });
                match api.create(&PostParams::default(), &event).await {
                    Ok(_) => break,
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        // The Event exists with at least the first emit.
                        lock(&self.cache).mark_written(write.key.key_ref(), write.generation, 1);
                        if write.count <= 1 || !may_switch {
                            return Ok(());
                        }
                        write.written = 1;
                    }
                    Err(source) => {
                        return Err(Error::kube(
                            "creating event for",
                            write.payload.object.clone(),
                            source,
                        ));
                    }
                }
            }
        }
        self.mark_written(&write);
        self.failures.succeeded();
        Ok(())
    }

    fn mark_written(&self, write: &PendingWrite<Template>) {
        lock(&self.cache).mark_written(write.key.key_ref(), write.generation, write.count);
    }
}

/// The flush task: every `period`, writes pending counts; ends when the recorder is dropped.
async fn flush_loop(shared: Weak<Shared>, period: Duration) {
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            break;
        };
        for error in shared.flush().await {
            shared.failures.series_failed(&error);
        }
        shared.failures.tick();
    }
}

/// `series.count` is an `int32`.
fn series_count(count: u64) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// `<objectname>.<16 random hex digits>`, the object name made a valid DNS subdomain prefix.
fn event_name(object_name: &str) -> String {
    let mut prefix: String = object_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
            _ => '-',
        })
        .collect();
    prefix.truncate(EVENT_NAME_PREFIX_MAX_BYTES);
    let prefix = prefix.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let prefix = if prefix.is_empty() { "event" } else { prefix };
    format!("{prefix}.{:016x}", rand::random::<u64>())
}

/// The pod's name: `POD_NAME`, else `HOSTNAME`, else the hostname file.
fn detect_instance(
    env: impl Fn(&str) -> Option<String>,
    hostname_file: impl FnOnce() -> Option<String>,
) -> Option<String> {
    ["POD_NAME", "HOSTNAME"]
        .into_iter()
        .filter_map(env)
        .chain(std::iter::once_with(hostname_file).flatten())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// `<controller>-<instance>`, or the controller alone; at most 128 bytes, keeping the end.
fn reporting_instance(controller: &str, instance: Option<&str>) -> String {
    let full = match instance {
        Some(instance) => format!("{controller}-{instance}"),
        None => controller.to_owned(),
    };
    keep_tail(&full, REPORTING_INSTANCE_MAX_BYTES).to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::client::Body;
    use serde_json::{Value, json};
    use tokio::sync::Semaphore;

    use super::*;

    /// One request the fake API server received.
    #[derive(Clone, Debug)]
    struct Call {
        method: Method,
        path: String,
        content_type: String,
        body: Value,
    }

    impl Call {
        fn series_count(&self) -> Option<i64> {
            self.body["series"]["count"].as_i64()
        }
        fn event_name(&self) -> String {
            match self.method {
                Method::POST => self.body["metadata"]["name"].as_str().unwrap().to_owned(),
                _ => self.path.rsplit('/').next().unwrap().to_owned(),
            }
        }
    }

    /// A scripted `events.k8s.io` API on a `tower_test` mock service.
    #[derive(Clone, Default)]
    struct FakeApi {
        calls: Arc<Mutex<Vec<Call>>>,
        /// Event names whose PATCH answers 404.
        gone: Arc<Mutex<HashSet<String>>>,
        /// Status for the next creates / patches (`None`: success).
        create_status: Arc<Mutex<Option<u16>>>,
        patch_status: Arc<Mutex<Option<u16>>>,
        /// When set, a create waits for a permit before it is answered.
        create_gate: Arc<Mutex<Option<Arc<Semaphore>>>>,
        /// Names created so far: creating one again answers 409.
        created: Arc<Mutex<HashSet<String>>>,
    }

    impl FakeApi {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
        fn methods(&self) -> Vec<Method> {
            self.calls().into_iter().map(|c| c.method).collect()
        }
        fn last(&self) -> Call {
            self.calls().last().cloned().unwrap()
        }
        /// Waits (on tokio's clock, which tests pause) until `n` requests were answered.
        async fn wait_for(&self, n: usize) {
            for _ in 0..1000 {
                if self.calls.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("expected {n} requests, got {:?}", self.calls());
        }
    }

    fn status_body(code: u16, reason: &str) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("fake {code}"), "reason": reason, "code": code,
        })
    }

    fn fake_api() -> (Client, FakeApi) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = FakeApi::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().clone();
                let path = request.uri().path().to_owned();
                let content_type = request
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let call = Call {
                    method: method.clone(),
                    path,
                    content_type,
                    body,
                };
                let name = call.event_name();
                let (status, answer) = if method == Method::POST {
                    let gate = server.create_gate.lock().unwrap().clone();
                    if let Some(gate) = gate {
                        gate.acquire().await.unwrap().forget();
                    }
                    let status = *server.create_status.lock().unwrap();
                    match status {
                        Some(code) => (code, status_body(code, "Forbidden")),
                        None if !server.created.lock().unwrap().insert(name.clone()) => {
                            (409, status_body(409, "AlreadyExists"))
                        }
                        None => (201, call.body.clone()),
                    }
                } else if server.gone.lock().unwrap().contains(&name) {
                    (404, status_body(404, "NotFound"))
                } else if let Some(code) = *server.patch_status.lock().unwrap() {
                    (code, status_body(code, "InternalError"))
                } else {
                    let event = json!({
                        "apiVersion": "events.k8s.io/v1", "kind": "Event",
                        "metadata": { "name": name }, "series": call.body["series"],
                    });
                    (200, event)
                };
                server.calls.lock().unwrap().push(call);
                let response = Response::builder()
                    .status(StatusCode::from_u16(status).unwrap())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (Client::new(service, "default"), api)
    }

    fn config_map(name: &str, uid: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                resource_version: Some("42".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn recorder(client: Client) -> EventRecorder {
        EventRecorder::new(client, "websites.example.com/operator")
            .with_reporting_instance("websites.example.com/operator-pod-1")
    }

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces";

    #[tokio::test(start_paused = true)]
    async fn first_emit_creates_an_events_k8s_io_v1_event() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");
        let data = EventData::warning("ImageMissing", "Reconcile").note("spec.image is empty");
        recorder.try_emit(&cm, data).await.unwrap();

        let call = api.last();
        assert_eq!(call.method, Method::POST);
        assert_eq!(call.path, format!("{EVENTS}/shop/events"));
        let body = &call.body;
        assert_eq!(body["apiVersion"], "events.k8s.io/v1");
        assert_eq!(body["kind"], "Event");
        assert_eq!(body["metadata"]["namespace"], "shop");
        let name = body["metadata"]["name"].as_str().unwrap();
        let (prefix, hex) = name.split_once('.').unwrap();
        assert_eq!(prefix, "web");
        assert!(
            hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}"
        );
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "ImageMissing");
        assert_eq!(body["action"], "Reconcile");
        assert_eq!(body["note"], "spec.image is empty");
        assert_eq!(body["reportingController"], "websites.example.com/operator");
        assert_eq!(
            body["reportingInstance"],
            "websites.example.com/operator-pod-1"
        );
        assert!(
            body["eventTime"].as_str().unwrap().contains('.'),
            "MicroTime has micros"
        );
        assert!(body.get("series").is_none());
        assert_eq!(
            body["regarding"],
            json!({
                "apiVersion": "v1", "kind": "ConfigMap", "name": "web", "namespace": "shop",
                "uid": "uid-1", "resourceVersion": "42",
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cluster_scoped_objects_get_events_in_default() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                uid: Some("uid-ns".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        recorder
            .try_emit(&ns, EventData::normal("Labeled", "Label"))
            .await
            .unwrap();
        let call = api.last();
        assert_eq!(call.path, format!("{EVENTS}/default/events"));
        assert_eq!(call.body["metadata"]["namespace"], "default");
        assert_eq!(call.body["regarding"]["kind"], "Namespace");
        assert!(call.body["regarding"].get("namespace").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_storm_is_one_create_and_one_patch_with_the_exact_count() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");
        for _ in 0..10_000 {
            recorder
                .emit(&cm, EventData::warning("Failed", "Reconcile"))
                .await;
        }
        assert_eq!(api.methods(), [Method::POST]);
        recorder.flush().await.unwrap();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH]);

        let patch = api.last();
        let name = api.calls()[0].event_name();
        assert_eq!(patch.path, format!("{EVENTS}/shop/events/{name}"));
        assert_eq!(patch.content_type, "application/merge-patch+json");
        assert_eq!(patch.series_count(), Some(10_000));
        assert!(patch.body["series"]["lastObservedTime"].is_string());
        assert_eq!(
            patch.body.as_object().unwrap().len(),
            1,
            "patches only the series"
        );

        // Nothing pending: another flush writes nothing.
        recorder.flush().await.unwrap();
        assert_eq!(api.calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_task_writes_at_most_once_per_interval() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::from_secs(1));
        let cm = config_map("web", "uid-1");
        // 10 emits every 100 ms for 5 s: 500 emits.
        for _ in 0..50 {
            for _ in 0..10 {
                recorder
                    .emit(&cm, EventData::normal("Synced", "Reconcile"))
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let patches = api
            .calls()
            .into_iter()
            .filter(|c| c.method == Method::PATCH)
            .count();
        assert!((4..=5).contains(&patches), "{patches} patches in 5 s");
        recorder.flush().await.unwrap();
        assert_eq!(api.last().series_count(), Some(500));
    }

    #[tokio::test(start_paused = true)]
    async fn the_flush_task_writes_pending_repeats_without_being_asked() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");
        for _ in 0..3 {
            recorder
                .emit(&cm, EventData::normal("Synced", "Reconcile"))
                .await;
        }
        api.wait_for(2).await;
        assert_eq!(api.last().method, Method::PATCH);
        assert_eq!(api.last().series_count(), Some(3));
        // Idle ticks write nothing.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(api.calls().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_interval_leaves_repeats_to_flush() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let cm = config_map("web", "uid-1");
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(api.methods(), [Method::POST]);
        recorder.flush().await.unwrap();
        assert_eq!(api.last().series_count(), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_keys_are_distinct_events() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let a = config_map("a", "uid-a");
        let b = config_map("b", "uid-b");
        recorder
            .emit(&a, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&a, EventData::warning("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&a, EventData::normal("Other", "Reconcile"))
            .await;
        recorder
            .emit(&a, EventData::normal("Synced", "Delete"))
            .await;
        recorder
            .emit(&b, EventData::normal("Synced", "Reconcile"))
            .await;
        // Same key, different note: a repeat.
        recorder
            .emit(&b, EventData::normal("Synced", "Reconcile").note("x"))
            .await;
        assert_eq!(api.methods(), vec![Method::POST; 5]);
        assert_eq!(recorder.cache_len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_ttl_a_repeat_creates_a_new_event_and_flush_evicts() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_cache_ttl(Duration::from_secs(60));
        let cm = config_map("web", "uid-1");
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        tokio::time::advance(Duration::from_secs(59)).await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH]);

        // The TTL counts from the last emit.
        tokio::time::advance(Duration::from_secs(61)).await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        assert_eq!(api.methods(), [Method::POST, Method::PATCH, Method::POST]);
        let calls = api.calls();
        assert_ne!(calls[0].event_name(), calls[2].event_name());

        // Flush ticks evict expired entries.
        let other = config_map("other", "uid-2");
        recorder
            .emit(&other, EventData::normal("Synced", "Reconcile"))
            .await;
        assert_eq!(recorder.cache_len(), 2);
        tokio::time::advance(Duration::from_secs(61)).await;
        recorder.flush().await.unwrap();
        assert_eq!(recorder.cache_len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_evicts_the_oldest() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_max_entries(4);
        for i in 0..10 {
            let cm = config_map(&format!("cm{i}"), &format!("uid-{i}"));
            recorder
                .emit(&cm, EventData::normal("Synced", "Reconcile"))
                .await;
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!(recorder.cache_len() <= 4);
        assert_eq!(api.calls().len(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_event_is_created_anew_for_the_unwritten_repeats() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let cm = config_map("web", "uid-1");
        for _ in 0..3 {
            recorder
                .emit(&cm, EventData::normal("Synced", "Reconcile"))
                .await;
        }
        let first = api.calls()[0].event_name();
        api.gone.lock().unwrap().insert(first.clone());

        recorder.flush().await.unwrap();
        let calls = api.calls();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH, Method::POST]);
        assert_eq!(calls[1].event_name(), first);
        assert_eq!(calls[1].series_count(), Some(3));
        // The two repeats the lost Event had not recorded make a new series.
        let second = calls[2].event_name();
        assert_ne!(second, first);
        assert!(second.starts_with("web."));
        assert_eq!(calls[2].series_count(), Some(2));
        assert_eq!(calls[2].body["reason"], "Synced");
        assert_eq!(calls[2].body["regarding"]["uid"], "uid-1");

        // Later repeats go to the new Event.
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap();
        let patch = api.last();
        assert_eq!(
            (patch.method.clone(), patch.event_name()),
            (Method::PATCH, second)
        );
        assert_eq!(patch.series_count(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_repeat_after_deletion_recreates_without_series() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let cm = config_map("web", "uid-1");
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap(); // series.count = 2 written
        api.gone.lock().unwrap().insert(api.calls()[0].event_name());
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap();
        let create = api.last();
        assert_eq!(create.method, Method::POST);
        assert!(create.body.get("series").is_none(), "one emit: no series");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_create_is_returned_and_retried_on_the_next_emit() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");
        *api.create_status.lock().unwrap() = Some(403);
        let error = recorder
            .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await
            .unwrap_err();
        assert_eq!(error.status_code(), Some(403));
        assert!(
            error
                .to_string()
                .starts_with("creating event for ConfigMap shop/web"),
            "{error}"
        );
        assert_eq!(recorder.cache_len(), 0);

        // `emit` swallows (and logs) the error.
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        *api.create_status.lock().unwrap() = None;
        recorder
            .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await
            .unwrap();
        assert_eq!(api.methods(), vec![Method::POST; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_patches_are_returned_by_flush_and_retried() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let cm = config_map("web", "uid-1");
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        *api.patch_status.lock().unwrap() = Some(500);
        let error = recorder.flush().await.unwrap_err();
        assert_eq!(error.status_code(), Some(500));
        assert!(
            error
                .to_string()
                .starts_with("updating event series for ConfigMap shop/web")
        );

        *api.patch_status.lock().unwrap() = None;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH, Method::PATCH]);
        assert_eq!(api.last().series_count(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_during_the_first_create_are_counted() {
        let (client, api) = fake_api();
        let gate = Arc::new(Semaphore::new(0));
        *api.create_gate.lock().unwrap() = Some(Arc::clone(&gate));
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let cm = config_map("web", "uid-1");

        let first = tokio::spawn({
            let (recorder, cm) = (recorder.clone(), cm.clone());
            async move {
                recorder
                    .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
                    .await
            }
        });
        tokio::task::yield_now().await;
        for _ in 0..4 {
            recorder
                .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
                .await
                .unwrap();
        }
        // The create is still in flight: a flush leaves it alone.
        recorder.flush().await.unwrap();
        gate.add_permits(1);
        first.await.unwrap().unwrap();
        assert_eq!(api.methods(), [Method::POST]);
        recorder.flush().await.unwrap();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH]);
        assert_eq!(api.last().series_count(), Some(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_first_create_is_finished_by_the_flush_task() {
        let (client, api) = fake_api();
        let gate = Arc::new(Semaphore::new(0));
        *api.create_gate.lock().unwrap() = Some(Arc::clone(&gate));
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");

        let first = tokio::spawn({
            let (recorder, cm) = (recorder.clone(), cm.clone());
            async move {
                recorder
                    .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await; // the create reaches the server
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;

        // The server got (and will answer) the first create; the flush task creates it again
        // under the same name, with both emits, learns it exists (409) and patches the count.
        gate.add_permits(2);
        api.wait_for(3).await;
        let calls = api.calls();
        assert_eq!(api.methods(), [Method::POST, Method::POST, Method::PATCH]);
        assert_eq!(calls[0].event_name(), calls[1].event_name());
        assert_eq!(calls[1].series_count(), Some(2));
        assert_eq!(calls[2].event_name(), calls[0].event_name());
        assert_eq!(calls[2].series_count(), Some(2));
        recorder.flush().await.unwrap();
        assert_eq!(api.calls().len(), 3, "nothing left pending");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_recorder_ends_the_flush_task() {
        let (client, api) = fake_api();
        let recorder = recorder(client);
        let cm = config_map("web", "uid-1");
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        let task = lock(&recorder.shared.flusher).clone().unwrap();
        let shared = Arc::downgrade(&recorder.shared);
        drop(recorder);
        tokio::task::yield_now().await;
        assert!(shared.upgrade().is_none());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(task.is_finished());
        // The pending repeat was never written: that is what `flush` on shutdown is for.
        assert_eq!(api.methods(), [Method::POST]);
    }

    #[tokio::test(start_paused = true)]
    async fn objects_without_uid_are_deduplicated_by_coordinates() {
        let (client, api) = fake_api();
        let recorder = recorder(client).with_flush_interval(Duration::ZERO);
        let mut cm = config_map("web", "");
        cm.metadata.uid = None;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        recorder.flush().await.unwrap();
        assert_eq!(api.methods(), [Method::POST, Method::PATCH]);
    }

    #[test]
    fn event_names_are_dns_subdomains() {
        let name = event_name("My_Config:Map");
        let (prefix, hex) = name.split_once('.').unwrap();
        assert_eq!(prefix, "my-config-map");
        assert_eq!(hex.len(), 16);
        assert!(event_name("").starts_with("event."));
        assert!(event_name("---").starts_with("event."));
        let long = event_name(&"a".repeat(300));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(event_name("a"), event_name("a"));
    }

    #[test]
    fn the_reporting_instance_is_controller_and_pod() {
        let env = |pod: Option<&'static str>, host: Option<&'static str>| {
            move |var: &str| match var {
                "POD_NAME" => pod.map(String::from),
                "HOSTNAME" => host.map(String::from),
                _ => None,
            }
        };
        let no_file = || None;
        let file = || Some("node-7\n".to_owned());
        assert_eq!(
            detect_instance(env(Some("pod-1"), Some("host")), file).as_deref(),
            Some("pod-1")
        );
        assert_eq!(
            detect_instance(env(None, Some("host")), file).as_deref(),
            Some("host")
        );
        assert_eq!(
            detect_instance(env(Some(" "), None), file).as_deref(),
            Some("node-7")
        );
        assert_eq!(detect_instance(env(None, None), no_file), None);

        assert_eq!(reporting_instance("ctl", Some("pod-1")), "ctl-pod-1");
        assert_eq!(reporting_instance("ctl", None), "ctl");
        let long = reporting_instance(&"c".repeat(200), Some("pod-1"));
        assert_eq!(long.len(), 128);
        assert!(long.ends_with("-pod-1"));
    }

    #[tokio::test]
    async fn configuration_is_kept_and_visible() {
        let (client, _api) = fake_api();
        let recorder = EventRecorder::new(client, "example.com/op")
            .with_cache_ttl(Duration::from_secs(5))
            .with_flush_interval(Duration::from_millis(200));
        assert_eq!(recorder.reporting_controller(), "example.com/op");
        assert!(recorder.reporting_instance().starts_with("example.com/op"));
        let debug = format!("{recorder:?}");
        assert!(
            debug.contains("cache_ttl: 5s") && debug.contains("flush_interval: 200ms"),
            "{debug}"
        );
    }
}
