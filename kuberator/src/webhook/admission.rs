//! Validating and defaulting handlers for one kind: [`Webhook`], [`Validator`], [`Defaulter`],
//! [`Denied`].

use std::{fmt, marker::PhantomData, sync::Arc, time::Duration};

use async_trait::async_trait;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{
    DynamicObject, Resource,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
    response::{StatusCause, StatusDetails},
};

use crate::finalize::Object;

/// How long one handler may take by default before the request is denied (the webhook
/// configuration gives the API server two seconds more).
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a [`Validator`] refuses an object: a message for the user and, where one field is at
/// fault, its path. `kubectl` shows it as
/// `admission webhook "…" denied the request: spec.image: must not be empty`.
///
/// ```
/// use kuberator::webhook::Denied;
///
/// let denied = Denied::new("must not be empty").field("spec.image");
/// assert_eq!(denied.to_string(), "spec.image: must not be empty");
///
/// let changed = Denied::immutable("spec.region", &"eu", &"us");
/// assert_eq!(changed.to_string(), r#"spec.region: is immutable (was "eu", now "us")"#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    message: String,
    field: Option<String>,
}

impl Denied {
    /// A denial with `message` (say what is wrong and how to fix it).
    pub fn new(message: impl Into<String>) -> Self {
        Denied {
            message: message.into(),
            field: None,
        }
    }

    /// The path of the field at fault, e.g. `spec.image` (shown before the message, and sent
    /// as the status cause's `field`).
    #[must_use]
    pub fn field(mut self, path: impl Into<String>) -> Self {
        self.field = Some(path.into());
        self
    }

    /// An update that changed a field that must not change: names the field with its old and
    /// new value (as JSON).
    pub fn immutable<T: serde::Serialize + ?Sized>(
        path: impl Into<String>,
        old: &T,
        new: &T,
    ) -> Self {
        let show = |value: &T| {
            serde_json::to_string(value).unwrap_or_else(|error| format!("<unprintable: {error}>"))
        };
        Denied::new(format!(
            "is immutable (was {}, now {})",
            show(old),
            show(new)
        ))
        .field(path)
    }

