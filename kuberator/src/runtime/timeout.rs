//! The reconcile timeout: a reconcile that does not finish in time is cancelled (dropped at its
//! current `.await`) and becomes an [`Error::ReconcileTimeout`], retried with backoff like any
//! other error, and its concurrency slot is free again.

use std::{future::Future, time::Duration};

use crate::error::{Error, ObjectKey, Result};

/// How long one reconcile may take before it is cancelled: 5 minutes.
///
/// controller-runtime's `ReconciliationTimeout` (the deadline of the context passed to
/// `Reconcile`) is off unless set; kuberator turns it on by default, generously, so that a
/// handler stuck on a call that never returns costs one slot for at most this long instead of
/// forever. Set it with [`Operator::reconcile_timeout`](crate::Operator::reconcile_timeout).
pub const DEFAULT_RECONCILE_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `reconcile`, cancelling it after `timeout` (`None`: no limit).
pub(crate) async fn with_timeout<T>(
    timeout: Option<Duration>,
    object: impl FnOnce() -> ObjectKey,
    reconcile: impl Future<Output = Result<T>>,
) -> Result<T> {
    match timeout {
        None => reconcile.await,
        Some(after) => tokio::time::timeout(after, reconcile)
            .await
            .unwrap_or_else(|_| {
                Err(Error::ReconcileTimeout {
                    object: object(),
                    after,
                })
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hung_reconcile_is_cancelled_at_the_timeout() {
        let started = tokio::time::Instant::now();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct OnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let guard = OnDrop(dropped.clone());
        let result: Result<()> = with_timeout(
            Some(Duration::from_secs(7)),
            ObjectKey::default,
            async move {
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(())
            },
        )
        .await;
        assert!(
            matches!(result, Err(Error::ReconcileTimeout { after, .. }) if after.as_secs() == 7)
        );
        assert_eq!(started.elapsed(), Duration::from_secs(7));
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "the handler was cancelled"
        );
    }

    #[tokio::test]
    async fn a_quick_reconcile_is_untouched() {
        let result = with_timeout(Some(Duration::from_secs(1)), ObjectKey::default, async {
            Ok(5)
        })
        .await;
        assert_eq!(result.unwrap(), 5);
    }
}
