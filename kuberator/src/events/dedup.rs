//! The deduplication cache behind [`EventRecorder`](super::EventRecorder): one entry per
//! [`EventKey`], counting repeats in memory until the flush task writes them.
//!
//! Pure bookkeeping, no I/O: the recorder asks it what to write and tells it what was written.
//! Every entry tracks `count` (emits attributed to its current Event, the first one included) and
//! `written` (the count the API server has; `0` means the Event still has to be created). An entry
//! is *dirty* while `count > written`.

use std::{collections::HashMap, sync::Arc, time::Duration};

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

use super::key::{AsKeyRef, EventKey, KeyRef};

/// One deduplicated event.
#[derive(Debug)]
struct Entry<T> {
    /// What the recorder needs to (re)create the Event.
    payload: Arc<T>,
    /// The name of the current Event on the server.
    name: String,
    /// Tells this entry apart from a later one under the same key.
    generation: u64,
    /// Emits attributed to the current Event (the first one included).
    count: u64,
    /// The count the server has; `0`: not created yet.
    written: u64,
    /// The first create is in flight (done by the emitting task, not the flusher).
    creating: bool,
    /// When the key was last emitted, on tokio's clock (drives the TTL).
    last_seen: Instant,
    /// When the key was last emitted, on the wall clock (the Event's `lastObservedTime`).
    last_observed: Timestamp,
}

impl<T> Entry<T> {
    fn is_dirty(&self) -> bool {
        !self.creating && self.count > self.written
    }
}

/// A write the flusher owes the API server for one key: create the Event (`written == 0`) or
/// patch its series to `count`.
#[derive(Debug)]
pub(crate) struct PendingWrite<T> {
    pub(crate) key: EventKey,
    pub(crate) generation: u64,
    pub(crate) payload: Arc<T>,
    pub(crate) name: String,
    pub(crate) count: u64,
    pub(crate) written: u64,
    pub(crate) last_observed: Timestamp,
}

/// Bounded map from [`EventKey`] to its entry: entries expire `ttl` after they were last seen,
/// and at most `max_entries` are kept (the least recently seen go first).
#[derive(Debug)]
pub(crate) struct DedupCache<T> {
    entries: HashMap<EventKey, Entry<T>>,
    ttl: Duration,
    max_entries: usize,
    next_generation: u64,
}

