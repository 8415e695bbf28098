//! The install bundle: everything a cluster admin applies to run an operator, as one YAML stream
//! (`kubectl apply -f -`) or as a kustomize-friendly folder.

use std::{collections::BTreeMap, fmt, path::Path};

use anyhow::Context as _;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
            ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
            ServiceSpec,
        },
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use kube::{CustomResourceExt, Resource, api::ObjectMeta};

use super::{Grant, LEASE_VERBS, Rbac, RbacOptions, Scope, ServiceAccountRef, rule, yaml_stream};
use crate::{
    cache::ApiScope,
    error::{Error, Result},
    webhook::{Conversion, Registration, Webhook, WebhookServer},
};

/// The port of the operator's `/metrics`, `/healthz` and `/readyz` server unless set with
/// [`Bundle::port`] (serve it with `Operator::health("0.0.0.0:8080".parse()?)` or the
/// `health = "0.0.0.0:8080"` key of `#[kuberator::operator]`).
pub const DEFAULT_PORT: i32 = 8080;

/// The user id the operator's container runs as: distroless' `nonroot`, which needs no
/// `/etc/passwd` entry (so `FROM scratch` images work).
pub const RUN_AS_USER: i64 = 65532;

/// What a cluster admin applies to install an operator: its Namespace, ServiceAccount,
/// least-privilege (Cluster)Roles and bindings, CRDs, a Deployment (downward-API `POD_NAME` and
/// `POD_NAMESPACE`, probes on `/healthz` and `/readyz` (or the operator's own paths), resource requests, a restricted security
/// context), a metrics Service, and a PodDisruptionBudget when there is more than one replica.
///
/// Built from an operator's [`RbacOptions`] (what `#[kuberator::operator]`'s `rbac_options()`
/// returns) with [`Bundle::for_operator`], or from any list of grants and CRDs with
/// [`Bundle::new`], [`rbac`](Bundle::rbac) and [`crd`](Bundle::crd) (e.g. the union of several
/// controllers run by one process).
///
/// ```
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// use kuberator::manifests::{Bundle, RbacOptions};
///
/// #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
/// pub struct WebsiteSpec { pub image: String }
///
/// let bundle = Bundle::for_operator::<Website>(&RbacOptions::new("websites.example.com-operator"))
///     .image("registry.example.com/website-operator:1.0.0")
///     .namespace("websites")
///     .replicas(2)
///     .leader_election(true);
/// let yaml = bundle.to_yaml()?;
/// assert!(yaml.contains("kind: Deployment"));
/// assert!(yaml.contains("kind: PodDisruptionBudget"));
/// # Ok::<(), kuberator::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Bundle {
    name: String,
    namespace: Option<String>,
    image: Option<String>,
    replicas: i32,
    port: i32,
    liveness_path: String,
    readiness_path: String,
    leader_election: bool,
    sharding: bool,
    grants: Vec<Grant>,
    crds: Vec<CustomResourceDefinition>,
    args: Vec<String>,
    env: Vec<EnvVar>,
    resources: ResourceRequirements,
    webhook_server: Option<WebhookServer>,
    /// A webhook Service in the bundle's namespace, whatever it is set to
    /// ([`RbacOptions::webhooks`] without a namespace).
    webhook_service: Option<String>,
    webhooks: Vec<Registration>,
    /// The CRDs whose conversion the webhook server serves (by name).
    conversions: Vec<String>,
    /// Mistakes of the builder, reported by [`objects`](Bundle::objects).
    problems: Vec<String>,
}

impl Bundle {
    /// A bundle named `name` (the ServiceAccount, Deployment, Service and PDB; a DNS label such
    /// as `website-operator`) with no grants and no CRDs yet, in the namespace `<name>-system`,
    /// one replica, the port [`DEFAULT_PORT`], no leader election.
    pub fn new(name: impl Into<String>) -> Self {
        Bundle {
            name: name.into(),
            namespace: None,
            image: None,
            replicas: 1,
            port: DEFAULT_PORT,
            liveness_path: "/healthz".to_owned(),
            readiness_path: "/readyz".to_owned(),
            leader_election: false,
            sharding: false,
            grants: Vec::new(),
            crds: Vec::new(),
            args: Vec::new(),
            env: vec![env_value("RUST_LOG", "info")],
            resources: ResourceRequirements {
                requests: Some(quantities([("cpu", "10m"), ("memory", "64Mi")])),
                limits: Some(quantities([("memory", "256Mi")])),
                ..ResourceRequirements::default()
            },
            webhook_server: None,
            webhook_service: None,
            webhooks: Vec::new(),
            conversions: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// The bundle of an operator of `R`: `R`'s CRD (when `R` is a custom resource, see
    /// [`for_operator_of`](Bundle::for_operator_of) otherwise) and the grants of
    /// [`rbac_rules_for::<R>(options)`](super::rbac_rules_for), named `<plural>-operator`.
    pub fn for_operator<R>(options: &RbacOptions) -> Self
    where
        R: CustomResourceExt + Resource<DynamicType = ()>,
        R::Scope: ApiScope,
    {
        Self::for_operator_of::<R>(options).crd(R::crd())
    }

    /// Like [`for_operator`](Bundle::for_operator) for a resource that is not a custom resource
    /// (e.g. an operator of ConfigMaps): the grants only.
    pub fn for_operator_of<R>(options: &RbacOptions) -> Self
    where
        R: Resource<DynamicType = ()>,
        R::Scope: ApiScope,
    {
        let name = format!("{}-operator", R::plural(&()));
        let mut bundle = Bundle::new(name)
            .rbac(super::rbac_rules_for::<R>(options))
            .sharding(options.is_sharded());
        if let Some(path) = &options.liveness_path {
            bundle = bundle.liveness_path(path);
        }
        if let Some(path) = &options.readiness_path {
            bundle = bundle.readiness_path(path);
        }
        if let Some(webhooks) = &options.webhooks {
            match &webhooks.namespace {
                Some(namespace) => {
                    bundle.webhook_server =
                        Some(WebhookServer::in_cluster(namespace, &webhooks.service));
                }
                None => bundle.webhook_service = Some(webhooks.service.clone()),
            }
            bundle.add_registrations(crate::webhook::registrations_of::<R>(
                webhooks.validate,
                webhooks.validate_deletes,
                webhooks.default,
            ));
        }
        bundle
    }

    /// Adds the grants of `rbac` (its service account is replaced by the bundle's). Grants with
    /// the same name and scope as one already there are merged into it.
    #[must_use]
    pub fn rbac(mut self, rbac: Rbac) -> Self {
        for grant in rbac.grants {
            self = self.grant(grant);
        }
        self
    }

    /// Adds one grant (merged into one of the same name and scope).
    #[must_use]
    pub fn grant(mut self, grant: Grant) -> Self {
        match self
            .grants
            .iter_mut()
            .find(|g| g.name == grant.name && g.scope == grant.scope)
        {
            Some(existing) => {
                for rule in grant.rules {
                    if !existing.rules.contains(&rule) {
                        existing.rules.push(rule);
                    }
                }
            }
            None => self.grants.push(grant),
        }
        self
    }

    /// Adds a CRD (replacing one of the same name).
    #[must_use]
    pub fn crd(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.retain(|c| c.metadata.name != crd.metadata.name);
        self.crds.push(crd);
        self
    }

    /// The bundle's name (ServiceAccount, Deployment, Service, PDB).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The namespace the operator runs in (created by the bundle); default `<name>-system`.
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The container image (required), e.g. `registry.example.com/website-operator:1.0.0`.
    #[must_use]
    pub fn image(mut self, image: impl Into<String>) -> Self {
        self.image = Some(image.into());
        self
    }

    /// How many replicas (default 1). More than one needs [`leader_election`](Bundle::leader_election)
    /// or [`sharding`](Bundle::sharding), and adds a PodDisruptionBudget (keeping one
    /// available; with sharding, at most one unavailable).
    #[must_use]
    pub fn replicas(mut self, replicas: i32) -> Self {
        self.replicas = replicas;
        self
    }

    /// The path of the liveness probe (default `/healthz`; what the operator serves it on, see
    /// [`HealthRoutes::liveness`](crate::runtime::HealthRoutes::liveness)).
    /// [`for_operator`](Bundle::for_operator) takes it from
    /// [`RbacOptions::liveness_path`].
    #[must_use]
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        self.liveness_path = path.into();
        self
    }

    /// The path of the readiness probe (default `/readyz`; see
    /// [`liveness_path`](Bundle::liveness_path)).
    #[must_use]
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        self.readiness_path = path.into();
        self
    }

