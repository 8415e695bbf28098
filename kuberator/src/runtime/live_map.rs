//! A per-object map bounded by the objects a cache holds: the filters between watch and
//! reconcile remember something per object, and forget the objects the cache let go.

use std::collections::HashMap;

use kube::{
    Resource,
    runtime::reflector::{ObjectRef, Store},
};

/// Above this many entries, those of objects the cache no longer holds are dropped (once the
/// map is also twice the cache: pruning then costs O(1) per insert, amortized).
const PRUNE_ABOVE: usize = 1024;

/// Values per object of `K`, at most `max(1024, 2 × live objects) + 1` of them.
pub(crate) struct LiveMap<K: Resource<DynamicType = ()> + 'static, V> {
    map: HashMap<ObjectRef<K>, V>,
    cache: Store<K>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static, V> LiveMap<K, V> {
    /// An empty map, bounded by `cache`.
    pub(crate) fn new(cache: Store<K>) -> Self {
        LiveMap {
            map: HashMap::new(),
            cache,
        }
    }

    /// Whether the cache holds `key`.
    pub(crate) fn cached(&self, key: &ObjectRef<K>) -> bool {
        self.cache.get(key).is_some()
    }

    /// Sets the value of `key`, returning the previous one.
    pub(crate) fn insert(&mut self, key: ObjectRef<K>, value: V) -> Option<V> {
        let previous = self.map.insert(key, value);
        if self.map.len() > PRUNE_ABOVE && self.map.len() > 2 * self.cache.len() {
            let cache = &self.cache;
            self.map.retain(|key, _| cache.get(key).is_some());
        }
        previous
    }

    /// Forgets `key`.
    pub(crate) fn remove(&mut self, key: &ObjectRef<K>) {
        self.map.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};

    use super::*;

    fn named(name: &str) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        cm.metadata.namespace = Some("default".into());
        cm
    }

    /// Churn: 10,000 objects pass through, 100 stay live; the map never holds more than the
    /// bound, and what it keeps after pruning is the live objects.
    #[test]
    fn stays_bounded_by_the_live_objects_under_churn() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let mut map = LiveMap::new(store);
        let mut largest = 0;
        for i in 0..10_000 {
            let object = named(&format!("o-{i}"));
            let live = i % 100 == 0;
            if live {
                writer.apply_watcher_event(&watcher::Event::Apply(object.clone()));
            }
            map.insert(ObjectRef::from_obj(&object), i);
            largest = largest.max(map.len());
        }
        assert!(largest <= PRUNE_ABOVE + 1, "{largest}");
        // With many live objects the bound follows them: 2 × live.
        for i in 0..3000 {
            let object = named(&format!("live-{i}"));
            writer.apply_watcher_event(&watcher::Event::Apply(object.clone()));
            map.insert(ObjectRef::from_obj(&object), i);
        }
        assert!(map.len() <= 2 * 3100 + 1, "{}", map.len());
        assert!(map.len() >= 3000);
    }
}