    /// The message without the field.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The field path, if one was given.
    pub fn field_path(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The admission response denying `request` (code 403, the field as a status cause).
    pub(crate) fn respond<T: Resource>(&self, request: &AdmissionRequest<T>) -> AdmissionResponse {
        let mut response = AdmissionResponse::from(request).deny(self.to_string());
        response.result.code = 403;
        response.result.reason = "Forbidden".to_owned();
        if let Some(field) = &self.field {
            response.result.details = Some(StatusDetails {
                name: request.name.clone(),
                group: request.kind.group.clone(),
                kind: request.kind.kind.clone(),
                causes: vec![StatusCause {
                    reason: "FieldValueForbidden".to_owned(),
                    message: self.message.clone(),
                    field: field.clone(),
                }],
                uid: String::new(),
                retry_after_seconds: 0,
            });
        }
        response
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for Denied {}

/// Checks objects of `R` before the API server stores them (a validating admission webhook).
///
/// `validate` sees creates (`old` is `None`) and updates (`old` is the stored object);
/// `validate_delete` sees deletes when the [`Webhook`] asks for them
/// ([`Webhook::validate_deletes`]). A closure `Fn(&R, Option<&R>) -> Result<(), Denied>` is a
/// validator too (see [`Webhook::validate`]).
#[async_trait]
pub trait Validator<R>: Send + Sync + 'static {
    /// Accepts `new` (an update of `old`, or a create when `old` is `None`) or denies it.
    async fn validate(&self, new: &R, old: Option<&R>) -> Result<(), Denied>;

    /// Accepts or denies deleting `old` (only called with [`Webhook::validate_deletes`]).
    async fn validate_delete(&self, old: &R) -> Result<(), Denied> {
        let _ = old;
        Ok(())
    }
}

/// Fills in defaults before the API server stores an object of `R` (a mutating admission
/// webhook): change the object in place and the framework sends the JSON patch.
#[async_trait]
pub trait Defaulter<R>: Send + Sync + 'static {
    /// Sets the defaults on `obj` (a create or an update).
    async fn default(&self, obj: &mut R);
}

struct ValidateFn<F>(F);

#[async_trait]
impl<R, F> Validator<R> for ValidateFn<F>
where
    R: Sync + 'static,
    F: Fn(&R, Option<&R>) -> Result<(), Denied> + Send + Sync + 'static,
{
    async fn validate(&self, new: &R, old: Option<&R>) -> Result<(), Denied> {
        (self.0)(new, old)
    }
}

struct DefaultFn<F>(F);

#[async_trait]
impl<R, F> Defaulter<R> for DefaultFn<F>
where
    R: Send + 'static,
    F: Fn(&mut R) + Send + Sync + 'static,
{
    async fn default(&self, obj: &mut R) {
        (self.0)(obj);
    }
}

/// The admission webhooks of one kind `R` (a custom resource or a built-in kind such as
/// `Pod` or `ConfigMap`): a validator, a defaulter, or both. Add it to an
/// [`Operator`](crate::Operator) of the same kind or to a
/// [`Manager`](crate::runtime::Manager); the manager's
/// [`WebhookServer`](crate::webhook::WebhookServer) serves every webhook of the process on one
/// port, at controller-runtime's paths (`/validate-<group>-<version>-<kind>`,
/// `/mutate-<group>-<version>-<kind>`, the group's dots as dashes).
///
/// A handler that returns [`Denied`] refuses the request with its message; one that panics or
/// takes longer than its [`timeout`](Webhook::timeout) refuses that one request with a message
/// saying so, and the server goes on. The webhook configurations use `failurePolicy: Fail`:
/// while no replica serves, writes of the kind are refused rather than let through unchecked.
///
/// ```
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kuberator::webhook::{Denied, Webhook};
///
/// let webhook = Webhook::<ConfigMap>::new()
///     .validate(|new: &ConfigMap, old: Option<&ConfigMap>| {
///         let owner = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("owner")).cloned();
///         match old {
///             Some(old) if owner(old) != owner(new) => {
///                 Err(Denied::immutable("data.owner", &owner(old), &owner(new)))
///             }
///             _ => Ok(()),
///         }
///     })
///     .default(|cm: &mut ConfigMap| {
///         cm.data.get_or_insert_with(Default::default).entry("owner".into()).or_insert("ops".into());
///     });
/// assert_eq!(webhook.validate_path(), "/validate--v1-configmap");
/// assert_eq!(webhook.mutate_path(), "/mutate--v1-configmap");
/// ```
pub struct Webhook<R> {
    validator: Option<Arc<dyn Validator<R>>>,
    defaulter: Option<Arc<dyn Defaulter<R>>>,
    deletes: bool,
    timeout: Duration,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    _kind: PhantomData<fn() -> R>,
}

impl<R> fmt::Debug for Webhook<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("validates", &self.validator.is_some())
            .field("defaults", &self.defaulter.is_some())
            .field("deletes", &self.deletes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<R: Object> Default for Webhook<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R: Object> Webhook<R> {
    /// No handler yet; add a validator, a defaulter or both.
    pub fn new() -> Self {
        Webhook {
            validator: None,
            defaulter: None,
            deletes: false,
            timeout: DEFAULT_HANDLER_TIMEOUT,
            namespace_selector: None,
            object_selector: None,
            _kind: PhantomData,
        }
    }

    /// Validates creates and updates with a closure (`old` is `None` on create).
    #[must_use]
    pub fn validate<F>(self, validate: F) -> Self
    where
        F: Fn(&R, Option<&R>) -> Result<(), Denied> + Send + Sync + 'static,
    {
        self.validator(ValidateFn(validate))
    }

    /// Validates with a [`Validator`] (async, may hold state).
    #[must_use]
    pub fn validator(mut self, validator: impl Validator<R>) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// Also sends deletes to [`Validator::validate_delete`].
    #[must_use]
    pub fn validate_deletes(mut self, enabled: bool) -> Self {
        self.deletes = enabled;
        self
    }

    /// Sets defaults with a closure that changes the object in place (creates and updates).
    #[must_use]
    pub fn default<F>(self, default: F) -> Self
    where
        F: Fn(&mut R) + Send + Sync + 'static,
    {
        self.defaulter(DefaultFn(default))
    }

    /// Sets defaults with a [`Defaulter`] (async, may hold state).
    #[must_use]
    pub fn defaulter(mut self, defaulter: impl Defaulter<R>) -> Self {
        self.defaulter = Some(Arc::new(defaulter));
        self
    }

    /// How long each handler may take (default [`DEFAULT_HANDLER_TIMEOUT`], 5 s; at most 28 s,
    /// as the API server waits 30 s at most); past it the request is denied.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.min(Duration::from_secs(28));
        self
    }

    /// Only objects in namespaces matching `selector` are sent to the webhooks (the
    /// configurations' `namespaceSelector`; default: every namespace). Exclude the operator's
    /// own namespace this way when its writes must not wait for it.
    ///
    /// ```
    /// use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::LabelSelector};
    /// use kuberator::webhook::Webhook;
    ///
    /// let webhook = Webhook::<ConfigMap>::new()
    ///     .validate(|_, _| Ok(()))
    ///     .namespace_selector(LabelSelector {
    ///         match_labels: Some([("webhooks".to_owned(), "enabled".to_owned())].into()),
    ///         ..LabelSelector::default()
    ///     });
    /// # let _ = webhook;
    /// ```
    #[must_use]
    pub fn namespace_selector(mut self, selector: LabelSelector) -> Self {
        self.namespace_selector = Some(selector);
        self
    }

    /// Only objects whose labels match `selector` are sent to the webhooks (the
    /// configurations' `objectSelector`; default: every object).
    #[must_use]
    pub fn object_selector(mut self, selector: LabelSelector) -> Self {
        self.object_selector = Some(selector);
        self
    }

    /// The path of the validating webhook (`/validate-<group>-<version>-<kind>`).
    pub fn validate_path(&self) -> String {
        path::<R>("validate")
    }

    /// The path of the mutating webhook (`/mutate-<group>-<version>-<kind>`).
    pub fn mutate_path(&self) -> String {
        path::<R>("mutate")
    }

    /// Where each handler is registered: (validating, mutating), `None` for a missing handler.
    fn registrations(&self) -> (Option<Registration>, Option<Registration>) {
        let registration = |mutating: bool, operations: Vec<&'static str>| Registration {
            path: path::<R>(if mutating { "mutate" } else { "validate" }),
            mutating,
            target: Target::of::<R>(),
            operations,
            timeout: self.timeout,
            namespace_selector: self.namespace_selector.clone(),
            object_selector: self.object_selector.clone(),
        };
        let validating = self.validator.as_ref().map(|_| {
            let mut operations = vec!["CREATE", "UPDATE"];
            if self.deletes {
                operations.push("DELETE");
            }
            registration(false, operations)
        });
        let mutating = self
            .defaulter
            .as_ref()
            .map(|_| registration(true, vec!["CREATE", "UPDATE"]));
        (validating, mutating)
    }

