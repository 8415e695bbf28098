//! Kubernetes events (`events.k8s.io/v1`) about reconciled objects, deduplicated and coalesced.
//!
//! An operator reports what it did with [`EmitEvent::emit`], which never fails a reconcile (an
//! error is logged), or [`EmitEvent::try_emit`], which returns it. [`EventData`] says what
//! happened: a [`EventType`], a [`Reason`] (why), an action (what) and an optional note.
//!
//! [`EventRecorder`] writes the Events. Emits of the same event (object UID, type, reason,
//! action) within a TTL are one Event whose `series.count` is the number of emits: the first emit
//! creates it, repeats bump a counter in memory, and a background task patches the count once per
//! flush interval, so an event storm costs one write per interval, not one per emit. Call
//! [`EventRecorder::flush`] on shutdown to write the counts still pending.
//!
//! [`MockEventRecorder`] records events in memory, with the same deduplication, for tests.
//!
//! ```no_run
//! use kuberator::events::{EmitEvent, EventData, EventRecorder};
//! # use k8s_openapi::api::core::v1::ConfigMap;
//! # async fn doc(client: kube::Client, cm: ConfigMap) -> kuberator::Result<()> {
//!
//! let events = EventRecorder::new(client, "websites.example.com/operator");
//! events
//!     .emit(&cm, EventData::warning("ImageMissing", "Reconcile").note("spec.image is empty"))
//!     .await;
//! events.flush().await?; // on shutdown
//! # Ok(())
//! # }
//! ```
//!
//! # Access control
//!
//! The recorder needs, in every namespace it emits events for (and in `default`, where events
//! about cluster-scoped objects go):
//!
//! ```yaml
//! - apiGroups: ["events.k8s.io"]
//!   resources: ["events"]
//!   verbs: ["create", "patch"]
//! ```

mod data;
mod dedup;
mod emit;
mod key;
mod mock;
mod recorder;
pub(crate) mod write_failures;

pub use data::{EventData, EventType, Reason};
pub use emit::EmitEvent;
pub use key::EventKey;
pub use mock::{MockEventRecorder, RecordedEvent};
pub use recorder::EventRecorder;
