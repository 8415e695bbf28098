use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    #[observe_generation]
    pub seen_generation: Option<i64>,
}

fn main() {}
