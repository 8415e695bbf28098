//! Own writes: the resourceVersions the operator's child applies returned, so that the watch
//! events they cause (the echo of its own write) do not re-trigger the owner, while any other
//! writer's change still does.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::{Stream, StreamExt};
use kube::Resource;
use tokio::{sync::watch, time::Instant};

/// How many resourceVersions of one child are remembered (a reconcile applying one child
/// several times).
const VERSIONS_PER_CHILD: usize = 4;
/// Above this many children remembered, those written longer than [`KEEP`] ago are forgotten.
const PRUNE_ABOVE: usize = 1024;
/// How long a write is remembered once the map is large (its echo arrives within milliseconds).
const KEEP: Duration = Duration::from_secs(300);
/// The longest an event of a child waits for an apply of it still in flight.
const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ChildKey {
    /// Group and kind (a metadata-only watch event names the same child as the full object).
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl ChildKey {
    fn of<C: Resource<DynamicType = ()>>(object: &C) -> Option<Self> {
        Some(ChildKey {
            group: C::group(&()).into_owned(),
            kind: C::kind(&()).into_owned(),
            namespace: object.meta().namespace.clone(),
            name: object.meta().name.clone()?,
        })
    }
}

#[derive(Debug)]
struct Written {
    /// Applies of this child sent and not answered yet.
    pending: u32,
    versions: VecDeque<String>,
    at: Instant,
}

#[derive(Debug)]
struct Inner {
    children: Mutex<HashMap<ChildKey, Written>>,
    /// Bumped whenever an apply is answered, so waiting events look again.
    answered: watch::Sender<u64>,
}

/// The operator's own child writes, shared between a [`Ctx`](crate::Ctx) (which records each
/// [`apply_child`](crate::Ctx::apply_child)) and the [`Operator`](crate::Operator) (whose `owns`
/// watches drop the events those writes cause). Cheap to clone.
///
/// A watch event of an owned child whose resourceVersion one of the operator's applies returned
/// is the echo of that apply: it does not re-trigger the owner. An event that arrives while an
/// apply of the same child is still in flight waits for its answer before it is judged. Every
/// other change — another writer's edit, a deletion, a status update by a built-in controller —
/// re-triggers the owner, so drift is corrected.
///
/// Hand-written reconcilers that apply children themselves can record their writes with
/// [`begin`](Self::begin) and share the registry with [`Operator::own_writes`](crate::Operator::own_writes).
///
/// ```
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # use kube::api::ObjectMeta;
/// use kuberator::runtime::OwnWrites;
///
/// let writes = OwnWrites::new();
/// let child = ConfigMap {
///     metadata: ObjectMeta {
///         name: Some("site".into()),
///         namespace: Some("default".into()),
///         ..ObjectMeta::default()
///     },
///     ..ConfigMap::default()
/// };
/// let write = writes.begin(&child);
/// // … the apply returned the object with resourceVersion "42":
/// write.answered(Some("42"));
/// assert!(writes.is_own(&child, "42"));
/// assert!(!writes.is_own(&child, "43"));
/// ```
#[derive(Clone, Debug)]
pub struct OwnWrites {
    inner: Arc<Inner>,
}

impl Default for OwnWrites {
    fn default() -> Self {
        Self::new()
    }
}

impl OwnWrites {
    /// An empty registry.
    pub fn new() -> Self {
        OwnWrites {
            inner: Arc::new(Inner {
                children: Mutex::new(HashMap::new()),
                answered: watch::Sender::new(0),
            }),
        }
    }

    /// Marks an apply of `child` as sent; call [`OwnWrite::answered`] with the resourceVersion
    /// the server returned (dropping the guard counts as a failed write).
    pub fn begin<C: Resource<DynamicType = ()>>(&self, child: &C) -> OwnWrite {
        let key = ChildKey::of(child);
        if let Some(key) = &key {
            let mut children = self.lock();
            let written = children.entry(key.clone()).or_insert_with(|| Written {
                pending: 0,
                versions: VecDeque::new(),
                at: Instant::now(),
            });
            written.pending += 1;
        }
        OwnWrite {
            writes: self.clone(),
            key,
        }
    }

    /// Whether `resource_version` of `child` is one this operator's applies returned.
    pub fn is_own<C: Resource<DynamicType = ()>>(&self, child: &C, resource_version: &str) -> bool {
        ChildKey::of(child).is_some_and(|key| {
            self.lock()
                .get(&key)
                .is_some_and(|w| w.versions.iter().any(|v| v == resource_version))
        })
    }

    /// `child` is gone (its deletion was watched): what was remembered of it goes too, unless
    /// an apply of it is in flight (that apply re-creates it). Without this, a write whose echo
    /// never came (an apply that changed nothing) would be kept until pruned.
    pub(crate) fn forget<C: Resource<DynamicType = ()>>(&self, child: &C) {
        if let Some(key) = ChildKey::of(child) {
            let mut children = self.lock();
            if children.get(&key).is_some_and(|w| w.pending == 0) {
                children.remove(&key);
            }
        }
    }

    /// How many children are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChildKey, Written>> {
        self.inner
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, key: &ChildKey, version: Option<&str>) {
        {
            let mut children = self.lock();
            if let Some(written) = children.get_mut(key) {
                written.pending = written.pending.saturating_sub(1);
                written.at = Instant::now();
                if let Some(version) = version
                    && !written.versions.iter().any(|v| v == version)
                {
                    if written.versions.len() == VERSIONS_PER_CHILD {
                        written.versions.pop_front();
                    }
                    written.versions.push_back(version.to_owned());
                }
                if written.pending == 0 && written.versions.is_empty() {
                    children.remove(key);
                }
            }
            if children.len() > PRUNE_ABOVE {
                children.retain(|_, w| w.pending > 0 || w.at.elapsed() < KEEP);
            }
        }
        self.inner.answered.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the change of `child` the watch reported was this operator's own write, waiting
    /// (at most [`MAX_WAIT`]) for applies of it still in flight.
    pub(crate) async fn caused_by_us<C: Resource<DynamicType = ()>>(&self, child: &C) -> bool {
        let (Some(key), Some(version)) =
            (ChildKey::of(child), child.meta().resource_version.clone())
        else {
            return false;
        };
        let mut answered = self.inner.answered.subscribe();
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            {
                let mut children = self.lock();
                let Some(written) = children.get_mut(&key) else {
                    return false;
                };
                if let Some(at) = written.versions.iter().position(|v| *v == version) {
                    // Seen once; a later relist with the same version is harmless either way.
                    written.versions.remove(at);
                    if written.pending == 0 && written.versions.is_empty() {
                        children.remove(&key);
                    }
                    return true;
                }
                if written.pending == 0 {
                    return false;
                }
            }
            match tokio::time::timeout_at(deadline, answered.changed()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }

    /// `children` without the events the operator's own writes caused.
    pub(crate) fn filter<C: Resource<DynamicType = ()> + Send + Sync + 'static>(
        &self,
        children: impl Stream<Item = Arc<C>> + Send + 'static,
    ) -> impl Stream<Item = Arc<C>> + Send + 'static {
        let writes = self.clone();
        children.filter_map(move |child| {
            let writes = writes.clone();
            async move {
                if writes.caused_by_us(child.as_ref()).await {
                    tracing::trace!(
                        child = child.meta().name.as_deref().unwrap_or(""),
                        "own write; not re-triggering the owner"
                    );
                    None
                } else {
                    Some(child)
                }
            }
        })
    }
}

