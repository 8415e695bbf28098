//! The log of failed Event writes: the first failure in full, then one summary per window, and a
//! line when writes succeed again — not one warning per object while the API server is down.

use std::{
    fmt,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

/// How long failures after the first are only counted before a summary is logged (10 s).
pub(crate) const WRITE_FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// What the log says about a write outcome.
#[derive(Debug, PartialEq)]
pub(crate) enum Report {
    /// The first failure since writes last worked: log it with its object and error.
    First,
    /// `count` failures after the reported ones, within the last `over`; `last_error` is the
    /// latest of them.
    More {
        count: u64,
        over: Duration,
        last_error: String,
    },
    /// Writes succeed again after `failures` failures during `over`.
    Recovered { failures: u64, over: Duration },
}

/// The rate limit itself: deterministic, driven by the times it is given.
#[derive(Debug)]
pub(crate) struct FailureLimiter {
    window: Duration,
    episode: Option<Episode>,
}

/// Failures since writes last succeeded.
#[derive(Debug)]
struct Episode {
    /// The first failure.
    since: Instant,
    /// Every failure of the episode.
    failures: u64,
    /// Where the current summary window began (the first failure, or the last summary).
    window_start: Instant,
    /// Failures not yet logged.
    unreported: u64,
    last_error: String,
}

impl FailureLimiter {
    pub(crate) fn new(window: Duration) -> Self {
        FailureLimiter {
            window,
            episode: None,
        }
    }

    /// A write failed at `now` with `error`: [`Report::First`] for the first failure since the
    /// last success, a [`Report::More`] summary when the failure closes a window, else nothing.
    pub(crate) fn failed(&mut self, now: Instant, error: &dyn fmt::Display) -> Option<Report> {
        let window = self.window;
        let Some(episode) = &mut self.episode else {
            self.episode = Some(Episode {
                since: now,
                failures: 1,
                window_start: now,
                unreported: 0,
                last_error: String::new(),
            });
            return Some(Report::First);
        };
        episode.failures += 1;
        episode.unreported += 1;
        episode.last_error = error.to_string();
        (now.saturating_duration_since(episode.window_start) >= window)
            .then(|| episode.summary(now))
    }

    /// The summary of a window that is over at `now` with failures not yet logged.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Report> {
        let episode = self.episode.as_mut()?;
        (episode.unreported > 0
            && now.saturating_duration_since(episode.window_start) >= self.window)
            .then(|| episode.summary(now))
    }

    /// The summary of the failures not yet logged, window over or not (on shutdown).
    pub(crate) fn pending(&mut self, now: Instant) -> Option<Report> {
        let episode = self.episode.as_mut()?;
        (episode.unreported > 0).then(|| episode.summary(now))
    }

    /// A write succeeded at `now`: after failures, the summary of those not yet logged and
    /// [`Report::Recovered`]; the next failure is a [`Report::First`] again.
    pub(crate) fn succeeded(&mut self, now: Instant) -> Vec<Report> {
        let Some(mut episode) = self.episode.take() else {
            return Vec::new();
        };
        let mut reports = Vec::with_capacity(2);
        if episode.unreported > 0 {
            reports.push(episode.summary(now));
        }
        reports.push(Report::Recovered {
            failures: episode.failures,
            over: now.saturating_duration_since(episode.since),
        });
        reports
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.episode.is_some()
    }
}

impl Episode {
    fn summary(&mut self, now: Instant) -> Report {
        let report = Report::More {
            count: self.unreported,
            over: now.saturating_duration_since(self.window_start),
            last_error: std::mem::take(&mut self.last_error),
        };
        self.unreported = 0;
        self.window_start = now;
        report
    }
}

/// The object and reason of a failed emit, for the first failure's warning.
pub(crate) struct FailedEmit<'a> {
    pub(crate) kind: &'a str,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) reason: &'a str,
}

/// [`FailureLimiter`] on the recorder's clock, logging through `tracing`.
#[derive(Debug)]
pub(crate) struct WriteFailureLog {
    limiter: Mutex<FailureLimiter>,
    /// Fast path: no lock on a success while nothing failed.
    failing: AtomicBool,
}

impl Default for WriteFailureLog {
    fn default() -> Self {
        WriteFailureLog {
            limiter: Mutex::new(FailureLimiter::new(WRITE_FAILURE_WINDOW)),
            failing: AtomicBool::new(false),
        }
    }
}

impl WriteFailureLog {
    /// A failed first write of an event (from `emit`).
    pub(crate) fn emit_failed(&self, emit: &FailedEmit<'_>, error: &crate::Error) {
        match self.failed(error) {
            Some(Report::First) => tracing::warn!(
                kind = emit.kind,
                namespace = emit.namespace,
                name = emit.name,
                reason = emit.reason,
                %error,
                "failed to emit event (further event write failures are summarised every {:?} \
                 until writes succeed again)",
                WRITE_FAILURE_WINDOW,
            ),
            other => log(other),
        }
    }

