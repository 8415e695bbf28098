use kuberator::{AsStatusError, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
#[kuberator(crate = 42)]
pub enum WebsiteError {
    #[error("image is empty")]
    EmptyImage,
}

fn main() {}
