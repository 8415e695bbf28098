//! `K8sRepository`: the generic repository that implements [`Finalize`].

use std::marker::PhantomData;

use kube::{Client, Resource};

use crate::{
    cache::{ProvideApi, StaticApiProvider},
    finalize::{Finalize, Object, StatusWrites},
};

/// The generic repository: an API provider plus a field manager; implements
/// [`Finalize`] so `finalize`, `update_status` and `update_status_with_error` work out of the box.
///
/// ```no_run
/// # use kuberator::{CachingStrategy, K8sRepository, StaticApiProvider};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn doc(client: kube::Client) {
/// let provider = StaticApiProvider::<ConfigMap>::new(client.clone(), ["default"], CachingStrategy::Strict);
/// let repo: K8sRepository<ConfigMap> = K8sRepository::new(client, provider, "my-operator");
/// # }
/// ```
pub struct K8sRepository<R: Resource, P = StaticApiProvider<R>> {
    client: Client,
    api_provider: P,
    field_manager: String,
    status_writes: StatusWrites,
    _resource: PhantomData<fn() -> R>,
}

impl<R: Resource, P> K8sRepository<R, P> {
    /// A repository over `api_provider`, writing as `field_manager`.
    pub fn new(client: Client, api_provider: P, field_manager: impl Into<String>) -> Self {
        Self {
            client,
            api_provider,
            field_manager: field_manager.into(),
            status_writes: StatusWrites::Merge,
            _resource: PhantomData,
        }
    }

    /// Writes status with `writes` (default [`StatusWrites::Merge`]).
    #[must_use]
    pub fn status_writes(mut self, writes: StatusWrites) -> Self {
        self.status_writes = writes;
        self
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

impl<R: Object, P: ProvideApi<R>> Finalize<R, P> for K8sRepository<R, P> {
    fn api_provider(&self) -> &P {
        &self.api_provider
    }

    fn field_manager(&self) -> &str {
        &self.field_manager
    }

    fn status_writes(&self) -> StatusWrites {
        self.status_writes
    }
}
