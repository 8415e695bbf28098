use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema, ObserveGeneration)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteSpec {
    pub image: String,
}

fn main() {}
