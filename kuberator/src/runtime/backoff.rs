//! Per-object exponential backoff with jitter, reset on success.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

use rand::Rng;

/// Exponential backoff settings: `base * 2^failures`, capped at `max`, plus up to `jitter` of
/// random extra delay (a fraction, e.g. `0.2` = up to 20 % more).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// The random extra delay, as a fraction of the delay.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, doubling up to 5 minutes, with up to 20 % jitter.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry number `failures` (1 = after the first failure), without jitter.
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exponent)
            .map_or(self.max, |d| d.min(self.max))
    }

    /// [`delay`](Backoff::delay) with jitter applied.
    pub fn jittered(&self, failures: u32) -> Duration {
        let delay = self.delay(failures);
        if self.jitter <= 0.0 {
            return delay;
        }
        let extra = rand::rng().random_range(0.0..self.jitter);
        delay.mul_f64(1.0 + extra)
    }
}

/// Per-object maps are pruned once they hold more entries than this and twice the live objects.
pub(crate) const PRUNE_ABOVE: usize = 1024;

/// Failure counts per object key. An object that succeeds is forgotten; one deleted while it
/// was failing is forgotten by [`retain_live`](FailureCounts::retain_live), so the map stays
/// bounded by the live objects.
#[derive(Debug)]
pub(crate) struct FailureCounts<K> {
    counts: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> FailureCounts<K> {
    pub(crate) fn new() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one more failure and returns the new count.
    pub(crate) fn fail(&self, key: K) -> u32 {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key).or_insert(0);
        *count = count.saturating_add(1);
        *count
    }

    /// When the map holds more than [`PRUNE_ABOVE`] entries and more than twice `live` (the
    /// number of live objects), drops the keys `is_live` rejects (objects deleted while they
    /// were failing).
    pub(crate) fn retain_live(&self, live: usize, is_live: impl Fn(&K) -> bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() > PRUNE_ABOVE && counts.len() > live.saturating_mul(2) {
            counts.retain(|key, _| is_live(key));
        }
    }

    /// The objects with failures recorded.
    pub(crate) fn keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.keys().cloned().collect()
    }

    /// How many objects have failures recorded.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Forgets the failures of `key` (after a success).
    pub(crate) fn reset(&self, key: &K) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if !counts.is_empty() {
            counts.remove(key);
        }
    }

    #[cfg(test)]
    pub(crate) fn get(&self, key: &K) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_and_cap() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
            jitter: 0.0,
        };
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let b = Backoff::default();
        for n in 1..=10 {
            let d = b.jittered(n);
            assert!(d >= b.delay(n) && d <= b.delay(n).mul_f64(1.2), "{d:?}");
        }
    }

    #[test]
    fn failure_counts_stay_bounded_by_the_live_objects() {
        let f = FailureCounts::new();
        // 10 live objects keep failing; 5,000 others failed once and were deleted.
        for round in 0..3 {
            for live in 0..10 {
                f.fail(format!("live-{live}"));
            }
            for gone in 0..5000 {
                f.fail(format!("gone-{round}-{gone}"));
                f.retain_live(10, |key| key.starts_with("live-"));
            }
            assert!(f.len() <= PRUNE_ABOVE + 1, "{}", f.len());
        }
        f.retain_live(0, |_| false);
        assert!(f.len() <= PRUNE_ABOVE + 1);
        // The live objects kept their counts through the pruning.
        assert!(f.get(&"live-3".to_owned()) >= 1);
    }

    #[test]
    fn failures_count_per_key_and_reset() {
        let f = FailureCounts::new();
        assert_eq!(f.fail("a"), 1);
        assert_eq!(f.fail("a"), 2);
        assert_eq!(f.fail("b"), 1);
        f.reset(&"a");
        assert_eq!(f.get(&"a"), 0);
        assert_eq!(f.fail("a"), 1);
    }
}

#[cfg(test)]
mod policy_tests {
    use std::{borrow::Cow, time::Duration};

    use kube::runtime::controller::Action;

    use super::Backoff;
    use crate::{
        error::{ClassifyError, Error, RetryPolicy},
        runtime::default_error_policy,
    };

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct Boom(RetryPolicy);

    impl ClassifyError for Boom {
        fn retry_policy(&self) -> RetryPolicy {
            self.0
        }
        fn reason(&self) -> Cow<'static, str> {
            Cow::Borrowed("Boom")
        }
    }

    /// Drives failures on paused time: each retry fires after the delay the policy chose, and
    /// the delays grow until the cap.
    #[tokio::test(start_paused = true)]
    async fn retries_come_with_growing_delays_on_paused_time() {
        let backoff = Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(4),
            jitter: 0.0,
        };
        let error = Error::handler(Boom(RetryPolicy::Backoff));
        let start = tokio::time::Instant::now();
        let mut fired_at = Vec::new();
        for failures in 1..=5 {
            let action = default_error_policy(&error, failures, &backoff);
            let delay = backoff.delay(failures);
            assert_eq!(action, Action::requeue(delay));
            tokio::time::sleep(delay).await;
            fired_at.push(start.elapsed().as_millis());
        }
        assert_eq!(fired_at, [500, 1500, 3500, 7500, 11500]);
    }

    #[test]
    fn terminal_errors_wait_for_a_change_and_fixed_delays_are_kept() {
        let backoff = Backoff::default();
        let terminal = Error::handler(Boom(RetryPolicy::Terminal));
        assert_eq!(
            default_error_policy(&terminal, 3, &backoff),
            Action::await_change()
        );
        let fixed = Error::handler(Boom(RetryPolicy::After(Duration::from_secs(30))));
        assert_eq!(
            default_error_policy(&fixed, 7, &backoff),
            Action::requeue(Duration::from_secs(30))
        );
    }
}
