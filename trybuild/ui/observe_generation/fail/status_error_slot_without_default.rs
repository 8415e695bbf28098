//! Without `Default`, a reconcile error on an object without status could not be recorded.
use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    pub hidden: bool,
}

fn main() {}
