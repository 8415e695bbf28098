//! A cluster-scoped resource (no `namespaced`), with a finalizer and adhoc caching.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Tenant")]
pub struct TenantSpec {
    pub owner: String,
}

pub struct Tenants;

#[kuberator::operator(resource = Tenant, finalizer = "tenants.example.com/cleanup", caching = Adhoc)]
impl Tenants {
    async fn apply(&self, _tenant: Arc<Tenant>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn cleanup(&self, _tenant: Arc<Tenant>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

/// A built-in cluster-scoped kind works the same way.
pub struct Namespaces;

#[kuberator::operator(resource = k8s_openapi::api::core::v1::Namespace, concurrency = 2)]
impl Namespaces {
    async fn apply(&self, _ns: Arc<k8s_openapi::api::core::v1::Namespace>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let _tenants = Tenants.operator(client.clone()).unwrap();
    let _namespaces = Namespaces.operator(client).unwrap();
}