    /// The port of `/metrics`, `/healthz` and `/readyz` (default [`DEFAULT_PORT`]).
    #[must_use]
    pub fn port(mut self, port: i32) -> Self {
        self.port = port;
        self
    }

    /// Whether the operator elects a leader with a Lease in its own namespace (what
    /// `LeaderElection::in_operator_namespace` and the macro's `leader_election` key do): adds
    /// a Role for Leases in the bundle's namespace.
    #[must_use]
    pub fn leader_election(mut self, enabled: bool) -> Self {
        self.leader_election = enabled;
        self
    }

    /// Whether the operator's replicas split the objects between them
    /// ([`Sharding`](crate::runtime::Sharding) with membership Leases in its own namespace,
    /// what `Sharding::in_operator_namespace` and the macro's `sharding` key do):
    ///
    /// - the Lease role in the bundle's namespace (the one of leader election: `get`, `list`,
    ///   `watch`, `create`, `update` on `leases`), for each replica's membership Lease, labelled
    ///   `kuberator.dev/shard-group` and `kuberator.dev/shard-member`, and the watch on the
    ///   group's Leases;
    /// - nothing more on the resource: the owner label `kuberator.dev/shard-<group>` and the
    ///   annotation `kuberator.dev/shard-<group>-drained-by` are written with `patch`, which
    ///   every operator's role has;
    /// - more than one replica allowed without leader election (each replica's identity is its
    ///   pod name, `POD_NAME`), and the PodDisruptionBudget lets one replica go at a time, so a
    ///   drain moves one member's share at a time.
    ///
    /// [`for_operator`](Bundle::for_operator) sets it from [`RbacOptions::sharded`].
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kuberator::manifests::{Bundle, RbacOptions};
    ///
    /// let bundle = Bundle::for_operator_of::<ConfigMap>(&RbacOptions::new("cm-operator"))
    ///     .image("example.com/cm-operator:1")
    ///     .replicas(3)
    ///     .sharding(true);
    /// assert!(bundle.to_yaml()?.contains("maxUnavailable: 1"));
    /// # Ok::<(), kuberator::Error>(())
    /// ```
    #[must_use]
    pub fn sharding(mut self, enabled: bool) -> Self {
        self.sharding = enabled;
        self
    }

    /// Arguments of the operator's container (default none).
    #[must_use]
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Sets an environment variable of the container (default `RUST_LOG=info`; `POD_NAME`
    /// and `POD_NAMESPACE` are always set from the downward API).
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.env.retain(|e| e.name != name);
        self.env.push(env_value(&name, &value.into()));
        self
    }

    /// The container's resources (default: requests 10m CPU and 64Mi memory, limit 256Mi).
    #[must_use]
    pub fn resources(mut self, resources: ResourceRequirements) -> Self {
        self.resources = resources;
        self
    }

    /// The operator's admission webhook server
    /// ([`WebhookServer::in_cluster`] in the bundle's namespace, what the macro's
    /// `webhooks = "…"` key serves): adds its Service (port 443 to the container port
    /// `webhook`), the container port, and its RBAC ([`WebhookServer::rbac`]: its certificate
    /// Secret and its webhook configurations, by name). Add the webhooks with
    /// [`webhook`](Bundle::webhook).
    ///
    /// ```
    /// # use kube::CustomResource;
    /// # use schemars::JsonSchema;
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    /// # #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    /// # pub struct WebsiteSpec { pub image: String }
    /// use kuberator::{manifests::{Bundle, RbacOptions}, webhook::{Webhook, WebhookServer}};
    ///
    /// let bundle = Bundle::for_operator::<Website>(&RbacOptions::new("website-operator"))
    ///     .image("registry.example.com/website-operator:1.0.0")
    ///     .namespace("websites")
    ///     .webhook_server(WebhookServer::in_cluster("websites", "website-webhooks"))
    ///     .webhook(&Webhook::<Website>::new().validate(|_, _| Ok(())));
    /// let yaml = bundle.to_yaml()?;
    /// assert!(yaml.contains("kind: ValidatingWebhookConfiguration"));
    /// assert!(yaml.contains("name: website-webhooks"));
    /// # Ok::<(), kuberator::Error>(())
    /// ```
    #[must_use]
    pub fn webhook_server(mut self, server: WebhookServer) -> Self {
        self.webhook_server = Some(server);
        self.webhook_service = None;
        self
    }

