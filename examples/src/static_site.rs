//! The demo operator: a `StaticSite` becomes a ConfigMap with its page and a Service in front of
//! it, both owned by the site (garbage-collected with it). Status carries observedGeneration, a
//! phase, a `Ready` condition, the URL and the last error; events say what happened.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kuberator::prelude::*;

/// The finalizer the operator owns.
pub const FINALIZER: &str = "staticsites.demo.kuberator.dev/cleanup";

/// A static web site: a page served on a port.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "demo.kuberator.dev",
    version = "v1",
    kind = "StaticSite",
    namespaced,
    status = "StaticSiteStatus",
    shortname = "site",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Gen","type":"integer","jsonPath":".metadata.generation"}"#,
    printcolumn = r#"{"name":"Observed","type":"integer","jsonPath":".status.observedGeneration"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error.message"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct StaticSiteSpec {
    /// The page's title.
    pub title: String,
    /// The page's body (HTML).
    pub content: String,
    /// The Service port (1-65535).
    #[serde(default = "default_port")]
    pub port: i32,
}

fn default_port() -> i32 {
    80
}

/// What the operator reports about a site.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct StaticSiteStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// `Published` or `Failed`.
    pub phase: Option<String>,
    /// Where the site is served inside the cluster.
    pub url: Option<String>,
    /// kstatus conditions (`Ready`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "kuberator::conditions::schema")]
    pub conditions: Vec<Condition>,
    /// The last reconcile error, cleared on success.
    #[status_error]
    pub error: Option<StatusError>,
}

/// Why a site cannot be published.
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum SiteError {
    /// The page is empty: nothing to serve until the spec changes.
    #[error("spec.content is empty: nothing to publish")]
    #[status_error(terminal)]
    EmptyContent,
    /// The port is outside 1-65535.
    #[error("spec.port {0} is not a valid port (1-65535)")]
    #[status_error(terminal)]
    InvalidPort(i32),
}

/// The operator's own state (none needed beyond what the context provides).
#[derive(Default)]
pub struct StaticSites;

#[kuberator::operator(
    resource = StaticSite,
    finalizer = "staticsites.demo.kuberator.dev/cleanup",
    events = "staticsites.demo.kuberator.dev/operator",
    owns(ConfigMap, Service),
    concurrency = 4
)]
impl StaticSites {
    async fn apply(&self, site: Arc<StaticSite>, ctx: &Ctx<StaticSite>) -> Result<Action> {
        tracing::info!(site = %site.name_any(), generation = ?site.metadata.generation, "operator: publishing");
        let name = site.name_any();
        if let Err(error) = validate(&site.spec) {
            // Say so in status: phase, a Stalled condition and the error. (The runtime records
            // the error and emits a Warning event by itself too; this adds phase and condition.)
            let mut status = site.status.clone().unwrap_or_default();
            status.phase = Some("Failed".into());
            kuberator::conditions::mark_stalled(
                &mut status.conditions,
                site.metadata.generation,
                &error.reason(),
                &error.to_string(),
            );
            ctx.repository()
                .update_status_with_error(&site, status, Some(&error))
                .await?;
            return Err(error.into());
        }
        ctx.apply_child(&site, page(&name, &site.spec)).await?;
        ctx.apply_child(&site, service(&name, site.spec.port))
            .await?;
        let namespace = site.namespace().unwrap_or_default();
        let generation = site.metadata.generation.unwrap_or_default();
        let mut status = site.status.clone().unwrap_or_default();
        status.phase = Some("Published".into());
        status.url = Some(format!("http://{name}.{namespace}.svc:{}", site.spec.port));
        status.error = None;
        kuberator::conditions::mark_ready(
            &mut status.conditions,
            Some(generation),
            "Published",
            "the site is served",
        );
        ctx.update_status(&site, status).await?;
        ctx.emit(
            &site,
            EventData::normal("Published", "Reconcile")
                .note(format!("serving {:?}", site.spec.title)),
        )
        .await;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, site: Arc<StaticSite>, ctx: &Ctx<StaticSite>) -> Result<Action> {
        tracing::info!(site = %site.name_any(), "operator: cleaning up");
        // The ConfigMap and Service carry owner references: the garbage collector removes them.
        ctx.emit(
            &site,
            EventData::normal("Unpublished", "Cleanup").note("children are garbage-collected"),
        )
        .await;
        Ok(Action::await_change())
    }
}

fn validate(spec: &StaticSiteSpec) -> std::result::Result<(), SiteError> {
    if spec.content.trim().is_empty() {
        return Err(SiteError::EmptyContent);
    }
    if !(1..=65535).contains(&spec.port) {
        return Err(SiteError::InvalidPort(spec.port));
    }
    Ok(())
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "kuberator-demo".to_owned(),
        ),
    ])
}

fn page(name: &str, spec: &StaticSiteSpec) -> ConfigMap {
    let html = format!(
        "<!doctype html><title>{}</title><h1>{}</h1>{}",
        spec.title, spec.title, spec.content
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(format!("{name}-page")),
            labels: Some(labels(name)),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("index.html".to_owned(), html)])),
        ..ConfigMap::default()
    }
}

fn service(name: &str, port: i32) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels(name)),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(labels(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// What the operator needs in a cluster, as one YAML stream for `kubectl apply -f`: the CRD, a
/// ServiceAccount `staticsites-operator` in `namespace`, and the least-privilege ClusterRole and
/// binding generated from the `#[kuberator::operator]` keys.
///
/// # Errors
/// When an object cannot be serialized (it always can).
pub fn manifests(namespace: &str) -> kuberator::Result<String> {
    use kuberator::manifests::{rbac_rules_for, to_yaml};
    let options = StaticSites::rbac_options().service_account(namespace, "staticsites-operator");
    to_yaml::<StaticSite>(&rbac_rules_for::<StaticSite>(&options))
}

/// The operator's install bundle (see `kuberator::manifests::Bundle`): the CRD, a ServiceAccount,
/// the least-privilege roles generated from the `#[kuberator::operator]` keys plus a Lease role
/// for leader election, the Deployment, the metrics Service, and a PodDisruptionBudget with more
/// than one replica. The image, namespace and replicas come from `manifests --image …`.
pub fn bundle() -> kuberator::manifests::Bundle {
    kuberator::manifests::Bundle::for_operator::<StaticSite>(&StaticSites::rbac_options())
        .leader_election(true)
}
