//! The dispatch queue in front of the controller's scheduler: ready objects leave in the order
//! they became ready, live changes ahead of the initial-list backlog, the backlog still getting
//! a fixed share, and the controller is handed at most as many objects as it can run.
//!
//! kube-runtime's scheduler keeps ready objects in a hash set and releases them in arbitrary
//! order; with this queue holding everything that cannot run yet, the scheduler only ever holds
//! what runs next (plus retries and requeues, which it times).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt, channel::mpsc::UnboundedSender, stream::BoxStream};
use kube::runtime::reflector::{ObjectRef, Store};

use crate::finalize::Object;

/// Where a change comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A change made while the controller runs: served first.
    Live,
    /// An object of a (re)list: served after live changes, with a share of its own.
    Backlog,
}

/// Live dispatches per backlog dispatch while both lanes wait: the backlog never starves.
pub(crate) const LIVE_SHARE: u32 = 4;

/// The queue itself, by key; no I/O, no clock.
#[derive(Debug)]
pub(crate) struct Queue<K> {
    live: VecDeque<(K, u64)>,
    backlog: VecDeque<(K, u64)>,
    /// What waits in a lane, with the sequence number of its current entry (older entries of a
    /// promoted key are skipped).
    waiting: HashMap<K, (Origin, u64)>,
    seq: u64,
    /// Handed to the controller, not started yet: a change meanwhile is in its run already (a
    /// reconcile reads the cache when it starts).
    dispatched: HashSet<K>,
    /// Running now (whoever dispatched it: this queue, a requeue, a child's change).
    running: HashSet<K>,
    /// Changed while running: queued again when the run ends.
    rerun: HashMap<K, Origin>,
    capacity: usize,
    live_streak: u32,
    waker: Option<Waker>,
}

impl<K: Clone + Eq + Hash> Queue<K> {
    /// An empty queue handing out at most `capacity` objects at once (0 is treated as 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Queue {
            live: VecDeque::new(),
            backlog: VecDeque::new(),
            waiting: HashMap::new(),
            seq: 0,
            dispatched: HashSet::new(),
            running: HashSet::new(),
            rerun: HashMap::new(),
            capacity: capacity.max(1),
            live_streak: 0,
            waker: None,
        }
    }

    /// `key` changed. A backlog entry that changes live moves to the live lane.
    pub(crate) fn push(&mut self, key: K, origin: Origin) {
        if self.dispatched.contains(&key) {
            return;
        }
        if self.running.contains(&key) {
            let entry = self.rerun.entry(key).or_insert(origin);
            if origin == Origin::Live {
                *entry = Origin::Live;
            }
            return;
        }
        match self.waiting.get(&key) {
            Some((Origin::Live, _)) => return,
            Some((Origin::Backlog, _)) if origin == Origin::Backlog => return,
            _ => {}
        }
        self.seq += 1;
        self.waiting.insert(key.clone(), (origin, self.seq));
        match origin {
            Origin::Live => self.live.push_back((key, self.seq)),
            Origin::Backlog => self.backlog.push_back((key, self.seq)),
        }
        self.wake();
    }

    /// The next key to hand to the controller, if it has room.
    pub(crate) fn pop(&mut self) -> Option<K> {
        while self.dispatched.len() + self.running.len() < self.capacity {
            let take_live =
                !self.live.is_empty() && (self.backlog.is_empty() || self.live_streak < LIVE_SHARE);
            let (key, seq) = if take_live {
                self.live.pop_front()?
            } else {
                self.backlog.pop_front()?
            };
            let Some(&(origin, current)) = self.waiting.get(&key) else {
                continue;
            };
            if current != seq {
                continue;
            }
            self.waiting.remove(&key);
            self.live_streak = match origin {
                Origin::Live if !self.backlog.is_empty() => self.live_streak + 1,
                _ => 0,
            };
            if self.running.contains(&key) {
                self.rerun.insert(key, origin);
                continue;
            }
            self.dispatched.insert(key.clone());
            return Some(key);
        }
        None
    }

    /// A reconcile of `key` started.
    pub(crate) fn started(&mut self, key: &K) {
        self.dispatched.remove(key);
        self.running.insert(key.clone());
    }

    /// A reconcile of `key` ended (or was cancelled): a change during it is queued again.
    pub(crate) fn finished(&mut self, key: &K) {
        self.running.remove(key);
        if let Some(origin) = self.rerun.remove(key) {
            self.push(key.clone(), origin);
        }
        self.wake();
    }

    /// A handed-out `key` will not run (its object is gone); one more run asked for meanwhile
    /// ([`push_again`](Queue::push_again)) is queued.
    pub(crate) fn forget(&mut self, key: &K) {
        if self.dispatched.remove(key) {
            if let Some(origin) = self.rerun.remove(key) {
                self.push(key.clone(), origin);
            }
            self.wake();
        }
    }

    /// `key` must run once more, also when a run of it is handed out or running now (that
    /// run may read a cache that no longer has its object): queued now or when that run ends.
    pub(crate) fn push_again(&mut self, key: K) {
        if self.dispatched.contains(&key) || self.running.contains(&key) {
            self.rerun.insert(key, Origin::Live);
        } else {
            self.push(key, Origin::Live);
        }
    }

    /// Objects waiting in either lane.
    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// A [`Queue`] shared by the trigger stream and the reconciles of one controller loop.