    /// The registrations of the handlers, for the install bundle.
    pub(crate) fn registration_list(&self) -> Vec<Registration> {
        let (validating, mutating) = self.registrations();
        validating.into_iter().chain(mutating).collect()
    }

    /// The handlers to serve, one per path.
    pub(crate) fn into_handlers(self) -> Vec<Arc<dyn Admit>> {
        let mut handlers: Vec<Arc<dyn Admit>> = Vec::new();
        let (validating, mutating) = self.registrations();
        if let (Some(validator), Some(registration)) = (self.validator, validating) {
            handlers.push(Arc::new(Validating {
                validator,
                deletes: self.deletes,
                registration,
            }));
        }
        if let (Some(defaulter), Some(registration)) = (self.defaulter, mutating) {
            handlers.push(Arc::new(Defaulting {
                defaulter,
                registration,
            }));
        }
        handlers
    }
}

/// The registrations of handlers of `R` with the default timeout and no selectors (the
/// webhooks of `#[kuberator::operator]`, for the install bundle): a validating one with
/// `validate` or `deletes` (creates and updates pass when only `deletes`), a mutating one
/// with `default`.
pub(crate) fn registrations_of<R: Resource<DynamicType = ()>>(
    validate: bool,
    deletes: bool,
    default: bool,
) -> Vec<Registration> {
    let registration = |mutating: bool, operations: Vec<&'static str>| Registration {
        path: path::<R>(if mutating { "mutate" } else { "validate" }),
        mutating,
        target: Target::of::<R>(),
        operations,
        timeout: DEFAULT_HANDLER_TIMEOUT,
        namespace_selector: None,
        object_selector: None,
    };
    let mut registrations = Vec::new();
    if validate || deletes {
        let mut operations = vec!["CREATE", "UPDATE"];
        if deletes {
            operations.push("DELETE");
        }
        registrations.push(registration(false, operations));
    }
    if default {
        registrations.push(registration(true, vec!["CREATE", "UPDATE"]));
    }
    registrations
}

