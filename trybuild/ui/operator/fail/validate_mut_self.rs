use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

#[kuberator::operator(resource = Website, webhooks = "website-webhooks")]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn validate(&mut self, _new: &Website, _old: Option<&Website>) -> Result<(), Denied> {
        Ok(())
    }
}

fn main() {}
