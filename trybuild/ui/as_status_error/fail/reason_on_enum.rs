use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError, reason = "WebsiteFailed")]
pub enum WebsiteError {
    #[error("image is empty")]
    EmptyImage,
}

fn main() {}
