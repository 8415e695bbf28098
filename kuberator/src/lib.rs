#![doc = include_str!("docs/guide.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate self as kuberator;

pub mod cache;
pub mod conditions;
pub mod context;
pub mod error;
pub mod events;
pub mod finalize;
pub mod handler;
mod into_operator;
pub mod manifests;
pub mod reconcile;
pub mod repository;
pub mod runtime;
pub mod status;
#[cfg(feature = "opentelemetry")]
#[cfg_attr(docsrs, doc(cfg(feature = "opentelemetry")))]
pub mod telemetry;
pub mod webhook;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use cache::{CachedApiProvider, CachingStrategy, ProvideApi, StaticApiProvider};
pub use context::Context;
pub use error::{ClassifyError, Error, HandlerError, ObjectKey, Result, RetryPolicy};
pub use finalize::{Finalize, StatusWrites};
pub use handler::{Ctx, CtxBuilder, Handler, WithStatus};
pub use into_operator::IntoOperator;
pub use kube::runtime::controller::Action;
pub use kuberator_derive::{AsStatusError, ObserveGeneration, operator};
pub use reconcile::Reconcile;
pub use repository::K8sRepository;
pub use runtime::{Backoff, Operator, Reconciler, shutdown_signal};
pub use status::{
    AsStatusError, FromStatusError, ObserveGeneration, RecordError, StatusError, WithStatusError,
};

/// One import for operator authors: `use kuberator::prelude::*;`.
pub mod prelude {
    pub use std::sync::Arc;

    pub use kube::{
        Api, Client, CustomResource, CustomResourceExt, Resource, ResourceExt,
        api::{ObjectMeta, Patch, PatchParams},
    };
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};

    pub use crate::{
        Action, AsStatusError, CachingStrategy, ClassifyError, Context, Ctx, Error, Finalize,
        FromStatusError, Handler, IntoOperator, K8sRepository, ObjectKey, ObserveGeneration,
        Operator, ProvideApi, Reconcile, RecordError, Result, RetryPolicy, StaticApiProvider,
        StatusError, WithStatusError,
        events::{EmitEvent, EventData, EventRecorder, EventType, Reason},
        operator,
        webhook::Denied,
    };
}

/// The README's Rust code, compiled as doctests so it cannot drift from the crate.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// Paths the macros use; not part of the public API.
#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;
