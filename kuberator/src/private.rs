//! Support for generated code; not public API.

use std::{future::Future, marker::PhantomData, pin::Pin};

use kube::core::object::HasStatus;
use serde::Serialize;

use crate::{
    error::Error,
    finalize::{Finalize, Object},
    handler::Ctx,
    status::{ObserveGeneration, RecordError},
};

pub use async_trait;
pub use futures;
pub use k8s_openapi;
pub use kube;
pub use serde;
pub use serde_json;
pub use tokio;
pub use tracing;

/// The primary watch's per-object decode, for the benchmarks.
///
/// # Errors
/// When the object does not deserialize into `R`.
pub fn decode_dynamic<R: serde::de::DeserializeOwned>(
    object: kube::api::DynamicObject,
) -> Result<R, serde_json::Error> {
    crate::runtime::decode_dynamic(object)
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Picks, for a concrete resource type, whether errors can be recorded in its status
/// (autoref specialization: [`RecordViaStatus`] when the status supports it, else
/// [`RecordNothing`]).
pub struct StatusProbe<R>(PhantomData<fn() -> R>);

impl<R> StatusProbe<R> {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

/// Records errors in status.
pub trait RecordViaStatus<R: Object> {
    fn record<'a>(&self, ctx: &'a Ctx<R>, object: &'a R, error: &'a Error) -> BoxFuture<'a>;
}

impl<R> RecordViaStatus<R> for StatusProbe<R>
where
    R: Object + HasStatus,
    R::Status: ObserveGeneration + RecordError + Default + Clone + Serialize + Send + Sync,
{
    fn record<'a>(&self, ctx: &'a Ctx<R>, object: &'a R, error: &'a Error) -> BoxFuture<'a> {
        Box::pin(async move {
            if let Err(e) = ctx.repository().record_error(object, Some(error)).await {
                tracing::warn!(error = %e, "cannot record the reconcile error in status");
            }
        })
    }
}

/// The fallback: the resource has no status that can hold errors.
pub trait RecordNothing<R: Object> {
    fn record<'a>(&self, ctx: &'a Ctx<R>, object: &'a R, error: &'a Error) -> BoxFuture<'a>;
}

impl<R: Object> RecordNothing<R> for &StatusProbe<R> {
    fn record<'a>(&self, _ctx: &'a Ctx<R>, _object: &'a R, _error: &'a Error) -> BoxFuture<'a> {
        Box::pin(std::future::ready(()))
    }
}
