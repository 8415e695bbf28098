//! Status helpers: the observed-generation pattern and errors recorded in status.

use std::borrow::Cow;

use crate::error::Error;

/// A status that records which `metadata.generation` it describes.
///
/// `#[derive(ObserveGeneration)]` implements it for a field named `observed_generation` (or the one
/// marked `#[observe_generation]`), of type `Option<i64>` or `i64`.
///
/// ```
/// use kuberator::ObserveGeneration;
///
/// #[derive(Default)]
/// struct Status { observed_generation: Option<i64> }
///
/// impl ObserveGeneration for Status {
///     fn set_observed_generation(&mut self, generation: i64) {
///         self.observed_generation = Some(generation);
///     }
///     fn observed_generation(&self) -> Option<i64> {
///         self.observed_generation
///     }
/// }
///
/// let mut status = Status::default();
/// status.set_observed_generation(3);
/// assert_eq!(status.observed_generation(), Some(3));
/// ```
pub trait ObserveGeneration {
    /// Records the generation this status describes.
    fn set_observed_generation(&mut self, generation: i64);
    /// The generation this status describes, if any.
    fn observed_generation(&self) -> Option<i64>;
}

/// Turns a user error into the status-error type `S` written to the object's status.
///
/// `#[derive(AsStatusError)]` implements it from each variant's reason and `Display` message.
pub trait AsStatusError<S> {
    /// The status representation of this error.
    fn as_status_error(&self) -> S;
}

/// A status with a slot for errors of type `S`, produced from user errors `E`.
///
/// `#[derive(ObserveGeneration)]` implements it for the field marked `#[status_error]`.
pub trait WithStatusError<E: AsStatusError<S>, S> {
    /// Sets (`Some`) or clears (`None`) the status error.
    fn set_status_error(&mut self, error: Option<S>);
}

/// Builds a status-error value from a reason and a message; the target of
/// `#[derive(AsStatusError)]` and of errors the runtime records itself (API errors, panics).
pub trait FromStatusError {
    /// Builds the value.
    fn from_status_error(reason: &str, message: String) -> Self;
}

impl FromStatusError for String {
    fn from_status_error(_reason: &str, message: String) -> Self {
        bounded(message, STATUS_MESSAGE_MAX_BYTES)
    }
}

/// The longest error message written to status (1024 bytes, as an event's note): a 2 MiB error
/// would not fit in the object (etcd's request limit is 1.5 MiB).
pub const STATUS_MESSAGE_MAX_BYTES: usize = 1024;

/// The longest error message in a log line (4 KiB; a retried 2 MiB error would otherwise log
/// 2 MiB per retry).
pub(crate) const LOG_ERROR_MAX_BYTES: usize = 4096;

/// `message` cut to at most `max` bytes at a character boundary, ending in
/// `… (<n> bytes in all)` when it was cut.
///
/// ```
/// let cut = kuberator::status::bounded("é".repeat(2000), 100);
/// assert!(cut.len() <= 100 && cut.ends_with("(4000 bytes in all)"), "{cut}");
/// assert_eq!(kuberator::status::bounded("short".into(), 100), "short");
/// ```
pub fn bounded(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let suffix = format!("… ({} bytes in all)", message.len());
    let mut end = max.saturating_sub(suffix.len());
    while end > 0 && !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = message;
    cut.truncate(end);
    cut.push_str(&suffix);
    cut
}

/// A ready-made status error: a machine-readable reason and a human message.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct StatusError {
    /// A CamelCase reason, e.g. `EmptyImage`.
    pub reason: String,
    /// The error's message.
    pub message: String,
}

impl FromStatusError for StatusError {
    fn from_status_error(reason: &str, message: String) -> Self {
        Self {
            reason: reason.to_owned(),
            message: bounded(message, STATUS_MESSAGE_MAX_BYTES),
        }
    }
}

/// A status into which the runtime can record any reconcile error (or clear it on success).
///
/// `#[derive(ObserveGeneration)]` always implements it: with a `#[status_error]` field of a type
/// implementing [`FromStatusError`] it fills that field, without one it does nothing.
///
/// When [`conditions`](RecordError::conditions) returns the status's kstatus conditions, the
/// runtime also sets them in the same status write as the error slot: a terminal error
/// ([`RetryPolicy::Terminal`](crate::RetryPolicy::Terminal)) marks `Stalled=True` /
/// `Ready=False`, a retried one `Reconciling=True` / `Ready=Unknown`, each with the error's
/// reason and message (see [`conditions::mark_stalled`](crate::conditions::mark_stalled) and
/// [`conditions::mark_reconciling`](crate::conditions::mark_reconciling)).
pub trait RecordError {
    /// Records `error` (or clears the recorded one with `None`). Returns whether anything changed.
    fn record_error(&mut self, error: Option<&Error>) -> bool;

    /// The status's kstatus conditions, if it has them (`None` by default).
    fn conditions(&mut self) -> Option<&mut Vec<crate::conditions::Condition>> {
        None
    }
}

/// Sets the kstatus conditions for `error`: `Stalled` for a terminal error, `Reconciling` for a
/// retried one. Returns whether anything changed.
pub(crate) fn mark_error(
    conditions: &mut Vec<crate::conditions::Condition>,
    generation: Option<i64>,
    error: &Error,
) -> bool {
    let (reason, message) = error_parts(error);
    match error.retry_policy() {
        crate::RetryPolicy::Terminal => {
            crate::conditions::mark_stalled(conditions, generation, &reason, &message)
        }
        crate::RetryPolicy::Backoff | crate::RetryPolicy::After(_) => {
            crate::conditions::mark_reconciling(conditions, generation, &reason, &message)
        }
    }
}

/// The reason and message the runtime records for an error.
pub fn error_parts(error: &Error) -> (Cow<'static, str>, String) {
    (
        error.reason(),
        bounded(error.to_string(), STATUS_MESSAGE_MAX_BYTES),
    )
}
