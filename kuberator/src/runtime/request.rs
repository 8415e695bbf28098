//! The operator's requests: a deadline on every request, no write from a replica that is not
//! sure it leads, and throttling (HTTP 429) counted, logged and retried at the server's pace.
//!
//! [`RequestGuard::client`] wraps a [`Client`]; every request through the wrapped client
//!
//! 1. is refused (never sent) when it writes (`POST`, `PUT`, `PATCH`, `DELETE`) and the
//!    operator's [`Leadership`] is past its renew deadline without a successful renewal
//!    (Lease and access-review requests are exempt: the election itself must keep working);
//! 2. gets a deadline (default [`DEFAULT_REQUEST_TIMEOUT`]): a request the server does not answer
//!    in time fails with [`RequestError::Timeout`] instead of blocking its worker forever. For a
//!    watch the deadline covers the response headers, not the stream;
//! 3. on `429 Too Many Requests` is counted (`kuberator_client_throttled_total`), logged at most
//!    once per [`THROTTLE_LOG_INTERVAL`], and retried after the server's `Retry-After` (capped
//!    at [`MAX_RETRY_AFTER`]) while its deadline allows; then the 429 is returned as an error
//!    and the reconcile backs off.
//!
//! A client from [`RequestGuard::watch_client`] (what the operator's watches use) also records,
//! per watched path, since when its requests fail (no connection, no answer in time, 5xx or
//! 429), and which of its requests are still waiting for an answer: [`RequestGuard::unreachable`]
//! turns that into the operator's `/readyz` answer once a watch has failed, or a request has
//! waited, for longer than [`RequestGuard::unready_after`]. A paused (SIGSTOPped) API server
//! fails nothing, its open watches just go quiet; the operator's heartbeat, a `GET /version`
//! every `unready_after / 2` (at most every 5 s) through the same client, is the request that
//! waits.
//!
//! kube-rs clients built with `Config::default_retry = true` (the default) retry 429s
//! themselves, silently, for up to 15 tries with a delay doubling from 5 ms to 1000 s; the
//! deadline bounds that loop. Build the operator's client with `default_retry = false` (see
//! [`client_without_retry`]) to see every 429 in the metric.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

use super::{leader::Leadership, metrics::Metrics};
use crate::error::{Error, Result};

/// How long a request may take until its response headers arrive (30 s; kube-apiserver's own
/// limit for non-watch requests is 60 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one throttling log line per interval (10 s); the metric counts every 429.
pub const THROTTLE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The longest wait honoured from a `Retry-After` header (5 s).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long the watches may fail before `/readyz` says the operator is not ready (10 s).
pub const DEFAULT_UNREADY_AFTER: Duration = Duration::from_secs(10);
/// The first wait after a 429 without `Retry-After`; doubles up to [`MAX_RETRY_AFTER`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
/// How long a watch of a path whose requests are failing may wait for its response headers
/// (1 s; after three such timeouts in a row it doubles, up to the request timeout; an answer
/// resets it). A restarting kube-apiserver accepts connections before it serves custom
/// resources and holds a watch sent then for seconds past its own `/readyz` (measured on
/// 1.36: a custom-resource watch sent 0.25 s into the restart was answered at 7.45 s, 4.8 s
/// after `/readyz` said ok; one sent after that in 0.3 s). Without this deadline the watch,
/// and every reconcile behind it, waits for the held request.
pub(crate) const RECOVERING_WATCH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the wrapped client refused or abandoned a request; found as the source of a
/// `kube::Error::Service`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// A write from a replica whose leadership is past its renew deadline.
    #[error("{method} {path} refused: this replica is not the leader (renew deadline passed)")]
    NotLeader {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// No response within the request deadline.
    #[error("{method} {path}: no response within {after:?}")]
    Timeout {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
        /// The deadline.
        after: Duration,
    },
}

/// The request policy shared by an operator, its context and every client it wrapped: the
/// leadership that gates writes, the request deadline, the throttling counter. Cheap to clone.
///
/// ```no_run
/// use kuberator::runtime::RequestGuard;
/// # async fn doc(client: kube::Client) -> kuberator::Result<()> {
/// let guard = RequestGuard::new();
/// let client = guard.client(client); // writes refused while not leading, 30 s deadline
/// guard.check()?; // what a handler calls before a side effect of its own
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct RequestGuard {
    inner: Arc<Inner>,
}

