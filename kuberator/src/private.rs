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

/// Adds the RBAC of the operator's webhook server (its certificate Secret and webhook
/// configurations, by name) to `rbac`, for the permission check of a generated operator.
pub fn merge_webhook_rbac<R>(
    operator: &crate::Operator<R>,
    rbac: &mut crate::manifests::Rbac,
    name: impl AsRef<str>,
) where
    R: Object,
    R::Scope: crate::cache::ApiScope,
{
    if let Some(server) = operator.webhook_server_ref() {
        rbac.merge(server.rbac(name.as_ref()));
    }
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
                tracing::warn!(
                    error = %crate::status::bounded(e.to_string(), crate::status::LOG_ERROR_MAX_BYTES),
                    "cannot record the reconcile error in status"
                );
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

/// Asserted by `#[derive(ObserveGeneration)]` on a status with a `#[status_error]` slot: a
/// reconcile error on an object without a status is recorded in `Default::default()`, so
/// without `Default` nothing could be recorded.
#[diagnostic::on_unimplemented(
    message = "`{Self}` records reconcile errors, so it must implement `Default`",
    label = "add `#[derive(Default)]` to `{Self}`",
    note = "an error on an object that has no status yet is recorded in `{Self}::default()`; \
            give required fields a default (`#[serde(default)]` or an `Option`) so it is a valid status"
)]
pub trait DefaultStatus {}

impl<T: Default> DefaultStatus for T {}

/// Asserted by `#[derive(AsStatusError)]` on the enum, once: the message of each variant is its
/// `Display`, and `?` wraps it as a `std::error::Error`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must implement `std::error::Error`",
    label = "derive `thiserror::Error` on `{Self}`",
    note = "write `#[derive(Debug, thiserror::Error, AsStatusError)]` and an `#[error(\"...\")]` \
            message on each variant"
)]
pub trait UserError: std::error::Error + Send + Sync + 'static {}

impl<T: std::error::Error + Send + Sync + 'static> UserError for T {}

/// The forwarded handler's result as the runtime's: `E: Into<Error>` (spanned on the user's
/// return type, so a missing conversion is reported there).
///
/// # Errors
/// The handler's error, converted.
pub fn into_result<E: Into<Error>>(
    result: Result<kube::runtime::controller::Action, E>,
) -> crate::Result<kube::runtime::controller::Action> {
    result.map_err(Into::into)
}

/// `finalizer = SOME_CONST`: a macro cannot read a const's value, so this checks it at compile
/// time, in a `const _: () = check_finalizer(SOME_CONST);`: a Kubernetes qualified name,
/// `[prefix/]name`, the prefix a DNS subdomain, the name at most 63 letters, digits, `-`, `_`,
/// `.` starting and ending with a letter or digit.
pub const fn check_finalizer(name: &str) {
    let bytes = name.as_bytes();
    let mut slash = bytes.len();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'/' {
            if slash != bytes.len() {
                panic!("the finalizer has more than one `/`: write `example.com/cleanup`");
            }
            slash = i;
        }
        i += 1;
    }
    let name_start = if slash == bytes.len() { 0 } else { slash + 1 };
    // The prefix: dot-separated DNS labels, lowercase.
    if slash != bytes.len() {
        if slash == 0 || slash > 253 {
            panic!("the finalizer's prefix must be a DNS subdomain like `example.com`");
        }
        let mut j = 0;
        let mut label_start = true;
        while j < slash {
            let b = bytes[j];
            let alnum = b.is_ascii_lowercase() || b.is_ascii_digit();
            let at_end = j + 1 == slash || bytes[j + 1] == b'.';
            if b == b'.' {
                if label_start {
                    panic!("the finalizer's prefix must be a DNS subdomain like `example.com`");
                }
                label_start = true;
            } else {
                if !alnum && (b != b'-' || label_start || at_end) {
                    panic!("the finalizer's prefix must be a DNS subdomain like `example.com`");
                }
                label_start = false;
            }
            j += 1;
        }
    }
    let len = bytes.len() - name_start;
    if len == 0 || len > 63 {
        panic!("the finalizer's name must be 1 to 63 characters, like `example.com/cleanup`");
    }
    let mut k = name_start;
    while k < bytes.len() {
        let b = bytes[k];
        let alnum = b.is_ascii_alphanumeric();
        if !(alnum || b == b'-' || b == b'_' || b == b'.')
            || ((k == name_start || k + 1 == bytes.len()) && !alnum)
        {
            panic!(
                "the finalizer must be a qualified name like `example.com/cleanup`: letters, \
                 digits, `-`, `_` or `.`, starting and ending with a letter or digit"
            );
        }
        k += 1;
    }
}