    /// A failed write of an event series (from the flush).
    pub(crate) fn series_failed(&self, error: &crate::Error) {
        match self.failed(error) {
            Some(Report::First) => tracing::warn!(
                %error,
                "failed to write event series (further event write failures are summarised \
                 every {:?} until writes succeed again)",
                WRITE_FAILURE_WINDOW,
            ),
            other => log(other),
        }
    }

    fn failed(&self, error: &crate::Error) -> Option<Report> {
        self.failing.store(true, Ordering::Release);
        self.lock().failed(Instant::now(), error)
    }

    /// A successful write.
    pub(crate) fn succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let reports = {
            let mut limiter = self.lock();
            let reports = limiter.succeeded(Instant::now());
            self.failing.store(limiter.is_failing(), Ordering::Release);
            reports
        };
        reports.into_iter().for_each(|report| log(Some(report)));
    }

    /// Logs the summary of a window that is over (the flush task's tick).
    pub(crate) fn tick(&self) {
        if self.failing.load(Ordering::Acquire) {
            log(self.lock().tick(Instant::now()));
        }
    }

    /// Logs the failures not yet logged (when the recorder goes away).
    pub(crate) fn finish(&self) {
        if self.failing.load(Ordering::Acquire) {
            log(self.lock().pending(Instant::now()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn log(report: Option<Report>) {
    match report {
        None => {}
        // Logged by the caller, with its context.
        Some(Report::First) => {}
        Some(Report::More {
            count,
            over,
            last_error,
        }) => tracing::warn!(
            count,
            "{count} more event writes failed in the last {:.1} s: {last_error}",
            over.as_secs_f64()
        ),
        Some(Report::Recovered { failures, over }) => tracing::info!(
            failures,
            "event writes succeed again after {failures} failed writes in {:.1} s",
            over.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    fn more(count: u64, over_ms: u64, last_error: &str) -> Report {
        Report::More {
            count,
            over: Duration::from_millis(over_ms),
            last_error: last_error.into(),
        }
    }

    #[test]
    fn the_first_failure_is_logged_then_counted_until_the_window_ends() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.failed(t0, &"refused 1"), Some(Report::First));
        assert_eq!(limiter.failed(at(t0, 100), &"refused 2"), None);
        assert_eq!(limiter.failed(at(t0, 9_999), &"refused 3"), None);
        assert_eq!(limiter.tick(at(t0, 9_999)), None);
        // The failure that closes the window carries the summary, with the latest error.
        assert_eq!(
            limiter.failed(at(t0, 10_000), &"refused 4"),
            Some(more(3, 10_000, "refused 4"))
        );
        // A new window starts at the summary.
        assert_eq!(limiter.failed(at(t0, 15_000), &"refused 5"), None);
        assert_eq!(limiter.tick(at(t0, 19_999)), None);
        assert_eq!(
            limiter.tick(at(t0, 20_000)),
            Some(more(1, 10_000, "refused 5"))
        );
        // Nothing left to summarise.
        assert_eq!(limiter.tick(at(t0, 40_000)), None);
        assert!(limiter.is_failing());
    }

    #[test]
    fn a_success_summarises_the_rest_and_reports_the_recovery_once() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.succeeded(t0), []);
        assert_eq!(limiter.failed(t0, &"refused"), Some(Report::First));
        for i in 1..=499 {
            assert_eq!(limiter.failed(at(t0, i * 10), &"refused"), None);
        }
        assert_eq!(
            limiter.succeeded(at(t0, 6_000)),
            [
                more(499, 6_000, "refused"),
                Report::Recovered {
                    failures: 500,
                    over: Duration::from_secs(6)
                }
            ]
        );
        assert!(!limiter.is_failing());
        assert_eq!(limiter.succeeded(at(t0, 6_100)), []);
        // The next outage starts with a full warning again.
        assert_eq!(
            limiter.failed(at(t0, 7_000), &"timeout"),
            Some(Report::First)
        );
        assert_eq!(
            limiter.succeeded(at(t0, 7_500)),
            [Report::Recovered {
                failures: 1,
                over: Duration::from_millis(500)
            }]
        );
    }

    #[test]
    fn pending_failures_are_summarised_before_the_window_ends() {
        let t0 = Instant::now();
        let mut limiter = FailureLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.pending(t0), None);
        limiter.failed(t0, &"refused");
        assert_eq!(limiter.pending(at(t0, 1)), None);
        limiter.failed(at(t0, 2_000), &"reset");
        assert_eq!(
            limiter.pending(at(t0, 3_000)),
            Some(more(1, 3_000, "reset"))
        );
        assert_eq!(limiter.pending(at(t0, 3_001)), None);
    }
}
