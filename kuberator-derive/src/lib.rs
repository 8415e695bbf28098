//! Derive and attribute macros for [kuberator](https://docs.rs/kuberator). Use them through the
//! runtime crate's re-exports, `kuberator::{ObserveGeneration, AsStatusError, operator}`: the
//! generated code names `::kuberator::…` and needs nothing else in scope.
//!
//! | macro | on | generates |
//! |---|---|---|
//! | [`#[derive(ObserveGeneration)]`](derive@ObserveGeneration) | a status struct | `ObserveGeneration`, `RecordError`, `WithStatusError` |
//! | [`#[derive(AsStatusError)]`](derive@AsStatusError) | a user error enum | `AsStatusError<T>`, `ClassifyError`, `From<E> for kuberator::Error` |
//! | [`#[operator(...)]`](macro@operator) | the handler's impl block | a `Handler` impl, `operator()` / `run()`, a repository alias |
//!
//! Mistakes are compile errors pointing at the offending key, argument or type, all reported at
//! once; see each macro for the list.
//!
//! # All keys at once
//!
//! (Examples here are `text` because a proc-macro crate cannot depend on its runtime crate; the
//! same examples compile in kuberator's docs and in `trybuild/ui/*/pass/`.)
//!
//! ```text
//! use kuberator::prelude::*;
//! use k8s_openapi::api::core::v1::{ConfigMap, Service};
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
//! #[serde(rename_all = "camelCase")]                // stored as `status.observedGeneration`
//! pub struct WebsiteStatus {
//!     pub observed_generation: Option<i64>,
//!     #[status_error]
//!     pub error: Option<StatusError>,
//! }
//!
//! #[derive(Debug, thiserror::Error, AsStatusError)]
//! #[status_error(StatusError)]
//! pub enum WebsiteError {
//!     #[error("image is empty")]
//!     #[status_error(terminal)]
//!     EmptyImage,
//!     #[error("waiting for {0}")]
//!     #[status_error(reason = "Waiting", requeue_after = "1m30s")]
//!     Dependency(String),
//! }
//!
//! #[kuberator::operator(
//!     resource = Website,                          // required
//!     finalizer = "websites.example.com/cleanup",  // default: none (then no `cleanup`)
//!     legacy_finalizers("old.example.com/cleanup"), // default: none; replaced by `finalizer`
//!     namespaces("default", "shop"),               // default: all namespaces
//!     caching = Strict,                            // default: Strict with namespaces, else Extendable
//!     concurrency = 8,                             // default: 1 (sequential)
//!     skip_observed_on_start = true,               // default: false (every object applied at start)
//!     owns(ConfigMap, Service),                    // default: none
//!     labels = "app=web",                          // default: every object
//!     events = "website-operator",                 // default: no event recorder
//!     leader_election = "website-operator",        // default: every replica reconciles
//!     sharding = "website-operator",               // default: no sharding (every replica, every object)
//!     health = "0.0.0.0:8080",                     // default: no /metrics, /healthz, /readyz
//!     webhooks = "website-webhooks",               // default: none (required by `validate` / `default`)
//!     crate = kuberator,                           // default: `::kuberator` (for a renamed dependency)
//! )]
//! impl Websites {
//!     async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
//!         if site.spec.image.is_empty() {
//!             Err(WebsiteError::EmptyImage)?;
//!         }
//!         Ok(Action::requeue(std::time::Duration::from_secs(300)))
//!     }
//!
//!     async fn cleanup(&self, site: Arc<Website>) -> Result<Action> {
//!         Ok(Action::await_change())
//!     }
//!
//!     // Admission webhooks, served by the operator (`webhooks = …`):
//!     async fn validate(&self, new: &Website, old: Option<&Website>) -> Result<(), Denied> {
//!         match new.spec.image.is_empty() {
//!             true => Err(Denied::new("must not be empty").field("spec.image")),
//!             false => Ok(()),
//!         }
//!     }
//!
//!     async fn default(&self, site: &mut Website) {
//!         site.labels_mut().entry("team".into()).or_insert_with(|| "web".into());
//!     }
//! }
//!
//! // in `main` (`IntoOperator` is in the prelude): runs until SIGTERM / SIGINT
//! Websites.run(Client::try_default().await?).await?;
//! ```

