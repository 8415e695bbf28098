//! `Finalize`: the finalizer flow and status writes, on top of an API provider.

use std::{fmt::Debug, future::Future, sync::Arc};

use async_trait::async_trait;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::object::HasStatus,
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use crate::{
    cache::ProvideApi,
    context::Context,
    error::{Error, ObjectKey, Result},
    status::{AsStatusError, ObserveGeneration, RecordError, WithStatusError},
};

/// What a resource type needs to be reconciled by kuberator.
pub trait Object:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<R> Object for R where
    R: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// How many times a write that hit a 409 conflict is retried at once before the error goes to the
/// controller's backoff.
const CONFLICT_RETRIES: usize = 3;

/// Adds/removes the finalizer around the user's handlers and writes status.
///
/// Implemented by [`K8sRepository`](crate::K8sRepository); implement it on your own type to keep
/// extra state next to the API provider.
#[async_trait]
pub trait Finalize<R: Object, P: ProvideApi<R>>: Send + Sync + 'static {
    /// The provider of API handles.
    fn api_provider(&self) -> &P;

    /// The field manager used for writes (server-side apply and patches).
    fn field_manager(&self) -> &str {
        "kuberator"
    }

    /// How status is written: a merge patch (the default) or a server-side apply as
    /// [`field_manager`](Finalize::field_manager).
    fn status_writes(&self) -> StatusWrites {
        StatusWrites::Merge
    }

    /// Runs `context`'s `handle_apply` or `handle_cleanup` with the finalizer added or removed
    /// around it.
    ///
    /// # Errors
    /// The handler's error, or an API error while patching the finalizer.
    ///
    /// # Access control
    /// `get` and `patch` on the resource.
    async fn finalize<C, F>(&self, object: Arc<R>, finalizer: &str, context: &C) -> Result<Action>
    where
        C: Context<R, F, P> + ?Sized,
        F: Finalize<R, P>,
        Self: Sized,
    {
        let api = self.api_provider().get(object.namespace().as_deref())?;
        with_finalizer(
            &api,
            finalizer,
            object,
            |o| context.handle_apply(o),
            |o| context.handle_cleanup(o),
        )
        .await
    }

    /// Writes `status` to the status subresource, with `observedGeneration` set to the object's
    /// `metadata.generation`.
    ///
    /// A JSON merge patch on `/status`: fields of `status` replace the server's, fields the status
    /// type does not have (written by others) are kept, `None` fields are removed. A 409 conflict
    /// is retried.
    ///
    /// # Errors
    /// An API error.
    ///
    /// # Access control
    /// `patch` on the resource's `status` subresource.
    async fn update_status<S>(&self, object: &R, mut status: S) -> Result<()>
    where
        R: HasStatus<Status = S>,
        S: ObserveGeneration + Serialize + Send + Sync + 'static,
    {
        if let Some(generation) = object.meta().generation {
            status.set_observed_generation(generation);
        }
        let api = self.api_provider().get(object.namespace().as_deref())?;
        patch_status(
            &api,
            object,
            &status,
            self.field_manager(),
            self.status_writes(),
        )
        .await
    }

    /// Like [`update_status`](Finalize::update_status), and sets (or clears with `None`) the
    /// status error from the user's error.
    ///
    /// # Errors
    /// An API error.
    ///
    /// # Access control
    /// `patch` on the resource's `status` subresource.
    async fn update_status_with_error<S, E, X>(
        &self,
        object: &R,
        mut status: S,
        error: Option<&E>,
    ) -> Result<()>
    where
        R: HasStatus<Status = S>,
        S: ObserveGeneration + WithStatusError<E, X> + Serialize + Send + Sync + 'static,
        E: AsStatusError<X> + Sync,
        X: Send,
    {
        status.set_status_error(error.map(|e| e.as_status_error()));
        self.update_status(object, status).await
    }

    /// Records `error` (or clears the recorded one) in the object's status, using
    /// [`RecordError`], and sets `observedGeneration`. Used by the controller after a failed
    /// reconcile.
    ///
    /// Only the status fields this changes are patched, so a status the handler wrote during the
    /// failed reconcile (a phase, conditions) is kept. An object without a status gets a complete
    /// one (`Default` plus the error), so a status field the schema requires (one without
    /// `Option` or `#[serde(default)]`) does not make the write a 422. With
    /// [`RecordError::conditions`], `Stalled` or `Reconciling` is set in the same write.
    ///
    /// # Errors
    /// An API error.
    ///
    /// # Access control
    /// `patch` on the resource's `status` subresource; `get` on it when the object has no status.
    async fn record_error(&self, object: &R, error: Option<&Error>) -> Result<()>
    where
        R: HasStatus,
        R::Status: ObserveGeneration + RecordError + Default + Clone + Serialize + Send + Sync,
    {
        let serde_error = |source| Error::Serde {
            action: "serializing the status of",
            object: ObjectKey::of(object),
            source,
        };
        let api = self.api_provider().get(object.namespace().as_deref())?;
        // The watched copy may predate a status the handler wrote in this very reconcile: when it
        // has none, read the server's before deciding there is none.
        let fresh;
        let existing = match object.status() {
            Some(status) => Some(status),
            None => {
                fresh = api
                    .get_status(&object.name_any())
                    .await
                    .map_err(|e| Error::kube("reading the status of", ObjectKey::of(object), e))?;
                fresh.status()
            }
        };
        let before = existing.cloned().unwrap_or_default();
        let mut after = before.clone();
        after.record_error(error);
        let generation = object.meta().generation;
        if let Some(generation) = generation {
            after.set_observed_generation(generation);
        }
        if let (Some(error), Some(conditions)) = (error, after.conditions()) {
            crate::status::mark_error(conditions, generation, error);
        }
        let before = serde_json::to_value(&before).map_err(serde_error)?;
        let after = serde_json::to_value(&after).map_err(serde_error)?;
        // No status yet: write a complete one (built from `Default`), so that fields the schema
        // requires are there; otherwise only the fields that changed, keeping other writers'.
        // A server-side apply writes the whole status: fields this manager applied before and
        // left out would be removed.
        let writes = self.status_writes();
        let changes = match (existing, after) {
            (None, serde_json::Value::Object(all)) => all,
            (_, after) => {
                let changes = changed_fields(&before, &after);
                match (writes, after) {
                    (StatusWrites::Apply, serde_json::Value::Object(all))
                        if !changes.is_empty() =>
                    {
                        all
                    }
                    _ => changes,
                }
            }
        };
        if changes.is_empty() {
            return Ok(());
        }
        patch_status(&api, object, &changes, self.field_manager(), writes).await
    }
}