struct Inner {
    /// Every election writes are gated on (leader election, shard membership).
    leadership: Mutex<Vec<Arc<Leadership>>>,
    /// Milliseconds; 0 = no deadline.
    timeout_ms: AtomicU64,
    throttled: Counter,
    timeouts: Counter,
    refused: Counter,
    last_throttle_log: Mutex<Option<Instant>>,
    /// Milliseconds a watch may fail before the operator is not ready.
    unready_after_ms: AtomicU64,
    /// The watched paths whose last request failed: since when, and the last error.
    failing: Mutex<std::collections::BTreeMap<String, (Instant, String)>>,
    /// The tracked requests without an answer yet: method and path, and since when.
    waiting: Mutex<std::collections::BTreeMap<u64, (String, Instant)>>,
    next_request: AtomicU64,
    /// Per failing path: its watches that ran out of [`RECOVERING_WATCH_TIMEOUT`] in a row.
    recovering: Mutex<std::collections::BTreeMap<String, u32>>,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            leadership: Mutex::new(Vec::new()),
            timeout_ms: AtomicU64::new(millis(DEFAULT_REQUEST_TIMEOUT)),
            throttled: Counter::default(),
            timeouts: Counter::default(),
            refused: Counter::default(),
            last_throttle_log: Mutex::new(None),
            unready_after_ms: AtomicU64::new(millis(DEFAULT_UNREADY_AFTER)),
            failing: Mutex::new(std::collections::BTreeMap::new()),
            waiting: Mutex::new(std::collections::BTreeMap::new()),
            next_request: AtomicU64::new(0),
            recovering: Mutex::new(std::collections::BTreeMap::new()),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl std::fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestGuard")
            .field("timeout", &self.timeout())
            .field("allows_writes", &self.allows_writes())
            .finish_non_exhaustive()
    }
}

impl RequestGuard {
    /// A guard with no leadership (writes always allowed) and the default deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// Gates writes on `leadership` from now on (as well as on any election attached before:
    /// the leader election and a shard membership both must be valid).
    pub fn attach(&self, leadership: Arc<Leadership>) {
        let mut attached = self
            .inner
            .leadership
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !attached.iter().any(|known| Arc::ptr_eq(known, &leadership)) {
            attached.push(leadership);
        }
    }

    /// Sets the request deadline (`None`: none).
    pub fn set_timeout(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| millis(t).max(1));
        self.inner.timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The request deadline.
    pub fn timeout(&self) -> Option<Duration> {
        match self.inner.timeout_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Registers `kuberator_client_throttled_total`, `kuberator_client_request_timeouts_total`
    /// and `kuberator_client_writes_refused_total` in `metrics` (call once per registry).
    pub fn register_metrics(&self, metrics: &Metrics) {
        let inner = self.inner.clone();
        metrics.register(|registry| {
            registry.register(
                "kuberator_client_throttled",
                "Responses 429 Too Many Requests received by the operator's client",
                inner.throttled.clone(),
            );
            registry.register(
                "kuberator_client_request_timeouts",
                "Requests abandoned at their deadline",
                inner.timeouts.clone(),
            );
            registry.register(
                "kuberator_client_writes_refused",
                "Writes refused because this replica was past its renew deadline",
                inner.refused.clone(),
            );
        });
    }

    /// 429 responses seen so far.
    pub fn throttled(&self) -> u64 {
        self.inner.throttled.get()
    }

    /// Whether this replica may write: no leadership attached, or it leads and is within its
    /// renew deadline.
    pub fn allows_writes(&self) -> bool {
        let leadership = self
            .inner
            .leadership
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        leadership.iter().all(|l| l.is_leader())
    }

    /// `Ok` when this replica may write; for handlers to call before side effects of their own.
    ///
    /// # Errors
    /// [`Error::NotLeader`] past the renew deadline.
    pub fn check(&self) -> Result<()> {
        if self.allows_writes() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// `client` with this guard in front of every request.
    pub fn client(&self, client: Client) -> Client {
        self.wrap(client, false)
    }

    /// Like [`client`](Self::client), for watches and lists: also records, per path, whether
    /// the API server answers them (see [`unreachable`](Self::unreachable)).
    pub fn watch_client(&self, client: Client) -> Client {
        self.wrap(client, true)
    }

    fn wrap(&self, client: Client, track: bool) -> Client {
        let namespace = client.default_namespace().to_owned();
        let guard = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let (guard, client) = (guard.clone(), client.clone());
            async move {
                if !track {
                    return guard.send(&client, request, None).await;
                }
                let path = request.uri().path().to_owned();
                let recovering = guard.recovering_timeout(&path, request.uri().query());
                let started = Instant::now();
                let waiting = guard.wait_for(format!("{} {path}", request.method()), started);
                let result = guard.send(&client, request, recovering).await;
                drop(waiting);
                if recovering.is_some() {
                    guard.track_recovering(&path, &result);
                }
                guard.track(path, started, &result);
                result
            }
        });
        Client::new(service, namespace)
    }

