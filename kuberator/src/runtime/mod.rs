//! Controller wiring: the loop, the manager of many loops, backoff, shutdown.

mod backoff;
pub mod health;
pub mod leader;
mod manager;
pub mod metrics;
mod operator;
mod served;
mod shared;
mod shutdown;
mod watch;

pub use backoff::Backoff;
pub use health::{HealthServer, Readiness};
pub use leader::{LeaderElection, Leadership};
pub use manager::{IntoController, Manager};
pub use metrics::{ControllerMetrics, Metrics};
pub use operator::{Operator, Reconciler, default_error_policy};
pub use shared::{Cache, Cached, Caches};
pub use shutdown::shutdown_signal;
pub(crate) use watch::decode_dynamic;
