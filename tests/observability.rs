//! What an operator's logs say: a handler's own lines carry the object (kind, namespace, name,
//! generation, reconcile id), a failed reconcile names it, and the control plane starts without
//! ERROR or WARN lines under `RUST_LOG=info`.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use kube::api::PostParams;
use kuberator::{
    Action, Error, Operator, Reconciler, Result,
    testing::{TestEnv, background},
};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::*;

/// Log lines written to memory, for assertions.
#[derive(Clone, Default)]
pub struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures everything at `filter` logged on this thread until the guard drops (tests run on
    /// the current-thread runtime, so the operator's tasks log here too).
    pub fn install(filter: &str) -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .without_time()
            .with_writer(logs.clone())
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (logs, guard)
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lines at ERROR or WARN level.
    pub fn errors_and_warnings(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| {
                let l = l.trim_start();
                l.starts_with("ERROR") || l.starts_with("WARN")
            })
            .collect()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLogs {
    type Writer = CapturedLogs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Logs one line per reconcile, and fails for `Mode::Fail`.
struct Chatty;

#[async_trait::async_trait]
impl Reconciler<Widget> for Chatty {
    async fn reconcile(&self, widget: Arc<Widget>) -> Result<Action> {
        tracing::info!(value = widget.spec.value, "handler says hello");
        if widget.spec.mode == Mode::Fail {
            return Err(Error::Anyhow(anyhow::anyhow!("the test asked to fail")));
        }
        Ok(Action::await_change())
    }
}

#[tokio::test]
async fn control_plane_starts_without_errors_or_warnings_at_info() {
    let (logs, _guard) = CapturedLogs::install("info");
    let env = TestEnv::builder()
        .controller_manager(true)
        .crd::<Widget>()
        .start()
        .await
        .expect("control plane");
    drop(env);
    assert_eq!(
        logs.errors_and_warnings(),
        Vec::<String>::new(),
        "all lines:\n{}",
        logs.lines().join("\n")
    );
}

#[tokio::test]
async fn handler_lines_carry_the_object_and_errors_name_it() {
    let (logs, _guard) = CapturedLogs::install("info");
    let env = TestEnv::builder()
        .crd::<Widget>()
        .start()
        .await
        .expect("control plane");
    let operator = Operator::with_reconciler(env.client(), Chatty);
    let running = background(|stop| operator.shutdown_on(stop).run());
    let api = api::<Widget>(env.client());
    for (name, mode) in [("traced", Mode::Ok), ("broken", Mode::Fail)] {
        api.create(&PostParams::default(), &Widget::build(name, 7, mode))
            .await
            .unwrap();
    }
    let (hello, failed) = eventually("the handler's lines and the failure", || async {
        let lines = logs.lines();
        let hello = lines
            .iter()
            .find(|l| l.contains("handler says hello") && l.contains("name=traced"))?
            .clone();
        let failed = lines
            .iter()
            .find(|l| l.contains("reconcile failed"))?
            .clone();
        Some((hello, failed))
    })
    .await;
    for field in [
        "kind=Widget",
        "namespace=default",
        "name=traced",
        "generation=1",
        "reconcile_id=",
    ] {
        assert!(hello.contains(field), "{field} missing in {hello:?}");
    }
    for field in ["namespace=default", "name=broken", "the test asked to fail"] {
        assert!(failed.contains(field), "{field} missing in {failed:?}");
    }
    running.stop().await.unwrap().unwrap();
}

/// With the `opentelemetry` feature, a real operator's reconcile is exported as a `reconcile`
/// span carrying the object's kind, namespace, name and generation, and the handler's log line
/// carries that span's trace id.
#[cfg(feature = "opentelemetry")]
#[tokio::test]
async fn reconcile_spans_are_exported_with_the_object_and_trace_id() {
    use kuberator::telemetry::opentelemetry::{Value, trace::TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::prelude::*;

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let logs = CapturedLogs::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_writer(logs.clone()),
        )
        .with(kuberator::telemetry::layer(
            provider.tracer("kuberator-tests"),
        ));
    let _guard = tracing::subscriber::set_default(subscriber);

    let env = TestEnv::builder()
        .crd::<Widget>()
        .start()
        .await
        .expect("control plane");
    let operator = Operator::with_reconciler(env.client(), Chatty);
    let running = background(|stop| operator.shutdown_on(stop).run());
    api::<Widget>(env.client())
        .create(
            &PostParams::default(),
            &Widget::build("exported", 7, Mode::Ok),
        )
        .await
        .unwrap();

    let attribute = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.clone())
    };
    let span = eventually("the exported reconcile span", || async {
        exporter
            .get_finished_spans()
            .unwrap()
            .into_iter()
            .find(|span| {
                span.name == "reconcile"
                    && attribute(span, "name") == Some(Value::from("exported".to_owned()))
            })
    })
    .await;
    assert_eq!(
        attribute(&span, "kind"),
        Some(Value::from("Widget".to_owned()))
    );
    assert_eq!(
        attribute(&span, "namespace"),
        Some(Value::from("default".to_owned()))
    );
    assert_eq!(attribute(&span, "generation"), Some(Value::I64(1)));
    assert!(attribute(&span, "reconcile_id").is_some(), "{span:?}");
    let trace_id = span.span_context.trace_id().to_string();
    assert_eq!(
        attribute(&span, "trace_id"),
        Some(Value::from(trace_id.clone())),
        "{span:?}"
    );
    let hello = logs
        .lines()
        .into_iter()
        .find(|l| l.contains("handler says hello") && l.contains("name=exported"))
        .expect("the handler's line");
    assert!(
        hello.contains(&format!("trace_id={trace_id}")),
        "{trace_id} missing in {hello:?}"
    );

    running.stop().await.unwrap().unwrap();
    provider.shutdown().unwrap();
}
