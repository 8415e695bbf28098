use kuberator::ObserveGeneration;

#[derive(serde::Serialize)]
pub struct Problem {
    pub text: String,
}

#[derive(Default, serde::Serialize, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<Problem>,
}

fn main() {}
