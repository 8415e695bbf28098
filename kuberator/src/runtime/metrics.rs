//! Prometheus metrics under controller-runtime's names, so existing dashboards and alerts work.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use kube::runtime::controller::Action;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::error::{Error, RetryPolicy};

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// controller-runtime's buckets for `controller_runtime_reconcile_time_seconds`.
const RECONCILE_TIME_BUCKETS: [f64; 40] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9,
    1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0,
    25.0, 30.0, 40.0, 50.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    controller: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

type HistogramFamily = Family<ControllerLabels, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Mutex<Registry>,
    reconcile_total: Family<ResultLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    terminal_errors: Family<ControllerLabels, Counter>,
    panics: Family<ControllerLabels, Counter>,
    timeouts: Family<ControllerLabels, Counter>,
    cancelled: Family<ControllerLabels, Counter>,
    undecodable: Family<ControllerLabels, Counter>,
    reconcile_time: HistogramFamily,
    max_concurrent: Family<ControllerLabels, Gauge>,
    active_workers: Family<ControllerLabels, Gauge>,
    workqueue_depth: Family<NameLabels, Gauge>,
    leader_status: Family<NameLabels, Gauge>,
}

/// The operator's metrics: a prometheus-client [`Registry`] holding controller-runtime's
/// controller, workqueue and leader-election metrics. Cheap to clone (one `Arc`).
///
/// | metric | labels |
/// |---|---|
/// | `controller_runtime_reconcile_total` (counter) | `controller`, `result` = `success` \| `error` \| `requeue` \| `requeue_after` |
/// | `controller_runtime_reconcile_errors_total` (counter) | `controller`, `reason` ([`Error::reason`]: bounded) |
/// | `controller_runtime_terminal_reconcile_errors_total` (counter) | `controller` |
/// | `controller_runtime_reconcile_panics_total` (counter) | `controller` |
/// | `controller_runtime_reconcile_timeouts_total` (counter: cancelled at the reconcile timeout) | `controller` |
/// | `kuberator_shutdown_cancelled_reconciles_total` (counter: cancelled at the shutdown deadline) | `controller` |
/// | `controller_runtime_reconcile_time_seconds` (histogram, controller-runtime's buckets) | `controller` |
/// | `controller_runtime_max_concurrent_reconciles` (gauge) | `controller` |
/// | `controller_runtime_active_workers` (gauge) | `controller` |
/// | `workqueue_depth` (gauge: objects waiting for a reconcile slot) | `name` |
/// | `leader_election_master_status` (gauge: 1 leader, 0 not) | `name` (the lease) |
///
/// ```
/// use kuberator::{Action, runtime::Metrics};
///
/// let metrics = Metrics::new();
/// let websites = metrics.controller("websites");
/// websites.set_max_concurrent_reconciles(4);
/// let timer = websites.reconcile_started();
/// // … the reconcile …
/// timer.finish(&Ok(Action::await_change()));
/// let text = metrics.encode();
/// assert!(text.contains(r#"controller_runtime_reconcile_total{controller="websites",result="success"} 1"#));
/// ```
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with kuberator's metrics registered (and no series until used).
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// Registers kuberator's metrics into `registry` (which may already hold the user's).
    pub fn with_registry(mut registry: Registry) -> Self {
        let reconcile_total = Family::<ResultLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let terminal_errors = Family::<ControllerLabels, Counter>::default();
        let panics = Family::<ControllerLabels, Counter>::default();
        let timeouts = Family::<ControllerLabels, Counter>::default();
        let cancelled = Family::<ControllerLabels, Counter>::default();
        let undecodable = Family::<ControllerLabels, Counter>::default();
        let reconcile_time: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(RECONCILE_TIME_BUCKETS));
        let max_concurrent = Family::<ControllerLabels, Gauge>::default();
        let active_workers = Family::<ControllerLabels, Gauge>::default();
        let workqueue_depth = Family::<NameLabels, Gauge>::default();
        let leader_status = Family::<NameLabels, Gauge>::default();
        // Counter names get `_total` and unit names `_seconds` appended while encoding.
        registry.register(
            "controller_runtime_reconcile",
            "Total number of reconciliations per controller",
            reconcile_total.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_errors",
            "Total number of reconciliation errors per controller",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_runtime_terminal_reconcile_errors",
            "Total number of terminal reconciliation errors per controller",
            terminal_errors.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_panics",
            "Total number of reconciliation panics per controller",
            panics.clone(),
        );
        registry.register(
            "controller_runtime_reconcile_timeouts",
            "Total number of reconciliations cancelled at the reconcile timeout per controller",
            timeouts.clone(),
        );
        registry.register(
            "kuberator_shutdown_cancelled_reconciles",
            "Total number of reconciliations cancelled at the shutdown deadline per controller",
            cancelled.clone(),
        );
        registry.register(
            "kuberator_undecodable_objects",
            "Total number of watched objects that did not decode into the controller's type (left out of its cache) per controller",
            undecodable.clone(),
        );
        registry.register_with_unit(
            "controller_runtime_reconcile_time",
            "Length of time per reconciliation per controller",
            Unit::Seconds,
            reconcile_time.clone(),
        );
        registry.register(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            max_concurrent.clone(),
        );
        registry.register(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            active_workers.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            workqueue_depth.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease",
            leader_status.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                reconcile_total,
                reconcile_errors,
                terminal_errors,
                panics,
                timeouts,
                cancelled,
                undecodable,
                reconcile_time,
                max_concurrent,
                active_workers,
                workqueue_depth,
                leader_status,
            }),
        }
    }

    /// Registers the user's own metrics in the same registry, so `/metrics` serves them too.
    ///
    /// ```
    /// use prometheus_client::metrics::counter::Counter;
    /// let metrics = kuberator::runtime::Metrics::new();
    /// let deployed: Counter = Counter::default();
    /// metrics.register(|registry| {
    ///     registry.register("websites_deployed", "Websites deployed", deployed.clone())
    /// });
    /// deployed.inc();
    /// assert!(metrics.encode().contains("websites_deployed_total 1"));
    /// ```
    pub fn register(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        register(&mut registry);
    }

    /// The metrics of one controller (the `controller` label), with its series created at zero
    /// so that dashboards see them before the first reconcile.
    pub fn controller(&self, name: impl Into<String>) -> ControllerMetrics {
        let name = name.into();
        let labels = ControllerLabels {
            controller: name.clone(),
        };
        let inner = &self.inner;
        for result in [
            ReconcileResult::Success,
            ReconcileResult::Error,
            ReconcileResult::Requeue,
            ReconcileResult::RequeueAfter,
        ] {
            touch(&inner.reconcile_total, &result_labels(&name, result));
        }
        touch(&inner.terminal_errors, &labels);
        touch(&inner.panics, &labels);
        touch(&inner.timeouts, &labels);
        touch(&inner.cancelled, &labels);
        touch(&inner.undecodable, &labels);
        touch(&inner.reconcile_time, &labels);
        touch(&inner.max_concurrent, &labels);
        touch(&inner.active_workers, &labels);
        touch(&inner.workqueue_depth, &NameLabels { name });
        ControllerMetrics {
            metrics: self.clone(),
            labels,
        }
    }

    /// Sets `leader_election_master_status{name=lease}` to 1 (leader) or 0 (standby).
    pub fn set_leader(&self, lease: &str, is_leader: bool) {
        self.inner
            .leader_status
            .get_or_create(&NameLabels {
                name: lease.to_owned(),
            })
            .set(i64::from(is_leader));
    }

    /// Everything in the registry as OpenMetrics text (ends with `# EOF`); serve it with
    /// [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            // Only a failing `fmt::Write`, which a `String` never is.
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }
}

