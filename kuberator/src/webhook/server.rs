//! The HTTPS server of every admission webhook of the process: one port, one path per webhook,
//! bounded bodies and time per request, a panic or timeout denying only its own request.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use futures::FutureExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceConversion;
use kube::{
    Client,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{ServerConfig, crypto::CryptoProvider},
};

use super::{
    admission::{Admit, Denied},
    certs::{self, Certificates, Material, ServingCert, Source},
    configuration::{self, Endpoint},
    conversion::{self, CONVERT_PATH, Converter},
    metrics::WebhookMetrics,
};
use crate::{error::Result, runtime::Metrics};

/// The largest admission request read (an AdmissionReview carries the object and the old
/// object; etcd stores at most 1.5 MiB per object).
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// How long a connection may take for its TLS handshake and request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(2);
/// Pause after a failed `accept` before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a new CA sits in the `caBundle` beside the old one before a certificate it signed
/// is served (the API server reads webhook configurations through an informer).
const CA_SETTLE: Duration = Duration::from_secs(3);
/// Retry pause of the certificate loop after an error.
const RETRY: Duration = Duration::from_secs(5);

/// The webhook server of a [`Manager`](crate::runtime::Manager) (or of an
/// [`Operator`](crate::Operator), a manager of one): where it listens, how the API server
/// reaches it, and its certificate. One server serves every [`Webhook`](super::Webhook) of the
/// process.
///
/// At start-up the manager binds the port, loads or creates the certificate
/// ([`Certificates`]), starts serving, and only then creates or updates the
/// `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration` named
/// [`configuration_name`](WebhookServer::configuration_name), with the CA in their `caBundle`.
/// The server stops after every controller has stopped (their last writes still pass the
/// webhooks).
///
/// ```no_run
/// # use kuberator::{Operator, webhook::{Denied, Webhook, WebhookServer}};
/// # use k8s_openapi::api::core::v1::ConfigMap;
/// # async fn doc(operator: Operator<ConfigMap>) -> kuberator::Result<()> {
/// // In the cluster: the Service `webhooks` in `shop` routes port 443 to the pod's 9443.
/// let server = WebhookServer::in_cluster("shop", "webhooks");
/// // Against a TestEnv on this machine: https://127.0.0.1:<free port>.
/// let local = WebhookServer::local();
/// # let _ = local;
/// operator
///     .webhook(Webhook::new().validate(|cm: &ConfigMap, _old: Option<&ConfigMap>| {
///         match cm.data.as_ref().is_some_and(|d| d.contains_key("owner")) {
///             true => Ok(()),
///             false => Err(Denied::new("is required").field("data.owner")),
///         }
///     }))
///     .webhook_server(server)
///     .run()
///     .await
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct WebhookServer {
    bind: SocketAddr,
    endpoint: EndpointConfig,
    certificates: Certificates,
    names: Vec<String>,
    configuration_name: String,
    body_limit: usize,
}