mod duration;
#[cfg(test)]
mod golden;
mod observe_generation;
mod operator;
mod paths;
mod status_error;
mod util;

use proc_macro::TokenStream;

/// Implements `ObserveGeneration` and `RecordError` for a status struct, and `WithStatusError`
/// when it has an error slot.
///
/// # Fields
///
/// - **The observed generation** (required): the field marked `#[observe_generation]`, else the
///   field named `observed_generation`. Its type is `Option<i64>` or `i64` (what
///   `metadata.generation` is), written as such; a type alias is not recognised.
/// - **The error slot** (optional): the field marked `#[status_error]`, of type `Option<T>` with
///   `T: kuberator::FromStatusError` (e.g. `kuberator::StatusError`, or `String`). A status with
///   a slot must implement `Default`: an error on an object that has no status yet is recorded in
///   `Default::default()` (so required fields need defaults too).
/// - **kstatus conditions** (optional): a field named `conditions` of type `Vec<Condition>` or
///   `Option<Vec<Condition>>` (`kuberator::conditions::Condition`). The runtime then sets
///   `Stalled=True` / `Ready=False` for a terminal error and `Reconciling=True` for a retried one,
///   with the error's reason and message, in the same status write as the error slot
///   (`RecordError::conditions`).
/// - **Serialised name**: the observed generation must be stored as `observedGeneration` (what
///   `kubectl wait` and kstatus read): `#[serde(rename_all = "camelCase")]` on the struct, or
///   `#[serde(rename = "observedGeneration")]` on the field.
/// - `#[kuberator(crate = kr)]`: the runtime crate's path when the dependency is renamed.
///
/// ```text
/// #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
/// #[serde(rename_all = "camelCase")]
/// pub struct WebsiteStatus {
///     pub observed_generation: Option<i64>,
///     #[status_error]
///     pub error: Option<StatusError>,
///     pub phase: String,
/// }
/// ```
///
/// # Generated
///
/// - `impl ObserveGeneration`: `set_observed_generation` / `observed_generation` read and write
///   the field.
/// - `impl RecordError`, always: with an error slot, `record_error(Some(e))` stores
///   `T::from_status_error(&e.reason(), e.to_string())` and returns `true`, `record_error(None)`
///   clears the slot and returns whether it held an error; without a slot it does nothing and
///   returns `false`. The runtime calls it after every failed reconcile.
/// - `impl<E: AsStatusError<T>> WithStatusError<E, T>`, with an error slot: `set_status_error`
///   sets the slot.
///
/// # Compile errors
///
/// On the spec (a struct with `#[kube(...)]`, or named `…Spec` without the field): "derive it on
/// the status"; a field named `observedGeneration` (rename it, or mark it); a generation that
/// would not serialise as `observedGeneration` (at the field); a status with an error slot
/// without `Default` (one error, at the struct's name);
/// no observed-generation field (at the struct's name), `#[observe_generation]` or
/// `#[status_error]` on two fields, a generation that is not `Option<i64>` / `i64` or a slot that
/// is not an `Option<_>` (at the type), a slot type without `FromStatusError` (rustc's error, at
/// the type), arguments to the markers, and an enum, tuple or unit struct.
#[proc_macro_derive(
    ObserveGeneration,
    attributes(observe_generation, status_error, kuberator)
)]
pub fn derive_observe_generation(input: TokenStream) -> TokenStream {
    observe_generation::expand(input.into()).into()
}

