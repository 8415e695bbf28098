use kuberator::ObserveGeneration;

#[derive(serde::Serialize, ObserveGeneration)]
pub struct WebsiteStatus {
    #[observe_generation]
    #[serde(rename = "observedGeneration")]
    pub seen: Option<i64>,
    #[observe_generation]
    pub also_seen: Option<i64>,
}

fn main() {}
