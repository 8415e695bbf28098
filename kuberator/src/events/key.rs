//! The deduplication key shared by [`EventRecorder`](super::EventRecorder) and
//! [`MockEventRecorder`](super::MockEventRecorder): object UID, type, reason and action.

use std::{
    borrow::{Borrow, Cow},
    hash::{Hash, Hasher},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;

use super::data::{EventData, EventType};

/// What makes two events "the same": the object (its UID), the type, the reason and the action.
///
/// The note is not part of the key. An object without a UID (one built in a test rather than read
/// from the API server) is identified by `apiVersion/kind/namespace/name` instead.
#[derive(Clone, Debug)]
pub struct EventKey {
    object: String,
    event_type: EventType,
    reason: Cow<'static, str>,
    action: Cow<'static, str>,
}

impl EventKey {
    /// The key under which `data` about `object` is deduplicated.
    pub fn new<R: Resource<DynamicType = ()>>(object: &R, data: &EventData) -> Self {
        let mut data = data.clone();
        data.normalize();
        KeyRef::new(&object_identity(object), &data).to_owned()
    }

    /// The object's UID (or `apiVersion/kind/namespace/name` if it has none).
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.event_type
    }

    /// The event's reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The event's action.
    pub fn action(&self) -> &str {
        &self.action
    }
}

/// How an object is identified in the key: its UID, borrowed, or a path built from its
/// coordinates when it has none.
pub(crate) fn object_identity<R: Resource<DynamicType = ()>>(object: &R) -> Cow<'_, str> {
    let meta = object.meta();
    match meta.uid.as_deref() {
        Some(uid) if !uid.is_empty() => Cow::Borrowed(uid),
        _ => Cow::Owned(format!(
            "{}/{}/{}/{}",
            R::api_version(&()),
            R::kind(&()),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )),
    }
}

/// The Event's `regarding`: the object's reference with apiVersion, kind, namespace, name, UID and
/// resourceVersion.
pub(crate) fn regarding<R: Resource<DynamicType = ()>>(object: &R) -> ObjectReference {
    let mut reference = object.object_ref(&());
    reference.resource_version = object.meta().resource_version.clone();
    reference
}

/// A borrowed [`EventKey`]: what the hot path hashes and looks up, without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyRef<'a> {
    object: &'a str,
    event_type: EventType,
    reason: &'a str,
    action: &'a str,
}

impl<'a> KeyRef<'a> {
    /// The key of already-normalized `data` about the object identified by `object`.
    pub(crate) fn new(object: &'a str, data: &'a EventData) -> Self {
        Self {
            object,
            event_type: data.event_type,
            reason: &data.reason,
            action: &data.action,
        }
    }

    /// The owned key; copies the object's identity, borrows static reasons.
    pub(crate) fn to_owned_with(self, data: &EventData) -> EventKey {
        EventKey {
            object: self.object.to_owned(),
            event_type: self.event_type,
            reason: data.reason.clone(),
            action: data.action.clone(),
        }
    }

    /// The owned key, copying every part.
    pub(crate) fn to_owned(self) -> EventKey {
        EventKey {
            object: self.object.to_owned(),
            event_type: self.event_type,
            reason: Cow::Owned(self.reason.to_owned()),
            action: Cow::Owned(self.action.to_owned()),
        }
    }
}

/// Anything that can present itself as a [`KeyRef`]; lets a `HashMap<EventKey, _>` be searched
/// with a `KeyRef` (through `Borrow<dyn AsKeyRef>`), so repeats allocate nothing.
pub(crate) trait AsKeyRef {
    fn key_ref(&self) -> KeyRef<'_>;
}

impl AsKeyRef for EventKey {
    fn key_ref(&self) -> KeyRef<'_> {
        KeyRef {
            object: &self.object,
            event_type: self.event_type,
            reason: &self.reason,
            action: &self.action,
        }
    }
}

impl AsKeyRef for KeyRef<'_> {
    fn key_ref(&self) -> KeyRef<'_> {
        *self
    }
}

