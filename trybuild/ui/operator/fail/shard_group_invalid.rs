use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

#[kuberator::operator(resource = Website, sharding = "Website_Operator")]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

fn main() {}
