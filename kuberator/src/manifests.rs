//! Manifests from the operator definition: the CRD, least-privilege RBAC, the start-up
//! permission check with SelfSubjectAccessReview, and the install [`Bundle`] (Namespace,
//! ServiceAccount, RBAC, CRDs, Deployment, metrics Service, PodDisruptionBudget) that
//! [`cli`] prints from the operator's own binary (`my-operator manifests --image …`).
//!
//! The RBAC covers exactly what the runtime does for an operator of `R`:
//!
//! | what | API group | resource | verbs | when |
//! |---|---|---|---|---|
//! | watch and patch the resource | `R`'s | `<plural>` | get, list, watch, patch | always |
//! | write its status | `R`'s | `<plural>/status` | patch | [`status`](RbacOptions::status) (default on) |
//! | set owner references that block deletion | `R`'s | `<plural>/finalizers` | update | [`finalizer`](RbacOptions::finalizer) |
//! | manage owned children | theirs | theirs | get, list, watch, create, patch, delete | [`owns`](RbacOptions::owns) |
//! | emit events | `events.k8s.io` | `events` | create, patch | [`events`](RbacOptions::events) |
//! | leader election | `coordination.k8s.io` | `leases` | get, list, watch, create, update | [`leader_election`](RbacOptions::leader_election) |
//! | shard membership (and the owner label, a `patch` of the resource) | `coordination.k8s.io` | `leases` | get, list, watch, create, update | [`sharding`](RbacOptions::sharding) |
//!
//! It is a `ClusterRole` when the operator watches all namespaces (or the resource is
//! cluster-scoped), and one `Role` per namespace when the namespaces are fixed; leader election
//! gets its own `Role` in the Lease's namespace.
//!
//! ```
//! # use kube::CustomResource;
//! # use schemars::JsonSchema;
//! # use serde::{Deserialize, Serialize};
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kuberator::manifests::{self, RbacOptions};
//!
//! #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
//! #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
//! pub struct WebsiteSpec { pub image: String }
//!
//! let rbac = manifests::rbac_rules_for::<Website>(
//!     &RbacOptions::new("website-operator")
//!         .namespaces(["shop"])
//!         .finalizer(true)
//!         .events(true)
//!         .owns::<ConfigMap>()
//!         .leader_election("operators")
//!         .service_account("operators", "website-operator"),
//! );
//! let yaml = manifests::to_yaml::<Website>(&rbac)?;
//! assert!(yaml.contains("kind: CustomResourceDefinition"));
//! assert!(yaml.contains("kind: Role"));
//! # Ok::<(), kuberator::Error>(())
//! ```

use std::fmt;

mod bundle;
mod cli;

pub use bundle::{Bundle, DEFAULT_PORT, RUN_AS_USER};
pub use cli::{USAGE, cli, cli_from};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec},
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client, CustomResourceExt, Resource,
    api::{ObjectMeta, PostParams},
};

use crate::{
    cache::ApiScope,
    error::{Error, Result},
};

/// SelfSubjectAccessReviews in flight at once during [`check_permissions`].
const REVIEWS_AT_ONCE: usize = 8;

const RESOURCE_VERBS: [&str; 4] = ["get", "list", "watch", "patch"];
const OWNED_VERBS: [&str; 6] = ["get", "list", "watch", "create", "patch", "delete"];
const EVENT_VERBS: [&str; 2] = ["create", "patch"];
const LEASE_VERBS: [&str; 5] = ["get", "list", "watch", "create", "update"];

/// What the operator does, for [`rbac_rules_for`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbacOptions {
    name: String,
    namespaces: Vec<String>,
    status: bool,
    finalizer: bool,
    events: bool,
    owns: Vec<(String, String)>,
    lease_namespace: Option<String>,
    sharded: bool,
    service_account: Option<ServiceAccountRef>,
    liveness_path: Option<String>,
    readiness_path: Option<String>,
    webhooks: Option<AdmissionOptions>,
}

/// The admission webhooks an operator serves, for its install bundle ([`RbacOptions::webhooks`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AdmissionOptions {
    /// The Service's namespace; `None`: the operator's (the bundle's) namespace.
    pub(crate) namespace: Option<String>,
    pub(crate) service: String,
    pub(crate) validate: bool,
    pub(crate) validate_deletes: bool,
    pub(crate) default: bool,
}