#[derive(Clone, Debug)]
enum EndpointConfig {
    /// A URL on the bound port.
    Local { host: String },
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl WebhookServer {
    /// Serves on `127.0.0.1` on a free port; the webhook configurations call
    /// `https://127.0.0.1:<port>/…` (for [`TestEnv`](crate::testing) and operators run outside
    /// the cluster next to a local API server). The certificate (for `127.0.0.1` and
    /// `localhost`) lives in the Secret `default/kuberator-webhook-tls`.
    pub fn local() -> Self {
        WebhookServer {
            bind: ([127, 0, 0, 1], 0).into(),
            endpoint: EndpointConfig::Local {
                host: "127.0.0.1".to_owned(),
            },
            certificates: Certificates::secret("default", "kuberator-webhook-tls"),
            names: vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            configuration_name: "kuberator-webhooks".to_owned(),
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Serves on `0.0.0.0:9443` behind the Service `namespace/service` (port 443); the
    /// certificate is issued for the Service's DNS names and lives in the Secret
    /// `<service>-tls` of `namespace`; the webhook configurations are named `service`.
    pub fn in_cluster(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        let namespace = namespace.into();
        let service = service.into();
        WebhookServer {
            bind: ([0, 0, 0, 0], 9443).into(),
            names: vec![
                service.clone(),
                format!("{service}.{namespace}"),
                format!("{service}.{namespace}.svc"),
                format!("{service}.{namespace}.svc.cluster.local"),
            ],
            certificates: Certificates::secret(namespace.clone(), format!("{service}-tls")),
            configuration_name: service.clone(),
            endpoint: EndpointConfig::Service {
                namespace,
                name: service,
                port: 443,
            },
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// [`in_cluster`](WebhookServer::in_cluster) in the operator's own namespace: `POD_NAMESPACE`,
    /// else the pod's service account namespace, else the client's default namespace (as
    /// [`LeaderElection::in_operator_namespace`](crate::runtime::LeaderElection::in_operator_namespace)).
    /// What `#[kuberator::operator(webhooks = "…")]` uses.
    pub fn in_operator_namespace(client: &Client, service: impl Into<String>) -> Self {
        Self::in_cluster(crate::runtime::leader::current_namespace(client), service)
    }

    /// The address to listen on (port 0: a free one).
    #[must_use]
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The Service port the API server calls ([`in_cluster`](WebhookServer::in_cluster) only;
    /// default 443).
    #[must_use]
    pub fn service_port(mut self, port: u16) -> Self {
        if let EndpointConfig::Service { port: p, .. } = &mut self.endpoint {
            *p = port;
        }
        self
    }

    /// Where the certificate comes from (default: a Secret the framework manages).
    #[must_use]
    pub fn certificates(mut self, certificates: Certificates) -> Self {
        self.certificates = certificates;
        self
    }

    /// The name of the `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration`
    /// the framework writes.
    #[must_use]
    pub fn configuration_name(mut self, name: impl Into<String>) -> Self {
        self.configuration_name = name.into();
        self
    }

    /// The largest request body accepted (default [`DEFAULT_BODY_LIMIT`]); larger ones get 413.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The DNS names and IP addresses of the managed serving certificate.
    pub fn certificate_names(&self) -> &[String] {
        &self.names
    }

    /// The RBAC the webhook server needs, least privilege: `get` and `update` of its own
    /// certificate Secret and `get` and `patch` of its own webhook configurations, each by
    /// `resourceNames`, plus `create` of them (which Kubernetes cannot restrict by name). Add it
    /// to the operator's with [`Bundle::rbac`](crate::manifests::Bundle::rbac) or
    /// [`Rbac::merge`](crate::manifests::Rbac::merge). The Secret rules are left out with
    /// [`Certificates::files`].
    ///
    /// ```
    /// use kuberator::webhook::WebhookServer;
    ///
    /// let rbac = WebhookServer::in_cluster("shop", "websites-webhooks").rbac("website-operator");
    /// let yaml = rbac.to_yaml()?;
    /// assert!(yaml.contains("validatingwebhookconfigurations"));
    /// assert!(yaml.contains("websites-webhooks-tls"));
    /// # Ok::<(), kuberator::Error>(())
    /// ```
    pub fn rbac(&self, name: &str) -> crate::manifests::Rbac {
        use crate::manifests::{Grant, Rbac, Scope};
        use k8s_openapi::api::rbac::v1::PolicyRule;
        let rule =
            |group: &str, resources: &[&str], verbs: &[&str], names: Option<&str>| PolicyRule {
                api_groups: Some(vec![group.to_owned()]),
                resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
                verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
                resource_names: names.map(|n| vec![n.to_owned()]),
                ..PolicyRule::default()
            };
        let configurations = [
            "validatingwebhookconfigurations",
            "mutatingwebhookconfigurations",
        ];
        let mut grants = vec![Grant {
            name: format!("{name}-webhooks"),
            scope: Scope::Cluster,
            rules: vec![
                rule(
                    "admissionregistration.k8s.io",
                    &configurations,
                    &["get", "patch"],
                    Some(&self.configuration_name),
                ),
                rule(
                    "admissionregistration.k8s.io",
                    &configurations,
                    &["create"],
                    None,
                ),
            ],
        }];
        if let Source::Secret {
            namespace,
            name: secret,
            ..
        } = &self.certificates.source
        {
            grants.push(Grant {
                name: format!("{name}-webhook-certificates"),
                scope: Scope::Namespace(namespace.clone()),
                rules: vec![
                    rule("", &["secrets"], &["get", "update"], Some(secret)),
                    rule("", &["secrets"], &["create"], None),
                ],
            });
        }
        Rbac {
            grants,
            service_account: None,
        }
    }

    /// The Service in front of the webhook port for [`in_cluster`](WebhookServer::in_cluster)
    /// (port 443, or [`service_port`](WebhookServer::service_port), to the bound port of the
    /// pods matching `selector`); `None` for [`local`](WebhookServer::local).
    pub fn service(
        &self,
        selector: std::collections::BTreeMap<String, String>,
    ) -> Option<k8s_openapi::api::core::v1::Service> {
        use k8s_openapi::{
            api::core::v1::{Service, ServicePort, ServiceSpec},
            apimachinery::pkg::util::intstr::IntOrString,
        };
        let EndpointConfig::Service {
            namespace,
            name,
            port,
        } = &self.endpoint
        else {
            return None;
        };
        Some(Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "kuberator".to_owned(),
                    )]
                    .into(),
                ),
                ..kube::api::ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    name: Some("webhook".to_owned()),
                    port: i32::from(*port),
                    target_port: Some(IntOrString::Int(i32::from(self.bind.port()))),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        })
    }

    /// The Service's namespace ([`in_cluster`](WebhookServer::in_cluster)); `None` for
    /// [`local`](WebhookServer::local).
    pub(crate) fn service_namespace(&self) -> Option<&str> {
        match &self.endpoint {
            EndpointConfig::Service { namespace, .. } => Some(namespace.as_str()),
            EndpointConfig::Local { .. } => None,
        }
    }

    /// The port the server listens on.
    pub(crate) fn bind_port(&self) -> u16 {
        self.bind.port()
    }

    /// How the API server reaches an [`in_cluster`](WebhookServer::in_cluster) server; `None`
    /// for [`local`](WebhookServer::local) (its URL's port is known once bound).
    fn service_endpoint(&self) -> Option<Endpoint> {
        match &self.endpoint {
            EndpointConfig::Service {
                namespace,
                name,
                port,
            } => Some(Endpoint::Service {
                namespace: namespace.clone(),
                name: name.clone(),
                port: *port,
            }),
            EndpointConfig::Local { .. } => None,
        }
    }

    /// The webhook configurations of `registrations` as the install bundle ships them: without
    /// a `caBundle` (the operator writes it at start-up); `None` for
    /// [`local`](WebhookServer::local).
    pub(crate) fn bundle_configurations(
        &self,
        registrations: &[super::admission::Registration],
    ) -> Option<(Option<serde_json::Value>, Option<serde_json::Value>)> {
        let endpoint = self.service_endpoint()?;
        Some(configuration::configurations(
            &self.configuration_name,
            registrations,
            &endpoint,
            None,
        ))
    }

    /// `spec.conversion` of a CRD this server converts, as the install bundle ships it:
    /// `strategy: Webhook` to the Service's `/convert`, without a `caBundle` (the operator
    /// writes it at start-up).
    ///
    /// # Errors
    /// For [`local`](WebhookServer::local): its URL is known only once it has bound its port.
    pub(crate) fn conversion_stanza(&self) -> Result<CustomResourceConversion> {
        let endpoint = self.service_endpoint().ok_or_else(|| {
            anyhow!(
                "a `WebhookServer::local()` is reached on a port it binds at start-up: install \
                 `Conversion::crd()` and let the server point the CRD at itself, or use \
                 `WebhookServer::in_cluster(namespace, service)`"
            )
        })?;
        serde_json::from_value(configuration::conversion_stanza(&endpoint, None))
            .context("the conversion stanza of the CRD")
            .map_err(Into::into)
    }

    /// Binds, loads the certificate, serves `handlers`, writes the webhook configurations, and
    /// keeps the certificate current until [`Running::stop`].
    pub(crate) async fn start(
        self,
        client: &Client,
        handlers: Vec<Arc<dyn Admit>>,
        conversions: Vec<Arc<Converter>>,
        metrics: Option<&Metrics>,
    ) -> Result<Running> {
        for converter in &conversions {
            converter.check()?;
        }
        let mut routes: BTreeMap<String, Arc<dyn Admit>> = BTreeMap::new();
        for handler in handlers {
            let path = handler.registration().path.clone();
            if routes.insert(path.clone(), handler).is_some() {
                return Err(anyhow!(
                    "two webhooks of the same type for one kind serve `{path}`: add one \
                     `Webhook` per kind (with both its validator and its defaulter)"
                )
                .into());
            }
        }
        let listener = TcpListener::bind(self.bind)
            .await
            .with_context(|| format!("binding the webhook server to {}", self.bind))?;
        let local_addr = listener.local_addr().with_context(|| {
            format!("reading the address of the webhook server on {}", self.bind)
        })?;
        let endpoint = match &self.endpoint {
            EndpointConfig::Local { host } => Endpoint::Url {
                host: host.clone(),
                port: local_addr.port(),
            },
            EndpointConfig::Service {
                namespace,
                name,
                port,
            } => Endpoint::Service {
                namespace: namespace.clone(),
                name: name.clone(),
                port: *port,
            },
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let serving = Arc::new(ServingCert::default());
        let paths = routes
            .keys()
            .map(String::as_str)
            .chain((!conversions.is_empty()).then_some(CONVERT_PATH));
        let webhook_metrics = WebhookMetrics::new(metrics, paths);
        let keeper = CertKeeper {
            client: client.clone(),
            source: self.certificates.source.clone(),
            names: self.names.clone(),
            configuration_name: self.configuration_name.clone(),
            registrations: routes.values().map(|h| h.registration().clone()).collect(),
            crds: conversions
                .iter()
                .map(|c| c.crd_name().to_owned())
                .collect(),
            endpoint,
            provider: provider.clone(),
            serving: serving.clone(),
            metrics: webhook_metrics.clone(),
        };
        let current = keeper.load().await?;
        keeper.install(&current, true)?;

        let mut tls = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions of the webhook server")?
            .with_no_client_auth()
            .with_cert_resolver(serving);
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let state = Arc::new(State {
            routes,
            conversions,
            metrics: webhook_metrics,
            body_limit: self.body_limit,
        });
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            TlsAcceptor::from(Arc::new(tls)),
            state,
            stopped.clone(),
        ));
        tracing::info!(addr = %local_addr, "serving admission webhooks");
        // Serving first, then the configurations: the API server never calls a port that is
        // not answering yet.
        keeper.publish(&current).await?;
        let certificates = tokio::spawn(keeper.run(current, stopped));
        Ok(Running {
            stop,
            tasks: vec![server, certificates],
        })
    }
}

/// A started webhook server.
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets open requests finish (two seconds at most), stops rotating.
    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            if let Err(error) = task.await {
                tracing::warn!(%error, "webhook server task failed");
            }
        }
    }
}