    /// The webhook server: the one set, or the Service of [`RbacOptions::webhooks`] in the
    /// bundle's namespace.
    fn server(&self) -> Option<WebhookServer> {
        self.webhook_server.clone().or_else(|| {
            self.webhook_service
                .as_ref()
                .map(|service| WebhookServer::in_cluster(self.operator_namespace(), service))
        })
    }

    fn add_registrations(&mut self, registrations: Vec<Registration>) {
        for registration in registrations {
            self.webhooks.retain(|r| r.path != registration.path);
            self.webhooks.push(registration);
        }
    }

    /// Adds the `ValidatingWebhookConfiguration` / `MutatingWebhookConfiguration` entries of
    /// `webhook` (its handlers, timeout and selectors; the handlers themselves are not
    /// called). The configurations ship without a `caBundle`: the operator writes its CA there
    /// at start-up (server-side apply, field manager `kuberator-webhooks`), and until it does,
    /// `failurePolicy: Fail` refuses writes of the kind. For a `#[kuberator::operator]` with
    /// `validate` / `default`, add a `Webhook` with the same handler types (any closure), e.g.
    /// `Webhook::<Website>::new().validate(|_, _| Ok(())).default(|_| {})`.
    #[must_use]
    pub fn webhook<R: crate::finalize::Object>(mut self, webhook: &Webhook<R>) -> Self {
        self.add_registrations(webhook.registration_list());
        self
    }

    /// The conversion of a multi-version CRD, served by the bundle's
    /// [`webhook_server`](Bundle::webhook_server): its CRD ([`Conversion::crd`], replacing
    /// the single-version one of [`for_operator`](Bundle::for_operator)) with
    /// `spec.conversion.strategy: Webhook` pointing at the webhook Service's `/convert`
    /// (without a `caBundle`: the operator writes its CA there at start-up), and the RBAC to
    /// do so: `patch` of that CRD only, by `resourceNames`.
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
    /// use kuberator::{manifests::{Bundle, RbacOptions}, webhook::{Conversion, WebhookServer}};
    ///
    /// let conversion = Conversion::<v1::Website>::new().version::<v1alpha1::Website>();
    /// let bundle = Bundle::for_operator::<v1::Website>(&RbacOptions::new("website-operator"))
    ///     .image("registry.example.com/website-operator:1.0.0")
    ///     .namespace("websites")
    ///     .webhook_server(WebhookServer::in_cluster("websites", "website-webhooks"))
    ///     .conversion(&conversion);
    /// let yaml = bundle.to_yaml()?;
    /// assert!(yaml.contains("strategy: Webhook"));
    /// assert!(yaml.contains("path: /convert"));
    /// # Ok::<(), kuberator::Error>(())
    /// ```
    #[must_use]
    pub fn conversion<Hub>(mut self, conversion: &Conversion<Hub>) -> Self
    where
        Hub: Resource<DynamicType = ()> + CustomResourceExt + kube::core::object::HasSpec,
        Hub::Spec: serde::Serialize + serde::de::DeserializeOwned + 'static,
    {
        match conversion.crd() {
            Ok(crd) => {
                let name = conversion.crd_name().to_owned();
                if !self.conversions.contains(&name) {
                    self.conversions.push(name);
                }
                self.crd(crd)
            }
            Err(error) => {
                self.problems.push(error.to_string());
                self
            }
        }
    }

