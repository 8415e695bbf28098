use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    #[observe_generation]
    pub seen: String,
}

fn main() {}
