use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    #[observe_generation(optional)]
    pub seen: Option<i64>,
}

fn main() {}
