//! The operator's HTTP endpoint: `/metrics`, `/healthz` and `/readyz` on one address.

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
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
#[derive(Clone)]
pub struct Readiness {
    state: watch::Sender<bool>,
    waiting_for: Arc<std::sync::Mutex<String>>,
    checks: Arc<std::sync::Mutex<Vec<Check>>>,
}

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

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

    /// A receiver that sees every change of the flag (not of the checks).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.state.subscribe()
    }
}

struct Probes {
    metrics: Option<Metrics>,
    readiness: Readiness,
}

/// The HTTP server behind `/metrics`, `/healthz` and `/readyz`, bound and ready to
/// [`serve`](HealthServer::serve).
///
/// - `GET /metrics`: [`Metrics::encode`] as OpenMetrics text (404 without metrics);
/// - `GET /healthz`: `200 ok` while the process runs (liveness);
/// - `GET /readyz`: `200 ok` once [`Readiness`] is set and none of its checks reports a problem,
///   `503` with the reasons otherwise (readiness);
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
    probes: Arc<Probes>,
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
            probes: Arc::new(Probes { metrics, readiness }),
        })
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
        tracing::info!(address = %local_addr, "serving /metrics, /healthz and /readyz");
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let probes = probes.clone();
                        let service = service_fn(move |request| {
                            let probes = probes.clone();
                            async move { Ok::<_, Infallible>(respond(&probes, &request)) }
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

fn respond(probes: &Probes, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => match &probes.metrics {
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
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let flag = *probes.readiness.state.borrow();
            let problems = probes.readiness.problems();
            if flag && problems.is_empty() {
                text(StatusCode::OK, "ok\n")
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
