//! Skip-on-start: after a (re)start, the initial list does not reconcile again the objects whose
//! status already describes their generation ([`Operator::skip_observed_on_start`]).
//!
//! [`Operator::skip_observed_on_start`]: super::Operator::skip_observed_on_start

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::{
    Resource,
    runtime::reflector::{ObjectRef, Store},
};

use super::live_map::LiveMap;
use crate::finalize::Object;

/// Whether an object's status describes its current generation.
pub(crate) type UpToDate<R> = Arc<dyn Fn(&R) -> bool + Send + Sync>;

/// What the trigger streams of one controller need to skip the initial list's up-to-date
/// objects: which objects are up to date, the operator's finalizer, and the caches of the
/// primaries (one per scope) to find a child's owner in.
pub(crate) struct StartSkip<R: Object> {
    up_to_date: UpToDate<R>,
    finalizer: Option<String>,
    primaries: Store<R>,
}

impl<R: Object> Clone for StartSkip<R> {
    fn clone(&self) -> Self {
        StartSkip {
            up_to_date: self.up_to_date.clone(),
            finalizer: self.finalizer.clone(),
            primaries: self.primaries.clone(),
        }
    }
}

impl<R: Object> StartSkip<R> {
    pub(crate) fn new(
        up_to_date: UpToDate<R>,
        finalizer: Option<String>,
        primaries: Store<R>,
    ) -> Self {
        StartSkip {
            up_to_date,
            finalizer,
            primaries,
        }
    }

    /// Whether `object` needs no reconcile at start: not being deleted, carrying the finalizer
    /// (an object without it must get it; one being deleted must be cleaned up) and its
    /// `status.observedGeneration` equal to `metadata.generation`.
    pub(crate) fn skips(&self, object: &R) -> bool {
        let meta = object.meta();
        let finalized = self
            .finalizer
            .as_deref()
            .is_none_or(|own| meta.finalizers.iter().flatten().any(|f| f == own));
        meta.deletion_timestamp.is_none() && finalized && (self.up_to_date)(object)
    }

    /// The primary trigger stream without the first sighting of each up-to-date object (its
    /// appearance in the initial list); later changes pass, as does every object first seen
    /// not up to date.
    pub(crate) fn primaries<T: Send + 'static>(
        self,
        changed: impl Stream<Item = (Arc<R>, T)> + Send + 'static,
    ) -> impl Stream<Item = (Arc<R>, T)> + Send + 'static {
        let mut seen = LiveMap::new(self.primaries.clone());
        changed.filter(move |(object, _)| {
            let first_sighting = seen
                .insert(ObjectRef::from_obj(object.as_ref()), ())
                .is_none();
            let skip = first_sighting && self.skips(object.as_ref());
            if skip {
                tracing::debug!(
                    object = object.meta().name.as_deref().unwrap_or(""),
                    generation = object.meta().generation,
                    "observed at its generation; not reconciled at start"
                );
            }
            futures::future::ready(!skip)
        })
    }

    /// The trigger stream of an owned kind without the first sighting of each child whose
    /// owner the primaries' cache holds: the owner's own initial list entry already decides
    /// about it (reconciled, or skipped as up to date), so the children's initial list
    /// re-triggers no owner. Waits for the primaries' first list before deciding. Later changes
    /// of a child (a new generation, a deletion) pass as usual.
    pub(crate) fn children<C>(
        self,
        children: impl Stream<Item = Arc<C>> + Send + 'static,
        cache: Store<C>,
    ) -> impl Stream<Item = Arc<C>> + Send + 'static
    where
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let primaries = self.primaries.clone();
        let mut seen = LiveMap::new(cache);
        let filtered = children.filter(move |child| {
            let key = ObjectRef::from_obj(child.as_ref());
            let skip = seen.cached(&key)
                && seen.insert(key, ()).is_none()
                && owner_ref::<R, C>(child.as_ref())
                    .is_some_and(|owner| self.primaries.get(&owner).is_some());
            if skip {
                tracing::trace!(
                    child = child.meta().name.as_deref().unwrap_or(""),
                    "child in the initial list; its owner's own entry decides"
                );
            }
            futures::future::ready(!skip)
        });
        futures::stream::once(async move {
            // The owner must be in the cache to be found: wait for the first list of `R`.
            let _ = primaries.wait_until_ready().await;
            filtered
        })
        .flatten()
    }
}

