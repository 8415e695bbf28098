//! Shared fixtures: a namespaced and a cluster-scoped test CRD with the same spec and status, a
//! hand-written operator that records what it was asked to do, and polling helpers.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, CustomResource, CustomResourceExt, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ObjectMeta},
    core::object::HasStatus,
    runtime::watcher,
};
use kuberator::{
    Action, Context, Finalize, K8sRepository, ObserveGeneration, Reconcile, StaticApiProvider,
    StatusError, cache::ApiScope, finalize::Object,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub const FINALIZER: &str = "test.kuberator.dev/cleanup";
pub const WAIT: Duration = Duration::from_secs(60);

/// What the test handler does with an object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// Write status and succeed.
    #[default]
    Ok,
    /// Fail with a retryable error.
    Fail,
    /// Fail with a terminal error.
    Terminal,
    /// Panic.
    Panic,
    /// Sleep 300 ms, then succeed.
    Slow,
    /// Sleep 2 s, then succeed.
    VerySlow,
    /// Create an owned ConfigMap named after the object.
    Child,
}

/// The status both test kinds share.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct TestStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    pub applied_value: Option<i32>,
}

/// A namespaced test resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.kuberator.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "TestStatus"
)]
pub struct WidgetSpec {
    pub value: i32,
    #[serde(default)]
    pub mode: Mode,
}

/// A cluster-scoped test resource.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "test.kuberator.dev",
    version = "v1",
    kind = "Gizmo",
    status = "TestStatus"
)]
pub struct GizmoSpec {
    pub value: i32,
    #[serde(default)]
    pub mode: Mode,
}

/// What the tests need of either kind.
pub trait TestKind:
    Object + HasStatus<Status = TestStatus> + CustomResourceExt + Resource<Scope: ApiScope>
{
    fn build(name: &str, value: i32, mode: Mode) -> Self;
    fn value(&self) -> i32;
    fn mode(&self) -> &Mode;
    fn set_spec(&mut self, value: i32, mode: Mode);
}

macro_rules! test_kind {
    ($kind:ident, $spec:ident) => {
        impl TestKind for $kind {
            fn build(name: &str, value: i32, mode: Mode) -> Self {
                $kind::new(name, $spec { value, mode })
            }
            fn value(&self) -> i32 {
                self.spec.value
            }
            fn mode(&self) -> &Mode {
                &self.spec.mode
            }
            fn set_spec(&mut self, value: i32, mode: Mode) {
                self.spec = $spec { value, mode };
            }
        }
    };
}
test_kind!(Widget, WidgetSpec);
test_kind!(Gizmo, GizmoSpec);

/// A classified user error, written by hand (the derive has its own tests).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("value {0} failed on purpose")]
    Failed(i32),
    #[error("value {0} can never work")]
    Hopeless(i32),
}

impl kuberator::ClassifyError for TestError {
    fn retry_policy(&self) -> kuberator::RetryPolicy {
        match self {
            TestError::Failed(_) => kuberator::RetryPolicy::Backoff,
            TestError::Hopeless(_) => kuberator::RetryPolicy::Terminal,
        }
    }
    fn reason(&self) -> std::borrow::Cow<'static, str> {
        match self {
            TestError::Failed(_) => "Failed".into(),
            TestError::Hopeless(_) => "Hopeless".into(),
        }
    }
}

/// Counts of what the handler did.
#[derive(Default)]
pub struct Record {
    pub applies: AtomicUsize,
    pub cleanups: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
    pub per_object: Mutex<HashMap<String, usize>>,
    pub errors_seen: AtomicUsize,
}

