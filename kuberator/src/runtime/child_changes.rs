//! Which changes of an owned child re-trigger its owner: spec changes and deletion (the default),
//! or every change, status included.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::{
    Resource,
    runtime::reflector::{ObjectRef, Store},
};

use super::live_map::LiveMap;

/// Which changes of an owned child re-trigger its owner
/// ([`Operator::owns_with`](crate::Operator::owns_with), macro `owns(Deployment, on = "status")`).
///
/// Either way, the echo of the operator's own child writes never re-triggers it (see
/// [`OwnWrites`](super::OwnWrites)), and a child's deletion always does.
///
/// ```no_run
/// # use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};
/// # use kuberator::{Operator, runtime::ChildChanges};
/// # fn doc(operator: Operator<ConfigMap>) -> Operator<ConfigMap> {
/// operator
///     .owns::<ConfigMap>() // spec (or, without a generation, data) changes and deletion
///     .owns_with::<Deployment>(ChildChanges::Status) // also every status update
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChildChanges {
    /// A new `metadata.generation` (a spec change) or a deletion; for kinds without a
    /// generation (ConfigMap, Secret) every change of their content. Status updates, label and
    /// annotation edits do not re-trigger — e.g. the 3–5 status writes kube-controller-manager
    /// makes while a Deployment rolls out.
    #[default]
    Spec,
    /// Every change, status and metadata included: for owners that report their children's
    /// status (replicas ready, a Job's completion).
    Status,
}

impl ChildChanges {
    /// `children` without the changes this choice ignores. `cache` is the children's cache:
    /// an event of a child it no longer holds is a deletion and always passes.
    pub(crate) fn filter<C>(
        self,
        children: impl Stream<Item = Arc<C>> + Send + 'static,
        cache: Store<C>,
    ) -> impl Stream<Item = Arc<C>> + Send + 'static
    where
        C: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        let mut seen = LiveMap::new(cache);
        children.filter(move |child| {
            let keep = match self {
                ChildChanges::Status => true,
                ChildChanges::Spec => {
                    let key = ObjectRef::from_obj(child.as_ref());
                    if seen.cached(&key) {
                        seen.insert(key, spec_version(child.as_ref()))
                            != Some(spec_version(child.as_ref()))
                    } else {
                        seen.remove(&key);
                        true
                    }
                }
            };
            futures::future::ready(keep)
        })
    }
}

/// What changes with the spec: the generation, or the resourceVersion of a kind without one;
/// with the deletion mark.
fn spec_version<C: Resource>(child: &C) -> String {
    let meta = child.meta();
    let deleting = if meta.deletion_timestamp.is_some() {
        "-deleting"
    } else {
        ""
    };
    match (meta.generation, &meta.resource_version) {
        (Some(generation), _) => format!("g{generation}{deleting}"),
        (None, Some(version)) => format!("r{version}{deleting}"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::{
        api::ObjectMeta,
        runtime::{reflector, watcher},
    };

    use super::*;

    fn deployment(generation: i64, version: &str) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                generation: Some(generation),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        }
    }

    /// Feeds `events` through the filter with a cache holding `cached`; the resourceVersions
    /// that pass.
    async fn passed(
        changes: ChildChanges,
        cached: &[Deployment],
        events: Vec<Deployment>,
    ) -> Vec<String> {
        let (store, mut writer) = reflector::store::<Deployment>();
        for object in cached {
            writer.apply_watcher_event(&watcher::Event::Apply(object.clone()));
        }
        changes
            .filter(
                futures::stream::iter(events.into_iter().map(Arc::new)),
                store,
            )
            .map(|d| d.metadata.resource_version.clone().unwrap_or_default())
            .collect()
            .await
    }

    #[tokio::test]
    async fn by_default_only_a_new_generation_passes() {
        let cached = [deployment(2, "13")];
        let events = vec![
            deployment(1, "10"),
            deployment(1, "11"),
            deployment(2, "12"),
            deployment(2, "13"),
        ];
        assert_eq!(
            passed(ChildChanges::Spec, &cached, events).await,
            ["10", "12"]
        );
    }

    #[tokio::test]
    async fn with_status_every_change_passes() {
        let cached = [deployment(1, "11")];
        let events = vec![deployment(1, "10"), deployment(1, "11")];
        assert_eq!(
            passed(ChildChanges::Status, &cached, events).await,
            ["10", "11"]
        );
    }

    #[tokio::test]
    async fn a_deleted_child_always_passes() {
        // Not in the cache any more: the deletion's event, with the generation last seen.
        let events = vec![deployment(1, "10"), deployment(1, "10")];
        assert_eq!(passed(ChildChanges::Spec, &[], events).await, ["10", "10"]);
    }
}