impl<'a> Borrow<dyn AsKeyRef + 'a> for EventKey {
    fn borrow(&self) -> &(dyn AsKeyRef + 'a) {
        self
    }
}

impl Hash for dyn AsKeyRef + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

impl PartialEq for dyn AsKeyRef + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for dyn AsKeyRef + '_ {}

// `Hash`/`Eq` of the owned key must agree with the borrowed form used for lookups.
impl Hash for EventKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key_ref().hash(state);
    }
}

impl PartialEq for EventKey {
    fn eq(&self, other: &Self) -> bool {
        self.key_ref() == other.key_ref()
    }
}

impl Eq for EventKey {}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, hash_map::DefaultHasher};

    use k8s_openapi::{
        api::core::v1::{ConfigMap, Namespace},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn config_map(name: &str, uid: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: uid.map(Into::into),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn hash_of(value: &(impl Hash + ?Sized)) -> u64 {
        let mut hasher = DefaultHasher::new();
        value.hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn key_is_uid_type_reason_action_and_ignores_the_note() {
        let cm = config_map("a", Some("uid-1"));
        let a = EventKey::new(&cm, &EventData::normal("Scaled", "Scale").note("to 3"));
        let b = EventKey::new(&cm, &EventData::normal("Scaled", "Scale").note("to 4"));
        assert_eq!(a, b);
        assert_eq!(a.object(), "uid-1");
        assert_eq!(a.event_type(), EventType::Normal);
        assert_eq!((a.reason(), a.action()), ("Scaled", "Scale"));

        let different = [
            EventKey::new(&cm, &EventData::warning("Scaled", "Scale")),
            EventKey::new(&cm, &EventData::normal("Other", "Scale")),
            EventKey::new(&cm, &EventData::normal("Scaled", "Other")),
            EventKey::new(
                &config_map("a", Some("uid-2")),
                &EventData::normal("Scaled", "Scale"),
            ),
        ];
        for key in different {
            assert_ne!(a, key);
        }
    }

    #[test]
    fn same_name_different_uid_is_a_different_object() {
        // A deleted and re-created object has a new UID: its events start afresh.
        let data = EventData::normal("R", "A");
        let old = EventKey::new(&config_map("a", Some("old")), &data);
        let new = EventKey::new(&config_map("a", Some("new")), &data);
        assert_ne!(old, new);
    }

    #[test]
    fn objects_without_uid_are_keyed_by_coordinates() {
        let data = EventData::normal("R", "A");
        let key = EventKey::new(&config_map("a", None), &data);
        assert_eq!(key.object(), "v1/ConfigMap/shop/a");
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("shop".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(EventKey::new(&ns, &data).object(), "v1/Namespace//shop");
    }

    #[test]
    fn borrowed_and_owned_forms_hash_and_compare_alike() {
        let data = EventData::warning("Failed", "Reconcile");
        let owned = KeyRef::new("uid", &data).to_owned_with(&data);
        let borrowed = KeyRef::new("uid", &data);
        assert_eq!(hash_of(&owned), hash_of(&borrowed as &dyn AsKeyRef));
        assert_eq!(hash_of(&owned), hash_of(&owned.to_owned_key_for_test()));

        let mut map = HashMap::new();
        map.insert(owned, 7);
        assert_eq!(map.get(&borrowed as &dyn AsKeyRef), Some(&7));
        let other = EventData::warning("Failed", "Delete");
        assert_eq!(map.get(&KeyRef::new("uid", &other) as &dyn AsKeyRef), None);
    }

    impl EventKey {
        fn to_owned_key_for_test(&self) -> EventKey {
            self.key_ref().to_owned()
        }
    }

    #[test]
    fn key_uses_normalized_reason() {
        let cm = config_map("a", Some("u"));
        let mut data = EventData::normal("R", "A");
        data.reason = Cow::Owned("x".repeat(500));
        assert_eq!(EventKey::new(&cm, &data).reason().len(), 128);
    }
}