/// A ServiceAccount by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl ServiceAccountRef {
    /// The user name the API server knows it by: `system:serviceaccount:<namespace>:<name>`
    /// (what to impersonate to act as it).
    pub fn user_name(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl RbacOptions {
    /// Options for roles named `name` (e.g. `website-operator`): all namespaces, status writes
    /// on, no finalizer, no events, no owned kinds, no leader election.
    pub fn new(name: impl Into<String>) -> Self {
        RbacOptions {
            name: name.into(),
            namespaces: Vec::new(),
            status: true,
            finalizer: false,
            events: false,
            owns: Vec::new(),
            lease_namespace: None,
            sharded: false,
            service_account: None,
            liveness_path: None,
            readiness_path: None,
            webhooks: None,
        }
    }

    /// The watched namespaces: `Role`s in each instead of a `ClusterRole` (ignored for
    /// cluster-scoped resources).
    #[must_use]
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Self {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the operator writes the status subresource (default on).
    #[must_use]
    pub fn status(mut self, enabled: bool) -> Self {
        self.status = enabled;
        self
    }

    /// Whether the operator uses a finalizer (adds `update` on `<plural>/finalizers`).
    #[must_use]
    pub fn finalizer(mut self, enabled: bool) -> Self {
        self.finalizer = enabled;
        self
    }

    /// Whether the operator emits events (`events.k8s.io`).
    #[must_use]
    pub fn events(mut self, enabled: bool) -> Self {
        self.events = enabled;
        self
    }

    /// The operator owns children of kind `K` (watches and applies them).
    #[must_use]
    pub fn owns<K: Resource<DynamicType = ()>>(self) -> Self {
        let (group, plural) = (K::group(&()).into_owned(), K::plural(&()).into_owned());
        self.owns_resource(group, plural)
    }

    /// The operator owns children of the resource `plural` in API group `group` (`""` for the
    /// core group).
    #[must_use]
    pub fn owns_resource(mut self, group: impl Into<String>, plural: impl Into<String>) -> Self {
        let owned = (group.into(), plural.into());
        if !self.owns.contains(&owned) {
            self.owns.push(owned);
        }
        self
    }

    /// Leader election with a Lease in `namespace`.
    #[must_use]
    pub fn leader_election(mut self, namespace: impl Into<String>) -> Self {
        self.lease_namespace = Some(namespace.into());
        self
    }

    /// Sharding ([`Sharding`](crate::runtime::Sharding)) with membership Leases in
    /// `namespace`: the Lease rules of leader election (`get`, `list`, `watch`, `create`,
    /// `update`) in that namespace; the owner label is a `patch` of the resource, which every
    /// operator may do. With leader election too, use one namespace for both.
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kuberator::manifests::{RbacOptions, rbac_rules_for};
    ///
    /// let rbac = rbac_rules_for::<ConfigMap>(&RbacOptions::new("cm-operator").sharding("ops"));
    /// let yaml = rbac.to_yaml().unwrap();
    /// assert!(yaml.contains("leases"));
    /// assert!(yaml.contains("namespace: ops"));
    /// ```
    #[must_use]
    pub fn sharding(mut self, namespace: impl Into<String>) -> Self {
        self.sharded = true;
        self.leader_election(namespace)
    }

    /// Whether the operator is sharded, without saying where its membership Leases live yet
    /// (the generated `rbac_options()` of `#[kuberator::operator(sharding = "…")]` sets it; the
    /// namespace is the operator's own, known at run time): no rules by itself, but
    /// [`Bundle::for_operator`] then adds the Lease role in the bundle's namespace and allows
    /// more than one replica (see [`Bundle::sharding`]).
    ///
    /// ```
    /// use k8s_openapi::api::core::v1::ConfigMap;
    /// use kuberator::manifests::{Bundle, RbacOptions};
    ///
    /// let options = RbacOptions::new("cm-operator").sharded(true);
    /// let yaml = Bundle::for_operator_of::<ConfigMap>(&options)
    ///     .image("example.com/cm-operator:1")
    ///     .replicas(3)
    ///     .to_yaml()
    ///     .unwrap();
    /// assert!(yaml.contains("leases"));
    /// ```
    #[must_use]
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.sharded = sharded;
        self
    }

    /// Whether [`sharded`](Self::sharded) or [`sharding`](Self::sharding) was set.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// The operator's liveness path when not `/healthz` (its
    /// [`HealthRoutes::liveness`](crate::runtime::HealthRoutes::liveness)): no RBAC, but
    /// [`Bundle::for_operator`] puts the Deployment's liveness probe on it. The generated
    /// `rbac_options()` of `#[kuberator::operator(health(liveness = "…"))]` sets it.
    #[must_use]
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        self.liveness_path = Some(path.into());
        self
    }

    /// The operator's readiness path when not `/readyz`, for the Deployment's readiness probe
    /// (see [`liveness_path`](Self::liveness_path)).
    #[must_use]
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        self.readiness_path = Some(path.into());
        self
    }

    /// The operator serves admission webhooks behind the Service `service`
    /// (`website-webhooks`, in the operator's namespace, or `shop/website-webhooks`), as
    /// `#[kuberator::operator(webhooks = "…")]` does; say which with
    /// [`validates`](Self::validates), [`validates_deletes`](Self::validates_deletes) and
    /// [`defaults`](Self::defaults). No rules of the resource's own: [`Bundle::for_operator`]
    /// adds the webhook server (its Service, port and RBAC, [`WebhookServer::rbac`]) and the
    /// webhook configurations. The generated `rbac_options()` of the macro sets all of it.
    ///
    /// [`WebhookServer::rbac`]: crate::webhook::WebhookServer::rbac
    ///
    /// ```
    /// use kuberator::manifests::RbacOptions;
    ///
    /// let options = RbacOptions::new("website-operator")
    ///     .webhooks("website-webhooks")
    ///     .validates(true)
    ///     .defaults(true);
    /// # let _ = options;
    /// ```
    #[must_use]
    pub fn webhooks(mut self, service: impl Into<String>) -> Self {
        let service = service.into();
        let (namespace, service) = match service.split_once('/') {
            Some((namespace, name)) => (Some(namespace.to_owned()), name.to_owned()),
            None => (None, service),
        };
        let old = self.webhooks.take();
        self.webhooks = Some(AdmissionOptions {
            namespace,
            service,
            validate: old.as_ref().is_some_and(|o| o.validate),
            validate_deletes: old.as_ref().is_some_and(|o| o.validate_deletes),
            default: old.as_ref().is_some_and(|o| o.default),
        });
        self
    }

    /// With [`webhooks`](Self::webhooks): the operator validates creates and updates (the
    /// macro's `validate` method).
    #[must_use]
    pub fn validates(mut self, enabled: bool) -> Self {
        if let Some(webhooks) = &mut self.webhooks {
            webhooks.validate = enabled;
        }
        self
    }

    /// With [`webhooks`](Self::webhooks): the operator validates deletes (the macro's
    /// `validate_delete` method).
    #[must_use]
    pub fn validates_deletes(mut self, enabled: bool) -> Self {
        if let Some(webhooks) = &mut self.webhooks {
            webhooks.validate_deletes = enabled;
        }
        self
    }

    /// With [`webhooks`](Self::webhooks): the operator sets defaults (the macro's `default`
    /// method).
    #[must_use]
    pub fn defaults(mut self, enabled: bool) -> Self {
        if let Some(webhooks) = &mut self.webhooks {
            webhooks.default = enabled;
        }
        self
    }

    /// Also emit the ServiceAccount and the bindings of the roles to it.
    #[must_use]
    pub fn service_account(
        mut self,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        self.service_account = Some(ServiceAccountRef {
            namespace: namespace.into(),
            name: name.into(),
        });
        self
    }
}

