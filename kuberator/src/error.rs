//! The one error type of kuberator, and the retry class every error carries.

use std::{borrow::Cow, fmt, time::Duration};

/// `Result` with kuberator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which object an error is about: kind, namespace (none for cluster-scoped) and name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// The object's kind, e.g. `Website`.
    pub kind: Cow<'static, str>,
    /// The namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a typed object.
    pub fn of<R: kube::Resource>(object: &R) -> Self
    where
        R::DynamicType: Default,
    {
        let meta = object.meta();
        Self {
            kind: Cow::Owned(R::kind(&R::DynamicType::default()).into_owned()),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// How the controller retries after an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Retry with per-object exponential backoff and jitter (the default).
    #[default]
    Backoff,
    /// Do not retry until the object changes (a new generation).
    Terminal,
    /// Retry after this fixed delay.
    After(Duration),
}

/// A user error that knows its retry class and a short, bounded reason.
///
/// `#[derive(AsStatusError)]` implements it; by hand, the defaults give exponential backoff and the
/// type's name as the reason.
pub trait ClassifyError: std::error::Error + Send + Sync + 'static {
    /// How the controller should retry after this error.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::Backoff
    }
    /// A short CamelCase reason (e.g. the variant name), used in status, events and metric labels.
    fn reason(&self) -> Cow<'static, str> {
        Cow::Borrowed("Error")
    }
}

/// A user error kept with its type, so that `error_policy` can `downcast_ref` it.
#[derive(Debug)]
pub struct HandlerError {
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
    retry: RetryPolicy,
    reason: Cow<'static, str>,
}

impl HandlerError {
    /// Wraps a classified user error.
    pub fn new<E: ClassifyError>(error: E) -> Self {
        Self {
            retry: error.retry_policy(),
            reason: error.reason(),
            source: Box::new(error),
        }
    }
    /// The user's error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.downcast_ref::<E>()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

/// Everything that can go wrong in kuberator. Variants name what was being done and, where there
/// is one, the object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A call to the API server failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was being done, e.g. `adding finalizer to`.
        action: &'static str,
        /// The object concerned.
        object: ObjectKey,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A call to the API server failed outside of any one object.
    #[error("{action}: {source}")]
    Client {
        /// What was being done.
        action: Cow<'static, str>,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// `CachingStrategy::Strict` was asked for a namespace it did not pre-cache.
    #[error("namespace `{namespace}` is not cached (cached: {})", cached.join(", "))]
    NamespaceNotCached {
        /// The namespace asked for.
        namespace: String,
        /// The namespaces that are cached.
        cached: Vec<String>,
    },
    /// An object lacks a field kuberator needs (e.g. `metadata.name`).
    #[error("{object} has no {field}")]
    MissingField {
        /// The object concerned.
        object: ObjectKey,
        /// The missing field, e.g. `metadata.uid`.
        field: &'static str,
    },
    /// (De)serializing an object or patch failed.
    #[error("{action} {object}: {source}")]
    Serde {
        /// What was being done.
        action: &'static str,
        /// The object concerned.
        object: ObjectKey,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The user's handler failed with a classified error (see [`ClassifyError`]).
    #[error("{0}")]
    Handler(HandlerError),
    /// The user's handler panicked.
    #[error("handler panicked on {object}: {message}")]
    Panic {
        /// The object concerned.
        object: ObjectKey,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// A watched kind is not served by the API server (e.g. its CRD is not installed).
    #[error("{message}")]
    NotServed {
        /// The resource, e.g. `websites.example.com`.
        resource: String,
        /// What is missing and how to fix it.
        message: String,
    },
    /// The reconcile did not finish within the operator's reconcile timeout and was cancelled
    /// (see [`Operator::reconcile_timeout`](crate::Operator::reconcile_timeout)).
    #[error("reconcile of {object} timed out after {after:?} and was cancelled")]
    ReconcileTimeout {
        /// The object concerned.
        object: ObjectKey,
        /// The timeout.
        after: Duration,
    },
    /// This replica is past its leader-election renew deadline without a successful renewal: it
    /// must not write (see [`RequestGuard`](crate::runtime::RequestGuard)).
    #[error("not the leader: the renew deadline passed without a successful renewal")]
    NotLeader,
    /// Any other error (the original crate's route for user errors).
    #[error(transparent)]
    Anyhow(#[from] anyhow::Error),
}

impl Error {
    /// An API error outside of any one object.
    pub fn client(action: impl Into<Cow<'static, str>>, source: kube::Error) -> Self {
        Error::Client {
            action: action.into(),
            source: Box::new(source),
        }
    }

    /// Wraps a classified user error so that its type and retry class survive.
    pub fn handler<E: ClassifyError>(error: E) -> Self {
        Error::Handler(HandlerError::new(error))
    }

    /// The user's error, if this is a handler error of type `E`.
    pub fn downcast_ref<E: std::error::Error + Send + Sync + 'static>(&self) -> Option<&E> {
        match self {
            Error::Handler(h) => h.downcast_ref::<E>(),
            Error::Anyhow(a) => a.downcast_ref::<E>(),
            _ => None,
        }
    }

    /// How the controller retries after this error.
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            Error::Handler(h) => h.retry,
            _ => RetryPolicy::Backoff,
        }
    }

    /// A short CamelCase reason, bounded in cardinality: the user's variant name for handler
    /// errors, the error kind otherwise. Used for status, events and metric labels.
    pub fn reason(&self) -> Cow<'static, str> {
        match self {
            Error::Handler(h) => h.reason.clone(),
            Error::Kube { source, .. } | Error::Client { source, .. } => match source.as_ref() {
                kube::Error::Api(status) if !status.reason.is_empty() => {
                    Cow::Owned(status.reason.clone())
                }
                other => match crate::runtime::request_error(other) {
                    Some(crate::runtime::RequestError::NotLeader { .. }) => {
                        Cow::Borrowed("NotLeader")
                    }
                    Some(crate::runtime::RequestError::Timeout { .. }) => {
                        Cow::Borrowed("RequestTimeout")
                    }
                    _ => Cow::Borrowed("KubeError"),
                },
            },
            Error::ReconcileTimeout { .. } => Cow::Borrowed("ReconcileTimeout"),
            Error::NotLeader => Cow::Borrowed("NotLeader"),
            Error::NamespaceNotCached { .. } => Cow::Borrowed("NamespaceNotCached"),
            Error::MissingField { .. } => Cow::Borrowed("MissingField"),
            Error::Serde { .. } => Cow::Borrowed("SerializationFailed"),
            Error::Panic { .. } => Cow::Borrowed("Panic"),
            Error::NotServed { .. } => Cow::Borrowed("NotServed"),
            Error::Anyhow(_) => Cow::Borrowed("Error"),
        }
    }

