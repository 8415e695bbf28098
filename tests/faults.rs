//! The fault suite: the fault operator (`kuberator_tests::Samples`, what a user writes with the
//! macro) under hung handlers, a paused leader, API server and etcd restarts, conflicting
//! writers, SIGTERM under load, a malformed object and API throttling. Every scenario ends with
//! the same check: each object's `status.observedGeneration == metadata.generation` and its
//! child carries its value, every deleted object is gone with its child (no leaked finalizer, no
//! orphan), the operator is alive and `/readyz` is 200. Figures go to stderr
//! (`-- --nocapture`).

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kuberator::IntoOperator;
use kuberator::{
    Operator,
    manifests::rbac_rules_for,
    runtime::{Metrics, client_without_retry},
    testing::TestEnv,
};
use kuberator_tests::{Journal, OWNER_LABEL, Sample, SampleSpec, Samples, unix_nanos};
use serde_json::json;

use crate::{
    operations::http_get,
    support::{CapturedLogs, init_tracing, install_loosened_crd, malformed},
};

/// How long a scenario may take to converge before it fails.
const CONVERGE: Duration = Duration::from_secs(180);

async fn env() -> TestEnv {
    TestEnv::builder().crd::<Sample>().start().await.unwrap()
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn sample(name: &str, value: i32) -> Sample {
    Sample::new(
        name,
        SampleSpec {
            value,
            hang: false,
            fail: None,
            fail_repeat: None,
        },
    )
}

fn samples(client: &Client) -> Api<Sample> {
    Api::namespaced(client.clone(), "default")
}

/// The fault operator running in this process, with its metrics and health endpoints.
struct Running {
    journal: Arc<Journal>,
    metrics: Metrics,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<kuberator::Result<()>>,
}

impl Running {
    fn start(client: Client, configure: impl FnOnce(Operator<Sample>) -> Operator<Sample>) -> Self {
        let journal = Arc::new(Journal::default());
        let metrics = Metrics::new();
        let addr = free_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = Samples {
            journal: journal.clone(),
            work: Duration::ZERO,
        }
        .operator(client)
        .unwrap()
        .metrics(metrics.clone())
        .health(addr)
        .shutdown_on(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(configure(operator).run());
        Running {
            journal,
            metrics,
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn metric(&self, line_prefix: &str) -> f64 {
        metric(&self.metrics.encode(), line_prefix)
    }

    async fn ready(&self) -> bool {
        if self.task.is_finished() {
            return false;
        }
        tokio::time::timeout(Duration::from_secs(2), http_get(self.addr, "/readyz"))
            .await
            .is_ok_and(|(code, _)| code == 200)
    }

    /// Signals shutdown; returns how long `run` took to return.
    async fn stop(mut self) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the operator did not stop")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

/// The value of the first series starting with `line_prefix` (0 without one).
fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(line_prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates `count` samples `<prefix>-<i>` with `value`, 16 at a time.
async fn create_many(client: &Client, prefix: &str, count: usize, value: i32) -> Vec<String> {
    let api = samples(client);
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in names.chunks(16) {
        futures::future::join_all(chunk.iter().map(|name| create_one(&api, name, value))).await;
    }
    names
}

/// Creates the sample `name` with `value` (retried through outages; an existing one is fine).
async fn create_one(api: &Api<Sample>, name: &str, value: i32) {
    loop {
        match api
            .create(&PostParams::default(), &sample(name, value))
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 409 => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Sets `spec.value` of every object in `names` (merge patch, retried through outages).
async fn set_values(client: &Client, names: &[String], value: i32) {
    let api = samples(client);
    for chunk in names.chunks(16) {
        futures::future::join_all(chunk.iter().map(|name| {
            let api = api.clone();
            async move {
                let patch = json!({ "spec": { "value": value } });
                while api
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }))
        .await;
    }
}

async fn delete_all(client: &Client, names: &[String]) {
    let api = samples(client);
    for name in names {
        loop {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => break,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Why the cluster has not converged yet, or `None` when it has: every live sample observed at
/// its generation with its child at its value, no sample being deleted, no child without a
/// sample, and `expected` live samples.
async fn not_converged(client: &Client, expected: usize) -> Option<String> {
    let list = match samples(client).list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(error) => return Some(format!("cannot list samples: {error}")),
    };
    let children: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let children = match children
        .list(&ListParams::default().labels(OWNER_LABEL))
        .await
    {
        Ok(list) => list.items,
        Err(error) => return Some(format!("cannot list children: {error}")),
    };
    let values: BTreeMap<String, String> = children
        .iter()
        .map(|c| {
            let value = c
                .data
                .as_ref()
                .and_then(|d| d.get("value").cloned())
                .unwrap_or_default();
            (c.name_any(), value)
        })
        .collect();
    if list.len() != expected {
        return Some(format!("{} samples, expected {expected}", list.len()));
    }
    for s in &list {
        let name = s.name_any();
        if s.metadata.deletion_timestamp.is_some() {
            return Some(format!("{name} is stuck in deletion"));
        }
        let status = s.status.clone().unwrap_or_default();
        if status.observed_generation != s.metadata.generation {
            return Some(format!(
                "{name}: observedGeneration {:?} != generation {:?}",
                status.observed_generation, s.metadata.generation
            ));
        }
        if status.applied_value != Some(s.spec.value) {
            return Some(format!(
                "{name}: applied {:?} != {}",
                status.applied_value, s.spec.value
            ));
        }
        if values.get(&name) != Some(&s.spec.value.to_string()) {
            return Some(format!(
                "{name}: child {:?} != {}",
                values.get(&name),
                s.spec.value
            ));
        }
    }
    if children.len() != list.len() {
        let live: Vec<String> = list.iter().map(ResourceExt::name_any).collect();
        let orphans: Vec<&String> = values.keys().filter(|n| !live.contains(n)).collect();
        return Some(format!("orphan children: {orphans:?}"));
    }
    None
}

/// Waits for convergence and a ready, live operator; returns how long it took.
async fn converge(client: &Client, expected: usize, operator: &Running, what: &str) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < CONVERGE {
        match not_converged(client, expected).await {
            None if operator.ready().await => return started.elapsed(),
            None => last = "converged, but the operator is not ready".into(),
            Some(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not converged after {CONVERGE:?}: {last}");
}

/// Applies per object: (min, max, mean).
fn per_object(journal: &Journal, names: &[String]) -> (usize, usize, f64) {
    let counts: Vec<usize> = names.iter().map(|n| journal.applies(n)).collect();
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    (min, max, mean)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// With concurrency 4 and four handlers that never return, new objects are reconciled once the
/// reconcile timeout frees the slots; the hung objects are cancelled, counted, recorded as
/// `ReconcileTimeout` in status, retried, and converge once their spec is fixed.
#[tokio::test]
async fn hung_handlers_cost_a_slot_for_at_most_the_reconcile_timeout() {
    init_tracing();
    let env = env().await;
    let client = env.client();
    let timeout = Duration::from_secs(3);
    let operator = Running::start(client.clone(), |o| {
        o.concurrency(4).reconcile_timeout(timeout)
    });
    let api = samples(&client);
    let hung: Vec<String> = (0..4).map(|i| format!("hung-{i}")).collect();
    for name in &hung {
        let mut s = sample(name, 1);
        s.spec.hang = true;
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let began = Instant::now();
    let fresh = create_many(&client, "fresh", 10, 7).await;
    let fresh_done = loop {
        let mut done = 0;
        for name in &fresh {
            let s = api.get(name).await.unwrap();
            done += usize::from(s.status.and_then(|s| s.applied_value) == Some(7));
        }
        if done == fresh.len() {
            break began.elapsed();
        }
        assert!(began.elapsed() < CONVERGE, "new objects never reconciled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = api
        .get("hung-0")
        .await
        .unwrap()
        .status
        .and_then(|s| s.error)
        .expect("the timeout is recorded in status");
    assert_eq!(error.reason, "ReconcileTimeout", "{error:?}");
    // Retried after the timeout (and cancelled again).
    let retried = Instant::now();
    while hung.iter().any(|n| operator.journal.applies(n) < 2) {
        assert!(retried.elapsed() < CONVERGE, "hung objects not retried");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timeouts = operator.metric("controller_runtime_reconcile_timeouts_total");
    assert!(timeouts >= 4.0, "timeouts counted: {timeouts}");
    // Fixed, they converge.
    for name in &hung {
        let patch = json!({ "spec": { "hang": false, "value": 2 } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
    }
    let fixed = converge(&client, 14, &operator, "hung handlers").await;
    eprintln!(
        "hung handlers: 10 new objects reconciled {fresh_done:?} after creation (timeout {timeout:?}); \
         {timeouts} timeouts; fixed objects converged in {fixed:?}; applies per hung object {:?}",
        per_object(&operator.journal, &hung)
    );
    operator.stop().await;
}

/// SIGTERM (the shutdown signal) with four hung handlers and work queued: first `/readyz` is 503
/// (no reconcile finished for longer than `stalled_after` while work is queued) and `/healthz`
/// stays 200; then the loop returns within the shutdown deadline (+1 s), counts the four
/// cancelled reconciles, and a restarted operator converges everything.
#[tokio::test]
async fn shutdown_under_load_with_hung_handlers_is_bounded() {
    init_tracing();
    let env = env().await;
    let client = env.client();
    let deadline = Duration::from_secs(3);
    let operator = Running::start(client.clone(), |o| {
        o.concurrency(4)
            .reconcile_timeout(Duration::from_secs(120))
            .shutdown_timeout(deadline)
            .stalled_after(Duration::from_secs(2))
    });
    let api = samples(&client);
    for i in 0..4 {
        let mut s = sample(&format!("hung-{i}"), 1);
        s.spec.hang = true;
        api.create(&PostParams::default(), &s).await.unwrap();
    }
    let started = Instant::now();
    while (0..4).any(|i| operator.journal.applies(&format!("hung-{i}")) == 0) {
        assert!(started.elapsed() < CONVERGE, "hung handlers never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let names = create_many(&client, "load", 40, 3).await;
    let stalled = loop {
        let (code, body) = http_get(operator.addr, "/readyz").await;
        if code == 503 {
            break body;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "/readyz never reported the stall: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        stalled.contains("no reconcile has finished for"),
        "{stalled}"
    );
    assert_eq!(http_get(operator.addr, "/healthz").await.0, 200);
    eprintln!(
        "stalled (4 hung handlers, 40 queued): /readyz 503 {:?} after the hung handlers started: {}",
        started.elapsed(),
        stalled.trim()
    );
    let metrics = operator.metrics.clone();
    let took = operator.stop().await;
    let cancelled = metric(
        &metrics.encode(),
        "kuberator_shutdown_cancelled_reconciles_total",
    );
    eprintln!(
        "shutdown with 4 hung handlers and 40 queued: returned after {took:?} (deadline {deadline:?}), {cancelled} cancelled"
    );
    assert!(
        took < deadline + Duration::from_secs(1),
        "shutdown took {took:?}"
    );
    assert_eq!(cancelled, 4.0);
    for i in 0..4 {
        let patch = json!({ "spec": { "hang": false } });
        api.patch(
            &format!("hung-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    }
    let restarted = Running::start(client.clone(), |o| o.concurrency(4));
    let converged = converge(&client, 44, &restarted, "after restart").await;
    eprintln!(
        "restart after shutdown: converged in {converged:?}; applies per object {:?}",
        per_object(&restarted.journal, &names)
    );
    restarted.stop().await;
}

/// Runs the restart scenario: `objects` samples converge, `outage` happens (while a tenth of
/// them are deleted and the rest get a new value), then everything converges again.
async fn outage_scenario<F, Fut>(what: &str, outage: F)
where
    F: FnOnce(TestEnv, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = (TestEnv, Instant)>,
{
    init_tracing();
    let env = env().await;
    let client = env.client();
    let operator = Running::start(client.clone(), |o| {
        o.concurrency(8).unready_after(UNREADY_AFTER)
    });
    let rss_before = rss_kib();
    let names = create_many(&client, "obj", 100, 1).await;
    let baseline = converge(&client, 100, &operator, "before the outage").await;
    let applies_before = operator.journal.total_applies();
    let (env, answering) = outage(env, operator.addr).await;
    // First successful reconcile after the server answers again: a fresh object's status.
    let probe = create_many(&client, "probe", 1, 5).await;
    let api = samples(&client);
    let first = loop {
        let s = api.get(&probe[0]).await.ok();
        if s.and_then(|s| s.status).and_then(|s| s.applied_value) == Some(5) {
            break answering.elapsed();
        }
        assert!(
            answering.elapsed() < CONVERGE,
            "{what}: no reconcile after the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = Instant::now();
    delete_all(&client, &names[..10]).await;
    set_values(&client, &names[10..], 2).await;
    converge(&client, 91, &operator, what).await;
    let total = after.elapsed();
    eprintln!(
        "{what}: baseline 100 objects in {baseline:?}; first reconcile {first:?} after the API server answered; \
         90 updates + 10 deletes converged {total:?} after; applies per object {:?} ({} before the outage); \
         cleanups of the deleted {}; RSS {} -> {} KiB",
        per_object(&operator.journal, &names[10..]),
        applies_before,
        names[..10]
            .iter()
            .map(|n| operator.journal.cleanups(n))
            .sum::<usize>(),
        rss_before,
        rss_kib(),
    );
    operator.stop().await;
    drop(env);
}

/// How long the outage scenarios let the watches fail before `/readyz` must say 503.
const UNREADY_AFTER: Duration = Duration::from_secs(2);

/// The API server is killed for 5 s and started again on the same address and certificates;
/// `/readyz` is 503 (naming the failing watch) while it is down for longer than the
/// operator's `unready_after`, and 200 again after it is back. A second operator started while
/// the server is down (its start-up discovery refused) retries and becomes ready once the
/// server answers, instead of exiting.
#[tokio::test]
async fn apiserver_restart() {
    outage_scenario("apiserver killed 5 s", |mut env, health| async move {
        env.stop_apiserver().unwrap();
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (code, body) = http_get(health, "/readyz").await;
        assert_eq!(code, 503, "/readyz during the outage: {body}");
        assert!(body.contains("failing for"), "{body}");
        eprintln!(
            "apiserver killed: /readyz {code} {:?} after the kill: {}",
            stopped.elapsed(),
            body.trim()
        );
        // In a namespace of its own: it lists nothing, reconciles nothing.
        let late = Running::start(env.client(), |o| o.namespaces(["startup"]));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !late.task.is_finished(),
            "an operator started during the outage exited"
        );
        env.start_apiserver().await.unwrap();
        let answering = Instant::now();
        let ready = loop {
            if http_get(health, "/readyz").await.0 == 200 {
                break answering.elapsed();
            }
            assert!(answering.elapsed() < CONVERGE, "never ready again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!("apiserver killed: /readyz 200 again {ready:?} after it answered");
        let late_ready = loop {
            if late.ready().await {
                break answering.elapsed();
            }
            assert!(
                !late.task.is_finished(),
                "the operator started during the outage exited"
            );
            assert!(answering.elapsed() < CONVERGE, "started during the outage: never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        late.stop().await;
        eprintln!(
            "apiserver killed: an operator started 2 s before the restart is ready {late_ready:?} after the server answered"
        );
        (env, answering)
    })
    .await;
}

/// etcd is killed for 5 s and started again on the same data.
#[tokio::test]
async fn etcd_restart() {
    outage_scenario("etcd killed 5 s", |mut env, _| async move {
        env.stop_etcd().unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        env.start_etcd().await.unwrap();
        let answering = Instant::now();
        (env, answering)
    })
    .await;
}

/// The API server is paused (SIGSTOP) for 10 s: requests stall instead of failing; each has a
/// deadline, so nothing hangs for good. Nothing fails either, the watches only go quiet: the
/// operator's heartbeat request goes unanswered, so `/readyz` is 503 once it waited longer than
/// `unready_after` (`/healthz` stays 200), and 200 again after the resume.
#[tokio::test]
async fn apiserver_paused() {
    outage_scenario("apiserver paused 10 s", |mut env, health| async move {
        env.pause_apiserver().unwrap();
        let paused = Instant::now();
        let unready = loop {
            let (code, body) = http_get(health, "/readyz").await;
            if code == 503 {
                break body;
            }
            assert!(
                paused.elapsed() < Duration::from_secs(9),
                "/readyz still {code} {:?} into the pause: {body}",
                paused.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let detected = paused.elapsed();
        assert!(unready.contains("has not answered"), "{unready}");
        assert_eq!(http_get(health, "/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_secs(10).saturating_sub(paused.elapsed())).await;
        let (code, body) = http_get(health, "/readyz").await;
        assert_eq!(code, 503, "/readyz at the end of the pause: {body}");
        env.resume_apiserver().unwrap();
        let resumed = Instant::now();
        let ready = loop {
            if http_get(health, "/readyz").await.0 == 200 {
                break resumed.elapsed();
            }
            assert!(resumed.elapsed() < CONVERGE, "never ready again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        eprintln!(
            "apiserver paused: /readyz 503 {detected:?} into the pause (unready_after {UNREADY_AFTER:?}): {}; \
             200 again {ready:?} after SIGCONT",
            unready.trim()
        );
        env.wait_until_ready().await.unwrap();
        let answering = Instant::now();
        (env, answering)
    })
    .await;
}

/// A second writer keeps changing the specs (and labels) while the operator works: the
/// operator's writes never lose the last value.
#[tokio::test]
async fn conflicting_writers() {
    init_tracing();
    let env = env().await;
    let client = env.client();
    let operator = Running::start(client.clone(), |o| o.concurrency(4));
    let names = create_many(&client, "contended", 30, 0).await;
    let api = samples(&client);
    for round in 1..=5 {
        futures::future::join_all(names.iter().map(|name| {
            let api = api.clone();
            async move {
                // A replace based on what was read: 409 when the operator wrote in between.
                for _ in 0..5 {
                    let Ok(mut current) = api.get(name).await else {
                        continue;
                    };
                    current.spec.value = round;
                    current
                        .labels_mut()
                        .insert("round".into(), round.to_string());
                    match api.replace(name, &PostParams::default(), &current).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(error) => panic!("{error}"),
                    }
                }
                set_values_one(&api, name, round).await;
            }
        }))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let converged = converge(&client, 30, &operator, "conflicting writers").await;
    eprintln!(
        "conflicts: 5 rounds of updates by a second writer; converged {converged:?} after the last; applies per object {:?}",
        per_object(&operator.journal, &names)
    );
    operator.stop().await;
}

async fn set_values_one(api: &Api<Sample>, name: &str, value: i32) {
    let patch = json!({ "spec": { "value": value } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Bad objects among good ones. One does not decode (a string where the type has a number): it
/// is skipped, the others converge, the operator stays ready; deleted, it is gone. One makes
/// its handler fail with a 2 MiB error (`é` a million times): its status carries the message
/// cut to 1,024 bytes at a character boundary with the full length noted, and every log line
/// of its retries stays bounded (4 KiB of error); its spec fixed, it converges.
#[tokio::test]
async fn a_malformed_object_among_good_ones() {
    const HUGE: &str = "huge-error";
    init_tracing();
    let logs = CapturedLogs::start("warn,kuberator=debug");
    let env = env().await;
    let dynamic = install_loosened_crd::<Sample>(&env).await;
    let client = env.client();
    dynamic
        .create(&PostParams::default(), &malformed::<Sample>("malformed"))
        .await
        .unwrap();
    let operator = Running::start(client.clone(), |o| o.concurrency(4));
    let api = samples(&client);
    let mut huge = sample(HUGE, 4);
    huge.spec.fail = Some("é".into());
    huge.spec.fail_repeat = Some(1 << 20);
    api.create(&PostParams::default(), &huge).await.unwrap();
    let names = create_many(&client, "good", 20, 4).await;
    // The huge error is recorded, and retried (with backoff: 1 s, 2 s) twice more.
    let started = Instant::now();
    let recorded = loop {
        let error = api.get(HUGE).await.unwrap().status.and_then(|s| s.error);
        if let Some(error) = error.filter(|_| operator.journal.applies(HUGE) >= 3) {
            break error;
        }
        assert!(
            started.elapsed() < CONVERGE,
            "the huge error never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let full_length = 2 * (1 << 20);
    let message = &recorded.message;
    assert!(
        message.len() <= kuberator::status::STATUS_MESSAGE_MAX_BYTES,
        "status message of {} bytes",
        message.len()
    );
    assert!(
        message.starts_with("éé") && message.ends_with(" bytes in all)"),
        "{message}"
    );
    let noted: usize = message
        .rsplit('(')
        .next()
        .and_then(|tail| tail.split(' ').next()?.parse().ok())
        .expect("the full length is noted");
    assert!(noted >= full_length, "{noted} bytes noted");
    let lines = logs.lines();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("reconcile failed") && l.contains(HUGE))
        .collect();
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    let logged: usize = lines
        .iter()
        .filter(|l| l.contains("éé"))
        .map(String::len)
        .sum();
    assert!(
        failed.len() >= 3,
        "{} 'reconcile failed' lines for {HUGE}",
        failed.len()
    );
    assert!(
        failed.iter().all(|l| l.contains("bytes in all)")),
        "a logged error was not cut"
    );
    assert!(longest <= 8 * 1024, "a log line of {longest} bytes");
    // The malformed object cannot be listed as a Sample, so delete it first; fix the huge one.
    dynamic
        .delete("malformed", &DeleteParams::default())
        .await
        .unwrap();
    let patch = json!({ "spec": { "fail": null, "failRepeat": null } });
    api.patch(HUGE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let converged = converge(&client, 21, &operator, "bad objects").await;
    assert_eq!(operator.journal.applies("malformed"), 0);
    eprintln!(
        "malformed: 20 good objects converged in {converged:?}; the malformed one applied 0 times; applies per object {:?}",
        per_object(&operator.journal, &names)
    );
    eprintln!(
        "2 MiB error ({full_length} bytes): status message {} bytes (full length {noted} noted); \
         {} applies, {} 'reconcile failed' lines, longest log line {longest} bytes, \
         {logged} bytes of log carrying the error in all",
        message.len(),
        operator.journal.applies(HUGE),
        failed.len(),
    );
    operator.stop().await;
}

/// A good object changed so that it no longer decodes: its cached copy is dropped (a change of
/// its child reconciles nothing, no child is recreated from stale data), it gets a `Warning`
/// event `Undecodable` and is counted; deleted, its finalizer is released without a cleanup
/// call and it is gone; the other objects converge.
#[tokio::test]
async fn a_good_object_turned_undecodable() {
    const TURNED: &str = "turned-0";
    init_tracing();
    let env = env().await;
    let dynamic = install_loosened_crd::<Sample>(&env).await;
    let client = env.client();
    let operator = Running::start(client.clone(), |o| o.concurrency(4));
    let mut names = create_many(&client, "good", 10, 1).await;
    names.extend(create_many(&client, "turned", 1, 1).await);
    converge(&client, 11, &operator, "before the change").await;
    let applies = operator.journal.applies(TURNED);
    let patch = json!({ "spec": { "value": "not-a-number" } });
    dynamic
        .patch(TURNED, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let warning = loop {
        let found = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("Undecodable")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(TURNED)
            });
        if let Some(event) = found {
            break event;
        }
        assert!(started.elapsed() < CONVERGE, "no Undecodable event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let warned = started.elapsed();
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(operator.metric("kuberator_undecodable_objects_total") >= 1.0);
    // Its child changes (deleted): that reconciled the stale copy before; now nothing runs.
    let children: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    children
        .delete(TURNED, &DeleteParams::default())
        .await
        .unwrap();
    // A barrier: the other objects take a new value through the same controller.
    set_values(&client, &names[..10], 2).await;
    wait_values(&client, &names[..10], 2).await;
    assert_eq!(
        operator.journal.applies(TURNED),
        applies,
        "a stale copy was applied"
    );
    assert!(
        children.get_opt(TURNED).await.unwrap().is_none(),
        "child recreated from stale data"
    );
    // Deleted, it is gone: the finalizer is released without cleanup.
    dynamic
        .delete(TURNED, &DeleteParams::default())
        .await
        .unwrap();
    let deleting = Instant::now();
    while dynamic.get_opt(TURNED).await.unwrap().is_some() {
        assert!(
            deleting.elapsed() < CONVERGE,
            "the undecodable object is stuck in deletion"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = deleting.elapsed();
    assert_eq!(operator.journal.cleanups(TURNED), 0);
    let converged = converge(&client, 10, &operator, "after the undecodable object").await;
    eprintln!(
        "turned undecodable: Warning event {warned:?} after the change, 0 applies of the stale copy, \
         deleted and gone in {gone:?}, others converged {converged:?} after; note: {}",
        warning.note.unwrap_or_default()
    );
    operator.stop().await;
}

/// kube-apiserver with `--max-requests-inflight=5 --max-mutating-requests-inflight=2` (API
/// Priority and Fairness on, answering with 429), the operator as a ServiceAccount, 100 objects
/// created by a parallel client: every object converges at the rate the server allows, and the
/// throttling is counted.
#[tokio::test]
async fn throttled_by_the_api_server() {
    init_tracing();
    let env = TestEnv::builder()
        .crd::<Sample>()
        .throttle(5, 2)
        .start()
        .await
        .unwrap();
    let options = Samples::rbac_options().service_account("default", "samples-operator");
    let access = env
        .service_account(&rbac_rules_for::<Sample>(&options))
        .await
        .unwrap();
    let operator_client = client_without_retry(access.config.clone()).unwrap();
    let admin = env.client();
    let operator = Running::start(operator_client, |o| o.concurrency(16));
    let started = Instant::now();
    let names = create_many(&admin, "busy", 100, 1).await;
    let converged = converge(&admin, 100, &operator, "throttled").await;
    let total = started.elapsed();
    let throttled = operator.metric("kuberator_client_throttled_total");
    let rejected = metric(
        &env.metrics_text().await.unwrap(),
        "apiserver_flowcontrol_rejected_requests_total",
    );
    eprintln!(
        "throttled (inflight 5/2, APF on): 100 objects converged {total:?} after the first create ({converged:?} after the last); \
         operator saw {throttled} 429s, API server rejected {rejected} requests; applies per object {:?}",
        per_object(&operator.journal, &names)
    );
    operator.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A paused leader.

/// A replica process of the fault operator (`tests/bin/fault_replica.rs`).
struct Replica {
    child: Child,
    _stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn spawn(identity: &str, kubeconfig: &std::path::Path) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fault-replica"))
            .env("KUBERATOR_REPLICA_KUBECONFIG", kubeconfig)
            .env("KUBERATOR_REPLICA_IDENTITY", identity)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Replica {
            child,
            _stdin: stdin,
            lines,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn leads(&self) -> bool {
        self.lines()
            .iter()
            .rev()
            .find(|l| l.starts_with("leader "))
            .is_some_and(|l| l.starts_with("leader true"))
    }

    /// Lines starting with `prefix` whose timestamp (last field) is after `after` (unix ns).
    fn since(&self, prefix: &str, after: u128) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.starts_with(prefix))
            .filter(|l| l.rsplit(' ').next().and_then(|t| t.parse::<u128>().ok()) > Some(after))
            .collect()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 3339 (UTC, as the audit log writes it) to unix nanoseconds.
fn unix_nanos_of(timestamp: &str) -> u128 {
    let parsed: k8s_openapi::jiff::Timestamp = timestamp.parse().unwrap();
    u128::try_from(parsed.as_nanosecond()).unwrap()
}

/// The leader (its own ServiceAccount) is SIGSTOPped with reconciles in flight; the standby takes
/// over and writes the newer values; on SIGCONT the old leader, past its renew deadline, makes
/// no write and no further handler step — asserted from the API server's audit log.
#[tokio::test]
async fn a_paused_leader_writes_nothing_after_its_renew_deadline() {
    init_tracing();
    let env = TestEnv::builder()
        .crd::<Sample>()
        .audit_log(true)
        .start()
        .await
        .unwrap();
    let admin = env.client();
    let mut users = Vec::new();
    for name in ["replica-a", "replica-b"] {
        let options = Samples::rbac_options()
            .leader_election("default")
            .service_account("default", name);
        let mut rbac = rbac_rules_for::<Sample>(&options);
        // Roles and bindings of their own: the bindings would otherwise replace each other.
        for grant in &mut rbac.grants {
            grant.name = format!("{}-{name}", grant.name);
        }
        users.push(env.service_account(&rbac).await.unwrap());
    }
    let a = Replica::spawn("replica-a", &users[0].kubeconfig_path);
    let started = Instant::now();
    while !a.leads() {
        assert!(started.elapsed() < CONVERGE, "replica-a never led");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = Replica::spawn("replica-b", &users[1].kubeconfig_path);
    let names = create_many(&admin, "led", 4, 1).await;
    wait_values(&admin, &names, 1).await;
    // Catch a's reconciles of value 2 in flight (each works 2 s before writing), then pause it.
    set_values(&admin, &names, 2).await;
    while a
        .since("apply start", 0)
        .iter()
        .filter(|l| l.contains(" 2 "))
        .count()
        < names.len()
    {
        assert!(
            started.elapsed() < CONVERGE,
            "replica-a did not start the reconciles"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.signal("-STOP");
    let paused_at = unix_nanos();
    // The newest spec, which only b can apply.
    set_values(&admin, &names, 3).await;
    wait_values(&admin, &names, 3).await;
    let took_over = Duration::from_nanos(u64::try_from(unix_nanos() - paused_at).unwrap());
    assert!(b.leads(), "replica-b leads");
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.signal("-CONT");
    let resumed_at = unix_nanos();
    // Give the old leader every chance to write its stale value 2.
    tokio::time::sleep(Duration::from_secs(6)).await;
    wait_values(&admin, &names, 3).await;
    let renew_deadline = 3_000_000_000u128;
    let writes: Vec<String> = env
        .audit_events()
        .unwrap()
        .iter()
        .filter(|e| e["user"]["username"] == users[0].user_name.as_str())
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .is_some_and(|t| unix_nanos_of(t) > paused_at + renew_deadline)
        })
        .map(|e| {
            format!(
                "{} {} {}",
                e["verb"], e["requestURI"], e["requestReceivedTimestamp"]
            )
        })
        .collect();
    let resumed_steps = a.since("apply end", resumed_at);
    eprintln!(
        "paused leader: standby converged the new values {took_over:?} after the pause; \
         old leader after SIGCONT: {} writes (audit log), {} handler steps",
        writes.len(),
        resumed_steps.len()
    );
    assert!(
        writes.is_empty(),
        "writes from the paused leader after its deadline: {writes:#?}"
    );
    assert!(
        resumed_steps.is_empty(),
        "handler steps after the deadline: {resumed_steps:?}"
    );
}

/// Waits until every sample in `names` has `value` applied (status and child).
async fn wait_values(client: &Client, names: &[String], value: i32) {
    let api = samples(client);
    let children: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    'poll: loop {
        assert!(started.elapsed() < CONVERGE, "values {value} never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
        for name in names {
            let Ok(s) = api.get(name).await else {
                continue 'poll;
            };
            let status = s.status.unwrap_or_default();
            if status.applied_value != Some(value)
                || status.observed_generation != s.metadata.generation
            {
                continue 'poll;
            }
            let Ok(child) = children.get(name).await else {
                continue 'poll;
            };
            if child.data.and_then(|d| d.get("value").cloned()) != Some(value.to_string()) {
                continue 'poll;
            }
        }
        return;
    }
}

/// Waits until `journal` has seen at least one apply of each of `names`, or 30 s.
async fn wait_journal(journal: &Journal, names: &[String]) {
    let started = Instant::now();
    while names.iter().any(|n| journal.applies(n) == 0)
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// After a stop and a restart with `skip_observed_on_start`, the objects observed at their
/// generation are not applied again (neither by the primaries' initial list nor by their
/// children's), the one whose spec changed while the operator was down is applied once, and
/// the one deleted meanwhile is cleaned up. Without the opt-in, every object is applied again.
#[tokio::test]
async fn restart_skips_objects_observed_at_their_generation() {
    init_tracing();
    let env = env().await;
    let client = env.client();
    let first = Running::start(client.clone(), |o| o);
    let names = create_many(&client, "restart", 20, 1).await;
    converge(&client, 20, &first, "first run").await;
    first.stop().await;

    // While the operator is down: one spec change, one deletion (held by the finalizer).
    let (changed, deleted, current) = (&names[0], &names[1], &names[2..]);
    set_values(&client, std::slice::from_ref(changed), 2).await;
    samples(&client)
        .delete(deleted, &DeleteParams::default())
        .await
        .unwrap();

    let skipping = Running::start(client.clone(), |o| o.skip_observed_on_start(true));
    let converged = converge(&client, 19, &skipping, "restart with the opt-in").await;
    // Late triggers (the children's initial list, a re-list) would come within this.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let applied_again: Vec<(&String, usize)> = current
        .iter()
        .map(|n| (n, skipping.journal.applies(n)))
        .filter(|(_, applies)| *applies > 0)
        .collect();
    eprintln!(
        "restart with skip_observed_on_start: converged in {converged:?}; applies: changed {}, \
         deleted {} (cleanups {}), up-to-date {}",
        skipping.journal.applies(changed),
        skipping.journal.applies(deleted),
        skipping.journal.cleanups(deleted),
        skipping.journal.total_applies() - skipping.journal.applies(changed)
    );
    assert_eq!(applied_again, [], "up-to-date objects applied again");
    assert_eq!(skipping.journal.applies(changed), 1, "the changed object");
    assert_eq!(skipping.journal.cleanups(deleted), 1, "the deleted object");
    assert_eq!(skipping.journal.applies(deleted), 0);
    skipping.stop().await;

    // Without the opt-in, every object is applied again.
    let plain = Running::start(client.clone(), |o| o);
    converge(&client, 19, &plain, "restart without the opt-in").await;
    let live: Vec<String> = names.iter().filter(|n| *n != deleted).cloned().collect();
    wait_journal(&plain.journal, &live).await;
    let (min, max, mean) = per_object(&plain.journal, &live);
    eprintln!("restart without the opt-in: applies per object {min}..{max} (mean {mean:.2})");
    assert!(min >= 1, "without the opt-in every object is applied again");
    plain.stop().await;
}

/// Create/update/delete churn: each object is deleted moments after it was created, while the
/// operator adds its finalizer, applies its child and writes its status. A deletion that races
/// the finalizer (kube-apiserver removes the object although the finalizer was just added,
/// kubernetes/kubernetes#77988) must still get its cleanup: once every object is gone, no child
/// is left (this environment runs no garbage collector).
#[tokio::test]
async fn churn_leaves_no_child_behind() {
    use futures::StreamExt;
    init_tracing();
    let env = env().await;
    let client = env.client();
    let operator = Running::start(client.clone(), |o| o.concurrency(16));
    let api = samples(&client);
    let started = Instant::now();
    for round in 0..3 {
        let names: Vec<String> = (0..100).map(|i| format!("churn{round}-{i}")).collect();
        futures::stream::iter(names.iter().enumerate())
            .for_each_concurrent(32, |(i, name)| {
                let (api, client) = (api.clone(), client.clone());
                async move {
                    create_one(&api, name, 1).await;
                    if i % 2 == 0 {
                        // An update in between for half of them (a new generation).
                        let patch = json!({ "spec": { "value": 2 } });
                        let _ = api
                            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await;
                    }
                    // Spread the deletions over the operator's first reconcile of the object.
                    tokio::time::sleep(Duration::from_millis((i % 25) as u64 * 4)).await;
                    delete_all(&client, std::slice::from_ref(name)).await;
                }
            })
            .await;
    }
    let churned = started.elapsed();
    let converged = converge(&client, 0, &operator, "after the churn").await;
    eprintln!(
        "churn: 300 objects created and deleted in {churned:.1?}; no sample and no child left \
         {converged:.1?} after the last deletion; {} applies",
        operator.journal.total_applies()
    );
    operator.stop().await;
}