/// The top-level fields of `after` that differ from `before`, with `null` for removed ones: a
/// merge patch that touches nothing else.
fn changed_fields(
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> serde_json::Map<String, serde_json::Value> {
    let empty = serde_json::Map::new();
    let before = before.as_object().unwrap_or(&empty);
    let after = after.as_object().unwrap_or(&empty);
    let mut changes = serde_json::Map::new();
    for (key, value) in after {
        if before.get(key) != Some(value) {
            changes.insert(key.clone(), value.clone());
        }
    }
    for key in before.keys() {
        if !after.contains_key(key) {
            changes.insert(key.clone(), serde_json::Value::Null);
        }
    }
    changes
}

/// How the operator writes status (see [`CtxBuilder::status_writes`](crate::CtxBuilder::status_writes)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatusWrites {
    /// A JSON merge patch of the fields written (the default): other writers' status fields are
    /// kept, and so are fields this operator wrote before and no longer sets.
    #[default]
    Merge,
    /// A server-side apply of the whole status as the operator's field manager (forced): the
    /// status fields the operator owns are exactly those of its last write, and
    /// `metadata.managedFields` shows them as its own.
    Apply,
}

/// Writes `status` onto `object`'s status subresource (merge patch or server-side apply),
/// retrying 409 conflicts.
pub(crate) async fn patch_status<R: Object, S: Serialize>(
    api: &Api<R>,
    object: &R,
    status: &S,
    field_manager: &str,
    writes: StatusWrites,
) -> Result<()> {
    let name = object
        .meta()
        .name
        .as_deref()
        .ok_or_else(|| Error::MissingField {
            object: ObjectKey::of(object),
            field: "metadata.name",
        })?;
    let (patch, params) = match writes {
        StatusWrites::Merge => (
            Patch::Merge(json!({ "status": status })),
            PatchParams {
                force: false,
                ..PatchParams::apply(field_manager)
            },
        ),
        StatusWrites::Apply => (
            Patch::Apply(json!({
                "apiVersion": R::api_version(&()),
                "kind": R::kind(&()),
                "metadata": { "name": name },
                "status": status,
            })),
            PatchParams::apply(field_manager).force(),
        ),
    };
    let mut attempt = 0;
    loop {
        match api.patch_status(name, &params, &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => {
                attempt += 1;
            }
            Err(source) => {
                return Err(Error::kube(
                    "patching status of",
                    ObjectKey::of(object),
                    source,
                ));
            }
        }
    }
}

