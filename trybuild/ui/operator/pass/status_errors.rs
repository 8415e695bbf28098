//! A status that records errors, an error enum with every retry class, `?` in the handler.
use std::time::Duration;

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
    pub replicas: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    pub phase: String,
}

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(terminal)]
    EmptyImage,
    #[error("the registry is down")]
    #[status_error(retry)]
    RegistryDown,
    #[error("{0} replicas is too many")]
    #[status_error(reason = "TooManyReplicas", requeue_after = "5m")]
    Replicas(i32),
}

fn check(spec: &WebsiteSpec) -> std::result::Result<(), WebsiteError> {
    if spec.image.is_empty() {
        return Err(WebsiteError::EmptyImage);
    }
    if spec.image == "down" {
        return Err(WebsiteError::RegistryDown);
    }
    if spec.replicas > 10 {
        return Err(WebsiteError::Replicas(spec.replicas));
    }
    Ok(())
}

pub struct Websites;

#[kuberator::operator(resource = Website, finalizer = "websites.example.com/cleanup")]
impl Websites {
    async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
        check(&site.spec)?;
        let status = WebsiteStatus {
            phase: "Ready".into(),
            ..Default::default()
        };
        ctx.update_status(&site, status).await?;
        Ok(Action::requeue(Duration::from_secs(600)))
    }

    async fn cleanup(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

fn main() {
    let spec = |image: &str, replicas| WebsiteSpec {
        image: image.into(),
        replicas,
    };
    let classify = |spec: WebsiteSpec| {
        let error: Error = check(&spec).unwrap_err().into();
        (error.retry_policy(), error.reason())
    };
    assert_eq!(
        classify(spec("", 1)),
        (RetryPolicy::Terminal, "EmptyImage".into())
    );
    assert_eq!(
        classify(spec("down", 1)),
        (RetryPolicy::Backoff, "RegistryDown".into())
    );
    assert_eq!(
        classify(spec("nginx", 11)),
        (
            RetryPolicy::After(Duration::from_secs(300)),
            "TooManyReplicas".into()
        )
    );

    let mut status = WebsiteStatus::default();
    let error: Error = WebsiteError::EmptyImage.into();
    assert!(status.record_error(Some(&error)));
    assert_eq!(
        status.error.as_ref().map(|e| e.message.as_str()),
        Some("image is empty")
    );
}