/// controller-runtime's webhook path for `R`.
fn path<R: Resource<DynamicType = ()>>(prefix: &str) -> String {
    format!(
        "/{prefix}-{}-{}-{}",
        R::group(&()).replace('.', "-"),
        R::version(&()),
        R::kind(&()).to_lowercase()
    )
}

/// The kind a handler admits, as the webhook configuration's rule names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) kind: String,
    pub(crate) plural: String,
}

impl Target {
    fn of<R: Resource<DynamicType = ()>>() -> Self {
        Target {
            group: R::group(&()).into_owned(),
            version: R::version(&()).into_owned(),
            kind: R::kind(&()).into_owned(),
            plural: R::plural(&()).into_owned(),
        }
    }
}

/// Where and how a handler is registered in the webhook configurations.
#[derive(Clone, Debug)]
pub(crate) struct Registration {
    pub(crate) path: String,
    pub(crate) mutating: bool,
    pub(crate) target: Target,
    pub(crate) operations: Vec<&'static str>,
    pub(crate) timeout: Duration,
    pub(crate) namespace_selector: Option<LabelSelector>,
    pub(crate) object_selector: Option<LabelSelector>,
}

impl Registration {
    /// The webhook's name in its configuration: a qualified name unique per kind and type.
    pub(crate) fn webhook_name(&self) -> String {
        let group = if self.target.group.is_empty() {
            "core"
        } else {
            &self.target.group
        };
        let what = if self.mutating { "mutate" } else { "validate" };
        format!("{}.{group}.{what}.kuberator.dev", self.target.plural)
    }
}

/// One served admission handler (type-erased [`Webhook`] half).
#[async_trait]
pub(crate) trait Admit: Send + Sync + 'static {
    fn registration(&self) -> &Registration;

    /// Decides on `request`; `Err` denies with that message.
    async fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Result<AdmissionResponse, Denied>;
}

fn decode<R: Object>(
    object: Option<&DynamicObject>,
    which: &str,
    request: &AdmissionRequest<DynamicObject>,
) -> Result<Option<R>, Denied> {
    let Some(object) = object else {
        return Ok(None);
    };
    serde_json::to_value(object)
        .and_then(serde_json::from_value::<R>)
        .map(Some)
        .map_err(|error| {
            Denied::new(format!(
                "cannot decode the {which} {} {}: {error}",
                request.kind.kind,
                object_name(request)
            ))
        })
}

fn object_name(request: &AdmissionRequest<DynamicObject>) -> String {
    match &request.namespace {
        Some(namespace) => format!("{namespace}/{}", request.name),
        None => request.name.clone(),
    }
}

fn missing(which: &str, request: &AdmissionRequest<DynamicObject>) -> Denied {
    Denied::new(format!(
        "the admission request for {} {} ({:?}) has no {which}",
        request.kind.kind,
        object_name(request),
        request.operation
    ))
}

struct Validating<R> {
    validator: Arc<dyn Validator<R>>,
    deletes: bool,
    registration: Registration,
}

#[async_trait]
impl<R: Object> Admit for Validating<R> {
    fn registration(&self) -> &Registration {
        &self.registration
    }