    /// The HTTP status code, when the API server answered with an error.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Error::Kube { source, .. } | Error::Client { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            _ => None,
        }
    }

    /// An API error about `object`.
    pub fn kube(action: &'static str, object: ObjectKey, source: kube::Error) -> Self {
        Error::Kube {
            action,
            object,
            source: Box::new(source),
        }
    }
}

/// `?` on a raw kube-rs call in a handler: the error keeps its source and says it came from the
/// API server (use [`Error::kube`] to name the object and the action).
impl From<kube::Error> for Error {
    fn from(source: kube::Error) -> Self {
        Error::client("calling the API server", source)
    }
}

/// `?` on a `serde_json::Error` in a handler (building a patch, reading a field): retried with
/// backoff, reason `SerializationFailed`; the error stays reachable with
/// [`Error::downcast_ref`].
impl From<serde_json::Error> for Error {
    fn from(source: serde_json::Error) -> Self {
        Error::handler(source)
    }
}

impl ClassifyError for serde_json::Error {
    fn reason(&self) -> Cow<'static, str> {
        Cow::Borrowed("SerializationFailed")
    }
}

/// `?` on a boxed error (`Box<dyn Error + Send + Sync>`, what many client libraries return) in a
/// handler: retried with backoff, reason `Error`, reachable with [`Error::downcast_ref`].
impl From<Box<dyn std::error::Error + Send + Sync + 'static>> for Error {
    fn from(source: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Error::Anyhow(anyhow::Error::from_boxed(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("image `{0}` is empty")]
    struct EmptyImage(String);

    impl ClassifyError for EmptyImage {
        fn retry_policy(&self) -> RetryPolicy {
            RetryPolicy::Terminal
        }
        fn reason(&self) -> Cow<'static, str> {
            Cow::Borrowed("EmptyImage")
        }
    }

    #[test]
    fn handler_errors_keep_their_type_and_class() {
        let err = Error::handler(EmptyImage("x".into()));
        assert_eq!(
            err.downcast_ref::<EmptyImage>().map(|e| e.0.as_str()),
            Some("x")
        );
        assert_eq!(err.retry_policy(), RetryPolicy::Terminal);
        assert_eq!(err.reason(), "EmptyImage");
        assert_eq!(err.to_string(), "image `x` is empty");
    }

    #[test]
    fn anyhow_route_still_works_and_downcasts() {
        let err: Error = anyhow::Error::new(EmptyImage("y".into())).into();
        assert!(err.downcast_ref::<EmptyImage>().is_some());
        assert_eq!(err.retry_policy(), RetryPolicy::Backoff);
    }

    #[test]
    fn kube_errors_convert_with_their_reason_and_code() {
        let status =
            kube::core::Status::failure("websites \"a\" not found", "NotFound").with_code(404);
        let err: Error = kube::Error::Api(Box::new(status)).into();
        assert_eq!(err.status_code(), Some(404));
        assert_eq!(err.reason(), "NotFound");
        assert!(
            err.to_string().starts_with("calling the API server: "),
            "{err}"
        );
    }

    #[test]
    fn object_keys_display_with_and_without_namespace() {
        let namespaced = ObjectKey {
            kind: "Website".into(),
            namespace: Some("shop".into()),
            name: "a".into(),
        };
        let cluster = ObjectKey {
            namespace: None,
            ..namespaced.clone()
        };
        assert_eq!(namespaced.to_string(), "Website shop/a");
        assert_eq!(cluster.to_string(), "Website a");
    }

    #[test]
    fn serde_and_boxed_errors_convert_with_question_mark() {
        fn parse() -> Result<i32> {
            Ok(serde_json::from_str::<i32>("not json")?)
        }
        fn boxed() -> Result<()> {
            let error: Box<dyn std::error::Error + Send + Sync> = "upstream failed".into();
            Err(error)?
        }
        let error = parse().unwrap_err();
        assert_eq!(error.reason(), "SerializationFailed");
        assert_eq!(error.retry_policy(), RetryPolicy::Backoff);
        assert!(error.downcast_ref::<serde_json::Error>().is_some());
        let error = boxed().unwrap_err();
        assert_eq!(error.retry_policy(), RetryPolicy::Backoff);
        assert_eq!(error.to_string(), "upstream failed");
    }
}