/// Implements `AsStatusError<T>`, `ClassifyError` and `From<E> for kuberator::Error` for a user
/// error enum, so that `?` works in handlers and each variant has a retry class and a reason.
///
/// # Attributes
///
/// - On the enum, required: `#[status_error(T)]`, the status-error type the variants become,
///   with `T: kuberator::FromStatusError` (e.g. `StatusError`, or `String` for the message only).
/// - On a variant, optional: `#[status_error(...)]` with
///   - `reason = "CustomReason"`: the reason in status, events and metrics. Default: the
///     variant's name. It must be CamelCase as Kubernetes condition reasons are (a letter, then
///     letters, digits, `_`, `,` or `:`).
///   - one retry class: `retry` (the default: exponential backoff with jitter), `terminal` (no
///     retry until the object changes) or `requeue_after = "30s"` (a fixed delay; units `h`,
///     `m`, `s`, `ms`, combined like `1m30s`, parsed at compile time, more than zero).
///
/// The message is the variant's `Display` (e.g. from `thiserror`), so the enum must implement
/// `std::error::Error + Send + Sync + 'static`.
///
/// ```text
/// #[derive(Debug, thiserror::Error, AsStatusError)]
/// #[status_error(StatusError)]
/// pub enum WebsiteError {
///     #[error("image is empty")]
///     #[status_error(terminal)]
///     EmptyImage,
///     #[error("the registry is down")]
///     RegistryDown,                       // retry, reason "RegistryDown"
///     #[error("waiting for {0}")]
///     #[status_error(reason = "Waiting", requeue_after = "1m30s")]
///     Dependency(String),
/// }
/// ```
///
/// # Generated
///
/// - `impl AsStatusError<T>`: `T::from_status_error(reason, self.to_string())`.
/// - `impl ClassifyError`: `retry_policy()` is `RetryPolicy::{Backoff, Terminal, After(..)}` per
///   variant, `reason()` the variant's reason.
/// - `impl From<E> for kuberator::Error`: `Error::handler(e)`, which keeps the value for
///   `Error::downcast_ref::<E>()`.
///
/// # Compile errors
///
/// An enum without `std::error::Error` (e.g. no `thiserror::Error`: one error, at the enum's
/// name), a retry class or reason on the enum instead of the variants,
/// a struct or union, a missing or repeated `#[status_error(T)]` (at the enum's name), a `T`
/// without `FromStatusError` (rustc's error, at `T`), an unknown option or retry class (with the
/// valid ones and a "did you mean"), two retry classes on one variant, a malformed or zero
/// duration and a reason that is not CamelCase (at the literal).
#[proc_macro_derive(AsStatusError, attributes(status_error, kuberator))]
pub fn derive_as_status_error(input: TokenStream) -> TokenStream {
    status_error::expand(input.into()).into()
}

