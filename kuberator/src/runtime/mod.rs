//! Controller wiring: the loop, the manager of many loops, backoff, shutdown.

mod backoff;
mod child_changes;
mod dispatch;
pub mod health;
pub mod leader;
mod live_map;
mod manager;
pub mod metrics;
mod operator;
mod own_writes;
mod progress;
mod request;
mod served;
pub mod shard;
mod shared;
mod shutdown;
mod start_skip;
mod timeout;
mod watch;

pub use backoff::Backoff;
pub use child_changes::ChildChanges;
pub use health::{HealthRoutes, HealthServer, Readiness};
pub use leader::{LeaderElection, Leadership};
pub use manager::{IntoController, Manager, STARTUP_RETRY_FOR};
pub use metrics::{ControllerMetrics, Metrics};
#[cfg(all(test, feature = "opentelemetry"))]
pub(crate) use operator::reconcile_span;
pub use operator::{DEFAULT_SHUTDOWN_TIMEOUT, Operator, Reconciler, default_error_policy};
pub use own_writes::{OwnWrite, OwnWrites};
pub use progress::DEFAULT_STALLED_AFTER;
pub use request::{
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_UNREADY_AFTER, MAX_RETRY_AFTER, RequestError, RequestGuard,
    THROTTLE_LOG_INTERVAL, client_without_retry, request_error,
};
pub use shard::{Sharding, Shards, rendezvous};
pub use shared::{Cache, Cached, Caches};
pub use shutdown::shutdown_signal;
pub use timeout::DEFAULT_RECONCILE_TIMEOUT;
pub use watch::WatchBackoff;
pub(crate) use watch::decode_dynamic;