    /// The namespace the operator runs in.
    pub fn operator_namespace(&self) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| format!("{}-system", self.name))
    }

    /// The bundle's ServiceAccount.
    pub fn service_account_ref(&self) -> ServiceAccountRef {
        ServiceAccountRef {
            namespace: self.operator_namespace(),
            name: self.name.clone(),
        }
    }

    /// The bundle's RBAC: its grants (plus the Lease role with leader election or sharding) bound to its
    /// ServiceAccount; pass it to `Operator::check_permissions` or
    /// [`check_permissions`](super::check_permissions).
    pub fn rbac_objects(&self) -> Rbac {
        let mut grants = self.grants.clone();
        if let Some(server) = self.server() {
            grants.extend(server.rbac(&self.name).grants);
        }
        if !self.conversions.is_empty() {
            grants.push(Grant {
                name: format!("{}-conversion", self.name),
                scope: Scope::Cluster,
                rules: vec![k8s_openapi::api::rbac::v1::PolicyRule {
                    api_groups: Some(vec!["apiextensions.k8s.io".to_owned()]),
                    resources: Some(vec!["customresourcedefinitions".to_owned()]),
                    verbs: vec!["patch".to_owned()],
                    resource_names: Some(self.conversions.clone()),
                    ..k8s_openapi::api::rbac::v1::PolicyRule::default()
                }],
            });
        }
        if self.leader_election || self.sharding {
            grants.push(Grant {
                name: format!("{}-leader-election", self.name),
                scope: Scope::Namespace(self.operator_namespace()),
                rules: vec![rule("coordination.k8s.io", "leases", &LEASE_VERBS)],
            });
        }
        Rbac {
            grants,
            service_account: Some(self.service_account_ref()),
        }
    }

    fn check(&self) -> Result<&str> {
        let problem = |message: String| Err(Error::Anyhow(anyhow::Error::msg(message)));
        if let Some(first) = self.problems.first() {
            return problem(first.clone());
        }
        let Some(image) = self.image.as_deref().filter(|i| !i.trim().is_empty()) else {
            return problem(format!(
                "the bundle of `{}` needs a container image (`--image` / `Bundle::image`)",
                self.name
            ));
        };
        let service = format!("{}-metrics", self.name);
        for (what, value) in [
            ("name", &self.name),
            ("namespace", &self.operator_namespace()),
            ("metrics Service name", &service),
        ] {
            if !is_dns_label(value) {
                return problem(format!(
                    "the bundle's {what} `{value}` is not a DNS label (lower-case letters, digits \
                     and `-`, at most 63, starting with a letter and ending alphanumeric)"
                ));
            }
        }
        for (probe, path) in [
            ("liveness", &self.liveness_path),
            ("readiness", &self.readiness_path),
        ] {
            if !path.starts_with('/') {
                return problem(format!(
                    "the {probe} probe's path `{path}` must start with `/` (the path the \
                     operator's health server serves it on)"
                ));
            }
        }
        if self.replicas < 1 {
            return problem(format!(
                "replicas must be at least 1, not {}",
                self.replicas
            ));
        }
        if self.replicas > 1 && !self.leader_election && !self.sharding {
            return problem(format!(
                "{} replicas need leader election (`Bundle::leader_election(true)` and the \
                 operator's `leader_election` key) or sharding (`Bundle::sharding(true)` and \
                 the `sharding` key), or every replica reconciles every object",
                self.replicas
            ));
        }
        if !(1..=65535).contains(&self.port) {
            return problem(format!("port {} is not in 1-65535", self.port));
        }
        let server = self.server();
        match (
            &server,
            self.webhooks.is_empty() && self.conversions.is_empty(),
        ) {
            (None, false) => {
                return problem(
                    "the bundle has webhooks but no webhook server: add \
                     `Bundle::webhook_server(WebhookServer::in_cluster(namespace, service))`"
                        .to_owned(),
                );
            }
            (Some(server), _) => match server.service_namespace() {
                None => {
                    return problem(
                        "the bundle's webhook server is `WebhookServer::local()`, which no pod \
                         can serve: use `WebhookServer::in_cluster(namespace, service)`"
                            .to_owned(),
                    );
                }
                Some(namespace) if namespace != self.operator_namespace() => {
                    return problem(format!(
                        "the webhook Service is in namespace `{namespace}` but the operator runs \
                         in `{}`: the Service must be next to the pods it selects",
                        self.operator_namespace()
                    ));
                }
                Some(_)
                    if server.bind_port() == 0 || i32::from(server.bind_port()) == self.port =>
                {
                    return problem(format!(
                        "the webhook server's port {} must be a fixed port other than the \
                         health port {}",
                        server.bind_port(),
                        self.port
                    ));
                }
                Some(_) => {}
            },
            (None, true) => {}
        }
        Ok(image)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "kuberator".to_owned(),
            ),
        ])
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("app.kubernetes.io/name".to_owned(), self.name.clone())])
    }

    fn meta(&self, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: namespace.map(str::to_owned),
            labels: Some(self.labels()),
            ..ObjectMeta::default()
        }
    }

    /// The Namespace, enforcing the `restricted` Pod Security Standard the Deployment meets.
    pub fn namespace_object(&self) -> Namespace {
        let mut labels = self.labels();
        for mode in ["enforce", "warn", "audit"] {
            labels.insert(
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".to_owned(),
            );
        }
        Namespace {
            metadata: ObjectMeta {
                name: Some(self.operator_namespace()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    /// The Deployment.
    ///
    /// # Errors
    /// [`Error::Anyhow`] without an image, or with an invalid name, namespace, replica count or
    /// port.
    pub fn deployment(&self) -> Result<Deployment> {
        let image = self.check()?.to_owned();
        let namespace = self.operator_namespace();
        let probe = |path: &str| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        };
        let mut env = vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ];
        env.extend(self.env.iter().cloned());
        let mut ports = vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: self.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }];
        if let Some(server) = self.server() {
            ports.push(ContainerPort {
                name: Some("webhook".to_owned()),
                container_port: i32::from(server.bind_port()),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            });
        }
        let container = Container {
            name: "operator".to_owned(),
            image: Some(image),
            args: (!self.args.is_empty()).then(|| self.args.clone()),
            env: Some(env),
            ports: Some(ports),
            liveness_probe: Some(probe(&self.liveness_path)),
            readiness_probe: Some(probe(&self.readiness_path)),
            resources: Some(self.resources.clone()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    ..Capabilities::default()
                }),
                ..SecurityContext::default()
            }),
            ..Container::default()
        };
        Ok(Deployment {
            metadata: self.meta(Some(&namespace)),
            // `Option<DeploymentSpec>` up to Kubernetes 1.36, required from 1.37: `into` fits both.
            spec: DeploymentSpec {
                replicas: Some(self.replicas),
                selector: LabelSelector {
                    match_labels: Some(self.selector()),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(self.labels()),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(self.name.clone()),
                        containers: vec![container],
                        // Time for in-flight reconciles and the Lease release after SIGTERM.
                        termination_grace_period_seconds: Some(30),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(RUN_AS_USER),
                            run_as_group: Some(RUN_AS_USER),
                            seccomp_profile: Some(SeccompProfile {
                                type_: "RuntimeDefault".to_owned(),
                                ..SeccompProfile::default()
                            }),
                            ..PodSecurityContext::default()
                        }),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }
            .into(),
            ..Deployment::default()
        })
    }

    /// The Service in front of `/metrics` (port `http`).
    pub fn metrics_service(&self) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(format!("{}-metrics", self.name)),
                ..self.meta(Some(&self.operator_namespace()))
            },
            spec: Some(ServiceSpec {
                selector: Some(self.selector()),
                ports: Some(vec![ServicePort {
                    name: Some("http".to_owned()),
                    port: self.port,
                    target_port: Some(IntOrString::String("http".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    /// The Service in front of the webhook port, with a
    /// [`webhook_server`](Bundle::webhook_server).
    pub fn webhook_service(&self) -> Option<Service> {
        let mut service = self.server()?.service(self.selector())?;
        service.metadata.labels = Some(self.labels());
        Some(service)
    }

    /// The webhook configurations (validating, then mutating; without `caBundle`, see
    /// [`webhook`](Bundle::webhook)).
    pub fn webhook_configurations(&self) -> Vec<serde_json::Value> {
        let Some((validating, mutating)) = self
            .server()
            .and_then(|server| server.bundle_configurations(&self.webhooks))
        else {
            return Vec::new();
        };
        validating.into_iter().chain(mutating).collect()
    }

    /// The PodDisruptionBudget with more than one replica: keeping one available (a standby
    /// takes over), or with [`sharding`](Bundle::sharding) letting at most one go at a time
    /// (each member serves its own share).
    pub fn pod_disruption_budget(&self) -> Option<PodDisruptionBudget> {
        let (min_available, max_unavailable) = if self.sharding {
            (None, Some(IntOrString::Int(1)))
        } else {
            (Some(IntOrString::Int(1)), None)
        };
        (self.replicas > 1).then(|| PodDisruptionBudget {
            metadata: self.meta(Some(&self.operator_namespace())),
            spec: Some(PodDisruptionBudgetSpec {
                min_available,
                max_unavailable,
                selector: Some(LabelSelector {
                    match_labels: Some(self.selector()),
                    ..LabelSelector::default()
                }),
                ..PodDisruptionBudgetSpec::default()
            }),
            ..PodDisruptionBudget::default()
        })
    }

    /// Every object by file, in the order to apply them: `namespace.yaml`, `crds.yaml`,
    /// `rbac.yaml`, `service.yaml` (the metrics and the webhook Service), `deployment.yaml`,
    /// `pdb.yaml`, `webhooks.yaml` (files without objects are left out).
    ///
    /// # Errors
    /// As [`deployment`](Bundle::deployment).
    pub fn files(&self) -> Result<Vec<(&'static str, Vec<serde_json::Value>)>> {
        let deployment = self.deployment()?;
        let json = |value: Result<serde_json::Value, serde_json::Error>| {
            value.context("serializing the bundle").map_err(Error::from)
        };
        let mut crds = Vec::new();
        let server = self.server();
        for crd in &self.crds {
            let mut crd = crd.clone();
            let converted = crd
                .metadata
                .name
                .as_ref()
                .is_some_and(|name| self.conversions.contains(name));
            if converted && let Some(server) = &server {
                crd.spec.conversion = Some(server.conversion_stanza()?);
            }
            crds.push(json(serde_json::to_value(crd))?);
        }
        let mut services = vec![json(serde_json::to_value(self.metrics_service()))?];
        if let Some(service) = self.webhook_service() {
            services.push(json(serde_json::to_value(service))?);
        }
        let mut files = vec![
            (
                "namespace.yaml",
                vec![json(serde_json::to_value(self.namespace_object()))?],
            ),
            ("crds.yaml", crds),
            ("rbac.yaml", self.rbac_objects().objects()?),
            ("service.yaml", services),
            (
                "deployment.yaml",
                vec![json(serde_json::to_value(deployment))?],
            ),
        ];
        if let Some(pdb) = self.pod_disruption_budget() {
            files.push(("pdb.yaml", vec![json(serde_json::to_value(pdb))?]));
        }
        files.push(("webhooks.yaml", self.webhook_configurations()));
        files.retain(|(_, objects)| !objects.is_empty());
        Ok(files)
    }

    /// Every object, in the order to apply them.
    ///
    /// # Errors
    /// As [`deployment`](Bundle::deployment).
    pub fn objects(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .files()?
            .into_iter()
            .flat_map(|(_, objects)| objects)
            .collect())
    }

    /// The bundle as one YAML stream for `kubectl apply -f -`.
    ///
    /// # Errors
    /// As [`deployment`](Bundle::deployment).
    pub fn to_yaml(&self) -> Result<String> {
        yaml_stream(self.objects()?)
    }

    /// Writes the bundle into `dir` as one file per part (see [`files`](Bundle::files)) and a
    /// `kustomization.yaml` listing them, for `kubectl apply -k dir` or as a kustomize base.
    /// Returns the files written.
    ///
    /// # Errors
    /// As [`deployment`](Bundle::deployment), or when a file cannot be written.
    pub fn write_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let files = self.files()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = Vec::new();
        let mut kustomization = String::from(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
        );
        for (file, objects) in files {
            let path = dir.join(file);
            std::fs::write(&path, yaml_stream(objects)?)
                .with_context(|| format!("writing {}", path.display()))?;
            kustomization.push_str(&format!("- {file}\n"));
            written.push(file.to_owned());
        }
        let path = dir.join("kustomization.yaml");
        std::fs::write(&path, kustomization)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push("kustomization.yaml".to_owned());
        Ok(written)
    }
}

impl fmt::Display for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bundle `{}` in namespace `{}` ({} replica{}, {} CRD{}, {} role{})",
            self.name,
            self.operator_namespace(),
            self.replicas,
            if self.replicas == 1 { "" } else { "s" },
            self.crds.len(),
            if self.crds.len() == 1 { "" } else { "s" },
            self.rbac_objects().grants.len(),
            if self.rbac_objects().grants.len() == 1 {
                ""
            } else {
                "s"
            },
        )
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn quantities<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, Quantity> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Quantity(v.to_owned())))
        .collect()
}

