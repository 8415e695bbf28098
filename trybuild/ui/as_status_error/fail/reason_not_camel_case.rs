use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(reason = "image missing")]
    EmptyImage,
}

fn main() {}