/// Where a [`Grant`] applies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every namespace and the cluster scope: a `ClusterRole`.
    Cluster,
    /// One namespace: a `Role`.
    Namespace(String),
}

/// Rules granted together: one `ClusterRole` or one `Role`.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// The role's name.
    pub name: String,
    /// Where it applies.
    pub scope: Scope,
    /// What it allows.
    pub rules: Vec<PolicyRule>,
}

/// The least-privilege RBAC of an operator, from [`rbac_rules_for`]. The fields are public so
/// that rules can be added by hand (e.g. for what `apply` reads).
#[derive(Clone, Debug, PartialEq)]
pub struct Rbac {
    /// The roles.
    pub grants: Vec<Grant>,
    /// Who the bindings bind to (no bindings without one).
    pub service_account: Option<ServiceAccountRef>,
}

/// The least-privilege RBAC for an operator of `R`; see the [module docs](self).
pub fn rbac_rules_for<R>(options: &RbacOptions) -> Rbac
where
    R: Resource<DynamicType = ()>,
    R::Scope: ApiScope,
{
    let group = R::group(&()).into_owned();
    let plural = R::plural(&()).into_owned();
    let mut rules = vec![rule(&group, &plural, &RESOURCE_VERBS)];
    if options.status {
        rules.push(rule(&group, &format!("{plural}/status"), &["patch"]));
    }
    if options.finalizer {
        rules.push(rule(&group, &format!("{plural}/finalizers"), &["update"]));
    }
    for (owned_group, owned_plural) in &options.owns {
        rules.push(rule(owned_group, owned_plural, &OWNED_VERBS));
    }
    if options.events {
        rules.push(rule("events.k8s.io", "events", &EVENT_VERBS));
    }
    let mut grants = Vec::new();
    if <R::Scope as ApiScope>::NAMESPACED && !options.namespaces.is_empty() {
        for namespace in &options.namespaces {
            grants.push(Grant {
                name: options.name.clone(),
                scope: Scope::Namespace(namespace.clone()),
                rules: rules.clone(),
            });
        }
    } else {
        grants.push(Grant {
            name: options.name.clone(),
            scope: Scope::Cluster,
            rules,
        });
    }
    if let Some(namespace) = &options.lease_namespace {
        grants.push(Grant {
            name: format!("{}-leader-election", options.name),
            scope: Scope::Namespace(namespace.clone()),
            rules: vec![rule("coordination.k8s.io", "leases", &LEASE_VERBS)],
        });
    }
    Rbac {
        grants,
        service_account: options.service_account.clone(),
    }
}

