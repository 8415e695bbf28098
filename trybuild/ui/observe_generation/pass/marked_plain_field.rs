//! A marked `i64` field, a generic status, no error slot: `record_error` does nothing.
use kuberator::{Error, ObserveGeneration, RecordError};

#[derive(Default, serde::Serialize, ObserveGeneration)]
struct Status<T> {
    #[observe_generation]
    #[serde(rename = "observedGeneration")]
    seen: i64,
    extra: T,
}

fn main() {
    let mut status = Status::<u8>::default();
    assert_eq!(status.observed_generation(), Some(0));
    status.set_observed_generation(4);
    assert_eq!(status.seen, 4);
    let error = not_cached();
    assert!(!status.record_error(Some(&error)));
    assert_eq!(status.extra, 0);
}

fn not_cached() -> Error {
    Error::NamespaceNotCached {
        namespace: "shop".into(),
        cached: vec!["default".into()],
    }
}
