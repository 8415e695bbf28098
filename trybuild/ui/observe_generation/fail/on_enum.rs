use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub enum WebsiteStatus {
    Pending,
    Ready { observed_generation: Option<i64> },
}

fn main() {}