    async fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Result<AdmissionResponse, Denied> {
        let allowed = AdmissionResponse::from(request);
        match request.operation {
            Operation::Create | Operation::Update => {
                let new: R = decode(request.object.as_ref(), "object", request)?
                    .ok_or_else(|| missing("object", request))?;
                let old: Option<R> = match request.operation {
                    Operation::Update => Some(
                        decode(request.old_object.as_ref(), "old object", request)?
                            .ok_or_else(|| missing("oldObject", request))?,
                    ),
                    _ => None,
                };
                match self.validator.validate(&new, old.as_ref()).await {
                    Ok(()) => Ok(allowed),
                    Err(denied) => Ok(denied.respond(request)),
                }
            }
            Operation::Delete if self.deletes => {
                let old: R = decode(request.old_object.as_ref(), "old object", request)?
                    .ok_or_else(|| missing("oldObject", request))?;
                match self.validator.validate_delete(&old).await {
                    Ok(()) => Ok(allowed),
                    Err(denied) => Ok(denied.respond(request)),
                }
            }
            _ => Ok(allowed),
        }
    }
}

struct Defaulting<R> {
    defaulter: Arc<dyn Defaulter<R>>,
    registration: Registration,
}

#[async_trait]
impl<R: Object> Admit for Defaulting<R> {
    fn registration(&self) -> &Registration {
        &self.registration
    }

    async fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> Result<AdmissionResponse, Denied> {
        let response = AdmissionResponse::from(request);
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return Ok(response);
        }
        let raw = match &request.object {
            Some(object) => serde_json::to_value(object).map_err(|error| {
                Denied::new(format!(
                    "cannot read the object {}: {error}",
                    object_name(request)
                ))
            })?,
            None => return Err(missing("object", request)),
        };
        let mut obj: R = serde_json::from_value(raw.clone()).map_err(|error| {
            Denied::new(format!(
                "cannot decode the object {} {}: {error}",
                request.kind.kind,
                object_name(request)
            ))
        })?;
        let encode = |obj: &R| {
            serde_json::to_value(obj).map_err(|error| {
                Denied::new(format!(
                    "cannot encode the defaulted object {}: {error}",
                    object_name(request)
                ))
            })
        };
        let before = encode(&obj)?;
        self.defaulter.default(&mut obj).await;
        let after = encode(&obj)?;
        let patch = patch_for(&raw, &before, &after);
        if patch.0.is_empty() {
            return Ok(response);
        }
        response.with_patch(patch).map_err(|error| {
            Denied::new(format!(
                "cannot encode the patch for {}: {error}",
                object_name(request)
            ))
        })
    }
}

