use kuberator::{ObserveGeneration, StatusError};

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: StatusError,
}

fn main() {}
