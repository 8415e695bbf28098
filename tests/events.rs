//! Events on a real API server, read back as a user would with `kubectl events`: deduplicated
//! repeats as one Event with `series.count`, a storm coalesced into a handful of writes, events
//! about cluster-scoped objects, and an Event deleted behind the recorder's back.

use std::time::Duration;

use kube::{Api, ResourceExt, api::PostParams};
use kuberator::{
    events::{EmitEvent, EventData, EventRecorder},
    testing::TestEnv,
};
use serde_json::Value;

use crate::support::*;

/// The events `kubectl events` shows for `name` in `namespace`.
async fn kubectl_events(env: &TestEnv, namespace: &str, name: &str) -> Vec<Value> {
    let out = env
        .kubectl_json(["events", "-n", namespace, "-o", "json"])
        .await
        .unwrap();
    out["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| regarding(e)["name"] == name)
        .collect()
}

/// The object an event is about (`regarding` in events.k8s.io/v1, `involvedObject` in core/v1,
/// which is what `kubectl events` prints).
fn regarding(event: &Value) -> &Value {
    match &event["regarding"] {
        Value::Null => &event["involvedObject"],
        regarding => regarding,
    }
}

fn series_count(event: &Value) -> u64 {
    event["series"]["count"]
        .as_u64()
        .or_else(|| event["count"].as_u64())
        .unwrap_or(1)
}

/// Counts PATCH/POST requests on events from the apiserver's own metrics.
async fn event_writes(env: &TestEnv) -> u64 {
    let metrics = env.metrics_text().await.unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"events\""))
        .filter(|l| l.contains("verb=\"PATCH\"") || l.contains("verb=\"POST\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A control plane with the Widget CRD, one Widget named `name`, and a recorder for it.
async fn widget_with_recorder(name: &str) -> (TestEnv, Widget, EventRecorder) {
    let env = TestEnv::start().await.unwrap();
    env.install_crd::<Widget>().await.unwrap();
    let widget = api::<Widget>(env.client())
        .create(&PostParams::default(), &Widget::build(name, 1, Mode::Ok))
        .await
        .unwrap();
    let recorder = EventRecorder::new(env.client(), "test.kuberator.dev/operator");
    (env, widget, recorder)
}

#[tokio::test]
async fn repeats_become_one_event_with_a_series_count() {
    let (env, widget, recorder) = widget_with_recorder("evented").await;

    for _ in 0..5 {
        recorder
            .emit(
                &widget,
                EventData::normal("Configured", "Reconcile").note("all good"),
            )
            .await;
    }
    recorder
        .emit(&widget, EventData::warning("Degraded", "Reconcile"))
        .await;
    recorder.flush().await.unwrap();

    let events = kubectl_events(&env, "default", "evented").await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let configured = events.iter().find(|e| e["reason"] == "Configured").unwrap();
    assert_eq!(series_count(configured), 5, "{configured:#}");
    assert_eq!(
        configured["note"]
            .as_str()
            .or(configured["message"].as_str()),
        Some("all good")
    );
    let degraded = events.iter().find(|e| e["reason"] == "Degraded").unwrap();
    assert_eq!(degraded["type"], "Warning");
    assert_eq!(series_count(degraded), 1);
}

#[tokio::test]
async fn a_storm_is_coalesced_and_counted_exactly() {
    let (env, widget, recorder) = widget_with_recorder("stormy").await;

    let before = event_writes(&env).await;
    for _ in 0..10_000 {
        recorder
            .emit(&widget, EventData::normal("Tick", "Reconcile"))
            .await;
    }
    recorder.flush().await.unwrap();
    let writes = event_writes(&env).await - before;
    let events = kubectl_events(&env, "default", "stormy").await;
    assert_eq!(events.len(), 1);
    assert_eq!(series_count(&events[0]), 10_000);
    assert!(writes <= 10, "10,000 emits took {writes} writes");
    println!("event storm: 10000 emits, {writes} API writes");
}

#[tokio::test]
async fn cluster_scoped_objects_get_events_in_default() {
    let env = TestEnv::start().await.unwrap();
    env.install_crd::<Gizmo>().await.unwrap();
    let api: Api<Gizmo> = Api::all(env.client());
    let gizmo = api
        .create(&PostParams::default(), &Gizmo::build("global", 1, Mode::Ok))
        .await
        .unwrap();
    let recorder = EventRecorder::new(env.client(), "test.kuberator.dev/operator");
    recorder
        .try_emit(&gizmo, EventData::normal("Configured", "Reconcile"))
        .await
        .unwrap();
    let events = kubectl_events(&env, "default", "global").await;
    assert_eq!(events.len(), 1);
    assert_eq!(regarding(&events[0])["kind"], "Gizmo");
    assert_eq!(regarding(&events[0])["uid"], gizmo.uid().unwrap().as_str());
}

#[tokio::test]
async fn a_deleted_event_is_created_anew() {
    let (env, widget, recorder) = widget_with_recorder("phoenix").await;
    let recorder = recorder.with_flush_interval(Duration::ZERO);
    let data = || EventData::normal("Configured", "Reconcile");
    recorder.try_emit(&widget, data()).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.client(), "default");
    let first = kubectl_events(&env, "default", "phoenix").await;
    let first_name = first[0]["metadata"]["name"].as_str().unwrap().to_owned();
    events
        .delete(&first_name, &Default::default())
        .await
        .unwrap();
    recorder.try_emit(&widget, data()).await.unwrap();
    recorder.flush().await.unwrap();
    let after = kubectl_events(&env, "default", "phoenix").await;
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_ne!(after[0]["metadata"]["name"], first_name.as_str());
}