/// One apply in flight, from [`OwnWrites::begin`].
#[derive(Debug)]
#[must_use = "call `answered` with the resourceVersion the apply returned"]
pub struct OwnWrite {
    writes: OwnWrites,
    key: Option<ChildKey>,
}

impl OwnWrite {
    /// The apply was answered with `resource_version` (`None`: it failed).
    pub fn answered(mut self, resource_version: Option<&str>) {
        if let Some(key) = self.key.take() {
            self.writes.finish(&key, resource_version);
        }
    }
}

impl Drop for OwnWrite {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.writes.finish(&key, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn child(name: &str, version: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        })
    }

    async fn passed(writes: &OwnWrites, events: Vec<Arc<ConfigMap>>) -> Vec<String> {
        writes
            .filter(futures::stream::iter(events))
            .map(|c| c.metadata.resource_version.clone().unwrap_or_default())
            .collect()
            .await
    }

    #[tokio::test]
    async fn the_echo_of_an_own_write_is_dropped_and_other_writes_pass() {
        let writes = OwnWrites::new();
        writes.begin(&*child("a", "")).answered(Some("10"));
        let events = vec![child("a", "10"), child("a", "11"), child("b", "10")];
        assert_eq!(passed(&writes, events).await, ["11", "10"]);
    }

    #[tokio::test]
    async fn an_event_during_an_apply_waits_for_its_answer() {
        let writes = OwnWrites::new();
        let write = writes.begin(&*child("a", ""));
        let answer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            write.answered(Some("7"));
        });
        assert!(passed(&writes, vec![child("a", "7")]).await.is_empty());
        answer.await.unwrap();
    }

    #[tokio::test]
    async fn a_metadata_only_event_names_the_same_child() {
        let writes = OwnWrites::new();
        writes.begin(&*child("a", "")).answered(Some("10"));
        let meta = kube::core::PartialObjectMeta::<ConfigMap> {
            metadata: child("a", "10").metadata.clone(),
            ..Default::default()
        };
        let events = writes.filter(futures::stream::iter([Arc::new(meta)]));
        assert_eq!(events.count().await, 0);
    }

    /// Children written and never echoed (deleted before their event came) are forgotten: the
    /// map stays bounded under churn.
    #[tokio::test(start_paused = true)]
    async fn writes_without_an_echo_are_forgotten() {
        let writes = OwnWrites::new();
        for i in 0..3 * PRUNE_ABOVE {
            writes
                .begin(&*child(&format!("gone-{i}"), ""))
                .answered(Some("1"));
        }
        assert!(writes.lock().len() > PRUNE_ABOVE);
        tokio::time::advance(KEEP + Duration::from_secs(1)).await;
        writes.begin(&*child("live", "")).answered(Some("2"));
        assert_eq!(writes.lock().len(), 1);
    }

    /// A child whose deletion was watched is forgotten at once (the registry is bounded by the
    /// live children, not only by the prune age), unless an apply of it is in flight.
    #[test]
    fn a_deleted_child_is_forgotten_unless_an_apply_is_in_flight() {
        let writes = OwnWrites::new();
        for i in 0..100 {
            writes
                .begin(&*child(&format!("child-{i}"), ""))
                .answered(Some("1"));
        }
        let in_flight = writes.begin(&*child("child-0", ""));
        for i in 0..100 {
            writes.forget(&*child(&format!("child-{i}"), "2"));
        }
        assert_eq!(writes.len(), 1, "only the child with an apply in flight");
        in_flight.answered(Some("3"));
        assert!(writes.is_own(&*child("child-0", ""), "3"));
    }

    #[tokio::test]
    async fn a_failed_apply_lets_the_event_through() {
        let writes = OwnWrites::new();
        let write = writes.begin(&*child("a", ""));
        drop(write);
        assert_eq!(passed(&writes, vec![child("a", "7")]).await, ["7"]);
    }
}