    /// Sets how long the watches may fail (no connection, no answer, 5xx, 429) before
    /// [`unreachable`](Self::unreachable) reports it and `/readyz` answers 503 (default
    /// [`DEFAULT_UNREADY_AFTER`], 10 s).
    pub fn set_unready_after(&self, after: Duration) {
        self.inner
            .unready_after_ms
            .store(millis(after), Ordering::Relaxed);
    }

    /// How long the watches may fail before the operator is not ready.
    pub fn unready_after(&self) -> Duration {
        Duration::from_millis(self.inner.unready_after_ms.load(Ordering::Relaxed))
    }

    /// `Some(problem)` while a request of a [`watch_client`](Self::watch_client) path has been
    /// failing for longer than [`unready_after`](Self::unready_after) without one succeeding:
    /// the watch behind it cannot follow the API server (e.g. the server is down), so the
    /// cache is going stale. `None` once the path answers again.
    pub fn unreachable(&self) -> Option<String> {
        let after = self.unready_after();
        let now = Instant::now();
        let failing = self
            .inner
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut stale: Vec<String> = failing
            .iter()
            .filter(|(_, (since, _))| now.duration_since(*since) >= after)
            .map(|(path, (since, error))| {
                format!(
                    "requests to {path} have been failing for {:.1} s: {error}",
                    now.duration_since(*since).as_secs_f64()
                )
            })
            .collect();
        drop(failing);
        let waiting = self
            .inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // The longest-waiting request is enough to name.
        if let Some((request, since)) = waiting
            .values()
            .filter(|(_, since)| now.duration_since(*since) >= after)
            .min_by_key(|(_, since)| *since)
        {
            stale.push(format!(
                "the API server has not answered {request} for {:.1} s",
                now.duration_since(*since).as_secs_f64()
            ));
        }
        (!stale.is_empty()).then(|| stale.join("; "))
    }

    /// Asks the API server for `/version` through `client` (a [`watch_client`](Self::watch_client))
    /// every `unready_after / 2` (between 250 ms and 5 s), forever: a server that stops
    /// answering (paused) leaves the request waiting, which [`unreachable`](Self::unreachable)
    /// reports once it waited for longer than `unready_after`.
    pub(crate) async fn heartbeat(&self, client: Client) {
        loop {
            let interval = (self.unready_after() / 2)
                .clamp(Duration::from_millis(250), Duration::from_secs(5));
            tokio::time::sleep(interval).await;
            if let Err(error) = client.apiserver_version().await {
                tracing::debug!(%error, "heartbeat: the API server did not answer GET /version");
            }
        }
    }

