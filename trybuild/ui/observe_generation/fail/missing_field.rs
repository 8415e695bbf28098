use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    pub generation: Option<i64>,
    pub phase: String,
}

fn main() {}
