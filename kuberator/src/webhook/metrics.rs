//! The webhook server's metrics, in controller-runtime's names, registered into the manager's
//! [`Metrics`](crate::runtime::Metrics).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Unit,
};

use crate::runtime::Metrics;

/// Prometheus' default buckets, as controller-runtime uses for the webhook latency.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    webhook: String,
    code: String,
}

/// `controller_runtime_webhook_requests_total{webhook,code}`,
/// `controller_runtime_webhook_latency_seconds{webhook}`,
/// `controller_runtime_webhook_requests_in_flight{webhook}`, and the serving certificate's
/// `kuberator_webhook_certificate_changes_total` and
/// `kuberator_webhook_certificate_expiry_timestamp_seconds`.
#[derive(Clone)]
pub(crate) struct WebhookMetrics {
    requests: Family<CodeLabels, Counter>,
    latency: Family<WebhookLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<WebhookLabels, Gauge>,
    certificate_changes: Counter,
    certificate_expiry: Gauge,
}

impl WebhookMetrics {
    /// Fresh metrics, registered in `metrics` when given (else only counted), with the series of
    /// every path created at zero.
    pub(crate) fn new<'a>(
        metrics: Option<&Metrics>,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let this = WebhookMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
            in_flight: Family::default(),
            certificate_changes: Counter::default(),
            certificate_expiry: Gauge::default(),
        };
        if let Some(metrics) = metrics {
            let registered = this.clone();
            metrics.register(move |registry| {
                registry.register(
                    "controller_runtime_webhook_requests",
                    "Total number of admission requests by HTTP status code",
                    registered.requests,
                );
                registry.register_with_unit(
                    "controller_runtime_webhook_latency",
                    "Histogram of the latency of processing admission requests",
                    Unit::Seconds,
                    registered.latency,
                );
                registry.register(
                    "controller_runtime_webhook_requests_in_flight",
                    "Current number of admission requests being served",
                    registered.in_flight,
                );
                registry.register(
                    "kuberator_webhook_certificate_changes",
                    "Times the webhook server started serving a new certificate after its first",
                    registered.certificate_changes,
                );
                registry.register(
                    "kuberator_webhook_certificate_expiry_timestamp_seconds",
                    "When the served webhook certificate expires (Unix time)",
                    registered.certificate_expiry,
                );
            });
        }
        for path in paths {
            let labels = WebhookLabels {
                webhook: path.to_owned(),
            };
            drop(this.latency.get_or_create(&labels));
            drop(this.in_flight.get_or_create(&labels));
            drop(this.requests.get_or_create(&CodeLabels {
                webhook: path.to_owned(),
                code: "200".to_owned(),
            }));
        }
        this
    }

    /// Counts one request in flight until the guard is dropped.
    pub(crate) fn start(&self, webhook: &str) -> InFlight {
        let gauge = self
            .in_flight
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
            })
            .clone();
        gauge.inc();
        InFlight(gauge)
    }

    /// Records a finished request.
    pub(crate) fn finished(&self, webhook: &str, code: u16, took: Duration) {
        self.requests
            .get_or_create(&CodeLabels {
                webhook: webhook.to_owned(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A new serving certificate is served (`first`: the one of the start).
    pub(crate) fn certificate(&self, first: bool, expires_unix: i64) {
        if !first {
            self.certificate_changes.inc();
        }
        self.certificate_expiry.set(expires_unix);
    }
}

/// Decrements the in-flight gauge when dropped.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
