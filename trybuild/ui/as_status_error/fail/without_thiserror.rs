use kuberator::{AsStatusError, StatusError};

#[derive(Debug, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    EmptyImage,
}

fn main() {}