pub(crate) struct Dispatch<R: Object> {
    queue: Mutex<Queue<ObjectRef<R>>>,
    /// Objects gone from the server although they still carried the operator's finalizer (see
    /// [`Dispatch::lost`]), by key, waiting for their turn.
    lost: Mutex<Lost<R>>,
    /// Where a lost object goes when its turn comes: the controller loop runs its cleanup.
    orphans: UnboundedSender<Arc<R>>,
    /// The uids of objects being deleted whose finalizer this loop removed, with when: see
    /// [`Dispatch::released`].
    released: Mutex<HashMap<String, Instant>>,
}

/// How long a [`Dispatch::released`] uid is remembered when the watch never reports its
/// deletion (a relist drops it silently): far beyond any watch lag.
const RELEASED_FOR: Duration = Duration::from_secs(600);

impl<R: Object> Dispatch<R> {
    /// A queue handing the controller at most `capacity` objects at once; lost objects leave
    /// through `orphans` when their turn comes.
    pub(crate) fn new(capacity: usize, orphans: UnboundedSender<Arc<R>>) -> Arc<Self> {
        Arc::new(Dispatch {
            queue: Mutex::new(Queue::new(capacity)),
            lost: Mutex::new(Lost {
                objects: HashMap::new(),
                fresh: Vec::new(),
            }),
            orphans,
            released: Mutex::new(HashMap::new()),
        })
    }

    /// The finalizer of the object with `uid`, being deleted, was removed after its cleanup
    /// ran. The cache may still hold a copy from before (the watch has not caught up with the
    /// removal), and a reconcile reading it would run the cleanup a second time; with this,
    /// [`is_released`](Dispatch::is_released) tells that copy apart. Sound because no finalizer
    /// can be added to an object once it is being deleted: its cleanup never needs to run
    /// again. Forgotten when the watch reports the deletion ([`forget_released`]
    /// (Dispatch::forget_released)), or after [`RELEASED_FOR`].
    pub(crate) fn released(&self, uid: &str) {
        let now = Instant::now();
        let mut released = self.released_uids();
        released.retain(|_, at| now.duration_since(*at) < RELEASED_FOR);
        released.insert(uid.to_owned(), now);
    }

    /// Whether the finalizer of the object with `uid` was [`released`](Dispatch::released).
    pub(crate) fn is_released(&self, uid: &str) -> bool {
        self.released_uids().contains_key(uid)
    }

    /// The object with `uid` is gone: no copy of it will be read again.
    pub(crate) fn forget_released(&self, uid: &str) {
        self.released_uids().remove(uid);
    }