impl<T> DedupCache<T> {
    pub(crate) fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            entries: HashMap::new(),
            ttl,
            max_entries: max_entries.max(1),
            next_generation: 0,
        }
    }

    /// Number of entries held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn get_mut(&mut self, key: KeyRef<'_>) -> Option<&mut Entry<T>> {
        self.entries.get_mut(&key as &dyn AsKeyRef)
    }

    /// Counts a repeat of `key` if it is known and not expired; the hot path, allocation-free.
    ///
    /// Returns `false` when the key is new (an expired entry is dropped): the caller then
    /// [`insert`](Self::insert)s it and creates the Event.
    pub(crate) fn repeat(&mut self, key: KeyRef<'_>, now: Instant, wall: Timestamp) -> bool {
        let ttl = self.ttl;
        let Some(entry) = self.get_mut(key) else {
            return false;
        };
        if !entry.creating && now.saturating_duration_since(entry.last_seen) >= ttl {
            self.entries.remove(&key as &dyn AsKeyRef);
            return false;
        }
        entry.count += 1;
        entry.last_seen = now;
        entry.last_observed = wall;
        true
    }

    /// Records the first occurrence of `key`, whose Event `name` the caller is creating now.
    /// Makes room first if the cache is full. Returns the entry's generation.
    pub(crate) fn insert(
        &mut self,
        key: EventKey,
        payload: Arc<T>,
        name: String,
        now: Instant,
        wall: Timestamp,
    ) -> u64 {
        self.make_room(now);
        self.next_generation += 1;
        let generation = self.next_generation;
        self.entries.insert(
            key,
            Entry {
                payload,
                name,
                generation,
                count: 1,
                written: 0,
                creating: true,
                last_seen: now,
                last_observed: wall,
            },
        );
        generation
    }

    /// The server now has `count` for the entry's current Event. Returns whether the entry is
    /// still dirty (repeats arrived meanwhile).
    pub(crate) fn mark_written(&mut self, key: KeyRef<'_>, generation: u64, count: u64) -> bool {
        match self.get_mut(key) {
            Some(entry) if entry.generation == generation => {
                entry.creating = false;
                entry.written = entry.written.max(count);
                entry.is_dirty()
            }
            _ => false,
        }
    }

    /// The task doing the first create was cancelled: leave the create to the flusher. Returns
    /// whether the entry is now pending.
    pub(crate) fn abandon_create(&mut self, key: KeyRef<'_>, generation: u64) -> bool {
        match self.get_mut(key) {
            Some(entry) if entry.generation == generation && entry.creating => {
                entry.creating = false;
                entry.is_dirty()
            }
            _ => false,
        }
    }

    /// The first create failed: forget the key, so that the next emit tries again.
    pub(crate) fn forget(&mut self, key: KeyRef<'_>, generation: u64) {
        if self
            .get_mut(key)
            .is_some_and(|e| e.generation == generation)
        {
            self.entries.remove(&key as &dyn AsKeyRef);
        }
    }

    /// The writes owed to the server: every dirty entry, with its count as of now.
    pub(crate) fn pending(&self) -> Vec<PendingWrite<T>> {
        self.entries
            .iter()
            .filter(|(_, e)| e.is_dirty())
            .map(|(key, e)| PendingWrite {
                key: key.clone(),
                generation: e.generation,
                payload: Arc::clone(&e.payload),
                name: e.name.clone(),
                count: e.count,
                written: e.written,
                last_observed: e.last_observed,
            })
            .collect()
    }

    /// The entry's Event is gone from the server (deleted, or expired by the server's event
    /// TTL): attribute the emits not yet written to a new Event called `name`, to be created.
    /// Returns that create, or `None` if the entry went away meanwhile.
    pub(crate) fn restart(
        &mut self,
        key: KeyRef<'_>,
        generation: u64,
        name: String,
    ) -> Option<PendingWrite<T>> {
        let entry = self.get_mut(key)?;
        if entry.generation != generation || entry.creating {
            return None;
        }
        entry.count = entry.count.saturating_sub(entry.written).max(1);
        entry.written = 0;
        entry.name = name;
        Some(PendingWrite {
            key: key.to_owned(),
            generation,
            payload: Arc::clone(&entry.payload),
            name: entry.name.clone(),
            count: entry.count,
            written: 0,
            last_observed: entry.last_observed,
        })
    }

    /// Drops entries not seen for the TTL. Returns how many were dropped, and how many emits
    /// they held that never reached the server (their writes kept failing).
    pub(crate) fn evict_expired(&mut self, now: Instant) -> (usize, u64) {
        let before = self.entries.len();
        let ttl = self.ttl;
        let mut lost = 0;
        self.entries.retain(|_, e| {
            let keep = e.creating || now.saturating_duration_since(e.last_seen) < ttl;
            if !keep {
                lost += e.count.saturating_sub(e.written);
            }
            keep
        });
        (before - self.entries.len(), lost)
    }

    /// Before an insert into a full cache: drop expired entries, then if still full the least
    /// recently seen sixteenth (at least one), so a storm of distinct keys costs amortized O(1).
    fn make_room(&mut self, now: Instant) {
        if self.entries.len() < self.max_entries {
            return;
        }
        self.evict_expired(now);
        if self.entries.len() < self.max_entries {
            return;
        }
        let excess = self.entries.len() + 1 - self.max_entries;
        let mut by_age: Vec<(Instant, &EventKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.creating)
            .map(|(k, e)| (e.last_seen, k))
            .collect();
        let batch = excess.max(self.max_entries / 16).min(by_age.len());
        if batch == 0 {
            return;
        }
        by_age.select_nth_unstable_by_key(batch - 1, |(seen, _)| *seen);
        let victims: Vec<EventKey> = by_age
            .iter()
            .take(batch)
            .map(|(_, k)| (*k).clone())
            .collect();
        for key in victims {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventData;

    const TTL: Duration = Duration::from_secs(360);

    fn data(reason: &'static str) -> EventData {
        EventData::normal(reason, "Act")
    }

    fn insert(cache: &mut DedupCache<()>, uid: &str, d: &EventData, now: Instant) -> u64 {
        let key = KeyRef::new(uid, d).to_owned_with(d);
        cache.insert(key, Arc::new(()), format!("{uid}.1"), now, Timestamp::now())
    }

    #[test]
    fn repeats_only_count_and_become_one_pending_write() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut cache = DedupCache::new(TTL, 100);
        let d = data("R");
        let key = KeyRef::new("u", &d);
        assert!(!cache.repeat(key, t0, wall), "unknown key is new");
        let generation = insert(&mut cache, "u", &d, t0);
        for _ in 0..9_999 {
            assert!(cache.repeat(key, t0, wall));
        }
        // The first create is still in flight: the flusher must leave it alone.
        assert!(cache.pending().is_empty());
        assert!(
            cache.mark_written(key, generation, 1),
            "repeats are pending"
        );
        let pending = cache.pending();
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0].count, pending[0].written), (10_000, 1));
        assert!(!cache.mark_written(key, generation, 10_000));
        assert!(cache.pending().is_empty());
    }

    #[test]
    fn entries_expire_after_the_ttl_since_last_seen() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut cache = DedupCache::new(TTL, 100);
        let d = data("R");
        let key = KeyRef::new("u", &d);
        let generation = insert(&mut cache, "u", &d, t0);
        cache.mark_written(key, generation, 1);

        // Seen again at 5 min: alive until 11 min.
        assert!(cache.repeat(key, t0 + Duration::from_secs(300), wall));
        assert_eq!(cache.evict_expired(t0 + Duration::from_secs(600)), (0, 0));
        assert_eq!(cache.len(), 1);
        // Unwritten repeat is reported as lost when evicted.
        assert_eq!(cache.evict_expired(t0 + Duration::from_secs(660)), (1, 1));
        assert_eq!(cache.len(), 0);

        // An expired entry found by `repeat` is dropped, so the key starts afresh.
        let generation = insert(&mut cache, "u", &d, t0);
        cache.mark_written(key, generation, 1);
        assert!(!cache.repeat(key, t0 + TTL, wall));
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_create_in_flight_never_expires() {
        let t0 = Instant::now();
        let mut cache = DedupCache::<()>::new(TTL, 100);
        insert(&mut cache, "u", &data("R"), t0);
        assert_eq!(cache.evict_expired(t0 + 10 * TTL), (0, 0));
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_seen() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut cache = DedupCache::new(TTL, 32);
        let d = data("R");
        for i in 0..32u64 {
            let uid = format!("u{i}");
            let generation = insert(&mut cache, &uid, &d, t0 + Duration::from_secs(i));
            cache.mark_written(KeyRef::new(&uid, &d), generation, 1);
        }
        // Touch the oldest so that it survives.
        assert!(cache.repeat(KeyRef::new("u0", &d), t0 + Duration::from_secs(40), wall));
        insert(&mut cache, "new", &d, t0 + Duration::from_secs(41));
        // 32 / 16 = 2 evicted: u1 and u2, the least recently seen.
        assert_eq!(cache.len(), 31);
        for (uid, alive) in [
            ("u0", true),
            ("u1", false),
            ("u2", false),
            ("u3", true),
            ("new", true),
        ] {
            let present = cache
                .entries
                .contains_key(&KeyRef::new(uid, &d) as &dyn AsKeyRef);
            assert_eq!(present, alive, "{uid}");
        }
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let t0 = Instant::now();
        let mut cache = DedupCache::new(TTL, 4);
        let d = data("R");
        for uid in ["a", "b", "c", "d"] {
            let generation = insert(&mut cache, uid, &d, t0);
            cache.mark_written(KeyRef::new(uid, &d), generation, 1);
        }
        insert(&mut cache, "e", &d, t0 + TTL);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn forget_and_restart_respect_generations() {
        let t0 = Instant::now();
        let wall = Timestamp::now();
        let mut cache = DedupCache::new(TTL, 100);
        let d = data("R");
        let key = KeyRef::new("u", &d);
        let old = insert(&mut cache, "u", &d, t0);
        cache.forget(key, old);
        assert_eq!(cache.len(), 0);

        let generation = insert(&mut cache, "u", &d, t0);
        cache.forget(key, old); // a stale failure does not remove the new entry
        assert_eq!(cache.len(), 1);
        cache.mark_written(key, generation, 1);
        for _ in 0..4 {
            cache.repeat(key, t0, wall);
        }
        assert!(cache.restart(key, old, "x".into()).is_none());
        let create = cache.restart(key, generation, "u.2".into()).unwrap();
        // Five emits, one of them written to the lost Event: four belong to the new one.
        assert_eq!(
            (create.count, create.written, create.name.as_str()),
            (4, 0, "u.2")
        );
        assert_eq!(cache.pending().len(), 1);
    }
}
