use kuberator::ObserveGeneration;

#[derive(serde::Serialize, ObserveGeneration)]
pub struct WebsiteStatus {
    #[observe_generation(optional)]
    #[serde(rename = "observedGeneration")]
    pub seen: Option<i64>,
}

fn main() {}
