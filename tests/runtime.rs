//! The runtime crate against a real API server: the finalizer lifecycle (namespaced and
//! cluster-scoped), status, bounded concurrency, no extra reconciles from status writes,
//! terminal errors, panics, malformed objects, owned children and graceful shutdown.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    core::object::HasStatus,
};
use kuberator::testing::TestEnv;
use serde_json::json;

use crate::support::*;

async fn env_with<R: TestKind>() -> TestEnv {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<R>().await.expect("CRD");
    env
}

fn start<R: TestKind>(env: &TestEnv, record: &Arc<Record>, limit: usize) -> Running {
    let client = env.client();
    let operator = Arc::new(TestOperator::<R>::new(client.clone(), record.clone()));
    Running::start(
        TestReconciler {
            api: kube::Api::all(client),
            operator,
        },
        limit,
    )
}

/// apply → finalizer added → handle_apply → status with observedGeneration; update → one more
/// apply; delete → handle_cleanup → finalizer removed → object gone.
async fn lifecycle<R: TestKind>() {
    let env = env_with::<R>().await;
    let record = Arc::new(Record::default());
    let running = start::<R>(&env, &record, 2);
    let api = api::<R>(env.client());

    api.create(&PostParams::default(), &R::build("one", 1, Mode::Ok))
        .await
        .unwrap();
    let applied = eventually("status of generation 1", || async {
        let o = api.get("one").await.ok()?;
        let status = o.status()?.clone();
        (status.observed_generation == Some(1)).then_some(o)
    })
    .await;
    assert_eq!(applied.finalizers(), [FINALIZER.to_owned()]);
    assert_eq!(applied.status().unwrap().applied_value, Some(1));
    assert_eq!(record.calls("one"), 1);

    let mut changed = applied.clone();
    changed.set_spec(2, Mode::Ok);
    changed.meta_mut().managed_fields = None;
    api.replace("one", &PostParams::default(), &changed)
        .await
        .unwrap();
    eventually("status of generation 2", || async {
        let status = api.get("one").await.ok()?.status()?.clone();
        (status.observed_generation == Some(2) && status.applied_value == Some(2)).then_some(())
    })
    .await;
    assert_eq!(record.calls("one"), 2, "one apply per generation");

    api.delete("one", &DeleteParams::default()).await.unwrap();
    eventually("object gone", || async {
        api.get_opt("one").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(record.cleanups(), 1);
    running.stop().await;
}

#[tokio::test]
async fn lifecycle_of_a_namespaced_resource() {
    lifecycle::<Widget>().await;
}

#[tokio::test]
async fn lifecycle_of_a_cluster_scoped_resource() {
    lifecycle::<Gizmo>().await;
}

/// N objects, limit L: peak in-flight ≤ L and > 1; sequential start: peak exactly 1. And exactly
/// N applies after the status writes settle (generation filtering).
#[tokio::test]
async fn concurrency_is_bounded_and_status_writes_cause_no_extra_reconcile() {
    let env = env_with::<Widget>().await;
    let api = api::<Widget>(env.client());
    const N: usize = 12;
    for (limit, round) in [(3, "c"), (1, "s")] {
        let record = Arc::new(Record::default());
        let running = start::<Widget>(&env, &record, limit);
        for i in 0..N {
            let name = format!("{round}{i}");
            api.create(&PostParams::default(), &Widget::build(&name, 1, Mode::Slow))
                .await
                .unwrap();
        }
        eventually("all statuses written", || async {
            let list = api.list(&Default::default()).await.ok()?;
            let done = list
                .items
                .iter()
                .filter(|o| o.name_any().starts_with(round))
                .filter(|o| o.status().and_then(|s| s.observed_generation) == Some(1))
                .count();
            (done == N).then_some(())
        })
        .await;
        // Let any event caused by the status writes and finalizer patches arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
        running.stop().await;
        assert_eq!(
            record.applies(),
            N,
            "exactly one apply per object (limit {limit})"
        );
        assert!(
            record.peak() <= limit,
            "peak {} > limit {limit}",
            record.peak()
        );
        if limit > 1 {
            assert!(
                record.peak() > 1,
                "limit {limit} but never more than one at once"
            );
        } else {
            assert_eq!(record.peak(), 1);
        }
        for i in 0..N {
            api.delete(&format!("{round}{i}"), &DeleteParams::default())
                .await
                .unwrap();
        }
    }
}

/// A retryable error lands in status and is retried; a terminal one lands in status and is not
/// retried until the spec changes.
#[tokio::test]
async fn errors_land_in_status_and_terminal_ones_wait_for_a_change() {
    let env = env_with::<Widget>().await;
    let record = Arc::new(Record::default());
    let running = start::<Widget>(&env, &record, 2);
    let api = api::<Widget>(env.client());

    api.create(
        &PostParams::default(),
        &Widget::build("flaky", 1, Mode::Fail),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &Widget::build("hopeless", 2, Mode::Terminal),
    )
    .await
    .unwrap();

    let flaky_error = eventually("retryable error in status", || async {
        api.get("flaky").await.ok()?.status()?.error.clone()
    })
    .await;
    assert_eq!(flaky_error.reason, "Failed");
    assert_eq!(flaky_error.message, "value 1 failed on purpose");
    eventually("retries of the retryable error", || async {
        (record.calls("flaky") >= 3).then_some(())
    })
    .await;

    let hopeless = eventually("terminal error in status", || async {
        let o = api.get("hopeless").await.ok()?;
        o.status()?.error.clone().map(|e| (o, e))
    })
    .await;
    assert_eq!(hopeless.1.reason, "Hopeless");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        record.calls("hopeless"),
        1,
        "a terminal error is not retried"
    );

    // A spec change is a new generation: reconciled again, now successfully.
    let patch = Patch::Merge(json!({ "spec": { "value": 3, "mode": "ok" } }));
    api.patch("hopeless", &PatchParams::default(), &patch)
        .await
        .unwrap();
    eventually("recovered after the spec change", || async {
        let status = api.get("hopeless").await.ok()?.status()?.clone();
        (status.applied_value == Some(3) && status.error.is_none()).then_some(())
    })
    .await;
    assert_eq!(record.calls("hopeless"), 2);
    running.stop().await;
}

/// A handler that panics on one object does not stop the others; a malformed object is skipped.
#[tokio::test]
async fn a_panic_or_a_malformed_object_does_not_stop_the_others() {
    init_tracing();
    let env = TestEnv::start().await.unwrap();
    // A looser schema than the Rust type: `value` may be a string.
    let dynamic = install_loosened_crd::<Widget>(&env).await;
    let client = env.client();
    dynamic
        .create(&PostParams::default(), &malformed::<Widget>("malformed"))
        .await
        .unwrap();

    let record = Arc::new(Record::default());
    let running = start::<Widget>(&env, &record, 2);
    let api = api::<Widget>(client);
    api.create(
        &PostParams::default(),
        &Widget::build("panics", 1, Mode::Panic),
    )
    .await
    .unwrap();
    api.create(&PostParams::default(), &Widget::build("fine", 2, Mode::Ok))
        .await
        .unwrap();
    eventually("the good object reconciled", || async {
        let status = api.get("fine").await.ok()?.status()?.clone();
        (status.applied_value == Some(2)).then_some(())
    })
    .await;
    let panic_error = eventually("the panic recorded in status", || async {
        api.get("panics").await.ok()?.status()?.error.clone()
    })
    .await;
    assert_eq!(panic_error.reason, "Panic");
    assert!(
        panic_error.message.contains("test panic on panics"),
        "{panic_error:?}"
    );
    assert_eq!(record.calls("malformed"), 0);
    // The loop is still alive: a new object is reconciled after the panic.
    api.create(&PostParams::default(), &Widget::build("after", 3, Mode::Ok))
        .await
        .unwrap();
    eventually("an object created after the panic", || async {
        let status = api.get("after").await.ok()?.status()?.clone();
        (status.applied_value == Some(3)).then_some(())
    })
    .await;
    running.stop().await;
}

/// Shutdown with a reconcile in flight: the loop returns only after the handler finished, and
/// no new reconcile starts.
#[tokio::test]
async fn shutdown_waits_for_the_reconcile_in_flight() {
    let env = env_with::<Widget>().await;
    let record = Arc::new(Record::default());
    let running = start::<Widget>(&env, &record, 1);
    let api = api::<Widget>(env.client());
    api.create(
        &PostParams::default(),
        &Widget::build("slow", 1, Mode::VerySlow),
    )
    .await
    .unwrap();
    eventually("the slow reconcile started", || async {
        (record.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    running.stop().await;
    assert_eq!(
        record.in_flight.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let status = api.get("slow").await.unwrap().status().cloned().unwrap();
    assert_eq!(
        status.applied_value,
        Some(1),
        "the in-flight reconcile finished its work"
    );
    // Nothing runs after shutdown.
    api.create(&PostParams::default(), &Widget::build("late", 1, Mode::Ok))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(record.calls("late"), 0);
}

/// Deleting an owned child re-triggers its owner, which recreates it.
#[tokio::test]
async fn deleting_an_owned_child_recreates_it() {
    let env = env_with::<Widget>().await;
    let record = Arc::new(Record::default());
    let client = env.client();
    let operator = Arc::new(TestOperator::<Widget>::new(client.clone(), record.clone()));
    let reconciler = OwnsReconciler(operator);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        kuberator::Operator::with_reconciler(client.clone(), reconciler)
            .owns::<ConfigMap>()
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    let api = api::<Widget>(client.clone());
    let children: Api<ConfigMap> = Api::namespaced(client, "default");
    api.create(
        &PostParams::default(),
        &Widget::build("parent", 7, Mode::Child),
    )
    .await
    .unwrap();
    let child = eventually("the child", || async {
        children.get_opt("parent").await.ok()?
    })
    .await;
    let first_uid = child.uid().unwrap();
    children
        .delete("parent", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually("the child recreated", || async {
        let c = children.get_opt("parent").await.ok()??;
        (c.uid().as_deref() != Some(first_uid.as_str())).then_some(c)
    })
    .await;
    assert_eq!(recreated.data.unwrap()["value"], "7");
    assert!(record.calls("parent") >= 2);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Drives a `Context` directly through `Operator` (the builder a `Reconcile` uses underneath).
pub struct OwnsReconciler(pub Arc<TestOperator<Widget>>);

#[async_trait::async_trait]
impl kuberator::Reconciler<Widget> for OwnsReconciler {
    async fn reconcile(&self, object: Arc<Widget>) -> kuberator::Result<kuberator::Action> {
        use kuberator::Context;
        self.0.handle_reconciliation(object).await
    }
}

/// A related (not owned) object re-triggers the primaries a mapper names.
#[tokio::test]
async fn a_related_object_retriggers_the_primary_its_mapper_names() {
    let env = env_with::<Widget>().await;
    let record = Arc::new(Record::default());
    let client = env.client();
    let operator = Arc::new(TestOperator::<Widget>::new(client.clone(), record.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        kuberator::Operator::with_reconciler(client.clone(), OwnsReconciler(operator))
            .watches::<ConfigMap, _, _>(|cm| {
                let widget = cm.name_any().strip_suffix("-input")?.to_owned();
                Some(kube::runtime::reflector::ObjectRef::new(&widget).within(&cm.namespace()?))
            })
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    let api = api::<Widget>(client.clone());
    api.create(
        &PostParams::default(),
        &Widget::build("listener", 1, Mode::Ok),
    )
    .await
    .unwrap();
    eventually("the first reconcile", || async {
        (record.calls("listener") == 1).then_some(())
    })
    .await;
    let inputs: Api<ConfigMap> = Api::namespaced(client, "default");
    let input = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("listener-input".into()),
            ..Default::default()
        },
        ..ConfigMap::default()
    };
    inputs.create(&PostParams::default(), &input).await.unwrap();
    eventually("a reconcile caused by the related ConfigMap", || async {
        (record.calls("listener") >= 2).then_some(())
    })
    .await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Objects that exist before the operator starts come from the initial list and are reconciled
/// once each.
#[tokio::test]
async fn objects_created_before_start_are_reconciled() {
    let env = env_with::<Widget>().await;
    let api = api::<Widget>(env.client());
    for i in 0..3 {
        api.create(
            &PostParams::default(),
            &Widget::build(&format!("early{i}"), i, Mode::Ok),
        )
        .await
        .unwrap();
    }
    let record = Arc::new(Record::default());
    let running = start::<Widget>(&env, &record, 2);
    // A reconcile is counted when it starts and its status written when it ends: wait for the
    // statuses.
    eventually("the early objects' statuses", || async {
        for i in 0..3 {
            let status = api.get(&format!("early{i}")).await.ok()?.status().cloned();
            (status.and_then(|s| s.applied_value) == Some(i)).then_some(())?;
        }
        Some(())
    })
    .await;
    assert_eq!(record.applies(), 3, "one reconcile each");
    running.stop().await;
}
