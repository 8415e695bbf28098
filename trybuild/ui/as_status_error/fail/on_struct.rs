use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
#[error("image is empty")]
pub struct EmptyImage;

fn main() {}
