use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    #[serde(rename = "generation")]
    pub observed_generation: Option<i64>,
}

fn main() {}
