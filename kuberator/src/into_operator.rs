//! `IntoOperator`: what `#[kuberator::operator]` implements for a handler type.

use std::future::Future;

use kube::Client;

use crate::{error::Result, finalize::Object, manifests::RbacOptions, runtime::Operator};

/// A handler type that becomes an operator: implemented by `#[kuberator::operator(...)]` on the
/// handler's impl block (one block per handler type; a second one is a "conflicting
/// implementations" error). In the prelude, so `Websites { … }.run(client)` works with
/// `use kuberator::prelude::*;`.
///
/// ```no_run
/// use kuberator::prelude::*;
///
/// #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
/// pub struct WebsiteSpec {
///     pub image: String,
/// }
///
/// pub struct Websites;
///
/// #[kuberator::operator(resource = Website)]
/// impl Websites {
///     async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
///         Ok(Action::await_change())
///     }
/// }
///
/// # async fn run() -> kuberator::Result<()> {
/// let client = Client::try_default().await?;
/// let rbac = Websites::rbac_options();
/// # let _ = rbac;
/// Websites.run(client).await
/// # }
/// ```
pub trait IntoOperator: Sized {
    /// The resource reconciled, the `resource = …` key.
    type Resource: Object;

    /// Builds the operator (the context and its pre-cached API handles) without starting it.
    ///
    /// # Errors
    /// When the context cannot be built.
    fn operator(self, client: Client) -> Result<Operator<Self::Resource>>;

    /// The least-privilege RBAC this operator needs, from its keys (the resource, its status and
    /// finalizers, owned kinds, events); print it with `kuberator::manifests::to_yaml`.
    fn rbac_options() -> RbacOptions;

    /// Checks the operator's permissions (failing with every missing one), then runs it until
    /// SIGTERM or SIGINT and lets in-flight reconciles finish.
    ///
    /// # Errors
    /// When the operator cannot start.
    ///
    /// # Access control
    /// What [`rbac_options`](Self::rbac_options) lists, plus `create` on
    /// `selfsubjectaccessreviews` for the check.
    fn run(self, client: Client) -> impl Future<Output = Result<()>> + Send;
}
