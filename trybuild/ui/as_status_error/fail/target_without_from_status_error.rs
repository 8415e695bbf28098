use kuberator::AsStatusError;

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(u32)]
pub enum WebsiteError {
    #[error("image is empty")]
    EmptyImage,
}

fn main() {}