/// A DNS-1123 label that is also a DNS-1035 label (Service names): `[a-z]([-a-z0-9]*[a-z0-9])?`,
/// at most 63 characters.
fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::manifests::{cli_from, rbac_rules_for};

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    struct WebsiteSpec {
        image: String,
    }

    fn bundle() -> Bundle {
        Bundle::for_operator::<Website>(
            &RbacOptions::new("websites.example.com-operator")
                .finalizer(true)
                .owns::<ConfigMap>(),
        )
        .image("example.com/website-operator:1.0.0")
    }

    fn probe_paths(bundle: &Bundle) -> (String, String) {
        // Through JSON: `Deployment::spec` is an `Option` up to Kubernetes 1.36 only.
        let deployment = serde_json::to_value(bundle.deployment().unwrap()).unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let path = |probe: &str| {
            let action = &container[probe]["httpGet"];
            assert_eq!(action["port"], "http", "{container}");
            action["path"].as_str().unwrap().to_owned()
        };
        (path("livenessProbe"), path("readinessProbe"))
    }

    #[test]
    fn probes_follow_the_operators_health_paths() {
        assert_eq!(
            probe_paths(&bundle()),
            ("/healthz".to_owned(), "/readyz".to_owned())
        );
        let options = RbacOptions::new("websites.example.com-operator")
            .liveness_path("/health")
            .readiness_path("/health/ready");
        let custom = Bundle::for_operator::<Website>(&options).image("example.com/op:1");
        assert_eq!(
            probe_paths(&custom),
            ("/health".to_owned(), "/health/ready".to_owned())
        );
        // Only one moved: the other keeps its default.
        let one = Bundle::for_operator::<Website>(
            &RbacOptions::new("websites.example.com-operator").readiness_path("/ready"),
        )
        .image("example.com/op:1");
        assert_eq!(
            probe_paths(&one),
            ("/healthz".to_owned(), "/ready".to_owned())
        );
        let yaml = custom.to_yaml().unwrap();
        assert!(yaml.contains("path: /health/ready"), "{yaml}");
        assert!(!yaml.contains("/readyz"), "{yaml}");
    }

    #[test]
    fn a_probe_path_without_slash_is_refused() {
        let error = bundle().liveness_path("health").deployment().unwrap_err();
        assert!(
            error
                .to_string()
                .contains("liveness probe's path `health` must start with `/`"),
            "{error}"
        );
    }

    fn kinds(objects: &[serde_json::Value]) -> Vec<&str> {
        objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn one_replica_bundle_has_every_object_but_the_pdb_in_apply_order() {
        let bundle = bundle();
        let objects = bundle.objects().unwrap();
        assert_eq!(
            kinds(&objects),
            [
                "Namespace",
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Service",
                "Deployment"
            ]
        );
        let namespace = "websites-operator-system";
        assert_eq!(objects[0]["metadata"]["name"], namespace);
        assert_eq!(
            objects[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert_eq!(objects[2]["metadata"]["namespace"], namespace);
        assert_eq!(objects[4]["subjects"][0]["name"], "websites-operator");
        assert_eq!(objects[4]["subjects"][0]["namespace"], namespace);
        assert_eq!(objects[5]["metadata"]["name"], "websites-operator-metrics");
        assert_eq!(objects[5]["spec"]["ports"][0]["port"], 8080);

        let deployment = &objects[6];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "websites-operator");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["securityContext"]["runAsUser"], RUN_AS_USER);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "example.com/website-operator:1.0.0");
        assert_eq!(container["env"][0]["name"], "POD_NAME");
        assert_eq!(
            container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(container["env"][1]["name"], "POD_NAMESPACE");
        assert_eq!(
            container["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["resources"]["requests"]["cpu"], "10m");
        assert_eq!(container["resources"]["requests"]["memory"], "64Mi");
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
        assert_eq!(deployment["spec"]["replicas"], 1);
        assert_eq!(
            deployment["spec"]["selector"]["matchLabels"],
            serde_json::json!({"app.kubernetes.io/name": "websites-operator"})
        );
        // The role holds the operator's rules.
        assert_eq!(
            bundle.rbac_objects().grants[0].rules,
            rbac_rules_for::<Website>(
                &RbacOptions::new("websites.example.com-operator")
                    .finalizer(true)
                    .owns::<ConfigMap>()
            )
            .grants[0]
                .rules
        );
    }

    #[test]
    fn more_replicas_need_leader_election_and_get_a_pdb_and_a_lease_role() {
        let error = bundle().replicas(3).to_yaml().unwrap_err().to_string();
        assert!(error.contains("3 replicas need leader election"), "{error}");

        let bundle = bundle().replicas(3).leader_election(true).namespace("web");
        let objects = bundle.objects().unwrap();
        assert_eq!(
            kinds(&objects),
            [
                "Namespace",
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "Role",
                "ClusterRoleBinding",
                "RoleBinding",
                "Service",
                "Deployment",
                "PodDisruptionBudget"
            ]
        );
        assert_eq!(
            objects[4]["metadata"]["name"],
            "websites-operator-leader-election"
        );
        assert_eq!(objects[4]["metadata"]["namespace"], "web");
        assert_eq!(
            objects[4]["rules"][0]["resources"],
            serde_json::json!(["leases"])
        );
        assert_eq!(objects[9]["spec"]["minAvailable"], 1);
        assert_eq!(objects[8]["spec"]["replicas"], 3);
    }

    #[test]
    fn sharded_replicas_get_the_lease_role_and_leave_one_at_a_time() {
        // From the operator's options (what `sharding = "…"` sets), no leader election needed.
        let options = RbacOptions::new("websites.example.com-operator")
            .finalizer(true)
            .sharded(true);
        let bundle = Bundle::for_operator::<Website>(&options)
            .image("example.com/website-operator:1.0.0")
            .namespace("web")
            .replicas(3);
        let objects = bundle.objects().unwrap();
        let role = objects
            .iter()
            .find(|o| o["kind"] == "Role")
            .expect("a Role for the membership Leases");
        assert_eq!(role["metadata"]["namespace"], "web");
        assert_eq!(
            role["rules"][0]["apiGroups"],
            serde_json::json!(["coordination.k8s.io"])
        );
        assert_eq!(role["rules"][0]["resources"], serde_json::json!(["leases"]));
        for verb in ["get", "list", "watch", "create", "update"] {
            assert!(
                role["rules"][0]["verbs"]
                    .as_array()
                    .unwrap()
                    .contains(&verb.into()),
                "{verb}: {role}"
            );
        }
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "RoleBinding")
            .expect("the Lease role bound");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        assert_eq!(binding["subjects"][0]["name"], "websites-operator");
        // The owner label and the drained-by annotation are patches of the resource.
        let cluster_role = objects.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
        let resource = cluster_role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["resources"] == serde_json::json!(["websites"]))
            .unwrap();
        assert!(
            resource["verbs"]
                .as_array()
                .unwrap()
                .contains(&"patch".into())
        );
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(deployment["spec"]["replicas"], 3);
        let env = &deployment["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0]["name"], "POD_NAME", "the member identity");
        let pdb = objects
            .iter()
            .find(|o| o["kind"] == "PodDisruptionBudget")
            .unwrap();
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert!(pdb["spec"].get("minAvailable").is_none(), "{pdb}");

        // Not sharded: no Lease role, and three replicas are refused.
        let plain = Bundle::for_operator::<Website>(&options.clone().sharded(false))
            .image("example.com/website-operator:1.0.0");
        assert!(
            plain
                .rbac_objects()
                .grants
                .iter()
                .all(|g| !g.name.ends_with("-leader-election"))
        );
        assert!(plain.replicas(3).to_yaml().is_err());
    }

    #[test]
    fn bad_parameters_are_named() {
        let error = |bundle: Bundle| bundle.to_yaml().unwrap_err().to_string();
        assert!(error(Bundle::new("w")).contains("needs a container image"));
        assert!(error(bundle().name("Web.Site")).contains("name `Web.Site` is not a DNS label"));
        assert!(error(bundle().namespace("a_b")).contains("namespace `a_b` is not a DNS label"));
        assert!(error(bundle().replicas(0)).contains("at least 1"));
        assert!(error(bundle().port(0)).contains("port 0"));
        assert!(
            error(bundle().name("a".repeat(60)).namespace("web")).contains("metrics Service name")
        );
    }

    #[test]
    fn grants_of_the_same_role_merge() {
        let a = rbac_rules_for::<Website>(&RbacOptions::new("shared"));
        let b = rbac_rules_for::<ConfigMap>(&RbacOptions::new("shared").status(false));
        let bundle = Bundle::new("many")
            .image("i")
            .rbac(a.clone())
            .rbac(b)
            .rbac(a);
        let rbac = bundle.rbac_objects();
        assert_eq!(rbac.grants.len(), 1);
        let resources: Vec<_> = rbac.grants[0]
            .rules
            .iter()
            .map(|r| r.resources.as_ref().unwrap()[0].as_str())
            .collect();
        assert_eq!(resources, ["websites", "websites/status", "configmaps"]);
    }

    #[test]
    fn the_yaml_stream_reads_back_as_the_objects() {
        let bundle = bundle().replicas(2).leader_election(true);
        let yaml = bundle.to_yaml().unwrap();
        let back: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert_eq!(back, bundle.objects().unwrap());
    }

    #[test]
    fn cli_prints_the_bundle_or_writes_a_kustomize_folder() {
        let run = |args: &[&str]| {
            let mut out = Vec::new();
            let handled = cli_from(bundle(), args.iter().copied(), &mut out);
            handled.map(|handled| (handled, String::from_utf8(out).unwrap()))
        };
        assert_eq!(run(&[]).unwrap(), (false, String::new()));
        assert_eq!(
            run(&["run", "--image", "x"]).unwrap(),
            (false, String::new())
        );

        let (handled, yaml) = run(&[
            "manifests",
            "--image",
            "example.com/w:2",
            "--namespace=web",
            "--replicas",
            "1",
            "--port",
            "9090",
        ])
        .unwrap();
        assert!(handled);
        assert_eq!(
            yaml,
            bundle()
                .image("example.com/w:2")
                .namespace("web")
                .port(9090)
                .to_yaml()
                .unwrap()
        );
        assert!(yaml.contains("containerPort: 9090"), "{yaml}");

        let (handled, usage) = run(&["manifests", "--help"]).unwrap();
        assert!(handled && usage.starts_with("usage: <operator> manifests --image IMAGE"));
        let error = run(&["manifests", "--image"]).unwrap_err().to_string();
        assert!(
            error.starts_with("`--image` needs a value\n\nusage:"),
            "{error}"
        );
        let error = run(&["manifests", "--colour", "red"])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("unknown argument `--colour`"), "{error}");
        let error = run(&["manifests", "--replicas", "two"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("`--replicas` needs a number, not `two`"),
            "{error}"
        );

        let dir = std::env::temp_dir().join(format!("kuberator-bundle-{}", std::process::id()));
        let (handled, summary) = run(&["manifests", "--out-dir", dir.to_str().unwrap()]).unwrap();
        assert!(handled);
        assert!(
            summary.contains(
                "namespace.yaml, crds.yaml, rbac.yaml, service.yaml, deployment.yaml, kustomization.yaml"
            ),
            "{summary}"
        );
        let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        assert!(kustomization.contains("kind: Kustomization\nresources:\n- namespace.yaml\n"));
        let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).unwrap();
        assert!(deployment.contains("kind: Deployment"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn webhooks_add_their_service_port_rbac_and_configurations_without_ca_bundle() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let namespace = "websites-operator-system";
        let webhook = Webhook::<Website>::new()
            .validate(|_, _| Ok(()))
            .default(|_| {})
            .namespace_selector(LabelSelector {
                match_labels: Some([("webhooks".to_owned(), "on".to_owned())].into()),
                ..LabelSelector::default()
            });
        let bundle = bundle()
            .webhook_server(WebhookServer::in_cluster(namespace, "website-webhooks"))
            .webhook(&webhook);
        let objects = bundle.objects().unwrap();
        let kinds = kinds(&objects);
        assert_eq!(
            kinds[kinds.len() - 2..],
            [
                "ValidatingWebhookConfiguration",
                "MutatingWebhookConfiguration"
            ]
        );
        let validating = &objects[objects.len() - 2];
        assert_eq!(validating["metadata"]["name"], "website-webhooks");
        let hook = &validating["webhooks"][0];
        assert_eq!(
            hook["clientConfig"]["service"],
            serde_json::json!({
                "namespace": namespace,
                "name": "website-webhooks",
                "port": 443,
                "path": "/validate-example-com-v1-website",
            })
        );
        assert!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");
        assert_eq!(hook["namespaceSelector"]["matchLabels"]["webhooks"], "on");
        assert_eq!(hook["failurePolicy"], "Fail");

        let service = objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "website-webhooks")
            .unwrap();
        assert_eq!(service["spec"]["ports"][0]["port"], 443);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 9443);
        assert_eq!(
            service["spec"]["selector"]["app.kubernetes.io/name"],
            "websites-operator"
        );
        let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert_eq!(ports[1]["name"], "webhook");
        assert_eq!(ports[1]["containerPort"], 9443);
        let rbac = serde_json::to_string(&bundle.rbac_objects().objects().unwrap()).unwrap();
        assert!(rbac.contains("website-webhooks-tls"), "{rbac}");
        assert!(rbac.contains("validatingwebhookconfigurations"), "{rbac}");
    }

    #[test]
    fn the_webhooks_of_rbac_options_follow_the_bundles_namespace() {
        // What `#[kuberator::operator(webhooks = "website-webhooks")]` with `validate`,
        // `validate_delete` and `default` generates.
        let options = RbacOptions::new("websites.example.com-operator")
            .webhooks("website-webhooks")
            .validates(true)
            .validates_deletes(true)
            .defaults(true);
        let bundle = Bundle::for_operator::<Website>(&options)
            .image("example.com/op:1")
            .namespace("web");
        let objects = bundle.objects().unwrap();
        let validating = objects
            .iter()
            .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
            .unwrap();
        let hook = &validating["webhooks"][0];
        assert_eq!(hook["name"], "websites.example.com.validate.kuberator.dev");
        assert_eq!(
            hook["clientConfig"]["service"],
            serde_json::json!({
                "namespace": "web",
                "name": "website-webhooks",
                "port": 443,
                "path": "/validate-example-com-v1-website",
            })
        );
        assert_eq!(
            hook["rules"],
            serde_json::json!([{
                "operations": ["CREATE", "UPDATE", "DELETE"],
                "apiGroups": ["example.com"],
                "apiVersions": ["v1"],
                "resources": ["websites"],
                "scope": "*",
            }])
        );
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["timeoutSeconds"], 7);
        assert!(hook["clientConfig"].get("caBundle").is_none(), "{hook}");
        let mutating = objects
            .iter()
            .find(|o| o["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        assert_eq!(
            mutating["webhooks"][0]["rules"][0]["operations"],
            serde_json::json!(["CREATE", "UPDATE"])
        );
        assert_eq!(mutating["webhooks"][0]["reinvocationPolicy"], "Never");
        let service = objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["metadata"]["name"] == "website-webhooks")
            .unwrap();
        assert_eq!(service["metadata"]["namespace"], "web");
        // The certificate Secret in the bundle's namespace, by name; the configurations by name.
        let rbac = bundle.rbac_objects();
        let secrets = rbac
            .grants
            .iter()
            .find(|g| g.name == "websites-operator-webhook-certificates")
            .unwrap();
        assert_eq!(secrets.scope, Scope::Namespace("web".to_owned()));
        assert_eq!(
            secrets.rules[0].resource_names,
            Some(vec!["website-webhooks-tls".to_owned()])
        );
        let configurations = rbac
            .grants
            .iter()
            .find(|g| g.name == "websites-operator-webhooks")
            .unwrap();
        assert_eq!(
            configurations.rules[0].resource_names,
            Some(vec!["website-webhooks".to_owned()])
        );
        assert_eq!(configurations.rules[0].verbs, ["get", "patch"]);

        // Only `default`: a mutating configuration alone; a namespace given: that one.
        let options = RbacOptions::new("websites.example.com-operator")
            .webhooks("shop/website-webhooks")
            .defaults(true);
        let objects = Bundle::for_operator::<Website>(&options)
            .image("example.com/op:1")
            .namespace("shop")
            .objects()
            .unwrap();
        let kinds = kinds(&objects);
        assert!(
            !kinds.contains(&"ValidatingWebhookConfiguration"),
            "{kinds:?}"
        );
        assert!(kinds.contains(&"MutatingWebhookConfiguration"), "{kinds:?}");
    }

    mod old {
        use super::*;
        #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
        #[kube(
            group = "example.com",
            version = "v1alpha1",
            kind = "Website",
            namespaced
        )]
        pub(crate) struct WebsiteSpec {
            pub(crate) image: String,
        }
    }

    impl From<old::WebsiteSpec> for WebsiteSpec {
        fn from(old: old::WebsiteSpec) -> Self {
            WebsiteSpec { image: old.image }
        }
    }

    impl From<WebsiteSpec> for old::WebsiteSpec {
        fn from(new: WebsiteSpec) -> Self {
            old::WebsiteSpec { image: new.image }
        }
    }

    #[test]
    fn a_conversion_ships_its_crd_with_the_webhook_stanza_and_the_rbac_to_patch_it() {
        let conversion = Conversion::<Website>::new().version::<old::Website>();
        let with_conversion = bundle()
            .webhook_server(WebhookServer::in_cluster(
                "websites-operator-system",
                "website-webhooks",
            ))
            .conversion(&conversion);
        let objects = with_conversion.objects().unwrap();
        let crds: Vec<_> = objects
            .iter()
            .filter(|o| o["kind"] == "CustomResourceDefinition")
            .collect();
        assert_eq!(crds.len(), 1, "the multi-version CRD replaced the other");
        let crd = crds[0];
        let versions: Vec<_> = crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["storage"].as_bool().unwrap()))
            .collect();
        assert_eq!(versions, [("v1", true), ("v1alpha1", false)]);
        assert_eq!(
            crd["spec"]["conversion"],
            serde_json::json!({
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {
                        "service": {
                            "namespace": "websites-operator-system",
                            "name": "website-webhooks",
                            "port": 443,
                            "path": "/convert",
                        },
                    },
                },
            })
        );
        let yaml = with_conversion.to_yaml().unwrap();
        assert!(yaml.contains("strategy: Webhook"), "{yaml}");
        // The RBAC: patch of this CRD only; the Service and the certificate Secret.
        let rbac = with_conversion.rbac_objects();
        let grant = rbac
            .grants
            .iter()
            .find(|g| g.name == "websites-operator-conversion")
            .unwrap();
        assert_eq!(grant.scope, Scope::Cluster);
        assert_eq!(grant.rules.len(), 1);
        assert_eq!(grant.rules[0].verbs, ["patch"]);
        assert_eq!(
            grant.rules[0].resource_names,
            Some(vec!["websites.example.com".to_owned()])
        );
        assert!(
            objects
                .iter()
                .any(|o| o["kind"] == "Service" && o["metadata"]["name"] == "website-webhooks")
        );
        assert!(
            rbac.grants
                .iter()
                .any(|g| g.name == "websites-operator-webhook-certificates")
        );
        // No admission webhooks: no configurations.
        assert!(
            !kinds(&objects)
                .iter()
                .any(|k| k.ends_with("WebhookConfiguration"))
        );

        // Without a server, or with a local one: refused with the fix.
        let error = bundle()
            .conversion(&conversion)
            .objects()
            .unwrap_err()
            .to_string();
        assert!(error.contains("no webhook server"), "{error}");
        let local = conversion
            .crd_for(&WebhookServer::local())
            .unwrap_err()
            .to_string();
        assert!(local.contains("install `Conversion::crd()`"), "{local}");
        // A conversion that cannot be built is named.
        let error = bundle()
            .conversion(&Conversion::<Website>::new().version::<Website>())
            .objects()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("is the hub (storage) version already"),
            "{error}"
        );
    }

    #[test]
    fn webhooks_need_an_in_cluster_server_next_to_the_pods() {
        let webhook = Webhook::<Website>::new().validate(|_, _| Ok(()));
        let error = bundle()
            .webhook(&webhook)
            .objects()
            .unwrap_err()
            .to_string();
        assert!(error.contains("no webhook server"), "{error}");
        let error = bundle()
            .webhook_server(WebhookServer::local())
            .webhook(&webhook)
            .objects()
            .unwrap_err()
            .to_string();
        assert!(error.contains("WebhookServer::local()"), "{error}");
        let error = bundle()
            .webhook_server(WebhookServer::in_cluster("elsewhere", "website-webhooks"))
            .webhook(&webhook)
            .objects()
            .unwrap_err()
            .to_string();
        assert!(error.contains("namespace `elsewhere`"), "{error}");
    }
}
