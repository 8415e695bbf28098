//! [`MockEventRecorder`]: records events in memory, for tests of reconcilers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{Resource, core::Status};

use super::{
    data::{EventData, Reason},
    emit::EmitEvent,
    key::{AsKeyRef, EventKey, KeyRef, object_identity, regarding},
};
use crate::error::{Error, ObjectKey, Result};

/// One deduplicated event recorded by [`MockEventRecorder`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RecordedEvent {
    /// The deduplication key (object UID, type, reason, action).
    pub key: EventKey,
    /// The object the event is about, as the Event's `regarding` would be.
    pub regarding: ObjectReference,
    /// The event as first emitted (later notes are not kept, as on the server).
    pub data: EventData,
    /// How many times it was emitted: the `series.count` the real recorder would write.
    pub count: u64,
}

/// An [`EmitEvent`] for tests: records events in memory instead of writing them, deduplicated
/// with the same key as [`EventRecorder`](super::EventRecorder) (without expiry).
///
/// Clones share their records, so keep one clone for assertions:
///
/// ```
/// use kuberator::events::{EmitEvent, EventData, MockEventRecorder};
/// use k8s_openapi::api::core::v1::ConfigMap;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
///
/// let events = MockEventRecorder::new();
/// let cm = ConfigMap::default();
/// for _ in 0..3 {
///     events.emit(&cm, EventData::warning("ImageMissing", "Reconcile")).await;
/// }
/// assert_eq!(events.count_for("ImageMissing"), 3);
/// assert_eq!(events.events().len(), 1);
/// assert_eq!(events.events()[0].count, 3);
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct MockEventRecorder {
    state: Arc<Mutex<MockState>>,
}

#[derive(Debug, Default)]
struct MockState {
    events: Vec<RecordedEvent>,
    index: HashMap<EventKey, usize>,
    failing: bool,
}

impl MockEventRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, MockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every distinct event, in the order first emitted, with its count.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.state().events.clone()
    }

    /// The distinct events about `object`, in the order first emitted.
    pub fn events_for<R: Resource<DynamicType = ()>>(&self, object: &R) -> Vec<RecordedEvent> {
        let identity = object_identity(object);
        self.state()
            .events
            .iter()
            .filter(|e| e.key.object() == identity)
            .cloned()
            .collect()
    }

    /// The first recorded event with this reason.
    pub fn find(&self, reason: impl Reason) -> Option<RecordedEvent> {
        let reason = reason.as_str();
        self.state()
            .events
            .iter()
            .find(|e| e.key.reason() == reason)
            .cloned()
    }

    /// How many times events with this reason were emitted, over all objects, types and actions.
    pub fn count_for(&self, reason: impl Reason) -> u64 {
        let reason = reason.as_str();
        self.state()
            .events
            .iter()
            .filter(|e| e.key.reason() == reason)
            .map(|e| e.count)
            .sum()
    }

    /// How many times any event was emitted.
    pub fn total(&self) -> u64 {
        self.state().events.iter().map(|e| e.count).sum()
    }

    /// Forgets every recorded event.
    pub fn clear(&self) {
        let mut state = self.state();
        state.events.clear();
        state.index.clear();
    }

    /// While `failing`, [`try_emit`](EmitEvent::try_emit) fails with a 503 API error and
    /// records nothing: to test that a reconcile survives event failures.
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }
}