/// Keeps the served certificate and the `caBundle` current.
struct CertKeeper {
    client: Client,
    source: Source,
    names: Vec<String>,
    configuration_name: String,
    registrations: Vec<super::admission::Registration>,
    /// The CRDs whose conversion webhook points here.
    crds: Vec<String>,
    endpoint: Endpoint,
    provider: Arc<CryptoProvider>,
    serving: Arc<ServingCert>,
    metrics: WebhookMetrics,
}

impl CertKeeper {
    async fn load(&self) -> Result<Material> {
        match &self.source {
            Source::Secret {
                namespace,
                name,
                serving_validity,
                ca_validity,
            } => {
                certs::load_or_create(
                    &self.client,
                    namespace,
                    name,
                    &self.names,
                    *serving_validity,
                    *ca_validity,
                )
                .await
            }
            Source::Files { cert, key, ca, .. } => {
                let material = certs::read_files(cert, key, ca.as_deref()).await?;
                // Files replaced one by one (not a Secret volume's atomic swap) can be read
                // half old, half new: such a set is not served (nor its CA published).
                material
                    .check_trusted(&self.endpoint.tls_host(), &self.provider)
                    .with_context(|| {
                        format!(
                            "the webhook certificate files {} and {} do not fit together (yet)",
                            cert.display(),
                            ca.as_deref().unwrap_or(key).display()
                        )
                    })?;
                Ok(material)
            }
        }
    }