/// Adds `rule` to `rules`: its verbs join a rule for the same groups and resources.
fn merge_rule(rules: &mut Vec<PolicyRule>, rule: PolicyRule) {
    let same = rules.iter_mut().find(|mine| {
        mine.api_groups == rule.api_groups
            && mine.resources == rule.resources
            && mine.resource_names == rule.resource_names
            && mine.non_resource_urls == rule.non_resource_urls
    });
    match same {
        Some(mine) => {
            for verb in rule.verbs {
                if !mine.verbs.contains(&verb) {
                    mine.verbs.push(verb);
                }
            }
        }
        None => {
            let mut rule = rule;
            let mut seen = Vec::new();
            rule.verbs.retain(|verb| {
                let new = !seen.contains(verb);
                seen.push(verb.clone());
                new
            });
            rules.push(rule);
        }
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// One verb on one resource (or subresource) in one namespace (or all).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Permission {
    /// The verb, e.g. `patch`.
    pub verb: String,
    /// The API group (`""` for the core group).
    pub group: String,
    /// The resource's plural, e.g. `websites`.
    pub resource: String,
    /// The subresource, e.g. `status`.
    pub subresource: Option<String>,
    /// The namespace; `None` for all namespaces (or the cluster scope).
    pub namespace: Option<String>,
    /// The object's name, for a rule limited by `resourceNames` (e.g. the webhook server's
    /// own Secret); `None` for every object.
    pub name: Option<String>,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` on `{}", self.verb, self.resource)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        if let Some(subresource) = &self.subresource {
            write!(f, "/{subresource}")?;
        }
        if let Some(name) = &self.name {
            write!(f, "` named `{name}")?;
        }
        match &self.namespace {
            Some(namespace) => write!(f, "` in namespace `{namespace}`"),
            None => f.write_str("` in all namespaces"),
        }
    }
}

/// The permissions [`check_permissions`] found missing; reach it with
/// `error.downcast_ref::<MissingPermissions>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingPermissions {
    /// Each missing permission, sorted.
    pub missing: Vec<Permission>,
}

impl fmt::Display for MissingPermissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the operator lacks {} RBAC permission{} (grant them in its Role or ClusterRole, see `kuberator::manifests`): ",
            self.missing.len(),
            if self.missing.len() == 1 { "" } else { "s" }
        )?;
        for (i, permission) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{permission}")?;
        }
        Ok(())
    }
}

impl std::error::Error for MissingPermissions {}

impl Rbac {
    /// The union of several operators' RBAC, as one [`Manager`](crate::runtime::Manager) of
    /// them needs it: one role per scope (named `name`, or `name-leader-election` for the Lease
    /// role), rules merged per API group and resource, no verb twice.
    ///
    /// ```
    /// use kuberator::manifests::{Rbac, RbacOptions, rbac_rules_for};
    /// use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    ///
    /// let a = rbac_rules_for::<ConfigMap>(&RbacOptions::new("a").events(true));
    /// let b = rbac_rules_for::<Secret>(&RbacOptions::new("b").events(true));
    /// let both = Rbac::union("manager", [a, b]);
    /// assert_eq!(both.grants.len(), 1);
    /// let events = both.grants[0].rules.iter()
    ///     .filter(|r| r.resources.as_deref() == Some(&["events".to_owned()][..]))
    ///     .count();
    /// assert_eq!(events, 1);
    /// ```
    pub fn union(name: &str, rbacs: impl IntoIterator<Item = Rbac>) -> Rbac {
        let mut union = Rbac {
            grants: Vec::new(),
            service_account: None,
        };
        for rbac in rbacs {
            union.merge(rbac);
        }
        for grant in &mut union.grants {
            let lease_only = grant.rules.iter().all(|rule| {
                rule.resources.as_deref() == Some(&["leases".to_owned()][..])
                    && rule.api_groups.as_deref() == Some(&["coordination.k8s.io".to_owned()][..])
            });
            grant.name = if lease_only {
                format!("{name}-leader-election")
            } else {
                name.to_owned()
            };
        }
        union
    }

