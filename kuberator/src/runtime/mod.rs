//! Controller wiring: the loop, backoff, shutdown.

mod backoff;
mod operator;
mod shutdown;
mod watch;

pub use backoff::Backoff;
pub use operator::{Operator, Reconciler, default_error_policy};
pub use shutdown::shutdown_signal;