/// The JSON patch that turns `raw` (the object as the API server sent it) into `raw` with the
/// handler's changes (`before` → `after`, both as `R` serializes them). Only what the handler
/// changed is patched, so fields `R` does not know survive; where the change cannot be
/// replayed onto `raw` (e.g. it replaces a field `raw` lacks), the patch goes to `after`.
pub(crate) fn patch_for(
    raw: &serde_json::Value,
    before: &serde_json::Value,
    after: &serde_json::Value,
) -> json_patch::Patch {
    let changes = json_patch::diff(before, after);
    let mut target = raw.clone();
    if json_patch::patch(&mut target, &changes).is_err() {
        target = after.clone();
    }
    json_patch::diff(raw, &target)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    use super::*;

    #[test]
    fn patch_keeps_fields_the_type_does_not_know() {
        let raw = json!({"metadata": {"name": "a"}, "data": {}, "extra": 1});
        let before = json!({"metadata": {"name": "a"}, "data": {}});
        let after = json!({"metadata": {"name": "a"}, "data": {"owner": "ops"}});
        let patch = patch_for(&raw, &before, &after);
        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(
            patched,
            json!({"metadata": {"name": "a"}, "data": {"owner": "ops"}, "extra": 1})
        );
    }

    #[test]
    fn patch_falls_back_when_the_change_does_not_replay() {
        // `before` has `data: null` where `raw` has no `data`: a `replace` would fail on raw.
        let raw = json!({"metadata": {"name": "a"}});
        let before = json!({"metadata": {"name": "a"}, "data": null});
        let after = json!({"metadata": {"name": "a"}, "data": {"owner": "ops"}});
        let patch = patch_for(&raw, &before, &after);
        let mut patched = raw.clone();
        json_patch::patch(&mut patched, &patch).unwrap();
        assert_eq!(patched["data"], json!({"owner": "ops"}));
    }

    fn request(
        operation: &str,
        object: serde_json::Value,
        old: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": "a",
                "namespace": "default",
                "operation": operation,
                "userInfo": {},
                "object": object,
                "oldObject": old,
            }
        });
        let review: kube::core::admission::AdmissionReview<DynamicObject> =
            serde_json::from_value(review).unwrap();
        review.try_into().unwrap()
    }

    fn config_map(owner: &str) -> serde_json::Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}, "data": {"owner": owner}})
    }

    fn webhook() -> Webhook<ConfigMap> {
        Webhook::<ConfigMap>::new()
            .validate(|new: &ConfigMap, old: Option<&ConfigMap>| {
                let owner = |cm: &ConfigMap| cm.data.as_ref().and_then(|d| d.get("owner")).cloned();
                if owner(new).as_deref() == Some("") {
                    return Err(Denied::new("must not be empty").field("data.owner"));
                }
                match old {
                    Some(old) if owner(old) != owner(new) => {
                        Err(Denied::immutable("data.owner", &owner(old), &owner(new)))
                    }
                    _ => Ok(()),
                }
            })
            .default(|cm: &mut ConfigMap| {
                cm.data
                    .get_or_insert_with(Default::default)
                    .entry("tier".into())
                    .or_insert_with(|| "web".into());
            })
    }

    #[tokio::test]
    async fn validator_allows_denies_and_names_the_field() {
        let handlers = webhook().into_handlers();
        let validating = &handlers[0];
        assert_eq!(validating.registration().path, "/validate--v1-configmap");
        assert_eq!(
            validating.registration().webhook_name(),
            "configmaps.core.validate.kuberator.dev"
        );

        let ok = validating
            .admit(&request(
                "CREATE",
                config_map("ops"),
                serde_json::Value::Null,
            ))
            .await
            .unwrap();
        assert!(ok.allowed);

        let denied = validating
            .admit(&request("CREATE", config_map(""), serde_json::Value::Null))
            .await
            .unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.result.message, "data.owner: must not be empty");
        assert_eq!(denied.result.code, 403);
        let causes = denied.result.details.unwrap().causes;
        assert_eq!(causes[0].field, "data.owner");

        let update = validating
            .admit(&request("UPDATE", config_map("dev"), config_map("ops")))
            .await
            .unwrap();
        assert!(!update.allowed);
        assert_eq!(
            update.result.message,
            r#"data.owner: is immutable (was "ops", now "dev")"#
        );
        // Deletes are not validated unless asked for.
        let delete = validating
            .admit(&request(
                "DELETE",
                serde_json::Value::Null,
                config_map("ops"),
            ))
            .await
            .unwrap();
        assert!(delete.allowed);
    }

    #[tokio::test]
    async fn an_undecodable_object_is_denied_with_its_name() {
        let handlers = webhook().into_handlers();
        let bad = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"owner": 7}});
        let error = handlers[0]
            .admit(&request("CREATE", bad, serde_json::Value::Null))
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("cannot decode the object ConfigMap default/a:"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn defaulter_answers_with_a_json_patch() {
        let handlers = webhook().into_handlers();
        let mutating = &handlers[1];
        assert_eq!(mutating.registration().path, "/mutate--v1-configmap");
        let response = mutating
            .admit(&request(
                "CREATE",
                config_map("ops"),
                serde_json::Value::Null,
            ))
            .await
            .unwrap();
        assert!(response.allowed);
        let patch: serde_json::Value = serde_json::from_slice(&response.patch.unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/data/tier", "value": "web"}])
        );

        // Already defaulted: no patch at all.
        let mut done = config_map("ops");
        done["data"]["tier"] = json!("db");
        let response = mutating
            .admit(&request("UPDATE", done.clone(), done))
            .await
            .unwrap();
        assert!(response.allowed && response.patch.is_none());
    }
}