    fn install(&self, material: &Material, first: bool) -> Result<()> {
        let key = material.certified_key(&self.provider)?;
        self.serving.install(key);
        self.metrics.certificate(first, material.not_after);
        Ok(())
    }

    /// Writes the webhook configurations with the material's CA.
    async fn publish(&self, material: &Material) -> Result<()> {
        configuration::apply(
            &self.client,
            &self.configuration_name,
            &self.registrations,
            &self.endpoint,
            material.ca_pem.as_deref(),
        )
        .await?;
        for crd in &self.crds {
            configuration::apply_conversion(
                &self.client,
                crd,
                &self.endpoint,
                material.ca_pem.as_deref(),
            )
            .await?;
        }
        Ok(())
    }

    /// Until stopped: renews (Secret) or re-reads (files) the certificate; a new CA is put into
    /// the `caBundle` before a certificate it signed is served.
    async fn run(self, mut current: Material, mut stopped: watch::Receiver<bool>) {
        let mut wait = self.wait(&current);
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = until_stopped(&mut stopped) => return,
            }
            wait = match self.refresh(&current).await {
                Ok(Some(next)) => {
                    current = next;
                    self.wait(&current)
                }
                Ok(None) => self.wait(&current),
                Err(error) => {
                    tracing::warn!(%error, "cannot refresh the webhook certificate; retrying");
                    match &self.source {
                        Source::Files { interval, .. } => (*interval).min(RETRY),
                        Source::Secret { .. } => RETRY,
                    }
                }
            };
        }
    }

    async fn refresh(&self, current: &Material) -> Result<Option<Material>> {
        let next = self.load().await?;
        if next == *current {
            return Ok(None);
        }
        // A new CA: trusted next to the old one first (the API server may still open
        // connections to the old certificate), served once the API server had time to read
        // the bundle, then trusted alone.
        let transition = match (&current.ca_pem, &next.ca_pem) {
            (Some(old), Some(new)) if old != new => {
                let both = Material {
                    ca_pem: Some(format!("{}\n{}", new.trim_end(), old.trim_end())),
                    ..next.clone()
                };
                self.publish(&both).await?;
                tokio::time::sleep(CA_SETTLE).await;
                true
            }
            (None, Some(_)) => {
                self.publish(&next).await?;
                false
            }
            _ => false,
        };
        self.install(&next, false)?;
        if transition {
            self.publish(&next).await?;
        }
        tracing::info!(
            not_after = next.not_after,
            "serving a new webhook certificate"
        );
        Ok(Some(next))
    }

    fn wait(&self, current: &Material) -> Duration {
        match &self.source {
            Source::Files { interval, .. } => *interval,
            Source::Secret { .. } => {
                let left = current.renew_at() - certs::now_unix();
                // Another replica may renew first: look at the Secret at least every minute.
                Duration::from_secs(u64::try_from(left).unwrap_or(0).clamp(1, 60))
            }
        }
    }
}

