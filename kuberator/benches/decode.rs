//! Decoding one watch event's object: straight into the typed resource (what a raw kube-rs
//! `Controller` does), and into a `DynamicObject` first and then into the type with
//! `managedFields` dropped (what kuberator's primary watch does, so that one malformed object is
//! skipped instead of failing the list). The object is a namespaced resource with a 256-byte
//! spec, a status and the three `managedFields` entries a reconciled object carries.
//! `cargo bench -p kuberator --bench decode`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use serde_json::json;

fn object_bytes() -> Vec<u8> {
    let entry = |manager: &str, operation: &str, subresource: Option<&str>| {
        json!({
            "manager": manager, "operation": operation, "apiVersion": "v1",
            "time": "2026-11-27T18:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": { "f:data": { ".": {}, "f:payload": {}, "f:replicas": {} },
                          "f:metadata": { "f:finalizers": { ".": {}, "v:\"bench.kuberator.dev/cleanup\"": {} } } },
            "subresource": subresource,
        })
    };
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "kuberator-5000-r1-4711",
            "namespace": "default",
            "uid": "0b6bd5a8-5f3c-4d1e-9a7e-3f0f6f1f2a4b",
            "resourceVersion": "123456",
            "generation": 1,
            "creationTimestamp": "2026-11-27T18:00:00Z",
            "finalizers": ["bench.kuberator.dev/cleanup"],
            "managedFields": [
                entry("bench", "Update", None),
                entry("bench-operator", "Update", None),
                entry("bench-operator", "Update", Some("status")),
            ],
        },
        "data": { "payload": "x".repeat(256), "replicas": "3", "observedGeneration": "1" },
    });
    serde_json::to_vec(&object).unwrap_or_default()
}

fn decode(c: &mut Criterion) {
    let bytes = object_bytes();
    let mut group = c.benchmark_group("watch_decode");
    group.bench_function("typed (raw kube-rs)", |b| {
        b.iter(|| black_box(serde_json::from_slice::<ConfigMap>(black_box(&bytes)).ok()));
    });
    group.bench_function("dynamic then typed (kuberator)", |b| {
        b.iter(|| {
            let dynamic = serde_json::from_slice::<DynamicObject>(black_box(&bytes)).ok();
            black_box(dynamic.and_then(|mut o| {
                o.metadata.managed_fields = None;
                kuberator::__private::decode_dynamic::<ConfigMap>(o).ok()
            }))
        });
    });
    group.bench_function("dynamic then try_parse (before)", |b| {
        b.iter(|| {
            let dynamic = serde_json::from_slice::<DynamicObject>(black_box(&bytes)).ok();
            black_box(dynamic.and_then(|mut o| {
                o.metadata.managed_fields = None;
                o.try_parse::<ConfigMap>().ok()
            }))
        });
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
