//! Every retry class, custom and default reasons, and `?` into `kuberator::Error`.
use std::time::Duration;

use kuberator::{AsStatusError, ClassifyError, Error, RetryPolicy, StatusError};

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(terminal)]
    EmptyImage,
    #[error("the registry is down: {0}")]
    #[status_error(retry)]
    RegistryDown(String),
    #[error("waiting for {name}")]
    #[status_error(reason = "Waiting", requeue_after = "1m30s")]
    Dependency { name: String },
    #[error("quota exceeded")]
    #[status_error(requeue_after = "500ms")]
    Quota,
    #[error("something else")]
    Other,
}

/// A plain string works as a status-error type too.
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(String)]
pub enum Small {
    #[error("small")]
    Small,
}

fn handler(fail: bool) -> kuberator::Result<u8> {
    if fail {
        Err(WebsiteError::EmptyImage)?;
    }
    Ok(1)
}

fn main() {
    assert_eq!(
        WebsiteError::EmptyImage.retry_policy(),
        RetryPolicy::Terminal
    );
    assert_eq!(
        WebsiteError::RegistryDown("x".into()).retry_policy(),
        RetryPolicy::Backoff
    );
    let waiting = WebsiteError::Dependency { name: "db".into() };
    assert_eq!(
        waiting.retry_policy(),
        RetryPolicy::After(Duration::from_secs(90))
    );
    assert_eq!(
        WebsiteError::Quota.retry_policy(),
        RetryPolicy::After(Duration::from_millis(500))
    );
    assert_eq!(WebsiteError::Other.retry_policy(), RetryPolicy::Backoff);

    assert_eq!(waiting.reason(), "Waiting");
    assert_eq!(WebsiteError::Other.reason(), "Other");
    assert_eq!(
        waiting.as_status_error(),
        StatusError {
            reason: "Waiting".into(),
            message: "waiting for db".into()
        }
    );
    assert_eq!(Small::Small.as_status_error(), "small");

    let error: Error = handler(true).unwrap_err();
    assert_eq!(error.retry_policy(), RetryPolicy::Terminal);
    assert_eq!(error.reason(), "EmptyImage");
    assert!(matches!(
        error.downcast_ref::<WebsiteError>(),
        Some(WebsiteError::EmptyImage)
    ));
    assert_eq!(handler(false).unwrap(), 1);
}