struct State {
    routes: BTreeMap<String, Arc<dyn Admit>>,
    conversions: Vec<Arc<Converter>>,
    metrics: WebhookMetrics,
    body_limit: usize,
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone();
                    let state = state.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "webhook TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "webhook TLS handshake timed out");
                                return;
                            }
                        };
                        let service = service_fn(move |request| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(handle::<Incoming>(&state, request).await) }
                        });
                        let mut builder = http1::Builder::new();
                        builder.timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
                        let connection = builder.serve_connection(TokioIo::new(tls), service);
                        if let Err(error) = watcher.watch(connection).await {
                            tracing::debug!(%peer, %error, "webhook connection failed");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "webhook server cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = until_stopped(&mut stopped) => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("webhook connections still open after {DRAIN:?}; dropping them");
    }
    tracing::info!("webhook server stopped");
}

/// Resolves once the stop flag is set or its sender is gone.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await of the caller.
    let _ = stopped.wait_for(|stop| *stop).await.map(|_| ());
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        format!("{message}\n").into_bytes(),
    )
}

async fn handle<B>(state: &State, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let path = request.uri().path().to_owned();
    let handler = state.routes.get(&path);
    let converts = path == CONVERT_PATH && !state.conversions.is_empty();
    if handler.is_none() && !converts {
        return plain(StatusCode::NOT_FOUND, format!("no webhook at {path}"));
    }
    if request.method() != Method::POST {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "webhooks take POST".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let started = Instant::now();
    let in_flight = state.metrics.start(&path);
    let response = match handler {
        Some(handler) => admit(state, handler.as_ref(), request).await,
        None => convert(state, request).await,
    };
    drop(in_flight);
    state
        .metrics
        .finished(&path, response.status().as_u16(), started.elapsed());
    response
}

/// The request body, or the HTTP error for one too large or unreadable.
async fn read_body<B>(
    state: &State,
    request: Request<B>,
    what: &str,
) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(request.into_body(), state.body_limit)
        .collect()
        .await
    {
        Ok(body) => Ok(body.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => Err(plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} request larger than {} bytes", state.body_limit),
        )),
        Err(error) => Err(plain(
            StatusCode::BAD_REQUEST,
            format!("reading the {what} request: {error}"),
        )),
    }
}

