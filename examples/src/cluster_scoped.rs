//! A cluster-scoped resource: a `Tenant` (no `namespaced` in its `#[kube]`) gets a Namespace of
//! its own. The operator is the same as for a namespaced resource, minus `namespaces(...)`
//! (the macro rejects it at compile time for a cluster-scoped kind): it watches the whole
//! cluster, and the API handles it uses are cluster-wide.
//!
//! `apply` server-side applies the Namespace `tenant-<name>` with `ctx.apply_child` (an owner
//! reference to the Tenant, and an owner label) and records it in status; `cleanup` deletes the
//! Namespace before the finalizer lets the Tenant go. (The local control plane runs no
//! kube-controller-manager, so the Namespace stays `Terminating`: in a real cluster the
//! namespace controller empties and removes it.)
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin cluster_scoped
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kuberator::{ObjectKey, prelude::*, testing::TestEnv};

use crate::story::{self, until, until_deleted};

/// The label naming a tenant's owner on its Namespace.
pub const OWNER_LABEL: &str = "tenants.kuberator.dev/owner";

/// A tenant of the cluster.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cluster.kuberator.dev",
    version = "v1",
    kind = "Tenant",
    status = "TenantStatus",
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.owner"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".status.namespace"}"#
)]
pub struct TenantSpec {
    /// Who owns the tenant.
    pub owner: String,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// The tenant's namespace.
    pub namespace: Option<String>,
}

/// The operator (no state of its own).
pub struct Tenants;

#[kuberator::operator(resource = Tenant, finalizer = "tenants.cluster.kuberator.dev/namespace")]
impl Tenants {
    async fn apply(&self, tenant: Arc<Tenant>, ctx: &Ctx<Tenant>) -> Result<Action> {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace_of(&tenant)),
                labels: Some(BTreeMap::from([(
                    OWNER_LABEL.to_owned(),
                    tenant.spec.owner.clone(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        ctx.apply_child(&tenant, namespace).await?;
        let status = TenantStatus {
            namespace: Some(namespace_of(&tenant)),
            ..TenantStatus::default()
        };
        ctx.update_status(&tenant, status).await?;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, tenant: Arc<Tenant>, ctx: &Ctx<Tenant>) -> Result<Action> {
        let namespaces: Api<Namespace> = Api::all(ctx.client().clone());
        let name = namespace_of(&tenant);
        match namespaces.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {} // already gone
            Err(error) => {
                let tenant = ObjectKey::of(tenant.as_ref());
                return Err(Error::kube("deleting the namespace of", tenant, error));
            }
        }
        Ok(Action::await_change())
    }
}

/// The Namespace of `tenant`.
pub fn namespace_of(tenant: &Tenant) -> String {
    format!("tenant-{}", tenant.name_any())
}

/// What the story observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The tenant's status after generation 1.
    pub created: TenantStatus,
    /// The owner label of the tenant's Namespace after each generation.
    pub owner_labels: Vec<Option<String>>,
    /// The phase of the Namespace after the tenant was deleted (`Terminating`).
    pub namespace_phase_after_delete: Option<String>,
}

/// Runs the `Tenant` operator in the background and tells the story.
///
/// # Errors
/// An API error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Tenant>().await?;
    let operator = Tenants.operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    let outcome = tell(env).await;
    running.stop().await??;
    outcome
}

async fn tell(env: &TestEnv) -> anyhow::Result<Outcome> {
    // Cluster-scoped: `Api::all`, no namespace anywhere.
    let tenants: Api<Tenant> = Api::all(env.client());
    let namespaces: Api<Namespace> = Api::all(env.client());
    let reconciled = |generation| {
        move |t: Option<&Tenant>| {
            t.and_then(|t| t.status.as_ref()?.observed_generation) == Some(generation)
        }
    };
    let owner_label = |ns: Namespace| ns.labels().get(OWNER_LABEL).cloned();
    let mut owner_labels = Vec::new();

    println!("1. create tenant/acme owned by alice");
    let acme = Tenant::new(
        "acme",
        TenantSpec {
            owner: "alice".into(),
        },
    );
    tenants.create(&PostParams::default(), &acme).await?;
    let created = until(&tenants, "acme", "generation 1", reconciled(1)).await?;
    let namespace = namespaces.get("tenant-acme").await?;
    println!(
        "   status: {}; namespace tenant-acme, owner label {:?}, owned by {:?}",
        serde_json::to_string(&created.status)?,
        owner_label(namespace.clone()),
        namespace
            .owner_references()
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect::<Vec<_>>()
    );
    owner_labels.push(owner_label(namespace));

    println!("2. hand tenant/acme over to bob");
    let patch = serde_json::json!({ "spec": { "owner": "bob" } });
    tenants
        .patch("acme", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    until(&tenants, "acme", "generation 2", reconciled(2)).await?;
    let label = owner_label(namespaces.get("tenant-acme").await?);
    println!("   namespace tenant-acme, owner label {label:?}");
    owner_labels.push(label);

    println!("3. delete tenant/acme: cleanup deletes its namespace, then the tenant goes");
    tenants.delete("acme", &DeleteParams::default()).await?;
    until_deleted(&tenants, "acme", &created.uid().unwrap_or_default()).await?;
    let phase = namespaces
        .get_opt("tenant-acme")
        .await?
        .and_then(|ns| ns.status?.phase);
    println!("   tenant gone; namespace tenant-acme: {phase:?}");
    Ok(Outcome {
        created: created.status.unwrap_or_default(),
        owner_labels,
        namespace_phase_after_delete: phase,
    })
}
