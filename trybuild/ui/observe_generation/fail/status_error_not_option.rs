use kuberator::{ObserveGeneration, StatusError};

#[derive(Default, serde::Serialize, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: StatusError,
}

fn main() {}
