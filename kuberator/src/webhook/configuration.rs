//! The `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration` that point the API
//! server at the webhook server, with the CA in their `caBundle`.

use anyhow::Context as _;
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    },
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

use super::admission::Registration;
use crate::error::Result;

/// The field manager of the webhook configurations the framework writes.
pub(crate) const FIELD_MANAGER: &str = "kuberator-webhooks";

/// How the API server reaches the webhook server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `clientConfig.url`: `https://<host>:<port><path>` (TestEnv, out-of-cluster).
    Url { host: String, port: u16 },
    /// `clientConfig.service`: the Service in front of the webhook port.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Endpoint {
    /// The name the API server checks the serving certificate against.
    pub(crate) fn tls_host(&self) -> String {
        match self {
            Endpoint::Url { host, .. } => host.clone(),
            Endpoint::Service {
                namespace, name, ..
            } => format!("{name}.{namespace}.svc"),
        }
    }

    fn client_config(&self, path: &str, ca_bundle: Option<&str>) -> Value {
        let mut config = match self {
            Endpoint::Url { host, port } => {
                json!({ "url": format!("https://{host}:{port}{path}") })
            }
            Endpoint::Service {
                namespace,
                name,
                port,
            } => json!({
                "service": { "namespace": namespace, "name": name, "port": port, "path": path }
            }),
        };
        if let Some(ca) = ca_bundle {
            config["caBundle"] = Value::String(ca.to_owned());
        }
        config
    }
}

/// The webhook entries of one configuration.
pub(crate) fn webhooks(
    registrations: &[&Registration],
    endpoint: &Endpoint,
    ca_bundle: Option<&str>,
) -> Vec<Value> {
    registrations
        .iter()
        .map(|registration| {
            let target = &registration.target;
            // The API server's own deadline: the handler's plus two seconds for the round trip.
            let timeout = (registration.timeout.as_secs() + 2).clamp(1, 30);
            let mut webhook = json!({
                "name": registration.webhook_name(),
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "matchPolicy": "Equivalent",
                "timeoutSeconds": timeout,
                "clientConfig": endpoint.client_config(&registration.path, ca_bundle),
                "rules": [{
                    "operations": registration.operations,
                    "apiGroups": [target.group],
                    "apiVersions": [target.version],
                    "resources": [target.plural],
                    "scope": "*",
                }],
            });
            if registration.mutating {
                webhook["reinvocationPolicy"] = json!("Never");
            }
            if let Some(selector) = &registration.namespace_selector {
                webhook["namespaceSelector"] = json!(selector);
            }
            if let Some(selector) = &registration.object_selector {
                webhook["objectSelector"] = json!(selector);
            }
            webhook
        })
        .collect()
}

/// `pem` as a `caBundle` (base64).
fn ca_bundle(pem: &str) -> String {
    serde_json::to_value(ByteString(pem.as_bytes().to_vec()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `spec.conversion` of a CRD whose conversion the webhook server serves: `strategy: Webhook`,
/// review version `v1`, the client config of `endpoint` at `/convert`, with the CA when given.
pub(crate) fn conversion_stanza(endpoint: &Endpoint, ca_pem: Option<&str>) -> Value {
    let ca_bundle = ca_pem.map(ca_bundle);
    json!({
        "strategy": "Webhook",
        "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": endpoint.client_config(super::CONVERT_PATH, ca_bundle.as_deref()),
        },
    })
}

/// The merge patch that points the conversion of a CRD at the webhook server
/// ([`conversion_stanza`]).
pub(crate) fn conversion_patch(endpoint: &Endpoint, ca_pem: Option<&str>) -> Value {
    let mut conversion = conversion_stanza(endpoint, ca_pem);
    // A merge patch keeps what it does not name: drop the other way of reaching the server.
    let client_config = &mut conversion["webhook"]["clientConfig"];
    match endpoint {
        Endpoint::Url { .. } => client_config["service"] = Value::Null,
        Endpoint::Service { .. } => client_config["url"] = Value::Null,
    }
    json!({ "spec": { "conversion": conversion } })
}

/// Points the conversion of the CRD `name` at the webhook server, with `ca_pem` as its
/// `caBundle` (a merge patch of `spec.conversion` only).
///
/// # Access control
/// `patch` on `customresourcedefinitions` named `name`.
pub(crate) async fn apply_conversion(
    client: &Client,
    name: &str,
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
) -> Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    Api::<CustomResourceDefinition>::all(client.clone())
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(conversion_patch(endpoint, ca_pem)),
        )
        .await
        .with_context(|| {
            format!(
                "pointing the conversion of CustomResourceDefinition {name} at the webhook server"
            )
        })?;
    Ok(())
}

/// The configuration objects for `registrations`: (validating, mutating), each `None` when no
/// handler of that type exists.
pub(crate) fn configurations(
    name: &str,
    registrations: &[Registration],
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
) -> (Option<Value>, Option<Value>) {
    let ca_bundle = ca_pem.map(ca_bundle);
    let of = |mutating: bool, kind: &str| {
        let selected: Vec<&Registration> = registrations
            .iter()
            .filter(|r| r.mutating == mutating)
            .collect();
        (!selected.is_empty()).then(|| {
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": kind,
                "metadata": {
                    "name": name,
                    "labels": { "app.kubernetes.io/managed-by": "kuberator" },
                },
                "webhooks": webhooks(&selected, endpoint, ca_bundle.as_deref()),
            })
        })
    };
    (
        of(false, "ValidatingWebhookConfiguration"),
        of(true, "MutatingWebhookConfiguration"),
    )
}

/// Creates or updates the configurations (server-side apply, forced: the framework owns them),
/// with `ca_pem` as their `caBundle` when given.
///
/// # Access control
/// `patch` (and `create` the first time) on `validatingwebhookconfigurations` and
/// `mutatingwebhookconfigurations` named `name`.
pub(crate) async fn apply(
    client: &Client,
    name: &str,
    registrations: &[Registration],
    endpoint: &Endpoint,
    ca_pem: Option<&str>,
) -> Result<()> {
    let (validating, mutating) = configurations(name, registrations, endpoint, ca_pem);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    if let Some(body) = validating {
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .with_context(|| format!("applying ValidatingWebhookConfiguration {name}"))?;
    }
    if let Some(body) = mutating {
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(name, &params, &Patch::Apply(&body))
            .await
            .with_context(|| format!("applying MutatingWebhookConfiguration {name}"))?;
    }
    Ok(())
}
