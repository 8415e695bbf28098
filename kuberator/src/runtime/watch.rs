//! The primary watch: decodes objects one by one, so that one malformed object is logged and
//! skipped instead of failing the whole list.

use futures::{Stream, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};

use serde::de::DeserializeOwned;

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
        .backoff(WatchBackoff::default())
        .map_ok(move |event| {
            if matches!(event, watcher::Event::InitDone) {
                on_listed();
            }
            decode_event::<R>(event)
        })
        .try_filter_map(|event| futures::future::ready(Ok(event)))
}

/// The watches' retry delay after an error: 100 ms doubling up to 1 s (with up to 20 % jitter),
/// back to 100 ms on the first event after a successful (re)list or watch.
///
/// kube-runtime's default (0.8 s doubling to 30 s, reset only after 120 s without errors) suits
/// a client that must go easy on a struggling server; a controller wants to resume within a
/// second of the server answering again (one list per watch per second at worst while it is
/// down, which a recovering server survives).
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    /// The first delay.
    pub const MIN: std::time::Duration = std::time::Duration::from_millis(100);
    /// The longest delay.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(1);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        use rand::Rng;
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay.mul_f64(1.0 + rand::rng().random_range(0.0..0.2)))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
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

/// Turns an untyped object into `R`, moving its fields instead of re-serializing them: only
/// `metadata` is serialized again (kube-rs' `DynamicObject::try_parse` serializes the whole object
/// back into a `Value` first).
pub(crate) fn decode_dynamic<R: DeserializeOwned>(
    object: DynamicObject,
) -> Result<R, serde_json::Error> {
    let DynamicObject {
        types,
        metadata,
        data,
    } = object;
    let mut fields = match data {
        serde_json::Value::Object(fields) => fields,
        serde_json::Value::Null => serde_json::Map::new(),
        other => return serde_json::from_value(other),
    };
    fields.insert("metadata".into(), serde_json::to_value(metadata)?);
    if let Some(types) = types {
        fields.insert("apiVersion".into(), types.api_version.into());
        fields.insert("kind".into(), types.kind.into());
    }
    serde_json::from_value(serde_json::Value::Object(fields))
}

fn decode<R: Object>(mut object: DynamicObject) -> Option<R> {
    // Managed fields are large and never needed by a reconcile.
    object.metadata.managed_fields = None;
    let name = object.name_any();
    let namespace = object.metadata.namespace.clone();
    match decode_dynamic::<R>(object) {
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::DynamicObject;
    use serde_json::json;

    use super::decode_dynamic;

    fn object(data: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "a", "namespace": "ns", "uid": "u-1", "generation": 2 },
            "data": data,
        }))
        .unwrap()
    }

    #[test]
    fn decodes_like_try_parse() {
        let dynamic = object(json!({ "key": "value" }));
        let expected: ConfigMap = dynamic.clone().try_parse().unwrap();
        let decoded: ConfigMap = decode_dynamic(dynamic).unwrap();
        assert_eq!(decoded, expected);
        assert_eq!(decoded.data.unwrap()["key"], "value");
        assert_eq!(decoded.metadata.uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn watch_backoff_is_capped_low_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = super::WatchBackoff::default();
        let delays: Vec<u128> = (0..6)
            .map(|_| backoff.next().unwrap().as_millis())
            .collect();
        for (delay, base) in delays.iter().zip([100, 200, 400, 800, 1000, 1000]) {
            assert!(*delay >= base && *delay <= base * 6 / 5, "{delays:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap().as_millis() < 120);
    }

    #[test]
    fn a_malformed_object_is_an_error_naming_the_field() {
        let error = decode_dynamic::<ConfigMap>(object(json!({ "key": 7 }))).unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
    }
}