/// The finalizer flow: on deletion run `cleanup` and remove the finalizer; otherwise make sure the
/// finalizer is present (in the same reconcile) and run `apply` on the updated object.
///
/// The finalizer is added with a merge patch guarded by `resourceVersion`, so a concurrent writer
/// causes a 409 that is retried on a fresh read instead of clobbering its finalizers.
///
/// A finalizer the API server accepted does not always hold: a `DELETE` that read the object just
/// before the finalizer was added removes it at once anyway (kube-apiserver's
/// kubernetes/kubernetes#77988), so no deletion with the finalizer is ever seen here. The
/// controller loop catches that case from its watch: an object whose deletion the watch reports
/// while it still carries the operator's finalizer and was never marked for deletion (an ordinary
/// deletion's last copy has its `deletionTimestamp`) is, once a metadata read confirms it is gone,
/// passed once more to this function as its last copy marked as being deleted, so `cleanup` runs
/// (and removing the finalizer from an object that is gone is a success). Its limit: a racing deletion that falls in
/// a gap of the watch (the API server restarting) is only seen by the relist, which drops the
/// object from the cache without reporting a deletion, so its cleanup does not run.
pub async fn with_finalizer<R, A, C, FA, FC>(
    api: &Api<R>,
    finalizer: &str,
    object: Arc<R>,
    apply: A,
    cleanup: C,
) -> Result<Action>
where
    R: Object,
    A: FnOnce(Arc<R>) -> FA,
    C: FnOnce(Arc<R>) -> FC,
    FA: Future<Output = Result<Action>>,
    FC: Future<Output = Result<Action>>,
{
    let key = || ObjectKey::of(object.as_ref());
    let name = object
        .meta()
        .name
        .clone()
        .ok_or_else(|| Error::MissingField {
            object: key(),
            field: "metadata.name",
        })?;
    let has_finalizer = object.finalizers().iter().any(|f| f == finalizer);
    if object.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        let action = cleanup(object.clone()).await?;
        remove_finalizer(api, &name, object.as_ref(), finalizer).await?;
        return Ok(action);
    }
    let object = if has_finalizer {
        object
    } else {
        Arc::new(add_finalizer(api, &name, object.as_ref(), finalizer).await?)
    };
    apply(object).await
}

async fn add_finalizer<R: Object>(
    api: &Api<R>,
    name: &str,
    object: &R,
    finalizer: &str,
) -> Result<R> {
    let mut current = object.clone();
    let mut attempt = 0;
    loop {
        let mut finalizers = current.finalizers().to_vec();
        if finalizers.iter().any(|f| f == finalizer) {
            return Ok(current);
        }
        finalizers.push(finalizer.to_owned());
        let patch = Patch::Merge(json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": current.resource_version(),
            }
        }));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(updated) => return Ok(updated),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                current = api
                    .get(name)
                    .await
                    .map_err(|e| Error::kube("re-reading", ObjectKey::of(object), e))?;
            }
            Err(e) => return Err(Error::kube("adding finalizer to", ObjectKey::of(object), e)),
        }
    }
}

async fn remove_finalizer<R: Object>(
    api: &Api<R>,
    name: &str,
    object: &R,
    finalizer: &str,
) -> Result<()> {
    let mut current = object.clone();
    let mut attempt = 0;
    loop {
        let finalizers: Vec<&String> = current
            .finalizers()
            .iter()
            .filter(|f| *f != finalizer)
            .collect();
        if finalizers.len() == current.finalizers().len() {
            return Ok(());
        }
        let patch = Patch::Merge(json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": current.resource_version(),
            }
        }));
        match api.patch(name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                match api.get(name).await {
                    Ok(fresh) => current = fresh,
                    Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                    Err(e) => {
                        return Err(Error::kube("re-reading", ObjectKey::of(object), e));
                    }
                }
            }
            Err(e) => {
                return Err(Error::kube(
                    "removing finalizer from",
                    ObjectKey::of(object),
                    e,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::changed_fields;

    #[test]
    fn only_changed_status_fields_are_patched() {
        let before = json!({ "phase": "Failed", "observedGeneration": 1, "error": null });
        let after =
            json!({ "phase": "Failed", "observedGeneration": 2, "error": { "reason": "X" } });
        let changes = changed_fields(&before, &after);
        assert_eq!(
            serde_json::Value::Object(changes),
            json!({ "observedGeneration": 2, "error": { "reason": "X" } })
        );
        let removed = changed_fields(&json!({ "error": {"reason": "X"} }), &json!({}));
        assert_eq!(serde_json::Value::Object(removed), json!({ "error": null }));
    }
}
