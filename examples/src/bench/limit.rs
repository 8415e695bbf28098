//! (c) The API server's limit: the same writes per object (finalizer add, status patch, one event
//! create) with the same concurrency, and nothing else — no watch, no cache, no controller. The
//! driver writes one line per created object to this process' stdin: `name uid resourceVersion
//! generation`.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use futures::StreamExt;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{BenchObject, EVENT_ACTION, EVENT_REASON, FINALIZER, NAMESPACE};

/// One created object, as the driver announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` as created.
    pub resource_version: String,
    /// `metadata.generation`.
    pub generation: i64,
}

impl Created {
    /// The line the driver writes.
    pub fn to_line(&self) -> String {
        format!(
            "{} {} {} {}\n",
            self.name, self.uid, self.resource_version, self.generation
        )
    }

    /// Parses a line written by [`to_line`](Self::to_line).
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        Some(Self {
            name: parts.next()?.to_owned(),
            uid: parts.next()?.to_owned(),
            resource_version: parts.next()?.to_owned(),
            generation: parts.next()?.parse().ok()?,
        })
    }
}

async fn process(
    api: &Api<BenchObject>,
    events: &Api<Event>,
    object: Created,
) -> Result<(), kube::Error> {
    let finalizer = json!({ "metadata": {
        "finalizers": [FINALIZER],
        "resourceVersion": object.resource_version,
    }});
    let updated = api
        .patch(
            &object.name,
            &PatchParams::default(),
            &Patch::Merge(&finalizer),
        )
        .await?;
    let status = json!({ "status": { "observedGeneration": object.generation } });
    api.patch_status(
        &object.name,
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await?;
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:016x}", object.name, now.as_nanosecond())),
            namespace: Some(NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some("Normal".into()),
        reason: Some(EVENT_REASON.into()),
        action: Some(EVENT_ACTION.into()),
        note: Some("status written".into()),
        regarding: Some(ObjectReference {
            api_version: Some(BenchObject::api_version(&()).into_owned()),
            kind: Some(BenchObject::kind(&()).into_owned()),
            name: Some(object.name.clone()),
            namespace: Some(NAMESPACE.to_owned()),
            uid: Some(object.uid.clone()),
            resource_version: updated.metadata.resource_version,
            ..ObjectReference::default()
        }),
        reporting_controller: Some("bench.kuberator.dev/limit".into()),
        reporting_instance: Some("limit".into()),
        ..Event::default()
    };
    events.create(&PostParams::default(), &event).await?;
    Ok(())
}

/// Processes the objects announced on stdin with `concurrency` at once, until stdin closes or
/// SIGTERM; returns the number processed.
///
/// # Errors
/// None today (failed objects are logged).
pub async fn run(client: Client, concurrency: u16) -> anyhow::Result<u64> {
    let api: Api<BenchObject> = Api::namespaced(client.clone(), NAMESPACE);
    let events: Api<Event> = Api::namespaced(client, NAMESPACE);
    let processed = Arc::new(AtomicU64::new(0));
    // Read stdin on a blocking thread (the examples crate does not enable tokio's `io-std`).
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Created>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if let Some(created) = Created::parse(&line)
                && sender.send(created).is_err()
            {
                break;
            }
        }
    });
    let announced = futures::stream::unfold(receiver, |mut receiver| async move {
        let created = receiver.recv().await?;
        Some((created, receiver))
    });
    let work = announced.for_each_concurrent(usize::from(concurrency), |object| {
        let (api, events, processed) = (&api, &events, processed.clone());
        async move {
            processed.fetch_add(1, Ordering::Relaxed);
            let name = object.name.clone();
            if let Err(error) = process(api, events, object).await {
                tracing::warn!(%name, %error, "limit: write failed");
            }
        }
    });
    tokio::select! {
        () = work => {}
        () = kuberator::shutdown_signal() => {}
    }
    Ok(processed.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::Created;

    #[test]
    fn lines_round_trip() {
        let created = Created {
            name: "a".into(),
            uid: "u".into(),
            resource_version: "12".into(),
            generation: 1,
        };
        assert_eq!(Created::parse(&created.to_line()), Some(created));
    }
}
