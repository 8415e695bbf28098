use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

pub trait Reconciles {
    fn name(&self) -> &'static str;
}

#[kuberator::operator(resource = Website)]
impl Reconciles for Websites {
    fn name(&self) -> &'static str {
        "websites"
    }
}

fn main() {}
