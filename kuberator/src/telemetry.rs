//! OpenTelemetry export of the reconcile spans (feature `opentelemetry`).
//!
//! Every reconcile, cleanup and error handling runs in a `reconcile` span carrying `kind`,
//! `namespace`, `name`, `generation` and `reconcile_id`. With this feature, [`layer`] turns
//! those spans (and the handler's own spans and events inside them) into OpenTelemetry spans
//! sent through the user's tracer, and each reconcile span also records its `trace_id`, so a
//! log line can be looked up in the tracing backend.
//!
//! Kuberator brings the OpenTelemetry API only: the SDK, the exporter (OTLP, stdout, …) and the
//! resource attributes are the user's choice. The versions must match the ones kuberator is
//! built on, re-exported here as [`opentelemetry`] and [`tracing_opentelemetry`]; with
//! `opentelemetry_sdk = "0.33"` (and e.g. `opentelemetry-otlp = "0.33"` for an OTLP exporter):
//!
//! ```
//! use kuberator::telemetry::opentelemetry::trace::TracerProvider as _;
//! use opentelemetry_sdk::trace::SdkTracerProvider;
//! use tracing_subscriber::prelude::*;
//!
//! // A real operator adds its exporter here, e.g. `.with_batch_exporter(otlp_exporter)`.
//! let provider = SdkTracerProvider::builder().build();
//! tracing_subscriber::registry()
//!     .with(tracing_subscriber::EnvFilter::new("info"))
//!     .with(tracing_subscriber::fmt::layer())
//!     .with(kuberator::telemetry::layer(provider.tracer("my-operator")))
//!     .init();
//!
//! // … run the operator; each reconcile is now one trace …
//!
//! // Flush what is still buffered before the process exits.
//! provider.shutdown().expect("tracer provider shut down");
//! ```

use opentelemetry::trace::{TraceContextExt as _, TraceId, Tracer};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::registry::LookupSpan;

/// The OpenTelemetry API kuberator is built on (its `trace` feature).
pub use opentelemetry;
/// The bridge from `tracing` to OpenTelemetry kuberator is built on.
pub use tracing_opentelemetry;

/// A `tracing` layer that exports spans, among them every reconcile span, through `tracer`.
///
/// Add it to a `tracing_subscriber::registry()` beside the formatting layer (see the
/// [module example](self)). Spans below the subscriber's filter are not exported: with
/// `EnvFilter::new("info")` the reconcile spans (INFO) are.
pub fn layer<S, T>(tracer: T) -> OpenTelemetryLayer<S, T>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    T: Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer().with_tracer(tracer)
}

/// The OpenTelemetry trace id of the current span (inside a handler: its reconcile's), or
/// `None` when no [`layer`] exports it (no subscriber with the layer, or the span filtered out).
///
/// Useful to put into an event or an error message so it can be found in the tracing backend.
pub fn trace_id() -> Option<TraceId> {
    trace_id_of(&tracing::Span::current())
}

fn trace_id_of(span: &tracing::Span) -> Option<TraceId> {
    let id = span.context().span().span_context().trace_id();
    (id != TraceId::INVALID).then_some(id)
}

/// Records `span`'s trace id in its `trace_id` field, so log lines of the reconcile carry it.
pub(crate) fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id_of(span) {
        span.record("trace_id", tracing::field::display(id));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[test]
    fn the_reconcile_span_records_its_trace_id_and_handlers_see_it() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(layer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);
        let pod = k8s_openapi::api::core::v1::Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let span = crate::runtime::reconcile_span("Pod", &pod);
        let recorded = trace_id_of(&span).expect("a trace id under the layer");
        assert_eq!(span.in_scope(trace_id), Some(recorded));
        assert_eq!(trace_id(), None, "outside the span there is no trace");
        // A second reconcile is a second trace.
        let other = crate::runtime::reconcile_span("Pod", &pod);
        assert_ne!(trace_id_of(&other), Some(recorded));
    }

    #[test]
    fn without_the_layer_there_is_no_trace_id() {
        let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
        let span = tracing::info_span!("reconcile");
        assert_eq!(span.in_scope(trace_id), None);
    }
}