/// The `result` label of `controller_runtime_reconcile_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileResult {
    /// `success`: done, wait for a change.
    Success,
    /// `error`: the reconcile failed.
    Error,
    /// `requeue`: done, run again right away.
    Requeue,
    /// `requeue_after`: done, run again after a delay.
    RequeueAfter,
}

impl ReconcileResult {
    /// Classifies a reconcile's outcome as controller-runtime does.
    pub fn of(outcome: &Result<Action, Error>) -> Self {
        match outcome {
            Err(_) => ReconcileResult::Error,
            Ok(action) if *action == Action::await_change() => ReconcileResult::Success,
            Ok(action) if *action == Action::requeue(Duration::ZERO) => ReconcileResult::Requeue,
            Ok(_) => ReconcileResult::RequeueAfter,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Success => "success",
            ReconcileResult::Error => "error",
            ReconcileResult::Requeue => "requeue",
            ReconcileResult::RequeueAfter => "requeue_after",
        }
    }
}

/// Creates the series for `labels` (at zero) without changing it.
fn touch<S, M, C>(family: &Family<S, M, C>, labels: &S)
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    drop(family.get_or_create(labels));
}

fn result_labels(controller: &str, result: ReconcileResult) -> ResultLabels {
    ResultLabels {
        controller: controller.to_owned(),
        result: result.as_str(),
    }
}

/// One controller's metrics, from [`Metrics::controller`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ControllerMetrics {
    metrics: Metrics,
    labels: ControllerLabels,
}

impl ControllerMetrics {
    /// The `controller` label.
    pub fn name(&self) -> &str {
        &self.labels.controller
    }