impl Record {
    pub fn applies(&self) -> usize {
        self.applies.load(Ordering::SeqCst)
    }
    pub fn cleanups(&self) -> usize {
        self.cleanups.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn calls(&self, name: &str) -> usize {
        self.per_object
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// The hand-written operator: `Context` over the generic repository.
pub struct TestOperator<R: TestKind> {
    pub repository: Arc<K8sRepository<R>>,
    pub record: Arc<Record>,
    pub finalizer: Option<&'static str>,
}

impl<R: TestKind> TestOperator<R> {
    pub fn new(client: kube::Client, record: Arc<Record>) -> Self {
        let provider = StaticApiProvider::new(
            client.clone(),
            std::iter::empty::<String>(),
            kuberator::CachingStrategy::Extendable,
        );
        Self {
            repository: Arc::new(K8sRepository::new(client, provider, "kuberator-tests")),
            record,
            finalizer: Some(FINALIZER),
        }
    }
}

#[async_trait]
impl<R: TestKind> Context<R, K8sRepository<R>, StaticApiProvider<R>> for TestOperator<R> {
    fn k8s_repository(&self) -> Arc<K8sRepository<R>> {
        self.repository.clone()
    }

    fn finalizer(&self) -> Option<&'static str> {
        self.finalizer
    }

    async fn handle_apply(&self, object: Arc<R>) -> kuberator::Result<Action> {
        let record = &self.record;
        record.applies.fetch_add(1, Ordering::SeqCst);
        *record
            .per_object
            .lock()
            .unwrap()
            .entry(object.name_any())
            .or_default() += 1;
        let now = record.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        record.peak.fetch_max(now, Ordering::SeqCst);
        let result = self.work(&object).await;
        record.in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn handle_cleanup(&self, _object: Arc<R>) -> kuberator::Result<Action> {
        self.record.cleanups.fetch_add(1, Ordering::SeqCst);
        Ok(Action::await_change())
    }

    async fn handle_error(&self, object: Arc<R>, error: &kuberator::Error) {
        self.record.errors_seen.fetch_add(1, Ordering::SeqCst);
        let status = object.status().cloned().unwrap_or_default();
        // User errors go through `AsStatusError`; anything else (a panic, an API error) through
        // the runtime's `RecordError`.
        let result = match error.downcast_ref::<TestError>() {
            Some(user_error) => {
                self.repository
                    .update_status_with_error(object.as_ref(), status, Some(&AsStatus(user_error)))
                    .await
            }
            None => {
                self.repository
                    .record_error(object.as_ref(), Some(error))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot write status");
        }
    }
}

/// Adapts the test error to the `AsStatusError` trait by hand.
pub struct AsStatus<'a>(pub &'a TestError);

impl kuberator::AsStatusError<StatusError> for AsStatus<'_> {
    fn as_status_error(&self) -> StatusError {
        use kuberator::ClassifyError;
        StatusError {
            reason: self.0.reason().into_owned(),
            message: self.0.to_string(),
        }
    }
}

impl<R: TestKind> TestOperator<R> {
    async fn work(&self, object: &Arc<R>) -> kuberator::Result<Action> {
        match object.mode().clone() {
            Mode::Fail => return Err(kuberator::Error::handler(TestError::Failed(object.value()))),
            Mode::Terminal => {
                return Err(kuberator::Error::handler(TestError::Hopeless(
                    object.value(),
                )));
            }
            Mode::Panic => panic!("test panic on {}", object.name_any()),
            Mode::Slow => tokio::time::sleep(Duration::from_millis(300)).await,
            Mode::VerySlow => tokio::time::sleep(Duration::from_secs(2)).await,
            Mode::Child => {
                let api: Api<ConfigMap> = Api::namespaced(
                    self.repository.client().clone(),
                    &object.namespace().unwrap(),
                );
                let mut child = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(object.name_any()),
                        owner_references: Some(vec![object.controller_owner_ref(&()).unwrap()]),
                        ..ObjectMeta::default()
                    },
                    data: Some([("value".to_owned(), object.value().to_string())].into()),
                    ..ConfigMap::default()
                };
                child.metadata.namespace = object.namespace();
                api.patch(
                    &object.name_any(),
                    &kube::api::PatchParams::apply("kuberator-tests").force(),
                    &kube::api::Patch::Apply(&serde_json::json!({
                        "apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": child.metadata, "data": child.data,
                    })),
                )
                .await
                .map_err(|e| {
                    kuberator::Error::kube(
                        "applying child",
                        kuberator::ObjectKey::of(object.as_ref()),
                        e,
                    )
                })?;
            }
            Mode::Ok => {}
        }
        let status = TestStatus {
            applied_value: Some(object.value()),
            ..TestStatus::default()
        };
        self.repository
            .update_status(object.as_ref(), status)
            .await?;
        Ok(Action::await_change())
    }
}

/// The `Reconcile` side: where to watch.
pub struct TestReconciler<R: TestKind> {
    pub api: Api<R>,
    pub operator: Arc<TestOperator<R>>,
}

impl<R: TestKind> Reconcile<R, TestOperator<R>, K8sRepository<R>, StaticApiProvider<R>>
    for TestReconciler<R>
{
    fn destruct(self) -> (Api<R>, watcher::Config, Arc<TestOperator<R>>) {
        (self.api, watcher::Config::default(), self.operator)
    }
}

/// A running controller and the means to stop it.
pub struct Running {
    pub stop: Option<oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts `reconciler` with `limit` concurrent reconciles.
    pub fn start<R: TestKind>(reconciler: TestReconciler<R>, limit: usize) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            reconciler
                .start_concurrent(Some(limit), Some(shutdown))
                .await;
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the loop to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("controller did not stop in time")
            .expect("controller task failed");
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `WAIT` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `Api<R>` in `default` for namespaced kinds, cluster-wide otherwise.
pub fn api<R: TestKind>(client: kube::Client) -> Api<R> {
    <R::Scope as ApiScope>::api(client, Some("default"))
}

/// Installs a tracing subscriber once (honours `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Installs `K`'s CRD with `spec.value` loosened to int-or-string, so that objects the Rust type
/// cannot decode (a string there) can be stored; returns the untyped API to write them in
/// `default`.
pub async fn install_loosened_crd<K>(env: &kuberator::testing::TestEnv) -> Api<DynamicObject>
where
    K: CustomResourceExt + Resource<DynamicType = ()>,
{
    let mut crd = K::crd();
    let schema = crd.spec.versions[0].schema.as_mut().unwrap();
    let spec = schema
        .open_api_v3_schema
        .as_mut()
        .unwrap()
        .properties
        .as_mut()
        .unwrap()
        .get_mut("spec")
        .unwrap();
    spec.properties.as_mut().unwrap().insert(
        "value".into(),
        serde_json::from_value(serde_json::json!({ "x-kubernetes-int-or-string": true })).unwrap(),
    );
    env.install_crd_value(crd).await.unwrap();
    Api::namespaced_with(env.client(), "default", &ApiResource::erase::<K>(&()))
}

/// An object of `K` named `name` whose `spec.value` is a string: stored by the loosened CRD,
/// undecodable into `K`.
pub fn malformed<K: Resource<DynamicType = ()>>(name: &str) -> DynamicObject {
    serde_json::from_value(serde_json::json!({
        "apiVersion": K::api_version(&()), "kind": K::kind(&()),
        "metadata": { "name": name },
        "spec": { "value": "not-a-number" }
    }))
    .unwrap()
}

/// The log lines of this thread (what a `current_thread` test runtime and the operator tasks it
/// runs write), captured in memory with `filter` until the guard is dropped.
pub struct CapturedLogs {
    buffer: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl CapturedLogs {
    pub fn start(filter: &str) -> Self {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .finish();
        CapturedLogs {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        let bytes = self.buffer.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