    fn released_uids(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.released
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `object` was deleted from the server while it still carried the operator's finalizer,
    /// so its cleanup never ran (a `DELETE` that read it before the finalizer was added removes
    /// it anyway: kube-apiserver's kubernetes/kubernetes#77988). It is queued like a change;
    /// when its turn comes (after a reconcile of it still running, never beside one), it leaves
    /// through `orphans` instead of going to the controller, whose cache no longer has it.
    ///
    /// Called from the trigger stream itself: it takes no lock of the queue.
    pub(crate) fn lost(&self, object: Arc<R>) {
        let key = key_of(object.as_ref());
        let mut lost = self.lost_objects();
        lost.fresh.push(key.clone());
        lost.objects.insert(key, object);
    }

    fn lost_objects(&self) -> MutexGuard<'_, Lost<R>> {
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> MutexGuard<'_, Queue<ObjectRef<R>>> {
        // A panic never happens while the lock is held (no user code runs under it).
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks `object` running until the returned guard drops (also when its reconcile is
    /// cancelled).
    pub(crate) fn running(self: &Arc<Self>, object: &R) -> Running<R> {
        let key = key_of(object);
        self.lock().started(&key);
        Running {
            dispatch: self.clone(),
            key,
        }
    }

    /// Queues `object` as a live change (a retry that should not wait for its backoff): the
    /// controller's scheduler runs it now instead of at its scheduled retry.
    pub(crate) fn retry_now(&self, namespace: Option<&str>, name: &str) {
        let mut key = ObjectRef::new(name);
        key.namespace = namespace.map(str::to_owned);
        self.lock().push(key, Origin::Live);
    }

    /// The object `name` in `namespace`, handed out, will not run.
    pub(crate) fn forget(&self, namespace: Option<&str>, name: &str) {
        let mut key = ObjectRef::new(name);
        key.namespace = namespace.map(str::to_owned);
        self.lock().forget(&key);
    }

    /// The trigger stream of the controller: the changes of `input`, queued, handed out as
    /// the controller has room, with the object `store` holds then (none for objects gone).
    pub(crate) fn stream(
        self: &Arc<Self>,
        input: BoxStream<'static, (Arc<R>, Origin)>,
        store: Store<R>,
    ) -> impl Stream<Item = Arc<R>> + Send + 'static {
        Dispatched {
            dispatch: self.clone(),
            input: Some(input),
            store,
        }
    }
}

/// The lost objects of a [`Dispatch`]: by key, and the keys not queued yet.
struct Lost<R: Object> {
    objects: HashMap<ObjectRef<R>, Arc<R>>,
    fresh: Vec<ObjectRef<R>>,
}

/// The queue's key of `object`: namespace and name only.
fn key_of<R: Object>(object: &R) -> ObjectRef<R> {
    let meta = kube::Resource::meta(object);
    let mut key = ObjectRef::new(meta.name.as_deref().unwrap_or(""));
    key.namespace.clone_from(&meta.namespace);
    key
}

/// Ends the running mark of one reconcile.
pub(crate) struct Running<R: Object> {
    dispatch: Arc<Dispatch<R>>,
    key: ObjectRef<R>,
}

impl<R: Object> Drop for Running<R> {
    fn drop(&mut self) {
        self.dispatch.lock().finished(&self.key);
    }
}

struct Dispatched<R: Object> {
    dispatch: Arc<Dispatch<R>>,
    input: Option<BoxStream<'static, (Arc<R>, Origin)>>,
    store: Store<R>,
}

impl<R: Object> Stream for Dispatched<R> {
    type Item = Arc<R>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Arc<R>>> {
        let this = self.get_mut();
        let mut queue = this.dispatch.lock();
        // Everything that arrived joins the queue first, so the order is the arrival order.
        while let Some(input) = this.input.as_mut() {
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some((object, origin))) => queue.push(key_of(object.as_ref()), origin),
                Poll::Ready(None) => this.input = None,
                Poll::Pending => break,
            }
        }
        for key in std::mem::take(&mut this.dispatch.lost_objects().fresh) {
            queue.push_again(key);
        }
        while let Some(key) = queue.pop() {
            let lost = this.dispatch.lost_objects().objects.remove(&key);
            if let Some(lost) = lost {
                // Its cleanup holds the key's slot like a reconcile; an object of the same name
                // created meanwhile runs after it.
                queue.rerun.insert(key.clone(), Origin::Live);
                if this.dispatch.orphans.unbounded_send(lost).is_err() {
                    queue.rerun.remove(&key);
                    queue.forget(&key);
                }
                continue;
            }
            match this.store.get(&key) {
                Some(object) => return Poll::Ready(Some(object)),
                // Deleted while it waited: nothing to reconcile.
                None => queue.forget(&key),
            }
        }
        if this.input.is_none() && queue.len() == 0 {
            return Poll::Ready(None);
        }
        queue.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Which changes of a shared watch belong to its latest (re)list: the watch's side records
/// each list's start and size, a subscriber counts what it received since the start.
#[derive(Debug, Default)]
pub(crate) struct ListPhase {
    /// Lists started so far.
    started: AtomicU64,
    /// The list the size below belongs to, and how many objects it dispatched.
    listed: Mutex<(u64, usize)>,
}

impl ListPhase {
    /// A (re)list starts: nothing of it was dispatched yet.
    pub(crate) fn list_started(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }

