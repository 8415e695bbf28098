use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("the registry is down")]
    #[status_error(requeue_after = "0s")]
    RegistryDown,
}

fn main() {}
