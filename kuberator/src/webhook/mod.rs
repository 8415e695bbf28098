//! Admission and conversion webhooks served by the operator itself, with certificates it
//! manages.
//!
//! A [`Webhook`] validates and/or defaults objects of one kind before the API server stores
//! them. Add it to an [`Operator`](crate::Operator) of that kind
//! ([`Operator::webhook`](crate::Operator::webhook)) or, for any kind, to a
//! [`Manager`](crate::runtime::Manager) ([`Manager::webhook`](crate::runtime::Manager::webhook)),
//! and give the process one [`WebhookServer`]. At start-up the manager
//!
//! 1. binds the server's port (HTTPS, rustls; every webhook of the process on it),
//! 2. loads or creates a CA and a serving certificate in a Secret ([`Certificates::secret`],
//!    shared by every replica) or reads your files ([`Certificates::files`]),
//! 3. starts serving, then creates or updates its `ValidatingWebhookConfiguration` and
//!    `MutatingWebhookConfiguration` with the CA in their `caBundle` (no cert-manager needed),
//! 4. renews the serving certificate when a third of its lifetime is left (the CA stays, so
//!    the API server trusts the new certificate before it is served), or re-reads the files
//!    when they change.
//!
//! A [`Conversion`] serves the versions of a multi-version CRD through its storage version
//! (`ConversionReview` at [`CONVERT_PATH`] on the same server); the manager patches the CRD's
//! `spec.conversion` to `strategy: Webhook` with the server's client config and CA.
//!
//! Requests are denied (never dropped) when the handler says so ([`Denied`], with a field
//! path), panics, or runs past its timeout; the server goes on with the next request. The
//! configurations use `failurePolicy: Fail`. Metrics, in controller-runtime's names, go to the
//! manager's registry: `controller_runtime_webhook_requests_total{webhook,code}`,
//! `controller_runtime_webhook_latency_seconds{webhook}`,
//! `controller_runtime_webhook_requests_in_flight{webhook}`.
//!
//! ```no_run
//! use kuberator::{prelude::*, webhook::{Denied, Webhook, WebhookServer}};
//! use k8s_openapi::api::core::v1::ConfigMap;
//!
//! struct Noop;
//! #[async_trait::async_trait]
//! impl kuberator::Reconciler<ConfigMap> for Noop {
//!     async fn reconcile(&self, _cm: Arc<ConfigMap>) -> Result<Action> {
//!         Ok(Action::await_change())
//!     }
//! }
//!
//! # async fn doc(client: kube::Client) -> kuberator::Result<()> {
//! let webhook = Webhook::<ConfigMap>::new()
//!     .validate(|new: &ConfigMap, _old: Option<&ConfigMap>| {
//!         if new.data.as_ref().is_some_and(|d| d.contains_key("password")) {
//!             return Err(Denied::new("passwords belong in a Secret").field("data.password"));
//!         }
//!         Ok(())
//!     })
//!     .default(|cm: &mut ConfigMap| {
//!         cm.labels_mut().entry("team".into()).or_insert_with(|| "platform".into());
//!     });
//! Operator::with_reconciler(client, Noop)
//!     .webhook(webhook)
//!     .webhook_server(WebhookServer::in_cluster("platform", "config-webhooks"))
//!     .shutdown_on_signal()
//!     .run()
//!     .await
//! # }
//! ```
//!
//! # Access control
//! `get`, `create`, `update` on the certificate Secret (with [`Certificates::secret`]);
//! `create` and `patch` on `validatingwebhookconfigurations` and
//! `mutatingwebhookconfigurations` named [`WebhookServer::configuration_name`]; with a
//! [`Conversion`], `patch` on its `customresourcedefinitions` ([`Conversion::rbac`]).

mod admission;
mod certs;
mod configuration;
mod conversion;
mod metrics;
mod server;

use std::sync::Arc;