/// Turns a handler's impl block into a Kubernetes operator.
///
/// ```text
/// pub struct Websites { /* your state: clients, configuration … */ }
///
/// #[kuberator::operator(resource = Website, finalizer = "websites.example.com/cleanup")]
/// impl Websites {
///     async fn apply(&self, site: Arc<Website>) -> Result<Action> { … }
///     async fn cleanup(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> { … }
/// }
///
/// Websites { … }.run(client).await?;   // until SIGTERM / SIGINT (`IntoOperator`, in the prelude)
/// ```
///
/// # Keys
///
/// | key | default | meaning |
/// |---|---|---|
/// | `resource = Website` (or `"Website"`) | required | the resource reconciled: `kube::Resource<DynamicType = ()>` + `Clone + Debug + Serialize + DeserializeOwned`, e.g. a `#[derive(CustomResource)]` type or a `k8s_openapi` type |
/// | `name = "website-operator"` | `<plural>.<group>-operator` | the controller name (logs, metrics' `controller` label), the name of the generated RBAC objects and the default field manager; a DNS subdomain |
/// | `field_manager = "website-operator"` | the name | the field manager of every write (child applies, status, finalizers) |
/// | `status_writes = "apply"` | `"merge"` | write status by server-side apply as the field manager (`kuberator::StatusWrites::Apply`) instead of a merge patch |
/// | `finalizer = "example.com/name"` | none | adds this finalizer and calls `cleanup` before deletion. A qualified name as Kubernetes accepts it: a name of at most 63 letters, digits, `-`, `_`, `.`, optionally after a DNS subdomain prefix and `/` (recommended: a domain you own, `example.com/cleanup`). Or the path of a `&str` const, checked at compile time |
/// | `legacy_finalizers("old.name", …)` | none | finalizers a previous operator added: replaced by `finalizer` on every object (on one being deleted, `cleanup` runs and they are removed), so a port leaves nothing stuck in `Terminating` |
/// | `namespaces("a", "b")` | all namespaces | watch (and pre-cache API handles for) only these namespaces; DNS-1123 labels, at least one; only for namespaced resources |
/// | `caching = Strict \| Adhoc \| Extendable` | `Strict` with `namespaces`, else `Extendable` | how API handles for namespaces outside the pre-cached ones are treated: `Strict` refuses them, `Adhoc` builds one each time, `Extendable` caches them on first use |
/// | `concurrency = N` | `1` (sequential) | at most N objects reconciled at once, 1 ≤ N ≤ 65535; one object is never reconciled twice at once |
/// | `skip_observed_on_start = true` | `false` | on the initial list after a (re)start, skip the objects whose `status.observedGeneration` equals `metadata.generation` (the status implements `ObserveGeneration`) unless they are being deleted or lack the finalizer; the children's initial list does not re-trigger owners either (`kuberator::Operator::skip_observed_on_start`). `apply` must be idempotent either way |
/// | `owns(ConfigMap, Service)` | none | also reconcile the owner when the spec of an owned child of these kinds changes (a new generation; any change for kinds without one) or the child is deleted; the echo of the operator's own `ctx.apply_child` writes does not re-trigger it |
/// | `owns(Deployment, on = "status")` | `on = "spec"` | `on` after a child: `"status"` re-triggers on every change of it, status updates included (`kuberator::runtime::ChildChanges`) |
/// | `labels = "app=web"` | every object | a label selector (`a=b`, `a!=b`, `a in (x, y)`, `a notin (x)`, `a`, `!a`, comma-separated), checked at compile time |
/// | `events = "website-operator"` | no recorder | gives `Ctx` an event recorder reporting as this component (`reportingController`, a qualified name); without it `ctx.emit` does nothing |
/// | `leader_election = "website-operator"` | off | reconcile only while holding this Lease (in the operator's namespace: `POD_NAMESPACE`, the service account's, or the client's default); standbys keep warm caches |
/// | `sharding = "website-operator"` | off | split the objects over the replicas: each holds a membership Lease `<group>-<identity>` in the operator's namespace and reconciles only the objects that hash to it, labelled `kuberator.dev/shard-<group>=<identity>` (`kuberator::runtime::Sharding::in_operator_namespace(&client, "website-operator")`); the group is a DNS label of at most 57 characters; `rbac_options()` is `sharded`, so the bundle gets the Lease role |
/// | `health = "0.0.0.0:8080"` | off | serve `/metrics` (controller-runtime's metric names), `/healthz` and `/readyz` on this address |
/// | `health(addr = "0.0.0.0:8080", liveness = "/health", readiness = "/ready", metrics = "/metrics", route("/", index))` | `/healthz`, `/readyz`, `/metrics` | the same with other paths (each must start with `/`) and extra routes, each an `async fn(Request<()>) -> Response<String>` (`kuberator::runtime::health`) |
/// | `webhooks = "website-webhooks"` (or `"namespace/service"`) | none; required with `validate` / `default` | the admission webhooks' server: `kuberator::webhook::WebhookServer::in_operator_namespace(client, "website-webhooks")` (or `in_cluster("namespace", "service")`), HTTPS on `0.0.0.0:9443` behind that Service (port 443), a certificate it creates and rotates in the Secret `<service>-tls`, webhook configurations named after the Service with the CA as their `caBundle`. Replace it with `.webhook_server(WebhookServer::local())` on `operator(client)` next to a local API server such as `TestEnv` |
/// | `crate = kr` | `::kuberator` | the runtime crate's path, for `kr = { package = "kuberator" }` |
///
/// # Methods
///
/// - `async fn apply(&self, object: Arc<R>) -> Result<Action>`, required: called for every
///   change (and on requeue) of an object that is not being deleted.
/// - `async fn cleanup(&self, object: Arc<R>) -> Result<Action>`: required with a `finalizer`,
///   not allowed without one; called when the object is being deleted, the finalizer is removed
///   once it succeeds.
/// - Either may take `ctx: &Ctx<R>` as a second argument: the client, the repository, `emit`,
///   `update_status`, `apply_child`.
/// - `R` is the resource (`Arc` and `Ctx` are matched by their last path segment). The error type
///   may be any `E: Into<kuberator::Error>`, e.g. `Result<Action, WebsiteError>` with
///   `#[derive(AsStatusError)]`.
/// - `async fn validate(&self, new: &R, old: Option<&R>) -> Result<(), Denied>`: a validating
///   admission webhook for creates (`old` is `None`) and updates; `Err(Denied::new("…"))`
///   refuses the request and `kubectl` shows the message (`Denied` is in the prelude).
/// - `async fn validate_delete(&self, old: &R) -> Result<(), Denied>`: also validates deletes.
/// - `async fn default(&self, obj: &mut R)`: a mutating admission webhook for creates and
///   updates; change the object in place, the framework sends the JSON patch.
/// - Any of these three turns the webhooks on and needs `webhooks = …`; they run as
///   `kuberator::webhook::{Validator, Defaulter}` with `failurePolicy: Fail` (a handler that
///   panics or runs past 5 s denies that one request). See `kuberator::webhook`.
/// - Other methods in the block are left alone: helpers are fine.
///
/// # Generated
///
/// `apply` and `cleanup` move, as written (with `#[allow(clippy::unused_async)]`), into the impl of
/// a trait private to the expansion: only the operator calls them, and a second block on the same
/// type does not clash by method name. The rest of the block is kept unchanged. Next to it, for a
/// handler type `Websites`, all inside an anonymous `const _`, so that nothing clashes with the
/// user's names:
///
/// - a private struct holding the handler and its `Ctx`, with `impl kuberator::Handler<Website>`
///   forwarding `apply` / `cleanup` to your methods and recording errors in the object's status
///   when the status derives `ObserveGeneration` with an error slot (see `RecordError`);
/// - `impl kuberator::IntoOperator for Websites`: `operator(self, client)` builds the context and
///   the configured runner without starting it, `rbac_options()` the least-privilege RBAC,
///   `run(self, client)` runs it until SIGTERM / SIGINT, letting in-flight reconciles finish
///   (a second `#[kuberator::operator]` block on the same type is one "conflicting
///   implementations" error);
/// - compile-time assertions that `Website` is a resource kuberator can reconcile (one error at
///   `resource = …` otherwise, with a "did you mean" for a `…Spec` type), that `Websites` is
///   `Send + Sync + 'static` and, with `namespaces(...)`, that `Website` is namespaced.
///
/// Each of these is also public API of the runtime crate (`Handler`, `Ctx`, `Operator`), so a
/// piece can be written by hand instead.
///
/// # Compile errors
///
/// Each at the offending token, all at once: a missing `resource`; `DynamicObject`; a resource
/// the handlers do not take (at `resource = …`); an unknown key (with the valid keys and a "did
/// you mean", and the fix for `namespace` and `namespaced`), a repeated key or a key in the wrong
/// form; `ctx.emit` without `events = …`; `reconcile` / `finalize` / `clean_up` / `delete` instead
/// of `apply` / `cleanup`; a finalizer that is not
/// a qualified name; empty or invalid `namespaces`; `namespaces` on a cluster-scoped resource;
/// an unknown caching strategy; `concurrency = 0`; an empty `owns()`; an invalid label selector
/// or events component; a missing `apply`, or `cleanup` missing with / present without a
/// finalizer; a handler that is not `async`, takes `&mut self` or `self`, takes the wrong object
/// type, a context that is not `&Ctx<R>`, extra arguments, returns something other than
/// `Result<Action>` or an error without `Into<kuberator::Error>`; a `validate` / `default` that
/// is not `async`, takes `&mut self`, the object in another form than `&R` / `Option<&R>` /
/// `&mut R` or of another type, misses `old`, takes more, returns something other than
/// `Result<(), Denied>` (`validate`) or anything at all (`default`); webhook methods without
/// `webhooks = …`, or `webhooks = …` without them or with an invalid Service name; and a trait
/// or generic impl.
#[proc_macro_attribute]
pub fn operator(attr: TokenStream, item: TokenStream) -> TokenStream {
    operator::expand(attr.into(), item.into()).into()
}
