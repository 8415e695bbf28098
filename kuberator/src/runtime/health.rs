//! The operator's HTTP endpoint: `/metrics`, `/healthz` and `/readyz` on one address, at paths
//! of your choice, with extra routes of your own ([`HealthRoutes`]).

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::future::BoxFuture;

use anyhow::Context as _;
use http_body_util::Full;
pub use hyper::{Request, Response, StatusCode};

use hyper::{
    Method,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use tokio::{net::TcpListener, sync::watch};

use super::metrics::{CONTENT_TYPE, Metrics};
use crate::error::Result;

/// How long open connections may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether the operator is ready, as `/readyz` reports it: `false` until the initial list of
/// every watched scope has synced, then `true` (on a leader and on a warm standby alike).
/// Cheap to clone; all clones share one flag.
///
/// ```
/// let readiness = kuberator::runtime::Readiness::new();
/// assert!(!readiness.is_ready());
/// readiness.set_ready(true);
/// assert!(readiness.is_ready());
/// ```
///
/// Beside the flag, `/readyz` consults the registered [checks](Readiness::add_check): while one
/// reports a problem (e.g. the watches cannot reach the API server, see
/// [`RequestGuard::unready_after`](super::RequestGuard::unready_after)), the operator is not
/// ready and `/readyz` names the problem. `/healthz` (liveness) never looks at them: an API
/// server outage must not get the pod restarted, only taken out of service.
///
/// ```
/// let readiness = kuberator::runtime::Readiness::new();
/// readiness.set_ready(true);
/// readiness.add_check(|| Some("the API server is unreachable".to_owned()));
/// assert!(!readiness.is_ready());
/// assert_eq!(readiness.problems(), ["the API server is unreachable"]);
/// ```
///
/// `/readyz?verbose` adds the [details](Readiness::add_detail), one per line, to either answer
/// (e.g. a shard member's view of its group): what an operator knows that is no problem.
///
/// ```
/// let readiness = kuberator::runtime::Readiness::new();
/// readiness.add_detail(|| "shard websites: members [a, b]".to_owned());
/// assert_eq!(readiness.details(), ["shard websites: members [a, b]"]);
/// ```
#[derive(Clone)]
pub struct Readiness {
    state: watch::Sender<bool>,
    waiting_for: Arc<std::sync::Mutex<String>>,
    checks: Arc<std::sync::Mutex<Vec<Check>>>,
    details: Arc<std::sync::Mutex<Vec<Detail>>>,
}

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;
type Detail = Arc<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &*self.state.borrow())
            .field("problems", &self.problems())
            .finish_non_exhaustive()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Readiness {
            state: watch::Sender::new(false),
            waiting_for: Arc::default(),
            checks: Arc::default(),
            details: Arc::default(),
        }
    }

    /// Marks the operator ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.state.send_replace(ready);
    }

    /// Says what readiness waits for (e.g. the controllers whose watches have not listed);
    /// `/readyz` answers `not ready: <what>` while not ready.
    pub fn set_waiting_for(&self, what: impl Into<String>) {
        *self
            .waiting_for
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = what.into();
    }

    /// What readiness waits for, as set with [`set_waiting_for`](Self::set_waiting_for).
    pub fn waiting_for(&self) -> String {
        self.waiting_for
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the operator is ready: the flag is set and no [check](Self::add_check) reports a
    /// problem.
    pub fn is_ready(&self) -> bool {
        *self.state.borrow() && self.problems().is_empty()
    }

    /// Adds a check `/readyz` runs on every probe: `Some(problem)` makes the operator not ready
    /// and is shown in the answer, `None` is fine. Keep it cheap (no I/O).
    pub fn add_check(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::new(check));
    }

    /// What the [checks](Self::add_check) report right now.
    pub fn problems(&self) -> Vec<String> {
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        checks.iter().filter_map(|check| check()).collect()
    }

    /// Adds a detail `/readyz?verbose` shows on a line of its own, ready or not (never
    /// without `verbose`: probes read only the status). Keep it cheap (no I/O).
    pub fn add_detail(&self, detail: impl Fn() -> String + Send + Sync + 'static) {
        self.details
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::new(detail));
    }

    /// What the [details](Self::add_detail) say right now.
    pub fn details(&self) -> Vec<String> {
        let details = self
            .details
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        details.iter().map(|detail| detail()).collect()
    }

    /// A receiver that sees every change of the flag (not of the checks).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