    /// Adds `other`'s grants: rules of a grant with the same scope and name kind (resource role
    /// or Lease role) join the existing grant, merged per API group and resource.
    pub fn merge(&mut self, other: Rbac) {
        for grant in other.grants {
            let lease = grant.name.ends_with("-leader-election");
            let existing = self.grants.iter_mut().find(|mine| {
                mine.scope == grant.scope && mine.name.ends_with("-leader-election") == lease
            });
            match existing {
                Some(mine) => {
                    for rule in grant.rules {
                        merge_rule(&mut mine.rules, rule);
                    }
                }
                None => {
                    let mut rules = Vec::new();
                    for rule in grant.rules {
                        merge_rule(&mut rules, rule);
                    }
                    self.grants.push(Grant { rules, ..grant });
                }
            }
        }
        if self.service_account.is_none() {
            self.service_account = other.service_account;
        }
    }

    /// Every single permission the grants give, one per verb, resource and namespace.
    pub fn permissions(&self) -> Vec<Permission> {
        let mut permissions = Vec::new();
        for grant in &self.grants {
            let namespace = match &grant.scope {
                Scope::Cluster => None,
                Scope::Namespace(namespace) => Some(namespace.clone()),
            };
            for rule in &grant.rules {
                let groups = rule.api_groups.as_deref().unwrap_or_default();
                let resources = rule.resources.as_deref().unwrap_or_default();
                for group in groups {
                    for resource in resources {
                        let (resource, subresource) = match resource.split_once('/') {
                            Some((resource, sub)) => (resource, Some(sub.to_owned())),
                            None => (resource.as_str(), None),
                        };
                        // A rule limited by `resourceNames` allows only those objects.
                        let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
                            Some(names) if !names.is_empty() => {
                                names.iter().cloned().map(Some).collect()
                            }
                            _ => vec![None],
                        };
                        for verb in &rule.verbs {
                            for name in &names {
                                permissions.push(Permission {
                                    verb: verb.clone(),
                                    group: group.clone(),
                                    resource: resource.to_owned(),
                                    subresource: subresource.clone(),
                                    namespace: namespace.clone(),
                                    name: name.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        permissions.sort();
        permissions.dedup();
        permissions
    }

    /// The `ClusterRole`s (grants with [`Scope::Cluster`]).
    pub fn cluster_roles(&self) -> Vec<ClusterRole> {
        self.grants
            .iter()
            .filter(|g| g.scope == Scope::Cluster)
            .map(|grant| ClusterRole {
                metadata: meta(&grant.name, None),
                rules: Some(grant.rules.clone()),
                ..ClusterRole::default()
            })
            .collect()
    }

    /// The `Role`s (grants with [`Scope::Namespace`]).
    pub fn roles(&self) -> Vec<Role> {
        self.grants
            .iter()
            .filter_map(|grant| match &grant.scope {
                Scope::Namespace(namespace) => Some(Role {
                    metadata: meta(&grant.name, Some(namespace)),
                    rules: Some(grant.rules.clone()),
                }),
                Scope::Cluster => None,
            })
            .collect()
    }

    /// The ServiceAccount, if one was given.
    pub fn service_account(&self) -> Option<ServiceAccount> {
        self.service_account.as_ref().map(|sa| ServiceAccount {
            metadata: meta(&sa.name, Some(&sa.namespace)),
            ..ServiceAccount::default()
        })
    }

    /// A `ClusterRoleBinding` per `ClusterRole`, to the ServiceAccount (none without one).
    pub fn cluster_role_bindings(&self) -> Vec<ClusterRoleBinding> {
        let Some(subject) = self.subject() else {
            return Vec::new();
        };
        self.grants
            .iter()
            .filter(|g| g.scope == Scope::Cluster)
            .map(|grant| ClusterRoleBinding {
                metadata: meta(&grant.name, None),
                role_ref: role_ref("ClusterRole", &grant.name),
                subjects: Some(vec![subject.clone()]),
            })
            .collect()
    }

    /// A `RoleBinding` per `Role`, to the ServiceAccount (none without one).
    pub fn role_bindings(&self) -> Vec<RoleBinding> {
        let Some(subject) = self.subject() else {
            return Vec::new();
        };
        self.grants
            .iter()
            .filter_map(|grant| match &grant.scope {
                Scope::Namespace(namespace) => Some(RoleBinding {
                    metadata: meta(&grant.name, Some(namespace)),
                    role_ref: role_ref("Role", &grant.name),
                    subjects: Some(vec![subject.clone()]),
                }),
                Scope::Cluster => None,
            })
            .collect()
    }

    fn subject(&self) -> Option<Subject> {
        self.service_account.as_ref().map(|sa| Subject {
            kind: "ServiceAccount".into(),
            name: sa.name.clone(),
            namespace: Some(sa.namespace.clone()),
            ..Subject::default()
        })
    }

    /// Every object, in the order to apply them: ServiceAccount, roles, bindings.
    ///
    /// # Errors
    /// [`Error::Anyhow`] if an object cannot be serialized (it always can).
    pub fn objects(&self) -> Result<Vec<serde_json::Value>> {
        let mut objects = Vec::new();
        objects.extend(self.service_account().map(serde_json::to_value));
        objects.extend(self.cluster_roles().iter().map(serde_json::to_value));
        objects.extend(self.roles().iter().map(serde_json::to_value));
        objects.extend(
            self.cluster_role_bindings()
                .iter()
                .map(serde_json::to_value),
        );
        objects.extend(self.role_bindings().iter().map(serde_json::to_value));
        objects
            .into_iter()
            .collect::<Result<_, _>>()
            .context("serializing the RBAC objects")
            .map_err(Error::from)
    }

    /// The RBAC objects as one multi-document YAML stream.
    ///
    /// # Errors
    /// [`Error::Anyhow`] if an object cannot be serialized (it always can).
    pub fn to_yaml(&self) -> Result<String> {
        yaml_stream(self.objects()?)
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_owned(),
                "kuberator".to_owned(),
            )]
            .into(),
        ),
        ..ObjectMeta::default()
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        // `String` in older Kubernetes versions, `Option<String>` in newer: `into` fits both.
        api_group: "rbac.authorization.k8s.io".to_owned().into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn yaml_stream(objects: Vec<serde_json::Value>) -> Result<String> {
    let mut documents = Vec::with_capacity(objects.len());
    for object in objects {
        documents.push(serde_saphyr::to_string(&object).context("writing manifests as YAML")?);
    }
    Ok(documents.join("---\n"))
}

/// `R`'s CustomResourceDefinition as YAML.
///
/// # Errors
/// [`Error::Anyhow`] if it cannot be serialized (it always can).
pub fn crd_yaml<R: CustomResourceExt>() -> Result<String> {
    let crd = serde_json::to_value(R::crd()).context("serializing the CRD")?;
    yaml_stream(vec![crd])
}

/// `R`'s CustomResourceDefinition followed by `rbac`, as one YAML stream for `kubectl apply -f`.
///
/// # Errors
/// [`Error::Anyhow`] if an object cannot be serialized (it always can).
pub fn to_yaml<R: CustomResourceExt>(rbac: &Rbac) -> Result<String> {
    let mut objects = vec![serde_json::to_value(R::crd()).context("serializing the CRD")?];
    objects.extend(rbac.objects()?);
    yaml_stream(objects)
}

/// The CustomResourceDefinitions of several controllers followed by `rbac` (e.g. a
/// [`Rbac::union`]), as one YAML stream: what a [`Manager`](crate::runtime::Manager) of them
/// needs installed.
///
/// # Errors
/// [`Error::Anyhow`] if an object cannot be serialized (it always can).
pub fn bundle_yaml(
    crds: impl IntoIterator<
        Item = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >,
    rbac: &Rbac,
) -> Result<String> {
    let mut objects = Vec::new();
    for crd in crds {
        objects.push(serde_json::to_value(crd).context("serializing a CRD")?);
    }
    objects.extend(rbac.objects()?);
    yaml_stream(objects)
}

/// Asks the API server, with one SelfSubjectAccessReview per permission, whether this client
/// has every permission in `rbac`; run it at start-up to fail fast.
///
/// ```no_run
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// use kuberator::manifests::{self, RbacOptions};
/// # async fn doc(client: kube::Client) -> kuberator::Result<()> {
/// let rbac = manifests::rbac_rules_for::<ConfigMap>(&RbacOptions::new("configmap-operator"));
/// manifests::check_permissions(&client, &rbac).await?; // names every missing permission
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Anyhow`] wrapping [`MissingPermissions`], whose message names every missing verb,
/// resource and namespace; [`Error::Client`] if a review cannot be created.
///
/// # Access control
/// `create` on `authorization.k8s.io` `selfsubjectaccessreviews`, which every authenticated
/// user has through the `system:basic-user` ClusterRole.
pub async fn check_permissions(client: &Client, rbac: &Rbac) -> Result<()> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let reviews = futures::stream::iter(rbac.permissions())
        .map(|permission| {
            let api = api.clone();
            async move {
                let allowed = review(&api, &permission).await?;
                Ok::<_, Error>((permission, allowed))
            }
        })
        .buffer_unordered(REVIEWS_AT_ONCE)
        .try_collect::<Vec<_>>()
        .await?;
    let mut missing: Vec<Permission> = reviews
        .into_iter()
        .filter(|(_, allowed)| !allowed)
        .map(|(permission, _)| permission)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    Err(Error::Anyhow(anyhow::Error::new(MissingPermissions {
        missing,
    })))
}

async fn review(api: &Api<SelfSubjectAccessReview>, permission: &Permission) -> Result<bool> {
    let request = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.clone()),
                group: Some(permission.group.clone()),
                resource: Some(permission.resource.clone()),
                subresource: permission.subresource.clone(),
                namespace: permission.namespace.clone(),
                name: permission.name.clone(),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let answer = api
        .create(&PostParams::default(), &request)
        .await
        .map_err(|source| {
            Error::client(
                format!("creating a SelfSubjectAccessReview for {permission}"),
                source,
            )
        })?;
    Ok(answer.status.is_some_and(|status| status.allowed))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::CustomResource;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    struct WebsiteSpec {
        image: String,
    }

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(group = "example.com", version = "v1", kind = "Domain")]
    struct DomainSpec {
        name: String,
    }

    fn rules(grant: &Grant) -> Vec<(String, String, String)> {
        grant
            .rules
            .iter()
            .map(|r| {
                (
                    r.api_groups.as_ref().unwrap().join(","),
                    r.resources.as_ref().unwrap().join(","),
                    r.verbs.join(","),
                )
            })
            .collect()
    }

    fn triple(group: &str, resource: &str, verbs: &str) -> (String, String, String) {
        (group.into(), resource.into(), verbs.into())
    }

    #[test]
    fn minimal_operator_gets_a_cluster_role_with_resource_and_status() {
        let rbac = rbac_rules_for::<Website>(&RbacOptions::new("website-operator"));
        assert_eq!(rbac.grants.len(), 1);
        let grant = &rbac.grants[0];
        assert_eq!(grant.scope, Scope::Cluster);
        assert_eq!(grant.name, "website-operator");
        assert_eq!(
            rules(grant),
            [
                triple("example.com", "websites", "get,list,watch,patch"),
                triple("example.com", "websites/status", "patch"),
            ]
        );
        assert_eq!(rbac.cluster_roles().len(), 1);
        assert!(rbac.roles().is_empty());
        assert!(
            rbac.cluster_role_bindings().is_empty(),
            "no subject, no binding"
        );
    }

    #[test]
    fn everything_on_with_fixed_namespaces_gives_roles() {
        let rbac = rbac_rules_for::<Website>(
            &RbacOptions::new("website-operator")
                .namespaces(["default", "shop"])
                .finalizer(true)
                .events(true)
                .owns::<ConfigMap>()
                .owns::<ConfigMap>()
                .leader_election("operators")
                .service_account("operators", "website-operator"),
        );
        let scopes: Vec<_> = rbac.grants.iter().map(|g| (&g.name, &g.scope)).collect();
        let ns = |n: &str| Scope::Namespace(n.into());
        assert_eq!(
            scopes,
            [
                (&"website-operator".to_owned(), &ns("default")),
                (&"website-operator".to_owned(), &ns("shop")),
                (
                    &"website-operator-leader-election".to_owned(),
                    &ns("operators")
                ),
            ]
        );
        assert_eq!(
            rules(&rbac.grants[0]),
            [
                triple("example.com", "websites", "get,list,watch,patch"),
                triple("example.com", "websites/status", "patch"),
                triple("example.com", "websites/finalizers", "update"),
                triple("", "configmaps", "get,list,watch,create,patch,delete"),
                triple("events.k8s.io", "events", "create,patch"),
            ]
        );
        assert_eq!(
            rules(&rbac.grants[2]),
            [triple(
                "coordination.k8s.io",
                "leases",
                "get,list,watch,create,update"
            )]
        );
        assert!(rbac.cluster_roles().is_empty());
        assert_eq!(rbac.roles().len(), 3);
        let bindings = rbac.role_bindings();
        assert_eq!(bindings.len(), 3);
        assert_eq!(
            bindings[2].role_ref.name,
            "website-operator-leader-election"
        );
        let subject = &bindings[0].subjects.as_ref().unwrap()[0];
        assert_eq!(
            (
                subject.kind.as_str(),
                subject.name.as_str(),
                subject.namespace.as_deref()
            ),
            ("ServiceAccount", "website-operator", Some("operators"))
        );
        assert_eq!(
            rbac.service_account.as_ref().unwrap().user_name(),
            "system:serviceaccount:operators:website-operator"
        );
    }

    #[test]
    fn cluster_scoped_resources_ignore_namespaces() {
        let rbac = rbac_rules_for::<Domain>(
            &RbacOptions::new("domain-operator")
                .namespaces(["default"])
                .status(false),
        );
        assert_eq!(rbac.grants.len(), 1);
        assert_eq!(rbac.grants[0].scope, Scope::Cluster);
        assert_eq!(
            rules(&rbac.grants[0]),
            [triple("example.com", "domains", "get,list,watch,patch")]
        );
    }

    #[test]
    fn permissions_flatten_verbs_subresources_and_namespaces() {
        let rbac = rbac_rules_for::<Website>(
            &RbacOptions::new("w")
                .namespaces(["default"])
                .finalizer(true)
                .leader_election("default"),
        );
        let permissions = rbac.permissions();
        assert_eq!(permissions.len(), 4 + 1 + 1 + 5);
        let status = permissions
            .iter()
            .find(|p| p.subresource.as_deref() == Some("status"))
            .unwrap();
        assert_eq!(
            status.to_string(),
            "`patch` on `websites.example.com/status` in namespace `default`"
        );
        let cluster = rbac_rules_for::<ConfigMap>(&RbacOptions::new("c")).permissions();
        assert_eq!(
            cluster[0].to_string(),
            "`get` on `configmaps` in all namespaces"
        );
    }

    #[test]
    fn permissions_limited_by_resource_names_are_checked_per_name() {
        let server = crate::webhook::WebhookServer::in_cluster("shop", "website-webhooks");
        let permissions = server.rbac("w").permissions();
        let secret = permissions
            .iter()
            .find(|p| p.resource == "secrets" && p.verb == "get")
            .unwrap();
        assert_eq!(secret.name.as_deref(), Some("website-webhooks-tls"));
        assert_eq!(
            secret.to_string(),
            "`get` on `secrets` named `website-webhooks-tls` in namespace `shop`"
        );
        let create = permissions
            .iter()
            .find(|p| p.resource == "secrets" && p.verb == "create")
            .unwrap();
        assert_eq!(create.name, None);
    }

    #[test]
    fn missing_permissions_are_named_in_one_message() {
        let rbac = rbac_rules_for::<Website>(&RbacOptions::new("w").namespaces(["shop"]));
        let missing = MissingPermissions {
            missing: rbac.permissions().into_iter().take(2).collect(),
        };
        let error = Error::Anyhow(anyhow::Error::new(missing.clone()));
        assert_eq!(
            error.to_string(),
            "the operator lacks 2 RBAC permissions (grant them in its Role or ClusterRole, see \
             `kuberator::manifests`): `get` on `websites.example.com` in namespace `shop`; \
             `list` on `websites.example.com` in namespace `shop`"
        );
        assert_eq!(error.downcast_ref::<MissingPermissions>(), Some(&missing));
    }

    /// The YAML writer quotes keys and values that YAML 1.1 readers (kubectl's) would otherwise
    /// turn into booleans, numbers or nulls, and keeps multi-line and special strings intact.
    #[test]
    fn yaml_round_trips_scalars_that_look_like_other_types() {
        let tricky = [
            "yes",
            "no",
            "on",
            "off",
            "y",
            "n",
            "true",
            "NO",
            "null",
            "~",
            "",
            "1",
            "0o17",
            "1e3",
            "0x1F",
            "1.0",
            ".inf",
            "- item",
            "a: b",
            "# not a comment",
            "*anchor",
            "two\nlines\n",
            "  leading space",
            "trailing space ",
            "quote ' and \" both",
            "2026-12-01",
            "12:30",
            "@at",
            "`tick",
        ];
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": { "name": "tricky" },
            "data": tricky.iter()
                .map(|s| ((*s).to_owned(), serde_json::Value::from(*s)))
                .collect::<serde_json::Map<_, _>>(),
        });
        let yaml = yaml_stream(vec![object.clone(), object.clone()]).unwrap();
        let back: Vec<serde_json::Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        assert_eq!(back, [object.clone(), object], "{yaml}");
    }

    #[test]
    fn yaml_has_the_crd_then_the_rbac_objects() {
        let rbac = rbac_rules_for::<Website>(
            &RbacOptions::new("website-operator")
                .finalizer(true)
                .service_account("operators", "website-operator"),
        );
        let yaml = to_yaml::<Website>(&rbac).unwrap();
        let kinds: Vec<&str> = yaml
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding"
            ]
        );
        assert_eq!(yaml.matches("---\n").count(), 3);
        // Every document reads back as a Kubernetes object.
        for document in yaml.split("---\n") {
            let value: serde_json::Value = serde_saphyr::from_str(document).unwrap();
            assert!(value["apiVersion"].is_string() && value["metadata"]["name"].is_string());
        }
        assert!(yaml.contains("- websites/finalizers\n"));
        assert!(
            crd_yaml::<Website>()
                .unwrap()
                .contains("name: websites.example.com\n")
        );
        assert!(
            rbac.to_yaml()
                .unwrap()
                .starts_with("apiVersion: v1\nkind: ServiceAccount\n")
        );
    }
}
