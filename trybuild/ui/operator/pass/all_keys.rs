//! Every key at once, handlers taking the context, a finalizer with `cleanup`.
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites {
    pub greeting: String,
}

#[kuberator::operator(
    resource = Website,
    name = "website-operator",
    field_manager = "websites.example.com/operator",
    status_writes = "apply",
    finalizer = "websites.example.com/cleanup",
    namespaces("default", "shop"),
    caching = Strict,
    concurrency = 8,
    owns(ConfigMap, Service),
    labels = "app=web,tier in (frontend, backend),!canary",
    events = "website-operator",
    leader_election = "website-operator",
    sharding = "website-operator",
    health = "127.0.0.1:8080",
)]
impl Websites {
    async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
        let _ = (site.spec.image.len(), self.greeting.len(), ctx.finalizer());
        assert_eq!(ctx.name(), "website-operator");
        assert_eq!(ctx.field_manager(), "websites.example.com/operator");
        Ok(Action::requeue(std::time::Duration::from_secs(300)))
    }

    async fn cleanup(&self, _site: Arc<Website>, ctx: &kuberator::Ctx<Website>) -> Result<Action> {
        assert_eq!(ctx.finalizer(), Some("websites.example.com/cleanup"));
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let _operator = Websites {
        greeting: "hi".into(),
    }
    .operator(client)
    .unwrap();
    // The RBAC the keys imply: the resource, status, finalizers, owned kinds, events, the Lease.
    let rbac = kuberator::manifests::rbac_rules_for::<Website>(
        &Websites::rbac_options().leader_election("default"),
    );
    let yaml = rbac.to_yaml().unwrap();
    // `sharding = …` marks the options (the bundle adds the membership Lease role).
    assert!(Websites::rbac_options().is_sharded());
    assert!(yaml.contains("name: website-operator"), "{yaml}");
    for needed in [
        "websites/finalizers",
        "configmaps",
        "services",
        "events",
        "leases",
    ] {
        assert!(yaml.contains(needed), "{needed} missing from\n{yaml}");
    }
}