struct Probes {
    metrics: Option<Metrics>,
    readiness: Readiness,
    routes: HealthRoutes,
}

/// A handler of an extra route: the request's head in, the response out.
type RouteHandler = Arc<dyn Fn(Request<()>) -> BoxFuture<'static, Response<String>> + Send + Sync>;

/// The paths the [`HealthServer`] answers on: liveness (`/healthz`), readiness (`/readyz`) and
/// metrics (`/metrics`) by default, each movable, plus extra routes of your own — e.g.
/// kube-rs's controller-rs serves `/health`, `/metrics` and a JSON page on `/`.
///
/// Set it with [`Operator::health_routes`](crate::Operator::health_routes) (or
/// [`Manager::health_routes`](super::Manager::health_routes)); the macro writes it for
/// `health(addr = …, liveness = …, readiness = …, metrics = …, route("/", handler))`.
///
/// ```
/// use kuberator::runtime::{HealthRoutes, health::{Request, Response}};
///
/// async fn index(_request: Request<()>) -> Response<String> {
///     Response::new(r#"{"operator":"documents"}"#.to_owned())
/// }
///
/// let routes = HealthRoutes::new()
///     .liveness("/health")
///     .readiness("/ready")
///     .route("/", index);
/// assert_eq!(routes.liveness_path(), "/health");
/// assert_eq!(routes.metrics_path(), "/metrics"); // the default
/// assert_eq!(routes.route_paths().collect::<Vec<_>>(), ["/"]);
/// assert!(routes.check().is_ok());
///
/// // Paths are checked when the server binds (and by the macro at compile time):
/// let error = HealthRoutes::new().liveness("health").check().unwrap_err();
/// assert_eq!(error.to_string(), "health path `health` must start with `/`, like `/health`");
/// ```
///
/// Extra routes answer `GET` and `HEAD` like the probes; a handler gets the request's head
/// (method, URI with its query, headers) and returns the whole response.
#[derive(Clone)]
pub struct HealthRoutes {
    liveness: String,
    readiness: String,
    metrics: String,
    routes: Vec<(String, RouteHandler)>,
}

