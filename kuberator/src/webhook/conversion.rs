//! Conversion between the versions of one custom resource: [`Conversion`] declares them, builds
//! the multi-version CRD, and answers the API server's `ConversionReview`s at `/convert`.

use std::{collections::BTreeMap, fmt, marker::PhantomData, panic::AssertUnwindSafe, sync::Arc};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::{
    CustomResourceExt, Resource, Status,
    conversion::{ConversionRequest, ConversionResponse, ConversionReview},
    object::HasSpec,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// The path the API server posts `ConversionReview`s to (one for every conversion of the
/// process; each object is routed by its group and kind).
pub const CONVERT_PATH: &str = "/convert";

/// Turns the `spec` of one version into the `spec` of another, or says why it cannot.
type Step = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// One served version besides the hub.
struct Spoke {
    crd: CustomResourceDefinition,
    to_hub: Step,
    from_hub: Step,
}

/// The versions of one custom resource and how their `spec`s convert through the hub: the
/// storage version, given as `Hub`.
///
/// Each version is a `#[derive(CustomResource)]` type of the same group and kind (usually in a
/// module per version). Every other version's spec converts to and from the hub's spec with
/// `From` or `TryFrom`; a conversion between two non-hub versions goes through the hub.
/// Metadata and `status` are kept as they are (keep the status type the same across
/// versions); `apiVersion` is set to the version asked for.
///
/// [`crd`](Conversion::crd) builds the multi-version CRD (the hub is the storage version);
/// install it as usual. Added to a [`Manager`](crate::runtime::Manager)
/// ([`Manager::conversion`](crate::runtime::Manager::conversion)) or an
/// [`Operator`](crate::Operator) ([`Operator::conversion`](crate::Operator::conversion)), the
/// webhook server answers `ConversionReview`s at `/convert` and, at start-up and after every
/// certificate change, patches the CRD's `spec.conversion` to `strategy: Webhook` with the
/// server's client config and CA in its `caBundle`. A spec that cannot be converted fails the
/// review (`result.status: Failure`) with a message naming the object; the API server reports
/// it to the client.
///
/// ```
/// use kuberator::webhook::Conversion;
///
/// mod v1alpha1 {
///     use kube::CustomResource;
///     use schemars::JsonSchema;
///     use serde::{Deserialize, Serialize};
///
///     #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
///     #[kube(group = "example.com", version = "v1alpha1", kind = "Website", namespaced)]
///     pub struct WebsiteSpec {
///         /// `image:tag`, one string.
///         pub image: String,
///     }
/// }
///
/// mod v1 {
///     use kube::CustomResource;
///     use schemars::JsonSchema;
///     use serde::{Deserialize, Serialize};
///
///     #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
///     #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
///     pub struct WebsiteSpec {
///         pub image: String,
///         pub tag: String,
///     }
/// }
///
/// impl TryFrom<v1alpha1::WebsiteSpec> for v1::WebsiteSpec {
///     type Error = String;
///     fn try_from(old: v1alpha1::WebsiteSpec) -> Result<Self, String> {
///         let (image, tag) = old.image.split_once(':').ok_or("`image` has no `:tag`")?;
///         Ok(v1::WebsiteSpec { image: image.into(), tag: tag.into() })
///     }
/// }
///
/// impl From<v1::WebsiteSpec> for v1alpha1::WebsiteSpec {
///     fn from(new: v1::WebsiteSpec) -> Self {
///         v1alpha1::WebsiteSpec { image: format!("{}:{}", new.image, new.tag) }
///     }
/// }
///
/// let conversion = Conversion::<v1::Website>::new().version::<v1alpha1::Website>();
/// let crd = conversion.crd()?;
/// let versions: Vec<_> = crd.spec.versions.iter().map(|v| (v.name.as_str(), v.storage)).collect();
/// assert_eq!(versions, [("v1", true), ("v1alpha1", false)]);
/// # Ok::<(), kuberator::Error>(())
/// ```
pub struct Conversion<Hub> {
    converter: Converter,
    _hub: PhantomData<fn() -> Hub>,
}

impl<Hub> fmt::Debug for Conversion<Hub> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conversion")
            .field("crd", &self.converter.crd_name)
            .field("hub", &self.converter.hub_api_version)
            .field(
                "versions",
                &self.converter.spokes.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<Hub> Default for Conversion<Hub>
where
    Hub: Resource<DynamicType = ()> + CustomResourceExt + HasSpec,
    Hub::Spec: Serialize + DeserializeOwned + 'static,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<Hub> Conversion<Hub>
where
    Hub: Resource<DynamicType = ()> + CustomResourceExt + HasSpec,
    Hub::Spec: Serialize + DeserializeOwned + 'static,
{
    /// The versions of `Hub`'s kind, with `Hub` the storage version; add the others with
    /// [`version`](Conversion::version).
    pub fn new() -> Self {
        Conversion {
            converter: Converter {
                group: Hub::group(&()).into_owned(),
                kind: Hub::kind(&()).into_owned(),
                crd_name: Hub::crd_name().to_owned(),
                hub_version: Hub::version(&()).into_owned(),
                hub_api_version: Hub::api_version(&()).into_owned(),
                hub_crd: Hub::crd(),
                spokes: BTreeMap::new(),
                problems: Vec::new(),
            },
            _hub: PhantomData,
        }
    }

    /// Serves `V` too: its spec converts to the hub's with `TryFrom` (or `From`) and back.
    /// `V` must be of the hub's group and kind (else [`crd`](Conversion::crd) and the start of
    /// the server fail with the mismatch).
    #[must_use]
    pub fn version<V>(mut self) -> Self
    where
        V: Resource<DynamicType = ()> + CustomResourceExt + HasSpec,
        V::Spec: Serialize + DeserializeOwned + TryFrom<Hub::Spec> + 'static,
        Hub::Spec: TryFrom<V::Spec>,
        <V::Spec as TryFrom<Hub::Spec>>::Error: fmt::Display,
        <Hub::Spec as TryFrom<V::Spec>>::Error: fmt::Display,
    {
        let api_version = V::api_version(&()).into_owned();
        let converter = &mut self.converter;
        if V::group(&()) != converter.group.as_str() || V::kind(&()) != converter.kind.as_str() {
            converter.problems.push(format!(
                "version `{api_version}` of kind `{}` is not a version of `{}` {}",
                V::kind(&()),
                converter.hub_api_version,
                converter.kind
            ));
            return self;
        }
        if api_version == converter.hub_api_version {
            converter.problems.push(format!(
                "version `{api_version}` is the hub (storage) version already"
            ));
            return self;
        }
        converter.spokes.insert(
            api_version,
            Spoke {
                crd: V::crd(),
                to_hub: Box::new(step::<V::Spec, Hub::Spec>),
                from_hub: Box::new(step::<Hub::Spec, V::Spec>),
            },
        );
        self
    }

    /// The multi-version CRD: every version's schema, the hub as the storage version, and
    /// `spec.conversion.strategy: None` (the webhook server switches it to `Webhook` with its
    /// client config and CA when it starts; install this CRD before the operator runs, e.g.
    /// in a [`TestEnv`](crate::testing)). For the CRD a cluster admin installs, see
    /// [`crd_for`](Conversion::crd_for) or [`Bundle::conversion`](crate::manifests::Bundle::conversion).
    ///
    /// # Errors
    /// A version of another group or kind, the hub added as a version, or versions that kube's
    /// [`merge_crds`](kube::core::crd::merge_crds) cannot merge (different scope or names).
    pub fn crd(&self) -> crate::Result<CustomResourceDefinition> {
        self.converter.crd()
    }

    /// The multi-version CRD as it is installed in a cluster: [`crd`](Conversion::crd) with
    /// `spec.conversion.strategy: Webhook`, `conversionReviewVersions: [v1]` and the client
    /// config of `server`'s Service at `/convert`, without a `caBundle` (the operator writes
    /// its CA there when it starts; until then reads of other versions than the storage
    /// version fail).
    ///
    /// ```
    /// # mod v1alpha1 {
    /// #     use kube::CustomResource; use schemars::JsonSchema; use serde::{Deserialize, Serialize};
    /// #     #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    /// #     #[kube(group = "example.com", version = "v1alpha1", kind = "Website", namespaced)]
    /// #     pub struct WebsiteSpec { pub image: String }
    /// # }
    /// # mod v1 {
    /// #     use kube::CustomResource; use schemars::JsonSchema; use serde::{Deserialize, Serialize};
    /// #     #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    /// #     #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    /// #     pub struct WebsiteSpec { pub image: String }
    /// # }
    /// # impl From<v1alpha1::WebsiteSpec> for v1::WebsiteSpec {
    /// #     fn from(old: v1alpha1::WebsiteSpec) -> Self { v1::WebsiteSpec { image: old.image } }
    /// # }
    /// # impl From<v1::WebsiteSpec> for v1alpha1::WebsiteSpec {
    /// #     fn from(new: v1::WebsiteSpec) -> Self { v1alpha1::WebsiteSpec { image: new.image } }
    /// # }
    /// use kuberator::webhook::{Conversion, WebhookServer};
    ///
    /// let conversion = Conversion::<v1::Website>::new().version::<v1alpha1::Website>();
    /// let crd = conversion.crd_for(&WebhookServer::in_cluster("websites", "website-webhooks"))?;
    /// let stanza = crd.spec.conversion.unwrap();
    /// assert_eq!(stanza.strategy, "Webhook");
    /// let service = stanza.webhook.unwrap().client_config.unwrap().service.unwrap();
    /// assert_eq!(service.path.as_deref(), Some("/convert"));
    /// # Ok::<(), kuberator::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`crd`](Conversion::crd), or for a [`WebhookServer::local`](super::WebhookServer::local)
    /// (its port is known only once bound: install [`crd`](Conversion::crd) instead).
    pub fn crd_for(
        &self,
        server: &super::WebhookServer,
    ) -> crate::Result<CustomResourceDefinition> {
        let mut crd = self.converter.crd()?;
        crd.spec.conversion = Some(server.conversion_stanza()?);
        Ok(crd)
    }

    /// The name of the CRD (`<plural>.<group>`), the one the webhook server patches.
    pub fn crd_name(&self) -> &str {
        &self.converter.crd_name
    }

    /// The RBAC the webhook server needs for this conversion: `patch` of this CRD only (by
    /// `resourceNames`). Merge it into the operator's with
    /// [`Rbac::merge`](crate::manifests::Rbac::merge).
    pub fn rbac(&self, name: &str) -> crate::manifests::Rbac {
        use crate::manifests::{Grant, Rbac, Scope};
        use k8s_openapi::api::rbac::v1::PolicyRule;
        Rbac {
            grants: vec![Grant {
                name: format!("{name}-conversion"),
                scope: Scope::Cluster,
                rules: vec![PolicyRule {
                    api_groups: Some(vec!["apiextensions.k8s.io".to_owned()]),
                    resources: Some(vec!["customresourcedefinitions".to_owned()]),
                    verbs: vec!["patch".to_owned()],
                    resource_names: Some(vec![self.converter.crd_name.clone()]),
                    ..PolicyRule::default()
                }],
            }],
            service_account: None,
        }
    }
}

impl<Hub> Conversion<Hub> {
    pub(crate) fn into_converter(self) -> Arc<Converter> {
        Arc::new(self.converter)
    }
}

/// Deserializes a `From` spec, converts it, serializes the `To` spec.
fn step<From, To>(spec: Value) -> Result<Value, String>
where
    From: DeserializeOwned,
    To: Serialize + TryFrom<From>,
    <To as TryFrom<From>>::Error: fmt::Display,
{
    let from: From =
        serde_json::from_value(spec).map_err(|error| format!("invalid spec: {error}"))?;
    let to = To::try_from(from).map_err(|error| error.to_string())?;
    serde_json::to_value(to).map_err(|error| format!("cannot encode the converted spec: {error}"))
}

/// The type-erased [`Conversion`] the server holds.
pub(crate) struct Converter {
    group: String,
    kind: String,
    crd_name: String,
    hub_version: String,
    hub_api_version: String,
    hub_crd: CustomResourceDefinition,
    spokes: BTreeMap<String, Spoke>,
    problems: Vec<String>,
}

impl Converter {
    pub(crate) fn crd_name(&self) -> &str {
        &self.crd_name
    }

    /// The configuration mistakes of the builder, as one error.
    pub(crate) fn check(&self) -> crate::Result<()> {
        match self.problems.is_empty() {
            true => Ok(()),
            false => Err(anyhow::anyhow!(
                "conversion of `{}`: {}",
                self.crd_name,
                self.problems.join("; ")
            )
            .into()),
        }
    }

    fn crd(&self) -> crate::Result<CustomResourceDefinition> {
        self.check()?;
        let mut crds = vec![self.hub_crd.clone()];
        crds.extend(self.spokes.values().map(|s| s.crd.clone()));
        let mut crd = kube::core::crd::merge_crds(crds, &self.hub_version).map_err(|error| {
            anyhow::anyhow!("merging the versions of `{}`: {error}", self.crd_name)
        })?;
        crd.spec.conversion = Some(
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceConversion {
                strategy: "None".to_owned(),
                webhook: None,
            },
        );
        Ok(crd)
    }

    fn serves(&self, group: &str, kind: &str) -> bool {
        self.group == group && self.kind == kind
    }

    /// `object` at `desired` (`group/version`), metadata and status kept.
    fn convert(&self, mut object: Value, desired: &str) -> Result<Value, String> {
        let from = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if from == desired {
            return Ok(object);
        }
        let spoke = |api_version: &str| {
            self.spokes
                .get(api_version)
                .ok_or_else(|| format!("version `{api_version}` is not served by this operator"))
        };
        let mut spec = object
            .get_mut("spec")
            .map(Value::take)
            .unwrap_or(Value::Object(serde_json::Map::new()));
        if from != self.hub_api_version {
            spec = (spoke(&from)?.to_hub)(spec)?;
        }
        if desired != self.hub_api_version {
            spec = (spoke(desired)?.from_hub)(spec)?;
        }
        object["spec"] = spec;
        object["apiVersion"] = Value::String(desired.to_owned());
        Ok(object)
    }
}

/// The answer to one `ConversionReview` body: every object converted, or a failure naming the
/// first object that could not be (a handler panic included); `Err` only for a body that is
/// not a `ConversionReview` request (HTTP 400).
pub(crate) fn review(converters: &[Arc<Converter>], body: &[u8]) -> Result<Vec<u8>, String> {
    let review: ConversionReview =
        serde_json::from_slice(body).map_err(|error| format!("not a ConversionReview: {error}"))?;
    let request = ConversionRequest::try_from(review).map_err(|error| error.to_string())?;
    let desired = request.desired_api_version.clone();
    let objects = request.objects.clone();
    let response = ConversionResponse::for_request(request);
    let mut converted = Vec::with_capacity(objects.len());
    let mut failure = None;
    for object in objects {
        match convert_one(converters, object, &desired) {
            Ok(object) => converted.push(object),
            Err(message) => {
                failure = Some(message);
                break;
            }
        }
    }
    let response = match failure {
        None => response.success(converted),
        Some(message) => {
            tracing::warn!(%message, "conversion failed");
            response.failure(Status::failure(&message, "ConversionFailed"))
        }
    };
    serde_json::to_vec(&response.into_review())
        .map_err(|error| format!("encoding the ConversionReview response: {error}"))
}

fn convert_one(
    converters: &[Arc<Converter>],
    object: Value,
    desired: &str,
) -> Result<Value, String> {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind) = (text("/apiVersion"), text("/kind"));
    let (namespace, name) = (text("/metadata/namespace"), text("/metadata/name"));
    let what = match namespace.is_empty() {
        true => format!("{kind} {name}"),
        false => format!("{kind} {namespace}/{name}"),
    };
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let fail =
        |reason: String| format!("cannot convert {what} from {api_version} to {desired}: {reason}");
    let converter = converters
        .iter()
        .find(|c| c.serves(group, &kind))
        .ok_or_else(|| fail("no conversion for this kind".to_owned()))?;
    match std::panic::catch_unwind(AssertUnwindSafe(|| {
        converter.convert(object.clone(), desired)
    })) {
        Ok(result) => result.map_err(fail),
        Err(panic) => Err(fail(format!(
            "the conversion panicked ({})",
            super::server::panic_message(panic.as_ref())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    mod old {
        use super::*;
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
        #[kube(group = "example.com", version = "v1alpha1", kind = "Site", namespaced)]
        pub(crate) struct SiteSpec {
            pub(crate) image: String,
        }
    }

    mod new {
        use super::*;
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
        #[kube(group = "example.com", version = "v1", kind = "Site", namespaced)]
        pub(crate) struct SiteSpec {
            pub(crate) image: String,
            pub(crate) tag: String,
        }
    }

    impl TryFrom<old::SiteSpec> for new::SiteSpec {
        type Error = String;
        fn try_from(old: old::SiteSpec) -> Result<Self, String> {
            if old.image == "panic" {
                panic!("conversion fell over");
            }
            let (image, tag) = old.image.split_once(':').ok_or("`image` has no `:tag`")?;
            Ok(new::SiteSpec {
                image: image.into(),
                tag: tag.into(),
            })
        }
    }

    impl From<new::SiteSpec> for old::SiteSpec {
        fn from(new: new::SiteSpec) -> Self {
            old::SiteSpec {
                image: format!("{}:{}", new.image, new.tag),
            }
        }
    }

    fn converters() -> Vec<Arc<Converter>> {
        vec![
            Conversion::<new::Site>::new()
                .version::<old::Site>()
                .into_converter(),
        ]
    }

    fn answer(desired: &str, objects: Vec<Value>) -> ConversionResponse {
        let body = serde_json::to_vec(&json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": { "uid": "u-1", "desiredAPIVersion": desired, "objects": objects },
        }))
        .unwrap();
        let review: ConversionReview =
            serde_json::from_slice(&review(&converters(), &body).unwrap()).unwrap();
        let response = review.response.unwrap();
        assert_eq!(response.uid, "u-1");
        response
    }

    fn site(api_version: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": api_version, "kind": "Site",
            "metadata": { "name": name, "namespace": "shop", "labels": { "a": "b" } },
            "spec": spec,
            "status": { "phase": "Ready" },
        })
    }

    #[test]
    fn objects_convert_both_ways_keeping_metadata_and_status() {
        let up = answer(
            "example.com/v1",
            vec![
                site(
                    "example.com/v1alpha1",
                    "a",
                    json!({ "image": "nginx:1.27" }),
                ),
                site(
                    "example.com/v1",
                    "b",
                    json!({ "image": "redis", "tag": "7" }),
                ),
            ],
        );
        assert_eq!(
            up.result.status,
            Some(kube::core::response::StatusSummary::Success)
        );
        assert_eq!(
            up.converted_objects,
            [
                site(
                    "example.com/v1",
                    "a",
                    json!({ "image": "nginx", "tag": "1.27" })
                ),
                site(
                    "example.com/v1",
                    "b",
                    json!({ "image": "redis", "tag": "7" })
                ),
            ]
        );
        let down = answer(
            "example.com/v1alpha1",
            vec![site(
                "example.com/v1",
                "a",
                json!({ "image": "nginx", "tag": "1.27" }),
            )],
        );
        assert_eq!(
            down.converted_objects,
            [site(
                "example.com/v1alpha1",
                "a",
                json!({ "image": "nginx:1.27" })
            )]
        );
    }

    #[test]
    fn a_failed_conversion_names_the_object_and_converts_nothing() {
        let failed = answer(
            "example.com/v1",
            vec![
                site(
                    "example.com/v1alpha1",
                    "fine",
                    json!({ "image": "nginx:1" }),
                ),
                site(
                    "example.com/v1alpha1",
                    "untagged",
                    json!({ "image": "nginx" }),
                ),
            ],
        );
        assert_eq!(
            failed.result.status,
            Some(kube::core::response::StatusSummary::Failure)
        );
        assert_eq!(
            failed.result.message,
            "cannot convert Site shop/untagged from example.com/v1alpha1 to example.com/v1: \
             `image` has no `:tag`"
        );
        assert!(failed.converted_objects.is_empty());

        let panicked = answer(
            "example.com/v1",
            vec![site(
                "example.com/v1alpha1",
                "p",
                json!({ "image": "panic" }),
            )],
        );
        assert_eq!(
            panicked.result.message,
            "cannot convert Site shop/p from example.com/v1alpha1 to example.com/v1: the \
             conversion panicked (conversion fell over)"
        );

        let unknown = answer(
            "example.com/v2",
            vec![site(
                "example.com/v1",
                "x",
                json!({ "image": "a", "tag": "b" }),
            )],
        );
        assert_eq!(
            unknown.result.message,
            "cannot convert Site shop/x from example.com/v1 to example.com/v2: version \
             `example.com/v2` is not served by this operator"
        );
    }

    #[test]
    fn a_body_that_is_not_a_review_is_an_error() {
        let error = review(&converters(), b"{}").unwrap_err();
        assert!(error.starts_with("not a ConversionReview"), "{error}");
    }

    #[test]
    fn the_crd_has_every_version_and_the_hub_stored() {
        let crd = Conversion::<new::Site>::new()
            .version::<old::Site>()
            .crd()
            .unwrap();
        assert_eq!(crd.metadata.name.as_deref(), Some("sites.example.com"));
        let versions: Vec<_> = crd
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        assert_eq!(versions, [("v1", true, true), ("v1alpha1", true, false)]);
        let again = Conversion::<new::Site>::new().version::<new::Site>().crd();
        assert_eq!(
            again.unwrap_err().to_string(),
            "conversion of `sites.example.com`: version `example.com/v1` is the hub (storage) \
             version already"
        );
    }
}
