use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

#[kuberator::operator(resource = Website)]
pub struct Websites;

fn main() {}
