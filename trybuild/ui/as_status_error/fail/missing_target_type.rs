use kuberator::AsStatusError;

#[derive(Debug, thiserror::Error, AsStatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    EmptyImage,
}

fn main() {}