    /// The list that started last is complete and handed its `objects` to the subscribers.
    pub(crate) fn list_done(&self, objects: usize) {
        let started = self.started.load(Ordering::SeqCst);
        *self
            .listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (started, objects);
    }

    /// Tags each change of `changes` (the watch's applies, in the order it dispatched them)
    /// with its origin.
    pub(crate) fn tag<R: Send + Sync + 'static>(
        self: Arc<Self>,
        changes: impl Stream<Item = Arc<R>> + Send + 'static,
    ) -> impl Stream<Item = (Arc<R>, Origin)> + Send + 'static {
        let mut seen = (0u64, 0usize);
        changes.map(move |object| (object, self.origin(&mut seen)))
    }

    /// The origin of the next change a subscriber receives; `seen` is its list and count.
    fn origin(&self, seen: &mut (u64, usize)) -> Origin {
        let started = self.started.load(Ordering::SeqCst);
        if seen.0 != started {
            *seen = (started, 0);
        }
        let (listed, objects) = *self
            .listed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Still listing, or not past what the list dispatched.
        if listed != started || seen.1 < objects {
            seen.1 += 1;
            Origin::Backlog
        } else {
            Origin::Live
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut Queue<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(key) = queue.pop() {
            queue.started(&key);
            queue.finished(&key);
            out.push(key);
        }
        out
    }

    #[test]
    fn ready_objects_leave_in_arrival_order() {
        let mut queue = Queue::new(1);
        for key in [5, 3, 9, 1, 7] {
            queue.push(key, Origin::Live);
        }
        assert_eq!(drain(&mut queue), [5, 3, 9, 1, 7]);
    }

    #[test]
    fn live_changes_go_ahead_of_the_backlog() {
        let mut queue = Queue::new(1);
        for key in 0..10 {
            queue.push(key, Origin::Backlog);
        }
        queue.push(100, Origin::Live);
        assert_eq!(queue.pop(), Some(100));
    }

    #[test]
    fn a_backlog_object_changed_live_is_promoted_once() {
        let mut queue = Queue::new(1);
        for key in 0..3 {
            queue.push(key, Origin::Backlog);
        }
        queue.push(2, Origin::Live);
        assert_eq!(drain(&mut queue), [2, 0, 1]);
    }

    #[test]
    fn the_backlog_gets_its_share_under_a_stream_of_live_changes() {
        let mut queue = Queue::new(1);
        for key in 0..3 {
            queue.push(key, Origin::Backlog);
        }
        let mut order = Vec::new();
        for live in 100..120 {
            queue.push(live, Origin::Live);
            let key = queue.pop().unwrap();
            queue.started(&key);
            queue.finished(&key);
            order.push(key);
        }
        let served: Vec<u32> = order.iter().copied().filter(|key| *key < 100).collect();
        assert_eq!(served, [0, 1, 2], "{order:?}");
        // Never more than LIVE_SHARE live ones in a row while the backlog waited.
        let first = order.iter().position(|key| *key == 0).unwrap();
        assert!(first <= LIVE_SHARE as usize, "{order:?}");
    }

    #[test]
    fn at_most_capacity_objects_are_handed_out() {
        let mut queue = Queue::new(2);
        for key in 0..5 {
            queue.push(key, Origin::Live);
        }
        assert_eq!(queue.pop(), Some(0));
        assert_eq!(queue.pop(), Some(1));
        assert_eq!(queue.pop(), None);
        queue.started(&0);
        assert_eq!(queue.pop(), None);
        queue.finished(&0);
        assert_eq!(queue.pop(), Some(2));
        // A handed-out key that will not run frees its place.
        queue.forget(&1);
        assert_eq!(queue.pop(), Some(3));
    }

    #[test]
    fn a_change_while_running_runs_again_after_never_beside() {
        let mut queue = Queue::new(4);
        queue.push(1, Origin::Live);
        assert_eq!(queue.pop(), Some(1));
        queue.started(&1);
        queue.push(1, Origin::Live);
        assert_eq!(queue.pop(), None, "not twice at once");
        queue.finished(&1);
        assert_eq!(queue.pop(), Some(1));
    }

    #[test]
    fn a_change_before_the_run_starts_is_in_that_run() {
        let mut queue = Queue::new(4);
        queue.push(1, Origin::Live);
        assert_eq!(queue.pop(), Some(1));
        queue.push(1, Origin::Live);
        queue.started(&1);
        queue.finished(&1);
        assert_eq!(queue.pop(), None);
    }

    #[test]
    fn a_run_started_elsewhere_takes_a_place_and_holds_its_object() {
        let mut queue = Queue::new(2);
        queue.push(1, Origin::Live);
        queue.push(2, Origin::Live);
        // A requeue of 1 started by the controller's own timer.
        queue.started(&1);
        assert_eq!(queue.pop(), Some(2));
        assert_eq!(queue.pop(), None);
        queue.finished(&1);
        assert_eq!(queue.pop(), Some(1));
    }

    #[test]
    fn pushed_again_while_running_runs_once_more_after() {
        let mut queue = Queue::new(4);
        queue.push(1, Origin::Live);
        assert_eq!(queue.pop(), Some(1));
        queue.started(&1);
        queue.push_again(1);
        assert_eq!(queue.pop(), None, "not beside the running one");
        queue.finished(&1);
        assert_eq!(queue.pop(), Some(1));
        queue.started(&1);
        queue.finished(&1);
        assert_eq!(queue.pop(), None, "once");
    }

    #[test]
    fn pushed_again_while_handed_out_runs_once_more_after() {
        // A plain change before the run starts is part of that run; one pushed again is not
        // (the run may have read a cache without the object).
        let mut queue = Queue::new(4);
        queue.push(1, Origin::Live);
        assert_eq!(queue.pop(), Some(1));
        queue.push_again(1);
        queue.started(&1);
        queue.finished(&1);
        assert_eq!(queue.pop(), Some(1));
    }

    #[test]
    fn a_forgotten_key_pushed_again_is_queued() {
        let mut queue = Queue::new(1);
        queue.push(1, Origin::Live);
        queue.push(2, Origin::Live);
        assert_eq!(queue.pop(), Some(1));
        queue.push_again(1);
        queue.forget(&1);
        assert_eq!(drain(&mut queue), [2, 1]);
    }

    #[test]
    fn pushed_again_when_idle_is_an_ordinary_change() {
        let mut queue = Queue::new(1);
        queue.push(1, Origin::Backlog);
        queue.push_again(1);
        queue.push_again(2);
        assert_eq!(drain(&mut queue), [1, 2]);
    }

    #[test]
    fn a_released_uid_is_known_until_its_deletion_is_seen() {
        let (orphans, _orphaned) = futures::channel::mpsc::unbounded();
        let dispatch = Dispatch::<k8s_openapi::api::core::v1::ConfigMap>::new(1, orphans);
        assert!(!dispatch.is_released("a"));
        dispatch.released("a");
        dispatch.released("b");
        assert!(dispatch.is_released("a"));
        dispatch.forget_released("a");
        assert!(!dispatch.is_released("a"));
        assert!(dispatch.is_released("b"));
    }

    #[test]
    fn list_phase_tags_the_listed_objects_as_backlog() {
        let phase = ListPhase::default();
        let mut seen = (0, 0);
        assert_eq!(phase.origin(&mut seen), Origin::Live);
        phase.list_started();
        // Dispatched before the watch's side saw the end of the list.
        assert_eq!(phase.origin(&mut seen), Origin::Backlog);
        phase.list_done(3);
        assert_eq!(phase.origin(&mut seen), Origin::Backlog);
        assert_eq!(phase.origin(&mut seen), Origin::Backlog);
        assert_eq!(phase.origin(&mut seen), Origin::Live);
        // A relist starts over.
        phase.list_started();
        phase.list_done(1);
        assert_eq!(phase.origin(&mut seen), Origin::Backlog);
        assert_eq!(phase.origin(&mut seen), Origin::Live);
    }
}