async fn convert<B>(state: &State, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = match read_body(state, request, "conversion").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match conversion::review(&state.conversions, &body) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(message) => plain(StatusCode::BAD_REQUEST, message),
    }
}

async fn admit<B>(state: &State, handler: &dyn Admit, request: Request<B>) -> Response<Full<Bytes>>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let registration = handler.registration();
    let body = match read_body(state, request, "admission").await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview: {error}"),
            );
        }
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(request) => request,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview request: {error}"),
            );
        }
    };
    let what = format!(
        "{} {}{}",
        request.kind.kind,
        request
            .namespace
            .as_deref()
            .map(|ns| format!("{ns}/"))
            .unwrap_or_default(),
        request.name
    );
    let outcome = tokio::time::timeout(
        registration.timeout,
        AssertUnwindSafe(handler.admit(&request)).catch_unwind(),
    )
    .await;
    let response: AdmissionResponse = match outcome {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(denied))) => denied.respond(&request),
        Ok(Err(panic)) => {
            let message = panic_message(panic.as_ref());
            tracing::error!(webhook = %registration.path, object = %what, panic = %message, "admission handler panicked; request denied");
            Denied::new(format!(
                "the {} handler panicked on {what} ({message}); the request is refused",
                if registration.mutating {
                    "defaulting"
                } else {
                    "validating"
                }
            ))
            .respond(&request)
        }
        Err(_) => {
            tracing::warn!(webhook = %registration.path, object = %what, timeout = ?registration.timeout, "admission handler timed out; request denied");
            Denied::new(format!(
                "the {} handler did not answer for {what} within {:?}; the request is refused",
                if registration.mutating {
                    "defaulting"
                } else {
                    "validating"
                },
                registration.timeout
            ))
            .respond(&request)
        }
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(error) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the admission response for {what}: {error}"),
        ),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use k8s_openapi::api::core::v1::ConfigMap;
    use serde_json::json;

    use super::*;
    use crate::webhook::{Validator, Webhook};

    struct Picky;

    #[async_trait]
    impl Validator<ConfigMap> for Picky {
        async fn validate(&self, new: &ConfigMap, _old: Option<&ConfigMap>) -> Result<(), Denied> {
            match new.metadata.name.as_deref() {
                Some("panic") => panic!("picky fell over"),
                Some("hang") => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                }
                Some("bad") => Err(Denied::new("is bad").field("metadata.name")),
                _ => Ok(()),
            }
        }
    }

    fn state(metrics: &Metrics) -> State {
        let handlers = Webhook::<ConfigMap>::new()
            .validator(Picky)
            .timeout(Duration::from_secs(5))
            .into_handlers();
        let routes: BTreeMap<String, Arc<dyn Admit>> = handlers
            .into_iter()
            .map(|h| (h.registration().path.clone(), h))
            .collect();
        State {
            metrics: WebhookMetrics::new(Some(metrics), routes.keys().map(String::as_str)),
            routes,
            conversions: Vec::new(),
            body_limit: 64 * 1024,
        }
    }

    fn review(name: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{name}"),
                "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": name,
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {},
                "object": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}},
            }
        }))
        .unwrap()
    }

    async fn post(state: &State, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
        let request = Request::post(path)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = handle(state, request).await;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, body)
    }

    async fn decision(state: &State, name: &str) -> AdmissionResponse {
        let (status, body) = post(state, "/validate--v1-configmap", review(name)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(&body).unwrap();
        let response = review.response.unwrap();
        assert_eq!(response.uid, format!("uid-{name}"));
        response
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_or_a_hang_denies_only_its_own_request() {
        let metrics = Metrics::new();
        let state = state(&metrics);
        assert!(decision(&state, "fine").await.allowed);

        let denied = decision(&state, "bad").await;
        assert_eq!(
            (denied.allowed, denied.result.message.as_str()),
            (false, "metadata.name: is bad")
        );

        let panicked = decision(&state, "panic").await;
        assert!(!panicked.allowed);
        assert_eq!(
            panicked.result.message,
            "the validating handler panicked on ConfigMap default/panic (picky fell over); the request is refused"
        );
        assert!(decision(&state, "fine").await.allowed);

        let hung = decision(&state, "hang").await;
        assert_eq!(
            hung.result.message,
            "the validating handler did not answer for ConfigMap default/hang within 5s; the request is refused"
        );
        assert!(decision(&state, "fine").await.allowed);

        let text = metrics.encode();
        assert!(
            text.contains(r#"controller_runtime_webhook_requests_total{webhook="/validate--v1-configmap",code="200"} 6"#),
            "{text}"
        );
        assert!(
            text.contains(r#"controller_runtime_webhook_requests_in_flight{webhook="/validate--v1-configmap"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"controller_runtime_webhook_latency_seconds_count{webhook="/validate--v1-configmap"} 6"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn bad_requests_get_http_errors_with_a_reason() {
        let metrics = Metrics::new();
        let state = state(&metrics);
        let (status, body) = post(&state, "/validate--v1-configmap", vec![b' '; 65 * 1024]).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).trim()),
            (413, "admission request larger than 65536 bytes")
        );
        let (status, body) = post(&state, "/validate--v1-configmap", b"{}".to_vec()).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        let (status, body) = post(&state, "/validate--v1-secret", review("x")).await;
        assert_eq!(
            (status, String::from_utf8_lossy(&body).trim()),
            (404, "no webhook at /validate--v1-secret")
        );
        let request = Request::get("/validate--v1-configmap")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = handle(&state, request).await;
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()[header::ALLOW], "POST");
        let text = metrics.encode();
        assert!(
            text.contains(r#"controller_runtime_webhook_requests_total{webhook="/validate--v1-configmap",code="413"} 1"#),
            "{text}"
        );
    }
}
