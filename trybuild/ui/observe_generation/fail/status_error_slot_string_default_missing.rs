use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<String>,
    pub replicas: i32,
}

fn main() {}
