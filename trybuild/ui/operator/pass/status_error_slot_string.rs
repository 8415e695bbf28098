//! The status's error slot holds a `String` (the message only) while the error enum converts to
//! `StatusError`: supported, `String: FromStatusError`.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "example.com",
    version = "v1",
    kind = "Website",
    namespaced,
    status = "WebsiteStatus"
)]
pub struct WebsiteSpec {
    pub image: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    EmptyImage,
}

pub struct Websites;

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, site: Arc<Website>) -> std::result::Result<Action, WebsiteError> {
        if site.spec.image.is_empty() {
            return Err(WebsiteError::EmptyImage);
        }
        Ok(Action::await_change())
    }
}

fn main() {
    let mut status = WebsiteStatus::default();
    let error: Error = WebsiteError::EmptyImage.into();
    assert!(status.record_error(Some(&error)));
    assert_eq!(status.error.as_deref(), Some("image is empty"));
}
