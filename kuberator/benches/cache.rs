//! API handle lookup per caching strategy, hit and miss, against building a handle per call as a
//! raw kube-rs reconcile does. No server: the client talks to a `tower_test` mock that is never
//! called. `cargo bench -p kuberator --bench cache`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use kuberator::{CachedApiProvider, CachingStrategy, ProvideApi, StaticApiProvider};

fn client() -> Client {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    // Never answered: lookups send nothing. Keep the handle so the service stays open.
    std::mem::forget(handle);
    Client::new(service, "default")
}

/// `namespaces` pre-cached under `strategy`.
fn provider(
    client: &Client,
    namespaces: usize,
    strategy: CachingStrategy,
) -> StaticApiProvider<ConfigMap> {
    let names: Vec<String> = (0..namespaces).map(|i| format!("ns{i}")).collect();
    StaticApiProvider::new(client.clone(), names, strategy)
}

fn lookups(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        panic!("no tokio runtime");
    };
    // `Client::new` spawns its buffer task on the current runtime.
    let _entered = runtime.enter();
    let client = client();

    let mut group = c.benchmark_group("api_lookup");
    for namespaces in [1, 2, 20] {
        // The last pre-cached namespace: the worst case of the linear scan (≤ 8) or a hash
        // lookup (more).
        let hit = format!("ns{}", namespaces - 1);
        for (name, strategy) in [
            ("strict", CachingStrategy::Strict),
            ("adhoc", CachingStrategy::Adhoc),
            ("extendable", CachingStrategy::Extendable),
        ] {
            let p = provider(&client, namespaces, strategy);
            group.bench_function(format!("{name}/hit/{namespaces}ns"), |b| {
                b.iter(|| drop(black_box(p.get(black_box(Some(hit.as_str()))))));
            });
            // Strict: an error naming the cached namespaces; Adhoc: a fresh handle; Extendable:
            // the handle cached on the first miss (read lock + clone).
            group.bench_function(format!("{name}/miss/{namespaces}ns"), |b| {
                b.iter(|| drop(black_box(p.get(black_box(Some("elsewhere"))))));
            });
        }
    }
    let cached = CachedApiProvider::<ConfigMap>::new(client.clone());
    let _ = cached.get(Some("ns0"));
    group.bench_function("cached_provider/hit", |b| {
        b.iter(|| drop(black_box(cached.get(black_box(Some("ns0"))))));
    });
    // What a raw kube-rs reconcile does instead: build the handle every time.
    group.bench_function("kube_rs/Api::namespaced", |b| {
        b.iter(|| {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), black_box("ns0"));
            drop(black_box(api));
        });
    });
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
