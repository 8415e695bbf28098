use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

/// Not convertible into `kuberator::Error`: no `#[derive(AsStatusError)]`.
#[derive(Debug)]
pub struct Oops;

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> std::result::Result<Action, Oops> {
        Err(Oops)
    }
}

fn main() {}