pub use admission::{DEFAULT_HANDLER_TIMEOUT, Defaulter, Denied, Validator, Webhook};
pub use certs::{
    Certificates, DEFAULT_CA_VALIDITY, DEFAULT_RELOAD_INTERVAL, DEFAULT_SERVING_VALIDITY,
};
pub use conversion::{CONVERT_PATH, Conversion};
pub use server::{DEFAULT_BODY_LIMIT, WebhookServer};

pub(crate) use admission::{Registration, registrations_of};
pub(crate) use server::Running;

use crate::{error::Result, finalize::Object, runtime::Metrics};

/// The webhooks of a manager and its server, gathered from every controller.
#[derive(Default)]
pub(crate) struct Settings {
    handlers: Vec<Arc<dyn admission::Admit>>,
    conversions: Vec<Arc<conversion::Converter>>,
    /// The controllers that brought webhooks (for the error when no server is set).
    owners: Vec<String>,
    server: Option<WebhookServer>,
}

impl Settings {
    pub(crate) fn add<R: Object>(&mut self, webhook: Webhook<R>) {
        self.handlers.extend(webhook.into_handlers());
    }

    pub(crate) fn add_conversion<Hub>(&mut self, conversion: Conversion<Hub>) {
        self.conversions.push(conversion.into_converter());
    }

    /// The server, when one is set.
    pub(crate) fn server(&self) -> Option<&WebhookServer> {
        self.server.as_ref()
    }

    pub(crate) fn set_server(&mut self, server: WebhookServer) {
        self.server = Some(server);
    }

    /// Takes over `other`'s webhooks, and its server when there is none yet.
    pub(crate) fn adopt(&mut self, other: Settings, controller: &str) {
        if !other.handlers.is_empty() || !other.conversions.is_empty() {
            self.owners.push(controller.to_owned());
        }
        self.handlers.extend(other.handlers);
        self.conversions.extend(other.conversions);
        self.owners.extend(other.owners);
        match (&self.server, other.server) {
            (None, server) => self.server = server,
            (Some(_), Some(_)) => tracing::warn!(
                controller,
                "the manager already has a webhook server; the controller's own one is ignored"
            ),
            (Some(_), None) => {}
        }
    }

    /// Starts the server when there are webhooks.
    ///
    /// # Errors
    /// Webhooks without a server, a port that cannot be bound, certificates that cannot be
    /// loaded or created, webhook configurations that cannot be written.
    pub(crate) async fn start(
        self,
        client: &kube::Client,
        metrics: Option<&Metrics>,
    ) -> Result<Option<Running>> {
        let none = self.handlers.is_empty() && self.conversions.is_empty();
        match (self.server, none) {
            (_, true) => Ok(None),
            (None, false) => {
                let mut owners = self.owners;
                owners.dedup();
                let owners = if owners.is_empty() {
                    "the manager".to_owned()
                } else {
                    format!("controller `{}`", owners.join("`, `"))
                };
                Err(anyhow::anyhow!(
                    "{owners} has webhooks but no webhook server: add \
                     `.webhook_server(WebhookServer::in_cluster(namespace, service))` (or \
                     `WebhookServer::local()` next to a local API server such as TestEnv)"
                )
                .into())
            }
            (Some(server), false) => server
                .start(client, self.handlers, self.conversions, metrics)
                .await
                .map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    fn client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn webhooks_without_a_server_name_the_controller_and_the_fix() {
        let mut operator = Settings::default();
        operator.add(Webhook::<ConfigMap>::new().validate(|_, _| Ok(())));
        let mut manager = Settings::default();
        manager.adopt(operator, "config-maps");
        let error = manager
            .start(&client(), None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.starts_with(
                "controller `config-maps` has webhooks but no webhook server: add \
                 `.webhook_server(WebhookServer::in_cluster(namespace, service))`"
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn no_webhooks_start_no_server() {
        let mut settings = Settings::default();
        settings.set_server(WebhookServer::local());
        assert!(settings.start(&client(), None).await.unwrap().is_none());
    }
}
