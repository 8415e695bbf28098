//! The usual status: `observed_generation` found by name, a `#[status_error]` slot, kstatus
//! `conditions` (found by name, handed to the runtime by `RecordError::conditions`).
use kuberator::{
    AsStatusError, Error, ObserveGeneration, RecordError, StatusError, WithStatusError,
    conditions::Condition,
};

#[derive(Debug, Default, serde::Serialize, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
    #[status_error]
    pub error: Option<StatusError>,
    pub phase: String,
    pub conditions: Vec<Condition>,
}

/// `Option<Vec<Condition>>` works too (created on first use).
#[derive(Debug, Default, serde::Serialize, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct OptionalConditions {
    pub observed_generation: Option<i64>,
    pub conditions: Option<Vec<Condition>>,
}

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(terminal)]
    EmptyImage,
}

fn main() {
    let mut status = WebsiteStatus::default();
    assert_eq!(status.observed_generation(), None);
    status.set_observed_generation(7);
    assert_eq!(status.observed_generation(), Some(7));

    let error: Error = WebsiteError::EmptyImage.into();
    assert!(status.record_error(Some(&error)));
    assert_eq!(
        status.error,
        Some(StatusError {
            reason: "EmptyImage".into(),
            message: "image is empty".into(),
        })
    );
    assert!(status.record_error(None));
    assert!(!status.record_error(None));
    assert_eq!(status.error, None);

    WithStatusError::<WebsiteError, StatusError>::set_status_error(
        &mut status,
        Some(WebsiteError::EmptyImage.as_status_error()),
    );
    assert_eq!(
        status.error.as_ref().map(|e| e.reason.as_str()),
        Some("EmptyImage")
    );
    assert_eq!(status.phase, "");
    assert!(status.conditions().is_some());
    let mut optional = OptionalConditions::default();
    assert!(optional.conditions().is_some_and(|c| c.is_empty()));
    assert_eq!(optional.conditions, Some(Vec::new()));
}
