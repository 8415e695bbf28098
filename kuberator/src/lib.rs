//! Kuberator: a framework for Kubernetes operators on top of kube-rs.
//!
//! (The guide lives here; see the README for the two commands.)
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as kuberator;

pub mod error;
pub mod events;
pub mod status;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use error::{ClassifyError, Error, HandlerError, ObjectKey, Result, RetryPolicy};
pub use status::{
    AsStatusError, FromStatusError, ObserveGeneration, RecordError, StatusError, WithStatusError,
};

/// Paths the macros use; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use async_trait;
    pub use k8s_openapi;
    pub use kube;
    pub use serde;
    pub use serde_json;
    pub use tokio;
    pub use tracing;
}
