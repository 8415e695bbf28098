//! Event deduplication: a repeat emit on `EventRecorder` after the first create (flush interval
//! zero, so the hot path is the in-memory dedup lookup and counter bump, no request), next to
//! the same on `MockEventRecorder`. A `tower_test` mock answers the first POST.
//! `cargo bench -p kuberator --bench events`.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Client, api::ObjectMeta, client::Body};
use kuberator::events::{EmitEvent, EventData, EventRecorder, MockEventRecorder};

/// A client whose server answers every request with 201 and the request's own body.
fn echo_client() -> Client {
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .unwrap_or_default();
            let response = http::Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .body(Body::from(body.to_vec()));
            if let Ok(response) = response {
                send.send_response(response);
            }
        }
    });
    Client::new(service, "default")
}

fn config_map() -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some("storm".into()),
            namespace: Some("default".into()),
            uid: Some("0b6bd5a8-5f3c-4d1e-9a7e-3f0f6f1f2a4b".into()),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn dedup(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        panic!("no tokio runtime");
    };
    let object = config_map();
    let recorder = runtime.block_on(async {
        let recorder = EventRecorder::new(echo_client(), "bench.kuberator.dev/events")
            .with_flush_interval(Duration::ZERO);
        if let Err(error) = recorder
            .try_emit(&object, EventData::warning("Storm", "Reconcile"))
            .await
        {
            panic!("the first emit failed: {error}");
        }
        recorder
    });
    let mock = MockEventRecorder::new();

    let mut group = c.benchmark_group("event_repeat");
    group.bench_function("EventRecorder/no_note", |b| {
        b.to_async(&runtime).iter(|| async {
            let data = EventData::warning("Storm", "Reconcile");
            black_box(recorder.try_emit(black_box(&object), data).await).ok();
        });
    });
    group.bench_function("EventRecorder/with_note", |b| {
        b.to_async(&runtime).iter(|| async {
            let data = EventData::warning("Storm", "Reconcile").note("the same failure");
            black_box(recorder.try_emit(black_box(&object), data).await).ok();
        });
    });
    group.bench_function("MockEventRecorder/no_note", |b| {
        b.to_async(&runtime).iter(|| async {
            let data = EventData::warning("Storm", "Reconcile");
            black_box(mock.try_emit(black_box(&object), data).await).ok();
        });
    });
    group.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