#[async_trait]
impl EmitEvent for MockEventRecorder {
    /// Records `data` about `object`, or counts a repeat.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] (a 503 `ServiceUnavailable`) while [`set_failing`](Self::set_failing)
    /// is on.
    ///
    /// # Access control
    ///
    /// None: nothing is sent anywhere.
    async fn try_emit<R>(&self, object: &R, mut data: EventData) -> Result<()>
    where
        R: Resource<DynamicType = ()> + Sync,
    {
        data.normalize();
        let identity = object_identity(object);
        let key = KeyRef::new(&identity, &data);
        let mut state = self.state();
        if state.failing {
            let status = Status::failure("mock event recorder is failing", "ServiceUnavailable")
                .with_code(503);
            return Err(Error::kube(
                "creating event for",
                ObjectKey::of(object),
                kube::Error::Api(status.boxed()),
            ));
        }
        if let Some(&i) = state.index.get(&key as &dyn AsKeyRef) {
            if let Some(event) = state.events.get_mut(i) {
                event.count += 1;
            }
            return Ok(());
        }
        let key = key.to_owned_with(&data);
        let i = state.events.len();
        state.index.insert(key.clone(), i);
        state.events.push(RecordedEvent {
            key,
            regarding: regarding(object),
            data,
            count: 1,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};

    use super::*;
    use crate::events::EventType;

    fn config_map(name: &str, uid: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[tokio::test]
    async fn deduplicates_with_the_recorder_key() {
        let events = MockEventRecorder::new();
        let a = config_map("a", "uid-a");
        let b = config_map("b", "uid-b");
        for _ in 0..3 {
            events
                .emit(&a, EventData::warning("Failed", "Reconcile").note("x"))
                .await;
        }
        events
            .emit(&a, EventData::warning("Failed", "Reconcile").note("y"))
            .await;
        events
            .emit(&a, EventData::normal("Failed", "Reconcile"))
            .await;
        events
            .emit(&b, EventData::warning("Failed", "Reconcile"))
            .await;
        events
            .emit(&b, EventData::normal("Synced", "Reconcile"))
            .await;

        let recorded = events.events();
        assert_eq!(recorded.len(), 4);
        assert_eq!(recorded[0].count, 4);
        assert_eq!(
            recorded[0].data.note.as_deref(),
            Some("x"),
            "first note kept"
        );
        assert_eq!(
            recorded[0].key,
            EventKey::new(&a, &EventData::warning("Failed", "Reconcile"))
        );
        assert_eq!(recorded[0].key.event_type(), EventType::Warning);
        assert_eq!(recorded[0].regarding.uid.as_deref(), Some("uid-a"));
        assert_eq!(events.count_for("Failed"), 6);
        assert_eq!(events.count_for(String::from("Synced")), 1);
        assert_eq!(events.count_for("Nope"), 0);
        assert_eq!(events.total(), 7);
        assert_eq!(events.events_for(&b).len(), 2);
        assert_eq!(
            events.find("Synced").map(|e| e.regarding.name),
            Some(Some("b".into()))
        );
        assert!(events.find("Nope").is_none());

        events.clear();
        assert!(events.events().is_empty());
        events
            .emit(&a, EventData::warning("Failed", "Reconcile"))
            .await;
        assert_eq!(events.events()[0].count, 1);
    }

    #[tokio::test]
    async fn clones_share_records() {
        let events = MockEventRecorder::new();
        let clone = events.clone();
        clone
            .emit(
                &config_map("a", "u"),
                EventData::normal("Synced", "Reconcile"),
            )
            .await;
        assert_eq!(events.count_for("Synced"), 1);
    }

    #[tokio::test]
    async fn failing_mode_errors_and_emit_still_returns() {
        let events = MockEventRecorder::new();
        let cm = config_map("a", "u");
        events.set_failing(true);
        let error = events
            .try_emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await
            .unwrap_err();
        assert_eq!(error.status_code(), Some(503));
        assert_eq!(error.reason(), "ServiceUnavailable");
        events
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        assert_eq!(events.total(), 0);
        events.set_failing(false);
        events
            .emit(&cm, EventData::normal("Synced", "Reconcile"))
            .await;
        assert_eq!(events.total(), 1);
    }

    #[tokio::test]
    async fn notes_and_reasons_are_bounded_as_on_the_server() {
        let events = MockEventRecorder::new();
        let mut data = EventData::normal("Synced", "Reconcile");
        data.note = Some("é".repeat(1000));
        events.emit(&config_map("a", "u"), data).await;
        let note = events.events()[0].data.note.clone().unwrap();
        assert!(note.len() <= 1024 && note.ends_with("..."));
    }
}
