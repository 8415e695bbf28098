use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    pub observed_generation: Option<u64>,
}

fn main() {}
