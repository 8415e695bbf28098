//! Whether a controller's reconciles make progress: `/readyz` reports a controller whose
//! reconciles have been running or waiting for a slot for longer than a threshold without a
//! single one finishing (all workers stuck, e.g. on requests that never end).

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

/// How long reconciles may be running or queued without one finishing before `/readyz` says the
/// controller is stalled (2 minutes; see [`Operator::stalled_after`](crate::Operator::stalled_after)).
pub const DEFAULT_STALLED_AFTER: Duration = Duration::from_secs(120);

/// The reconciles of one controller that are queued for a slot or running, and when one last
/// finished (or, if none did since, when the work began).
#[derive(Debug)]
pub(crate) struct Progress {
    after: Option<Duration>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    busy: u64,
    last: Instant,
}

impl Progress {
    /// Tracks progress; `after: None` never reports a stall.
    pub(crate) fn new(after: Option<Duration>) -> Self {
        Progress {
            after,
            state: Mutex::new(State {
                busy: 0,
                last: Instant::now(),
            }),
        }
    }

    /// Counts one reconcile from dispatch until the returned guard drops (finished, failed,
    /// timed out or cancelled: each is progress).
    pub(crate) fn enter(&self) -> Working<'_> {
        let mut state = self.lock();
        if state.busy == 0 {
            state.last = Instant::now();
        }
        state.busy += 1;
        Working(self)
    }

    /// `Some(problem)` while reconciles are queued or running and none has finished for longer
    /// than the threshold.
    pub(crate) fn stalled(&self) -> Option<String> {
        let after = self.after?;
        let state = self.lock();
        let idle = state.last.elapsed();
        (state.busy > 0 && idle >= after).then(|| {
            format!(
                "no reconcile has finished for {:.1} s while {} are queued or running",
                idle.as_secs_f64(),
                state.busy
            )
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One reconcile counted by [`Progress::enter`].
pub(crate) struct Working<'a>(&'a Progress);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy = state.busy.saturating_sub(1);
        state.last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stalled_only_while_work_is_queued_and_nothing_finishes() {
        let progress = Progress::new(Some(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(progress.stalled(), None, "idle is not stalled");
        let stuck = progress.enter();
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(progress.stalled(), None);
        {
            let _finishes = progress.enter();
            tokio::time::sleep(Duration::from_secs(9)).await;
        }
        // One finished just now: progress, although the first is still stuck.
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(progress.stalled(), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let problem = progress.stalled().expect("stalled");
        assert!(
            problem.contains("while 1 are queued or running"),
            "{problem}"
        );
        drop(stuck);
        assert_eq!(progress.stalled(), None);
        let disabled = Progress::new(None);
        let _stuck = disabled.enter();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(disabled.stalled(), None);
    }
}
