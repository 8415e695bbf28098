use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(terminal, requeue_after = "30s")]
    EmptyImage,
}

fn main() {}
