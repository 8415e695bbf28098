use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    #[observe_generation]
    pub seen: Option<i64>,
    #[observe_generation]
    pub also_seen: Option<i64>,
}

fn main() {}