impl std::fmt::Debug for HealthRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRoutes")
            .field("liveness", &self.liveness)
            .field("readiness", &self.readiness)
            .field("metrics", &self.metrics)
            .field("routes", &self.route_paths().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for HealthRoutes {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthRoutes {
    /// `/healthz`, `/readyz` and `/metrics`, no extra routes.
    pub fn new() -> Self {
        HealthRoutes {
            liveness: "/healthz".to_owned(),
            readiness: "/readyz".to_owned(),
            metrics: "/metrics".to_owned(),
            routes: Vec::new(),
        }
    }

    /// Serves liveness (`200 ok` while the process runs) on `path` instead of `/healthz`.
    #[must_use]
    pub fn liveness(mut self, path: impl Into<String>) -> Self {
        self.liveness = path.into();
        self
    }

    /// Serves readiness (see [`Readiness`]) on `path` instead of `/readyz`.
    #[must_use]
    pub fn readiness(mut self, path: impl Into<String>) -> Self {
        self.readiness = path.into();
        self
    }

    /// Serves the metrics on `path` instead of `/metrics`.
    #[must_use]
    pub fn metrics(mut self, path: impl Into<String>) -> Self {
        self.metrics = path.into();
        self
    }

    /// Answers `GET`/`HEAD` on `path` with `handler`'s response.
    #[must_use]
    pub fn route<F, Fut>(mut self, path: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<String>> + Send + 'static,
    {
        let handler: RouteHandler = Arc::new(move |request| Box::pin(handler(request)));
        self.routes.push((path.into(), handler));
        self
    }

    /// The liveness path.
    pub fn liveness_path(&self) -> &str {
        &self.liveness
    }

    /// The readiness path.
    pub fn readiness_path(&self) -> &str {
        &self.readiness
    }

    /// The metrics path.
    pub fn metrics_path(&self) -> &str {
        &self.metrics
    }

    /// The paths of the extra routes, in the order they were added.
    pub fn route_paths(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|(path, _)| path.as_str())
    }

    /// Checks every path: it starts with `/`, has no query, fragment or whitespace, and no two
    /// endpoints share one.
    ///
    /// # Errors
    /// [`Error::Anyhow`](crate::Error::Anyhow) naming the first bad path and how to fix it.
    pub fn check(&self) -> Result<()> {
        let mut seen: Vec<&str> = Vec::new();
        let fixed = [
            self.liveness.as_str(),
            self.readiness.as_str(),
            self.metrics.as_str(),
        ];
        for path in fixed.into_iter().chain(self.route_paths()) {
            if let Some(problem) = path_problem(path) {
                return Err(anyhow::anyhow!("{problem}").into());
            }
            if seen.contains(&path) {
                return Err(anyhow::anyhow!(
                    "health path `{path}` is used twice: give each endpoint its own path"
                )
                .into());
            }
            seen.push(path);
        }
        Ok(())
    }

    /// The endpoints for the start-up log line, e.g. `/metrics, /healthz, /readyz`.
    fn describe(&self) -> String {
        let fixed = [
            self.metrics.as_str(),
            self.liveness.as_str(),
            self.readiness.as_str(),
        ];
        fixed
            .into_iter()
            .chain(self.route_paths())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What is wrong with a health path, in the words of the error (the macro checks the same rule
/// at compile time).
fn path_problem(path: &str) -> Option<String> {
    let suggestion = format!("/{}", path.trim_start_matches('/').trim());
    if !path.starts_with('/') {
        Some(format!(
            "health path `{path}` must start with `/`, like `{suggestion}`"
        ))
    } else if path.contains(['?', '#']) || path.chars().any(char::is_whitespace) {
        Some(format!(
            "health path `{path}` must be a plain path without query, fragment or spaces, like `/health`"
        ))
    } else {
        None
    }
}

/// The HTTP server behind `/metrics`, `/healthz` and `/readyz`, bound and ready to
/// [`serve`](HealthServer::serve).
///
/// - `GET /metrics`: [`Metrics::encode`] as OpenMetrics text (404 without metrics);
/// - `GET /healthz`: `200 ok` while the process runs (liveness);
/// - `GET /readyz`: `200 ok` once [`Readiness`] is set and none of its checks reports a problem,
///   `503` with the reasons otherwise (readiness);
/// - other paths for these three and extra routes with [`routes`](HealthServer::routes);
///
/// `HEAD` works on each; anything else is `404` or `405`. Plain HTTP/1.1, meant for the kubelet
/// and Prometheus inside the cluster.
///
/// ```no_run
/// use kuberator::runtime::{HealthServer, Metrics, Readiness};
///
/// # async fn doc() -> kuberator::Result<()> {
/// let metrics = Metrics::new();
/// let readiness = Readiness::new();
/// let server = HealthServer::bind(([0, 0, 0, 0], 8080).into(), Some(metrics.clone()), readiness.clone()).await?;
/// println!("probes on {}", server.local_addr());
/// tokio::spawn(server.serve(kuberator::shutdown_signal()));
/// // … after the initial sync:
/// readiness.set_ready(true);
/// # Ok(())
/// # }
/// ```
pub struct HealthServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    probes: Probes,
}

impl std::fmt::Debug for HealthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl HealthServer {
    /// Binds `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// [`Error::Anyhow`](crate::Error::Anyhow) naming the address when it cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Option<Metrics>,
        readiness: Readiness,
    ) -> Result<HealthServer> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the health server to {addr}"))?;
        let local_addr = listener
            .local_addr()
            .with_context(|| format!("reading the address of the health server on {addr}"))?;
        Ok(HealthServer {
            listener,
            local_addr,
            probes: Probes {
                metrics,
                readiness,
                routes: HealthRoutes::new(),
            },
        })
    }

    /// Serves on `routes`' paths (and its extra routes) instead of the defaults.
    ///
    /// # Errors
    /// A bad path, as [`HealthRoutes::check`] says.
    pub fn routes(mut self, routes: HealthRoutes) -> Result<HealthServer> {
        routes.check()?;
        self.probes.routes = routes;
        Ok(self)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives open connections a
    /// second to finish.
    ///
    /// # Errors
    /// None today: failed connections are logged and the server keeps going.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let HealthServer {
            listener,
            local_addr,
            probes,
        } = self;
        let probes = Arc::new(probes);
        tracing::info!(address = %local_addr, paths = %probes.routes.describe(), "health server listening");
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let probes = probes.clone();
                        let service = service_fn(move |request| {
                            let probes = probes.clone();
                            async move { Ok::<_, Infallible>(respond(&probes, request).await) }
                        });
                        let connection = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service);
                        let connection = graceful.watch(connection);
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%peer, %error, "health connection failed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "health server cannot accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::debug!("health connections still open after {DRAIN:?}; dropping them");
        }
        tracing::info!(address = %local_addr, "health server stopped");
        Ok(())
    }
}

