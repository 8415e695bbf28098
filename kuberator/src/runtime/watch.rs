//! The primary watch: decodes objects one by one, so that one malformed object is logged and
//! skipped instead of failing the whole list.

use futures::{Stream, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};

use crate::finalize::Object;

/// Watches `R` in `namespace` (or everywhere) as untyped objects and decodes each one into `R`.
/// Objects that do not decode are logged with their name and the serde error and left out.
/// `on_listed` is called after each complete (re)list.
pub(crate) fn typed_watch<R: Object>(
    client: Client,
    namespace: Option<&str>,
    config: watcher::Config,
    on_listed: impl Fn() + Send + 'static,
) -> impl Stream<Item = Result<watcher::Event<R>, watcher::Error>> + Send + 'static {
    let resource = ApiResource::erase::<R>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    watcher(api, config)
        .default_backoff()
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                on_listed();
            }
            decode_event::<R>(event)
        })
        .try_filter_map(|event| futures::future::ready(Ok(event)))
}

fn decode_event<R: Object>(event: watcher::Event<DynamicObject>) -> Option<watcher::Event<R>> {
    use watcher::Event;
    Some(match event {
        Event::Apply(o) => Event::Apply(decode(o)?),
        Event::InitApply(o) => Event::InitApply(decode(o)?),
        Event::Delete(o) => Event::Delete(decode(o)?),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    })
}

fn decode<R: Object>(mut object: DynamicObject) -> Option<R> {
    // Managed fields are large and never needed by a reconcile.
    object.metadata.managed_fields = None;
    let name = object.name_any();
    let namespace = object.metadata.namespace.clone();
    match object.try_parse::<R>() {
        Ok(typed) => Some(typed),
        Err(error) => {
            tracing::error!(
                kind = %R::kind(&()),
                namespace = namespace.as_deref().unwrap_or(""),
                name = %name,
                error = %error,
                "cannot decode object, skipping it until it changes"
            );
            None
        }
    }
}
