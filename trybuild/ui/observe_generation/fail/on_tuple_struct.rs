use kuberator::ObserveGeneration;

#[derive(ObserveGeneration)]
pub struct WebsiteStatus(Option<i64>);

fn main() {}
