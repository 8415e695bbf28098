//! The primary watch: decodes objects one by one, so that one malformed object is logged and
//! skipped instead of failing the whole list.

use std::time::Duration;

use futures::{Stream, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    core::PartialObjectMetaExt,
    runtime::{
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use serde::de::DeserializeOwned;

use super::metrics::ControllerMetrics;
use crate::{
    events::{EmitEvent, EventData, EventRecorder},
    finalize::Object,
};

/// What the primary watch does with an object that stops decoding into `R` (e.g. a custom
/// resource whose stored spec no longer matches the Rust type): besides leaving it out of the
/// cache, it logs it, counts it, emits a `Warning` event `Undecodable` on it and, when it is
/// being deleted, removes `finalizer` from it so that the deletion completes.
#[derive(Clone, Default)]
pub(crate) struct OnUndecodable {
    /// The operator's finalizer, released from undecodable objects being deleted (`None`: kept
    /// until someone repairs the object).
    pub(crate) finalizer: Option<String>,
    /// Where the `Warning` event goes.
    pub(crate) events: Option<EventRecorder>,
    /// `kuberator_undecodable_objects_total`.
    pub(crate) metrics: Option<ControllerMetrics>,
    /// The client for the finalizer release (the operator's guarded client: a standby never
    /// writes).
    pub(crate) client: Option<Client>,
}

/// How often the release of a finalizer is tried before waiting for the next change.
const RELEASE_ATTEMPTS: u32 = 5;

/// An `Api` for `R`'s resource in `namespace` (all namespaces, or cluster-scoped, for `None`)
/// that reads and writes untyped objects: for what must work when an object no longer decodes
/// as `R` (its watch, its finalizer, its metadata), and without `R`'s scope in the bounds.
pub(crate) fn erased_api<R: Object>(client: Client, namespace: Option<&str>) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<R>(&());
    match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    }
}

/// Watches `R` in `namespace` (or everywhere) as untyped objects and decodes each one into `R`.
/// Objects that do not decode are left out of the cache: a change that makes a cached object
/// undecodable removes the cached copy (its reconciles stop), see [`OnUndecodable`] for the
/// rest. `on_listed` is called after each complete (re)list, `on_recovered` when the watch works
/// again after failing (see [`with_watch_backoff_and_recovery`]).
pub(crate) fn typed_watch<R: Object>(
    client: Client,
    namespace: Option<&str>,
    config: watcher::Config,
    on_listed: impl Fn() + Send + 'static,
    on_recovered: impl Fn() + Send + 'static,
    cache: Store<R>,
    undecodable: OnUndecodable,
) -> impl Stream<Item = Result<watcher::Event<R>, watcher::Error>> + Send + 'static {
    let api = erased_api::<R>(client, namespace);
    with_watch_backoff_and_recovery(watcher(api, config), on_recovered)
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                on_listed();
            }
            decode_event::<R>(event, &cache, &undecodable)
        })
        .try_filter_map(|event| futures::future::ready(Ok(event)))
}

/// The watches' retry delay after an error: 100 ms doubling up to 500 ms (with up to 20 %
/// jitter), back to 100 ms on the first event after a successful (re)list or watch.
///
/// kube-runtime's default (0.8 s doubling to 30 s, reset only after 120 s without errors) suits
/// a client that must go easy on a struggling server; a controller wants to resume within a
/// second of the server answering again (two connection attempts per watch per second at worst
/// while it is down, which a recovering server survives). A `410 Gone` (`too old resource
/// version`, what a restarted API server answers a resumed watch) is the server answering: the
/// re-list follows at once, without a delay (see `with_watch_backoff` in `runtime/watch.rs`).
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    /// The first delay.
    pub const MIN: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: std::time::Duration = std::time::Duration::from_millis(500);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        use rand::Rng;
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay.mul_f64(1.0 + rand::rng().random_range(0.0..0.2)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// `watch` with [`WatchBackoff`] between retries: after an error the next poll waits for the
/// delay, except after a `410 Gone` (the watcher then re-lists at once); any event resets it.
pub(crate) fn with_watch_backoff<S, K>(
    watch: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    with_watch_backoff_and_recovery(watch, || {})
}

/// [`with_watch_backoff`], calling `on_recovered` once the watch works again after failing
/// (any error but a lone `410 Gone`): at the end of the re-list that follows, or at the first
/// event of a watch resumed without one. The cache is current by then, so what failed while
/// the API server was unreachable can be retried at once instead of at the end of its backoff.
pub(crate) fn with_watch_backoff_and_recovery<S, K>(
    watch: S,
    on_recovered: impl Fn() + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::utils::Backoff as _;
    let state = Retry {
        watch: watch.boxed(),
        backoff: WatchBackoff::default(),
        delay: None,
        failing: false,
        listing: false,
        on_recovered,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(delay) = state.delay.take() {
            tokio::time::sleep(delay).await;
        }
        let item = state.watch.next().await?;
        match &item {
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                state.backoff.reset();
            }
            Err(error) => {
                if !state.failing {
                    tracing::debug!(%error, "watch failing");
                }
                state.failing = true;
                state.delay = state.backoff.next();
            }
            Ok(event) => {
                state.backoff.reset();
                match event {
                    watcher::Event::Init => state.listing = true,
                    watcher::Event::InitApply(_) => {}
                    watcher::Event::InitDone
                    | watcher::Event::Apply(_)
                    | watcher::Event::Delete(_) => {
                        let done = matches!(event, watcher::Event::InitDone);
                        if state.failing && (done || !state.listing) {
                            state.failing = false;
                            tracing::debug!("watch recovered");
                            (state.on_recovered)();
                        }
                        state.listing &= !done;
                    }
                }
            }
        }
        Some((item, state))
    })
}

