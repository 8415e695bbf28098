use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Tenant")]
pub struct TenantSpec {
    pub owner: String,
}

pub struct Tenants;

#[kuberator::operator(resource = Tenant, namespaces("default"))]
impl Tenants {
    async fn apply(&self, _tenant: Arc<Tenant>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

fn main() {}