    /// Sets `controller_runtime_max_concurrent_reconciles`.
    pub fn set_max_concurrent_reconciles(&self, limit: u16) {
        self.metrics
            .inner
            .max_concurrent
            .get_or_create(&self.labels)
            .set(i64::from(limit));
    }

    /// Counts `count` reconciles cancelled at the shutdown deadline.
    pub fn shutdown_cancelled(&self, count: u64) {
        self.metrics
            .inner
            .cancelled
            .get_or_create(&self.labels)
            .inc_by(count);
    }

    /// Counts one watched object that did not decode (`kuberator_undecodable_objects_total`).
    pub fn undecodable(&self) {
        self.metrics
            .inner
            .undecodable
            .get_or_create(&self.labels)
            .inc();
    }

    /// An object is waiting for a reconcile slot: `workqueue_depth` goes up until the guard is
    /// dropped.
    pub fn queued(&self) -> QueuedGuard {
        let gauge = self
            .metrics
            .inner
            .workqueue_depth
            .get_or_create_owned(&NameLabels {
                name: self.labels.controller.clone(),
            });
        gauge.inc();
        QueuedGuard { gauge }
    }

    /// A reconcile starts: `controller_runtime_active_workers` goes up until the timer is
    /// finished or dropped (a cancelled reconcile records nothing else).
    pub fn reconcile_started(&self) -> ReconcileTimer {
        let active = self
            .metrics
            .inner
            .active_workers
            .get_or_create_owned(&self.labels);
        active.inc();
        ReconcileTimer {
            controller: self.clone(),
            active,
            started: Instant::now(),
        }
    }

    /// Records a finished reconcile that took `duration`: the result counter, the error
    /// counters (by [`Error::reason`]; terminal errors and panics also on their own) and the
    /// time histogram.
    pub fn reconcile_finished(&self, outcome: &Result<Action, Error>, duration: Duration) {
        let inner = &self.metrics.inner;
        let result = ReconcileResult::of(outcome);
        inner
            .reconcile_total
            .get_or_create(&result_labels(&self.labels.controller, result))
            .inc();
        if let Err(error) = outcome {
            inner
                .reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller: self.labels.controller.clone(),
                    reason: error.reason().into_owned(),
                })
                .inc();
            if error.retry_policy() == RetryPolicy::Terminal {
                inner.terminal_errors.get_or_create(&self.labels).inc();
            }
            if matches!(error, Error::Panic { .. }) {
                inner.panics.get_or_create(&self.labels).inc();
            }
            if matches!(error, Error::ReconcileTimeout { .. }) {
                inner.timeouts.get_or_create(&self.labels).inc();
            }
        }
        inner
            .reconcile_time
            .get_or_create(&self.labels)
            .observe(duration.as_secs_f64());
    }
}

/// Keeps `workqueue_depth` raised while alive; see [`ControllerMetrics::queued`].
#[derive(Debug)]
#[must_use = "the depth goes down again when the guard is dropped"]
pub struct QueuedGuard {
    gauge: Gauge,
}

impl Drop for QueuedGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// A running reconcile; see [`ControllerMetrics::reconcile_started`].
#[derive(Debug)]
#[must_use = "call `finish` with the reconcile's result"]
pub struct ReconcileTimer {
    controller: ControllerMetrics,
    active: Gauge,
    started: Instant,
}

impl ReconcileTimer {
    /// Records the outcome and the time since the start.
    pub fn finish(self, outcome: &Result<Action, Error>) {
        self.controller
            .reconcile_finished(outcome, self.started.elapsed());
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::error::{ClassifyError, ObjectKey};

    #[derive(Debug, thiserror::Error)]
    #[error("image is empty")]
    struct EmptyImage;

    impl ClassifyError for EmptyImage {
        fn retry_policy(&self) -> RetryPolicy {
            RetryPolicy::Terminal
        }
        fn reason(&self) -> Cow<'static, str> {
            "EmptyImage".into()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("registry down")]
    struct RegistryDown;

    impl ClassifyError for RegistryDown {
        fn reason(&self) -> Cow<'static, str> {
            "RegistryDown".into()
        }
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    fn has(text: &str, line: &str) {
        assert!(lines(text).contains(&line), "missing `{line}` in:\n{text}");
    }

    #[test]
    fn series_exist_at_zero_once_a_controller_is_known() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(!text.contains("websites"), "no series before use:\n{text}");
        assert!(text.ends_with("# EOF\n"));

        metrics.controller("websites");
        let text = metrics.encode();
        for result in ["success", "error", "requeue", "requeue_after"] {
            has(
                &text,
                &format!(
                    r#"controller_runtime_reconcile_total{{controller="websites",result="{result}"}} 0"#
                ),
            );
        }
        has(
            &text,
            r#"controller_runtime_terminal_reconcile_errors_total{controller="websites"} 0"#,
        );
        has(
            &text,
            r#"controller_runtime_active_workers{controller="websites"} 0"#,
        );
        has(&text, r#"workqueue_depth{name="websites"} 0"#);
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_count{controller="websites"} 0"#,
        );
        has(
            &text,
            "# TYPE controller_runtime_reconcile_time_seconds histogram",
        );
        has(
            &text,
            "# UNIT controller_runtime_reconcile_time_seconds seconds",
        );
        // OpenMetrics names a counter family without `_total`.
        has(&text, "# TYPE controller_runtime_reconcile counter");
    }