/// Binds `addr` and serves `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves; see
/// [`HealthServer`].
///
/// # Errors
/// As [`HealthServer::bind`].
pub async fn serve(
    addr: SocketAddr,
    metrics: Option<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    HealthServer::bind(addr, metrics, readiness)
        .await?
        .serve(shutdown)
        .await
}

async fn respond(probes: &Probes, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let routes = &probes.routes;
    let path = request.uri().path();
    if let Some((_, handler)) = routes.routes.iter().find(|(route, _)| route == path) {
        let (head, _body) = request.into_parts();
        let (head, body) = handler(Request::from_parts(head, ())).await.into_parts();
        return Response::from_parts(head, Full::new(Bytes::from(body)));
    }
    match path {
        path if path == routes.metrics => match &probes.metrics {
            Some(metrics) => {
                let mut response = Response::new(Full::new(Bytes::from(metrics.encode())));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(CONTENT_TYPE),
                );
                response
            }
            None => text(StatusCode::NOT_FOUND, "metrics are off\n"),
        },
        path if path == routes.liveness => text(StatusCode::OK, "ok\n"),
        path if path == routes.readiness => {
            let flag = *probes.readiness.state.borrow();
            let problems = probes.readiness.problems();
            let verbose = request.uri().query().is_some_and(|query| {
                query
                    .split('&')
                    .any(|pair| pair.split('=').next() == Some("verbose"))
            });
            let details = if verbose {
                probes.readiness.details()
            } else {
                Vec::new()
            };
            if flag && problems.is_empty() && details.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else if flag && problems.is_empty() {
                let mut body = "ok\n".to_owned();
                for detail in details {
                    body.push_str(&detail);
                    body.push('\n');
                }
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            } else {
                let waiting_for = probes.readiness.waiting_for();
                let mut body = if flag {
                    String::new()
                } else if waiting_for.is_empty() {
                    "not ready: initial sync in progress\n".to_owned()
                } else {
                    format!("not ready: {waiting_for}\n")
                };
                for problem in problems {
                    body.push_str("not ready: ");
                    body.push_str(&problem);
                    body.push('\n');
                }
                for detail in details {
                    body.push_str(&detail);
                    body.push('\n');
                }
                let mut response = Response::new(Full::new(Bytes::from(body)));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use kube::runtime::controller::Action;
    use std::io::{Read, Write};

    use tokio::{net::TcpStream, sync::oneshot};

    use super::*;

    /// A raw HTTP/1.1 request; returns the status code, the head and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let raw = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut raw = String::new();
            stream.read_to_string(&mut raw).unwrap();
            raw
        })
        .await
        .unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    async fn start(
        metrics: Option<Metrics>,
    ) -> (
        SocketAddr,
        Readiness,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<()>>,
    ) {
        let readiness = Readiness::new();
        let server = HealthServer::bind(([127, 0, 0, 1], 0).into(), metrics, readiness.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        (addr, readiness, stop, task)
    }

    #[tokio::test]
    async fn probes_follow_readiness_and_metrics_are_served() {
        let metrics = Metrics::new();
        let websites = metrics.controller("websites");
        websites.reconcile_finished(&Ok(Action::await_change()), Duration::from_millis(5));
        let (addr, readiness, stop, task) = start(Some(metrics)).await;

        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        let (status, _, body) = request(addr, "GET", "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: initial sync in progress\n")
        );

        readiness.set_ready(true);
        let (status, _, body) = request(addr, "GET", "/readyz?verbose").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        // Details: on `?verbose` only, ready or not.
        readiness.add_detail(|| "shard websites: members [a, b]".to_owned());
        let (status, _, body) = request(addr, "GET", "/readyz?verbose").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok\nshard websites: members [a, b]\n")
        );
        let (status, _, body) = request(addr, "GET", "/readyz?x=1&verbose=1").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "ok\nshard websites: members [a, b]\n")
        );
        assert_eq!(request(addr, "GET", "/readyz").await.2, "ok\n");
        readiness.set_ready(false);
        let (status, _, body) = request(addr, "GET", "/readyz?verbose").await;
        assert_eq!(
            (status, body.as_str()),
            (
                503,
                "not ready: initial sync in progress\nshard websites: members [a, b]\n"
            )
        );
        readiness.set_ready(true);

        let (status, head, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.contains(
                r#"controller_runtime_reconcile_total{controller="websites",result="success"} 1"#
            ),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"));

        let (status, _, body) = request(addr, "HEAD", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, ""));
        assert_eq!(request(addr, "GET", "/nope").await.0, 404);
        let (status, head, _) = request(addr, "POST", "/healthz").await;
        assert_eq!(status, 405);
        assert!(head.to_ascii_lowercase().contains("allow: get, head"));

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the port is closed after shutdown"
        );
    }

    #[tokio::test]
    async fn a_failing_check_makes_readyz_503_with_its_reason_until_it_clears() {
        let (addr, readiness, stop, task) = start(None).await;
        readiness.set_ready(true);
        let problem = Arc::new(std::sync::Mutex::new(Some("the watch of /x is failing")));
        let seen = problem.clone();
        readiness.add_check(move || seen.lock().unwrap().map(str::to_owned));
        let (status, _, body) = request(addr, "GET", "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: the watch of /x is failing\n")
        );
        assert!(!readiness.is_ready());
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200, "liveness");
        *problem.lock().unwrap() = None;
        assert_eq!(request(addr, "GET", "/readyz").await.0, 200);
        assert!(readiness.is_ready());
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn paths_move_and_extra_routes_answer_with_their_handler() {
        let readiness = Readiness::new();
        let routes = HealthRoutes::new()
            .liveness("/health")
            .readiness("/health/ready")
            .metrics("/prom")
            .route("/", |request: Request<()>| async move {
                let mut response = Response::new(format!("index {}", request.method()));
                *response.status_mut() = StatusCode::ACCEPTED;
                response
            });
        let server = HealthServer::bind(
            ([127, 0, 0, 1], 0).into(),
            Some(Metrics::new()),
            readiness.clone(),
        )
        .await
        .unwrap()
        .routes(routes)
        .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        readiness.set_ready(true);
        assert_eq!(request(addr, "GET", "/health").await.0, 200);
        assert_eq!(request(addr, "GET", "/health/ready").await.0, 200);
        let (status, _, body) = request(addr, "GET", "/prom").await;
        assert_eq!(status, 200);
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (status, _, body) = request(addr, "GET", "/?q=1").await;
        assert_eq!((status, body.as_str()), (202, "index GET"));
        let (status, _, body) = request(addr, "HEAD", "/").await;
        assert_eq!((status, body.as_str()), (202, ""));
        for moved in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(request(addr, "GET", moved).await.0, 404, "{moved}");
        }
        assert_eq!(request(addr, "POST", "/").await.0, 405);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn bad_paths_are_refused_with_the_fix() {
        let check = |routes: HealthRoutes| routes.check().unwrap_err().to_string();
        assert_eq!(
            check(HealthRoutes::new().readiness("ready")),
            "health path `ready` must start with `/`, like `/ready`"
        );
        assert_eq!(
            check(HealthRoutes::new().metrics("/metrics?x")),
            "health path `/metrics?x` must be a plain path without query, fragment or spaces, like `/health`"
        );
        assert_eq!(
            check(HealthRoutes::new().liveness("/readyz")),
            "health path `/readyz` is used twice: give each endpoint its own path"
        );
        let server = HealthServer::bind(([127, 0, 0, 1], 0).into(), None, Readiness::new())
            .await
            .unwrap();
        assert!(
            server
                .routes(
                    HealthRoutes::new()
                        .route("/healthz", |_| async { Response::new(String::new()) })
                )
                .is_err()
        );
    }

    #[tokio::test]
    async fn metrics_can_be_off() {
        let (addr, _readiness, stop, task) = start(None).await;
        assert_eq!(request(addr, "GET", "/metrics").await.0, 404);
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn binding_a_taken_port_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let error = HealthServer::bind(addr, None, Readiness::new())
            .await
            .unwrap_err();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }

    #[tokio::test]
    async fn readiness_clones_share_one_flag() {
        let readiness = Readiness::default();
        let mut seen = readiness.subscribe();
        readiness.clone().set_ready(true);
        seen.changed().await.unwrap();
        assert!(*seen.borrow());
        assert!(readiness.is_ready());
    }
}
