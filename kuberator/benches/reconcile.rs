//! The per-reconcile overhead of the framework path with a no-op handler, next to kube-rs' own
//! `finalizer` helper doing the same, on an object that already carries the finalizer (so
//! neither path sends a request). No server: the client's mock is never called.
//!
//! - `kuberator/handler_path`: what `#[kuberator::operator]`'s generated reconcile does — the
//!   cached API handle from the context's provider, then `with_finalizer` around the handler.
//! - `kuberator/context_path`: the hand-written `Reconcile` → `Context::handle_reconciliation` →
//!   `Finalize::finalize` path.
//! - `kube_rs/finalizer`: a raw kube-rs reconcile as the docs teach it — `Api::namespaced` per
//!   call, then `kube::runtime::finalizer`.
//!
//! The controller loop's own wrapper (semaphore permit, span, panic guard, failure counts) is
//! private to the runtime and is not included; the throughput bench covers it.
//! `cargo bench -p kuberator --bench reconcile`.

use std::{hint::black_box, sync::Arc};

use async_trait::async_trait;
use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::ObjectMeta,
    runtime::{controller::Action, finalizer},
};
use kuberator::{
    CachingStrategy, Context, Ctx, Finalize, K8sRepository, Reconcile, Result, StaticApiProvider,
    finalize::with_finalizer,
};

const FINALIZER: &str = "bench.kuberator.dev/cleanup";

fn client() -> Client {
    let (service, handle) = tower_test::mock::pair::<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >();
    std::mem::forget(handle);
    Client::new(service, "default")
}

fn object() -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: ObjectMeta {
            name: Some("object".into()),
            namespace: Some("default".into()),
            uid: Some("0b6bd5a8-5f3c-4d1e-9a7e-3f0f6f1f2a4b".into()),
            resource_version: Some("1".into()),
            generation: Some(1),
            finalizers: Some(vec![FINALIZER.into()]),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    })
}

type Repository = K8sRepository<ConfigMap, StaticApiProvider<ConfigMap>>;

/// A no-op `Context` for the hand-written path.
struct Noop {
    repository: Arc<Repository>,
}

#[async_trait]
impl Context<ConfigMap, Repository, StaticApiProvider<ConfigMap>> for Noop {
    fn k8s_repository(&self) -> Arc<Repository> {
        self.repository.clone()
    }
    fn finalizer(&self) -> Option<&'static str> {
        Some(FINALIZER)
    }
    async fn handle_apply(&self, _object: Arc<ConfigMap>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

struct NoopReconcile;

impl Reconcile<ConfigMap, Noop, Repository, StaticApiProvider<ConfigMap>> for NoopReconcile {
    fn destruct(self) -> (Api<ConfigMap>, kube::runtime::watcher::Config, Arc<Noop>) {
        unreachable!("only `reconcile` is benchmarked")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(runtime) = runtime else {
        panic!("no tokio runtime");
    };
    let _entered = runtime.enter();
    let client = client();
    let object = object();

    let ctx = Ctx::<ConfigMap>::builder(client.clone())
        .namespaces(["default"])
        .caching(CachingStrategy::Strict)
        .finalizer(Some(FINALIZER))
        .build();
    let Ok(ctx) = ctx else {
        panic!("cannot build the context");
    };
    let provider = StaticApiProvider::new(client.clone(), ["default"], CachingStrategy::Strict);
    let noop = Arc::new(Noop {
        repository: Arc::new(K8sRepository::new(client.clone(), provider, "bench")),
    });

    let mut group = c.benchmark_group("reconcile_noop");
    group.bench_function("kuberator/handler_path", |b| {
        b.to_async(&runtime).iter(|| async {
            let object = object.clone();
            let api = kuberator::ProvideApi::get(
                ctx.repository().api_provider(),
                object.namespace().as_deref(),
            );
            let Ok(api) = api else { return };
            let action = with_finalizer(
                &api,
                FINALIZER,
                object,
                |_| async { Ok(Action::await_change()) },
                |_| async { Ok(Action::await_change()) },
            )
            .await;
            black_box(action).ok();
        });
    });
    group.bench_function("kuberator/context_path", |b| {
        b.to_async(&runtime).iter(|| async {
            let action = NoopReconcile::reconcile(object.clone(), noop.clone()).await;
            black_box(action).ok();
        });
    });
    group.bench_function("kube_rs/finalizer", |b| {
        b.to_async(&runtime).iter(|| async {
            let object = object.clone();
            let api: Api<ConfigMap> =
                Api::namespaced(client.clone(), &object.namespace().unwrap_or_default());
            let action = finalizer(&api, FINALIZER, object, |_event| async {
                Ok::<_, Never>(Action::await_change())
            })
            .await;
            black_box(action).ok();
        });
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