/// The state of [`with_watch_backoff_and_recovery`] between polls.
struct Retry<K, F> {
    watch: futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>,
    backoff: WatchBackoff,
    /// How long to wait before the next poll.
    delay: Option<Duration>,
    /// An error came since the watch last worked.
    failing: bool,
    /// Between `Init` and `InitDone`.
    listing: bool,
    on_recovered: F,
}

fn decode_event<R: Object>(
    event: watcher::Event<DynamicObject>,
    cache: &Store<R>,
    undecodable: &OnUndecodable,
) -> Option<watcher::Event<R>> {
    use watcher::Event;
    // The cached copy of an object that no longer decodes: deleting it from the cache stops
    // reconciles of stale data and triggers nothing (the controller finds no object).
    let stale = |key: ObjectRef<R>| cache.get(&key).map(|last| Event::Delete(R::clone(&last)));
    Some(match event {
        Event::Apply(o) => match decode(o, undecodable, true) {
            Ok(typed) => Event::Apply(typed),
            Err(key) => return stale(key),
        },
        // A relist replaces the cache, so an object left out of it is gone from it.
        Event::InitApply(o) => Event::InitApply(decode(o, undecodable, true).ok()?),
        Event::Delete(o) => match decode(o, undecodable, false) {
            Ok(typed) => Event::Delete(typed),
            Err(key) => return stale(key),
        },
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

/// Turns an untyped object into `R`, moving its fields instead of re-serializing them: only
/// `metadata` is serialized again (kube-rs' `DynamicObject::try_parse` serializes the whole object
/// back into a `Value` first).
pub(crate) fn decode_dynamic<R: DeserializeOwned>(
    object: DynamicObject,
) -> Result<R, serde_json::Error> {
    let DynamicObject {
        types,
        metadata,
        data,
    } = object;
    let mut fields = match data {
        serde_json::Value::Object(fields) => fields,
        serde_json::Value::Null => serde_json::Map::new(),
        other => return serde_json::from_value(other),
    };
    fields.insert("metadata".into(), serde_json::to_value(metadata)?);
    if let Some(types) = types {
        fields.insert("apiVersion".into(), types.api_version.into());
        fields.insert("kind".into(), types.kind.into());
    }
    serde_json::from_value(serde_json::Value::Object(fields))
}

/// Decodes `object`; when it does not decode, logs and counts it and (if `live`, i.e. not a
/// deletion) emits the `Warning` event and releases the finalizer of a deleted one, and
/// returns its cache key.
fn decode<R: Object>(
    mut object: DynamicObject,
    undecodable: &OnUndecodable,
    live: bool,
) -> Result<R, ObjectRef<R>> {
    // Managed fields are large and never needed by a reconcile.
    object.metadata.managed_fields = None;
    let name = object.name_any();
    let namespace = object.metadata.namespace.clone();
    let metadata = object.metadata.clone();
    match decode_dynamic::<R>(object) {
        Ok(typed) => Ok(typed),
        Err(error) => {
            let mut key = ObjectRef::<R>::new(&name);
            if let Some(namespace) = &namespace {
                key = key.within(namespace);
            }
            let deleting = metadata.deletion_timestamp.is_some();
            tracing::error!(
                kind = %R::kind(&()),
                namespace = namespace.as_deref().unwrap_or(""),
                name = %name,
                error = %error,
                deleting,
                "cannot decode object into its Rust type: left out of the cache and not \
                 reconciled until it changes (kubectl get -o yaml shows what it holds)"
            );
            if let Some(metrics) = &undecodable.metrics {
                metrics.undecodable();
            }
            if live {
                tokio::spawn(handle_undecodable::<R>(
                    metadata,
                    error.to_string(),
                    undecodable.clone(),
                ));
            }
            Err(key)
        }
    }
}

/// The `Warning` event about an undecodable object, and the release of the operator's
/// finalizer when the object is being deleted.
async fn handle_undecodable<R: Object>(
    metadata: kube::api::ObjectMeta,
    error: String,
    undecodable: OnUndecodable,
) {
    let deleting = metadata.deletion_timestamp.is_some();
    let release = undecodable
        .finalizer
        .as_deref()
        .filter(|f| deleting && metadata.finalizers.iter().flatten().any(|g| g == f));
    let partial = metadata.clone().into_request_partial::<R>();
    if let Some(events) = &undecodable.events {
        let note = match release {
            Some(finalizer) => format!(
                "cannot decode into {}: {error}; deleted, so finalizer {finalizer} is removed \
                 without cleanup",
                R::kind(&())
            ),
            None => format!(
                "cannot decode into {}: {error}; not reconciled until it is fixed",
                R::kind(&())
            ),
        };
        events
            .emit(
                &partial,
                EventData::warning("Undecodable", "Decode").note(note),
            )
            .await;
    }
    if let (Some(finalizer), Some(client)) = (release, &undecodable.client) {
        release_finalizer::<R>(client, metadata, finalizer).await;
    }
}

/// Removes `finalizer` from the object (a merge patch guarded by its `resourceVersion`,
/// re-read and retried on a conflict or failure).
async fn release_finalizer<R: Object>(
    client: &Client,
    mut metadata: kube::api::ObjectMeta,
    finalizer: &str,
) {
    let api = erased_api::<R>(client.clone(), metadata.namespace.as_deref());
    let name = metadata.name.clone().unwrap_or_default();
    let mut wait = Duration::from_millis(200);
    for attempt in 1..=RELEASE_ATTEMPTS {
        let finalizers: Vec<&String> = metadata
            .finalizers
            .iter()
            .flatten()
            .filter(|f| *f != finalizer)
            .collect();
        if finalizers.len() == metadata.finalizers.as_ref().map_or(0, Vec::len) {
            return;
        }
        let patch = Patch::Merge(serde_json::json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": metadata.resource_version,
            }
        }));
        let error = match api.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => {
                tracing::warn!(
                    kind = %R::kind(&()),
                    namespace = metadata.namespace.as_deref().unwrap_or(""),
                    name = %name,
                    finalizer,
                    "released the finalizer of an undecodable object being deleted (no cleanup ran)"
                );
                return;
            }
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            // A standby: the leader releases it.
            Err(error)
                if super::request::request_error(&error).is_some_and(|e| {
                    matches!(e, super::request::RequestError::NotLeader { .. })
                }) =>
            {
                return;
            }
            Err(error) => error,
        };
        tracing::debug!(name = %name, attempt, %error, "releasing the finalizer failed; retrying");
        tokio::time::sleep(wait).await;
        wait *= 2;
        match api.get(&name).await {
            Ok(current) => metadata = current.metadata,
            Err(kube::Error::Api(status)) if status.code == 404 => return,
            Err(_) => {}
        }
    }
    tracing::warn!(
        kind = %R::kind(&()),
        name = %name,
        finalizer,
        "cannot release the finalizer of an undecodable object being deleted; retrying at its next change"
    );
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::DynamicObject;
    use serde_json::json;

    use super::decode_dynamic;

    fn object(data: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u-1", "generation": 2 },
            "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn decodes_like_try_parse() {
        let dynamic = object(json!({ "key": "value" }));
        let expected: ConfigMap = dynamic.clone().try_parse().unwrap();
        let decoded: ConfigMap = decode_dynamic(dynamic).unwrap();
        assert_eq!(decoded, expected);
        assert_eq!(decoded.data.unwrap()["key"], "value");
        assert_eq!(decoded.metadata.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn watch_backoff_is_capped_low_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = super::WatchBackoff::default();
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.next().unwrap().as_millis())
            .collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 500, 500, 500]) {
            assert!(*delay >= base && *delay <= base * 6 / 5, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap().as_millis() < 120);
    }

    /// After errors the delays grow; a `410 Gone` is retried at once and resets them.
    #[tokio::test(start_paused = true)]
    async fn a_gone_watch_is_retried_at_once() {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let gone = || {
            let mut status = kube::core::Status::failure("too old resource version", "Expired");
            status.code = 410;
            watcher::Error::WatchError(Box::new(status))
        };
        let failed = || watcher::Error::NoResourceVersion;
        let items: Vec<Result<watcher::Event<u8>, watcher::Error>> = vec![
            Err(failed()),
            Err(failed()),
            Err(gone()),
            Ok(watcher::Event::Apply(1)),
            Err(failed()),
            Ok(watcher::Event::Apply(2)),
        ];
        let start = tokio::time::Instant::now();
        let mut stream = std::pin::pin!(super::with_watch_backoff(futures::stream::iter(items)));
        let mut at = Vec::new();
        while let Some(item) = stream.next().await {
            at.push((item.is_ok(), start.elapsed().as_millis() / 100));
        }
        // 100 ms after the first error, 200 ms after the second, none after the 410.
        assert_eq!(
            at,
            [
                (false, 0),
                (false, 1),
                (false, 3),
                (true, 3),
                (false, 3),
                (true, 4)
            ]
        );
    }

    /// The recovery callback fires once per outage, when the re-list is complete (or at the
    /// first event of a watch resumed without one), never for a lone `410 Gone`.
    #[tokio::test(start_paused = true)]
    async fn recovery_is_reported_once_the_relist_is_done() {
        use std::sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        };

        use futures::StreamExt;
        use kube::runtime::watcher::{self, Event};
        let gone = || {
            let mut status = kube::core::Status::failure("too old resource version", "Expired");
            status.code = 410;
            watcher::Error::WatchError(Box::new(status))
        };
        let failed = || watcher::Error::NoResourceVersion;
        let items: Vec<Result<Event<u8>, watcher::Error>> = vec![
            Ok(Event::Init),
            Ok(Event::InitApply(1)),
            Ok(Event::InitDone),
            // A lone 410: re-listed, not an outage.
            Err(gone()),
            Ok(Event::Init),
            Ok(Event::InitDone),
            // An outage ending in a re-list: reported at its end.
            Err(failed()),
            Err(failed()),
            Err(gone()),
            Ok(Event::Init),
            Ok(Event::InitApply(1)),
            Ok(Event::InitDone),
            Ok(Event::Apply(1)),
            // An outage ending in a resumed watch: reported at its first event.
            Err(failed()),
            Ok(Event::Apply(2)),
            Ok(Event::Apply(3)),
        ];
        let recovered = Arc::new(AtomicUsize::new(0));
        let calls = recovered.clone();
        let stream =
            super::with_watch_backoff_and_recovery(futures::stream::iter(items), move || {
                calls.fetch_add(1, Ordering::SeqCst);
            });
        let mut stream = std::pin::pin!(stream);
        let mut seen = Vec::new();
        while let Some(item) = stream.next().await {
            let label = match item {
                Ok(Event::Init) => "init".to_owned(),
                Ok(Event::InitApply(n)) => format!("list {n}"),
                Ok(Event::InitDone) => "done".to_owned(),
                Ok(Event::Apply(n)) => format!("apply {n}"),
                Ok(Event::Delete(n)) => format!("delete {n}"),
                Err(_) => "error".to_owned(),
            };
            seen.push(format!("{label} {}", recovered.load(Ordering::SeqCst)));
        }
        assert_eq!(
            seen,
            [
                "init 0",
                "list 1 0",
                "done 0",
                "error 0",
                "init 0",
                "done 0",
                "error 0",
                "error 0",
                "error 0",
                "init 0",
                "list 1 0",
                "done 1",
                "apply 1 1",
                "error 1",
                "apply 2 2",
                "apply 3 2"
            ]
        );
    }

    #[test]
    fn a_malformed_object_is_an_error_naming_the_field() {
        let error = decode_dynamic::<ConfigMap>(object(json!({ "key": 7 }))).unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
    }
}