/// The owner of `child` of kind `R`, from its controller owner reference.
fn owner_ref<R: Object, C: Resource>(child: &C) -> Option<ObjectRef<R>> {
    let meta = child.meta();
    meta.owner_references
        .iter()
        .flatten()
        .filter(|owner| owner.controller == Some(true))
        .find_map(|owner| ObjectRef::from_owner_ref(meta.namespace.as_deref(), owner, ()))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::OwnerReference,
    };
    use kube::{
        api::ObjectMeta,
        runtime::{reflector, watcher},
    };

    use super::*;

    fn config_map(name: &str, generation: i64, annotation: Option<i64>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                generation: Some(generation),
                finalizers: Some(vec!["example.com/cleanup".into()]),
                annotations: annotation.map(|g| {
                    [("observed".to_owned(), g.to_string())]
                        .into_iter()
                        .collect()
                }),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    /// "Up to date": the annotation `observed` equals the generation (a stand-in for a status).
    fn skip(primaries: Store<ConfigMap>) -> StartSkip<ConfigMap> {
        StartSkip::new(
            Arc::new(|cm: &ConfigMap| {
                cm.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("observed")?.parse::<i64>().ok())
                    == cm.metadata.generation
            }),
            Some("example.com/cleanup".into()),
            primaries,
        )
    }

    fn names(objects: &[Arc<ConfigMap>]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{}@{}",
                    o.metadata.name.clone().unwrap_or_default(),
                    o.metadata.generation.unwrap_or(0)
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn the_initial_list_skips_only_up_to_date_finalized_live_objects() {
        let (store, _writer) = reflector::store::<ConfigMap>();
        let mut deleting = config_map("deleting", 1, Some(1));
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let mut unfinalized = config_map("unfinalized", 1, Some(1));
        unfinalized.metadata.finalizers = None;
        let events = vec![
            config_map("current", 1, Some(1)),
            config_map("changed", 2, Some(1)),
            deleting,
            unfinalized,
            // A later change of the skipped object passes.
            config_map("current", 2, Some(1)),
            config_map("current", 2, Some(2)),
        ];
        let passed: Vec<Arc<ConfigMap>> = skip(store)
            .primaries(futures::stream::iter(
                events.into_iter().map(|e| (Arc::new(e), ())),
            ))
            .map(|(object, ())| object)
            .collect()
            .await;
        assert_eq!(
            names(&passed),
            [
                "changed@2",
                "deleting@1",
                "unfinalized@1",
                "current@2",
                "current@2"
            ]
        );
    }

    #[tokio::test]
    async fn a_child_in_the_initial_list_does_not_trigger_its_cached_owner() {
        let (owners, mut owner_writer) = reflector::store::<ConfigMap>();
        let owner = config_map("owner", 1, Some(1));
        owner_writer.apply_watcher_event(&watcher::Event::Init);
        owner_writer.apply_watcher_event(&watcher::Event::InitApply(owner));
        owner_writer.apply_watcher_event(&watcher::Event::InitDone);
        let (children, mut child_writer) = reflector::store::<ConfigMap>();
        let child = |name: &str, owner: &str, generation: i64| {
            let mut child = config_map(name, generation, None);
            child.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: owner.into(),
                uid: "u".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]);
            child
        };
        for c in [child("a", "owner", 1), child("b", "elsewhere", 1)] {
            child_writer.apply_watcher_event(&watcher::Event::Apply(c));
        }
        let events = vec![
            child("a", "owner", 1),     // initial list, owner cached: skipped
            child("b", "elsewhere", 1), // owner not cached: passes
            child("a", "owner", 2),     // a real change after start: passes
        ];
        let passed: Vec<Arc<ConfigMap>> = skip(owners)
            .children(
                futures::stream::iter(events.into_iter().map(Arc::new)),
                children,
            )
            .collect()
            .await;
        assert_eq!(names(&passed), ["b@1", "a@2"]);
    }
}