    /// The header deadline of a watch of `path` while requests to `path` are failing (see
    /// [`RECOVERING_WATCH_TIMEOUT`]); `None` for other requests, or while `path` works.
    fn recovering_timeout(&self, path: &str, query: Option<&str>) -> Option<Duration> {
        let watch = query.is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair == "watch=true" || pair == "watch=1")
        });
        if !watch
            || !self
                .inner
                .failing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains_key(path)
        {
            return None;
        }
        let missed = self
            .inner
            .recovering
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .copied()
            .unwrap_or(0);
        let timeout = RECOVERING_WATCH_TIMEOUT.saturating_mul(1 << missed.saturating_sub(2).min(6));
        Some(self.timeout().map_or(timeout, |limit| timeout.min(limit)))
    }

    /// Counts a recovering watch of `path` that ran out of its deadline; any other outcome
    /// resets the count.
    fn track_recovering(&self, path: &str, result: &Result<Response<Body>, kube::Error>) {
        let mut recovering = self
            .inner
            .recovering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match result {
            Err(error) if matches!(request_error(error), Some(RequestError::Timeout { .. })) => {
                tracing::debug!(%path, "watch not answered while recovering: sent again");
                *recovering.entry(path.to_owned()).or_default() += 1;
            }
            _ => {
                recovering.remove(path);
            }
        }
    }

    /// Counts `request` as waiting for an answer until the returned guard drops.
    fn wait_for(&self, request: String, since: Instant) -> Waiting<'_> {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (request, since));
        Waiting { guard: self, id }
    }

    /// Records the outcome of a watch or list request of `path` sent at `started`.
    fn track(&self, path: String, started: Instant, result: &Result<Response<Body>, kube::Error>) {
        let problem = match result {
            Ok(response) if response.status().is_server_error() => {
                Some(format!("HTTP {}", response.status()))
            }
            Ok(response) if response.status() == StatusCode::TOO_MANY_REQUESTS => {
                Some("HTTP 429 Too Many Requests".to_owned())
            }
            Ok(_) => None,
            Err(error) => Some(crate::status::bounded(error.to_string(), 512)),
        };
        let mut failing = self
            .inner
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match problem {
            None => {
                failing.remove(&path);
            }
            Some(problem) => {
                // Failing since the request was sent (a timeout waited all that time).
                let since = failing
                    .get(&path)
                    .map_or(started, |(since, _)| (*since).min(started));
                failing.insert(path, (since, problem));
            }
        }
    }

    async fn send(
        &self,
        client: &Client,
        request: Request<Body>,
        timeout: Option<Duration>,
    ) -> Result<Response<Body>, kube::Error> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        if is_write(&method) && !exempt(&path) && !self.allows_writes() {
            self.inner.refused.inc();
            tracing::debug!(%method, %path, "write refused: past the renew deadline");
            return Err(service_error(RequestError::NotLeader { method, path }));
        }
        let timeout = timeout.or_else(|| self.timeout());
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut request = request;
        let mut wait = FIRST_RETRY;
        loop {
            let retry = request.body().try_clone().map(|body| {
                let mut copy = Request::new(body);
                *copy.method_mut() = request.method().clone();
                *copy.uri_mut() = request.uri().clone();
                *copy.headers_mut() = request.headers().clone();
                *copy.extensions_mut() = request.extensions().clone();
                copy
            });
            let sent = client.send(request);
            let response = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                    Ok(response) => response?,
                    Err(_) => {
                        self.inner.timeouts.inc();
                        let after = timeout.unwrap_or_default();
                        return Err(service_error(RequestError::Timeout {
                            method,
                            path,
                            after,
                        }));
                    }
                },
                None => sent.await?,
            };
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            self.inner.throttled.inc();
            let delay = retry_after(&response).unwrap_or(wait).min(MAX_RETRY_AFTER);
            wait = (wait * 2).min(MAX_RETRY_AFTER);
            self.log_throttled(&method, &path, delay);
            let fits = deadline.is_none_or(|d| Instant::now() + delay < d);
            match retry {
                Some(next) if fits => {
                    tokio::time::sleep(delay).await;
                    request = next;
                }
                _ => return Ok(response),
            }
        }
    }

    fn log_throttled(&self, method: &Method, path: &str, delay: Duration) {
        let now = Instant::now();
        let mut last = self
            .inner
            .last_throttle_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| now.duration_since(at) >= THROTTLE_LOG_INTERVAL) {
            *last = Some(now);
            tracing::warn!(
                %method,
                %path,
                retry_in = ?delay,
                throttled_total = self.inner.throttled.get(),
                "the API server is throttling this operator (429 Too Many Requests)"
            );
        }
    }
}

/// A tracked request waiting for its answer (also when its future is dropped unanswered).
struct Waiting<'a> {
    guard: &'a RequestGuard,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.guard
            .inner
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

fn service_error(error: RequestError) -> kube::Error {
    kube::Error::Service(Box::new(error))
}

fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The election's own Lease and access reviews are never gated.
fn exempt(path: &str) -> bool {
    path.starts_with("/apis/coordination.k8s.io/")
        || path.starts_with("/apis/authorization.k8s.io/")
}

fn retry_after<B>(response: &Response<B>) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// A client from `config` without kube-rs' built-in silent 429 retry, so that a
/// [`RequestGuard`] sees (counts, logs, retries) every 429 itself.
///
/// # Errors
/// As `kube::Client::try_from`.
pub fn client_without_retry(mut config: kube::Config) -> Result<Client> {
    config.default_retry = false;
    Client::try_from(config).map_err(|e| Error::client("building the client", e))
}

/// The [`RequestError`] inside `error`, if the guard produced it.
pub fn request_error(error: &kube::Error) -> Option<&RequestError> {
    match error {
        kube::Error::Service(inner) => inner.downcast_ref::<RequestError>(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::Response;
    use tower_test::mock;

    fn mock_client() -> (Client, mock::Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    fn get(path: &str) -> Request<Vec<u8>> {
        Request::get(path).body(Vec::new()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_request_fails_at_its_deadline() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        guard.set_timeout(Some(Duration::from_secs(3)));
        let client = guard.client(inner);
        let started = Instant::now();
        let request = tokio::spawn(async move { client.request_text(get("/api/v1/pods")).await });
        // The server takes the request and never answers.
        let (_request, _respond) = handle.next_request().await.unwrap();
        let error = request.await.unwrap().unwrap_err();
        assert!(
            matches!(request_error(&error), Some(RequestError::Timeout { .. })),
            "{error}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(guard.inner.timeouts.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_requests_are_counted_and_retried_after_retry_after() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        let client = guard.client(inner);
        let started = Instant::now();
        let request = tokio::spawn(async move { client.request_text(get("/api/v1/pods")).await });
        for _ in 0..3 {
            let (_, respond) = handle.next_request().await.unwrap();
            respond.send_response(
                Response::builder()
                    .status(429)
                    .header("Retry-After", "1")
                    .body(Body::from(b"{}".to_vec()))
                    .unwrap(),
            );
        }
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(Response::new(Body::from(b"ok".to_vec())));
        assert_eq!(request.await.unwrap().unwrap(), "ok");
        assert_eq!(guard.throttled(), 3);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn sustained_throttling_ends_at_the_deadline_with_the_429() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        guard.set_timeout(Some(Duration::from_secs(10)));
        let client = guard.client(inner);
        let request = tokio::spawn(async move { client.request_text(get("/api/v1/pods")).await });
        let answer = tokio::spawn(async move {
            while let Some((_, respond)) = handle.next_request().await {
                let status = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "reason": "TooManyRequests", "code": 429,
                    "message": "too many requests"});
                respond.send_response(
                    Response::builder()
                        .status(429)
                        .header("Retry-After", "2")
                        .body(Body::from(status.to_string().into_bytes()))
                        .unwrap(),
                );
            }
        });
        let error = request.await.unwrap().unwrap_err();
        assert!(
            matches!(&error, kube::Error::Api(s) if s.code == 429),
            "{error}"
        );
        // 2 s apart within 10 s: sent at 0, 2, 4, 6, 8; the next would land past the deadline.
        assert_eq!(guard.throttled(), 5);
        answer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn failing_watch_requests_make_the_guard_unreachable_after_the_threshold() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        guard.set_unready_after(Duration::from_secs(10));
        let client = guard.watch_client(inner);
        let path = "/apis/x.dev/v1/namespaces/default/things";
        let answer = |code: u16| {
            Response::builder()
                .status(code)
                .body(Body::from(b"{}".to_vec()))
                .unwrap()
        };
        // Two failures 6 s apart: failing since the first, not yet past the threshold.
        for _ in 0..2 {
            let c = client.clone();
            let request = tokio::spawn(async move { c.request_text(get(path)).await });
            let (_, respond) = handle.next_request().await.unwrap();
            respond.send_response(answer(503));
            let _ = request.await.unwrap();
            assert_eq!(guard.unreachable(), None);
            tokio::time::advance(Duration::from_secs(6)).await;
        }
        let problem = guard.unreachable().expect("failing for 12 s");
        assert!(
            problem.contains(path) && problem.contains("503"),
            "{problem}"
        );
        // One answer clears it.
        let c = client.clone();
        let request = tokio::spawn(async move { c.request_text(get(path)).await });
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(answer(200));
        request.await.unwrap().unwrap();
        assert_eq!(guard.unreachable(), None);
        assert!(guard.inner.failing.lock().unwrap().is_empty(), "bounded");
    }

    /// While a path fails, its watches get a short header deadline (a restarting API server
    /// holds a watch it accepted before it was ready): 1 s three times, then doubling; an
    /// answer resets it; a list of the same path and a watch of a working path keep the
    /// request timeout.
    #[tokio::test(start_paused = true)]
    async fn watches_of_a_failing_path_get_a_short_header_deadline() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        guard.set_timeout(Some(Duration::from_secs(30)));
        let client = guard.watch_client(inner);
        let path = "/apis/x.dev/v1/namespaces/default/things";
        let watch = format!("{path}?watch=true&resourceVersion=7&timeoutSeconds=290");
        let unanswered = |uri: String| {
            let c = client.clone();
            async move {
                let started = Instant::now();
                let error = c.request_text(get(&uri)).await.unwrap_err();
                assert!(
                    matches!(request_error(&error), Some(RequestError::Timeout { .. })),
                    "{error}"
                );
                started.elapsed()
            }
        };
        let answer = |code: u16| {
            Response::builder()
                .status(code)
                .body(Body::from(b"{}".to_vec()))
                .unwrap()
        };
        // A working path: a watch waits for the request timeout.
        let (elapsed, _pending) = tokio::join!(unanswered(watch.clone()), handle.next_request());
        assert_eq!(elapsed, Duration::from_secs(30));
        // It failed (that timeout): now its watches are sent again after 1 s, three times,
        // then after 2 s, 4 s.
        let mut deadlines = Vec::new();
        for _ in 0..5 {
            let (elapsed, _pending) =
                tokio::join!(unanswered(watch.clone()), handle.next_request());
            deadlines.push(elapsed.as_secs());
        }
        assert_eq!(deadlines, [1, 1, 1, 2, 4]);
        // A list of the failing path is not a watch: the request timeout.
        let (elapsed, _pending) = tokio::join!(
            unanswered(format!("{path}?limit=500")),
            handle.next_request()
        );
        assert_eq!(elapsed, Duration::from_secs(30));
        // An answer: the path works again, the next watch waits for the request timeout.
        let c = client.clone();
        let answered = tokio::spawn(async move { c.request_text(get(path)).await });
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(answer(200));
        answered.await.unwrap().unwrap();
        let (elapsed, _pending) = tokio::join!(unanswered(watch), handle.next_request());
        assert_eq!(elapsed, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_heartbeat_makes_the_guard_unreachable_after_the_threshold() {
        let (inner, mut handle) = mock_client();
        let guard = RequestGuard::new();
        guard.set_unready_after(Duration::from_secs(10));
        let heartbeat = tokio::spawn({
            let (guard, client) = (guard.clone(), guard.watch_client(inner));
            async move { guard.heartbeat(client).await }
        });
        // The first heartbeat after unready_after / 2; a paused server never answers it.
        let (request, respond) = handle.next_request().await.unwrap();
        assert_eq!(request.uri().path(), "/version");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(guard.unreachable(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        let problem = guard.unreachable().expect("unanswered for 10 s");
        assert!(
            problem.contains("has not answered GET /version for 10.0 s"),
            "{problem}"
        );
        // Resumed, it answers: ready again.
        let version = serde_json::json!({"major": "1", "minor": "36", "gitVersion": "v1.36.3",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "",
            "compiler": "", "platform": ""});
        respond.send_response(Response::new(Body::from(version.to_string().into_bytes())));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(guard.unreachable(), None);
        assert!(guard.inner.waiting.lock().unwrap().is_empty(), "bounded");
        heartbeat.abort();
    }

    #[test]
    fn writes_and_exemptions() {
        assert!(is_write(&Method::PATCH) && is_write(&Method::DELETE) && !is_write(&Method::GET));
        assert!(exempt(
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/x"
        ));
        assert!(!exempt("/api/v1/namespaces/default/configmaps/x"));
        assert!(RequestGuard::new().allows_writes());
    }
}
