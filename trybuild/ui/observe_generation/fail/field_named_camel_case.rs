use kuberator::prelude::*;

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[allow(non_snake_case)]
pub struct WebsiteStatus {
    pub observedGeneration: Option<i64>,
}

fn main() {}
