//! Without `rename_all = "camelCase"` the field is stored as `observed_generation`: kstatus
//! tools and `kubectl wait` never see it.
use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    pub phase: String,
}

fn main() {}
