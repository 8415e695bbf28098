use kuberator::{ObserveGeneration, StatusError};

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    #[status_error]
    pub last_error: Option<StatusError>,
}

fn main() {}