    #[test]
    fn outcomes_are_counted_by_result_and_reason() {
        let metrics = Metrics::new();
        let c = metrics.controller("websites");
        let ms = Duration::from_millis;
        c.reconcile_finished(&Ok(Action::await_change()), ms(20));
        c.reconcile_finished(&Ok(Action::await_change()), ms(30));
        c.reconcile_finished(&Ok(Action::requeue(Duration::ZERO)), ms(1));
        c.reconcile_finished(&Ok(Action::requeue(Duration::from_secs(60))), ms(1));
        c.reconcile_finished(&Err(Error::handler(EmptyImage)), ms(1));
        c.reconcile_finished(&Err(Error::handler(RegistryDown)), ms(1));
        c.reconcile_finished(&Err(Error::handler(RegistryDown)), ms(2_000));
        c.reconcile_finished(
            &Err(Error::Panic {
                object: ObjectKey::default(),
                message: "boom".into(),
            }),
            ms(1),
        );
        let text = metrics.encode();
        let total = |result: &str, n: u32| {
            has(
                &text,
                &format!(
                    r#"controller_runtime_reconcile_total{{controller="websites",result="{result}"}} {n}"#
                ),
            );
        };
        total("success", 2);
        total("requeue", 1);
        total("requeue_after", 1);
        total("error", 4);
        has(
            &text,
            r#"controller_runtime_reconcile_errors_total{controller="websites",reason="EmptyImage"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_errors_total{controller="websites",reason="RegistryDown"} 2"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_errors_total{controller="websites",reason="Panic"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_terminal_reconcile_errors_total{controller="websites"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_panics_total{controller="websites"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_count{controller="websites"} 8"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="0.005",controller="websites"} 5"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="0.025",controller="websites"} 6"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="1.75",controller="websites"} 7"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_bucket{le="2.0",controller="websites"} 8"#,
        );
    }

    #[test]
    fn workers_and_queue_depth_follow_guards() {
        let metrics = Metrics::new();
        let c = metrics.controller("websites");
        c.set_max_concurrent_reconciles(8);
        let waiting = [c.queued(), c.queued(), c.queued()];
        let first = c.reconcile_started();
        let second = c.reconcile_started();
        let text = metrics.encode();
        has(
            &text,
            r#"controller_runtime_max_concurrent_reconciles{controller="websites"} 8"#,
        );
        has(&text, r#"workqueue_depth{name="websites"} 3"#);
        has(
            &text,
            r#"controller_runtime_active_workers{controller="websites"} 2"#,
        );

        drop(waiting);
        first.finish(&Ok(Action::await_change()));
        drop(second); // cancelled: no result recorded
        let text = metrics.encode();
        has(&text, r#"workqueue_depth{name="websites"} 0"#);
        has(
            &text,
            r#"controller_runtime_active_workers{controller="websites"} 0"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_total{controller="websites",result="success"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_time_seconds_count{controller="websites"} 1"#,
        );
    }

    #[test]
    fn leader_status_and_user_metrics() {
        let metrics = Metrics::new();
        metrics.set_leader("websites-lock", true);
        has(
            &metrics.encode(),
            r#"leader_election_master_status{name="websites-lock"} 1"#,
        );
        metrics.set_leader("websites-lock", false);
        has(
            &metrics.encode(),
            r#"leader_election_master_status{name="websites-lock"} 0"#,
        );

        let mine: Counter = Counter::default();
        metrics.register(|r| r.register("my_things", "Things", mine.clone()));
        mine.inc_by(3);
        let clone = metrics.clone();
        has(&clone.encode(), "my_things_total 3");
    }

    #[test]
    fn two_controllers_have_separate_series() {
        let metrics = Metrics::new();
        let a = metrics.controller("a");
        let b = metrics.controller("b");
        a.reconcile_finished(&Ok(Action::await_change()), Duration::ZERO);
        let text = metrics.encode();
        has(
            &text,
            r#"controller_runtime_reconcile_total{controller="a",result="success"} 1"#,
        );
        has(
            &text,
            r#"controller_runtime_reconcile_total{controller="b",result="success"} 0"#,
        );
        assert_eq!(b.name(), "b");
    }
}
