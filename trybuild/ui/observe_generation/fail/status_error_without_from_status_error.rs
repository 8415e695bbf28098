use kuberator::ObserveGeneration;

pub struct Problem {
    pub text: String,
}

#[derive(ObserveGeneration)]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<Problem>,
}

fn main() {}
