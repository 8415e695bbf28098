//! `make chaos`: the fault operator (`kuberator_tests::Samples`) under the slow fault scenarios
//! that do not fit in `make test`, each on its own local control plane, printing its figures.
//!
//! ```text
//! chaos [throttled] [outage] [churn]   (default: all three)
//!   throttled  kube-apiserver --max-requests-inflight=5 --max-mutating-requests-inflight=2
//!              (APF on), the operator as a ServiceAccount with concurrency 32, 1,000 objects
//!              created by a parallel client: all must converge; time and 429 counts
//!   outage     500 objects converge, the API server is killed for 5 s, then 450 updates and 50
//!              deletes: first reconcile after it answers, convergence against the no-fault time
//!   churn      create/update/delete churn of 1,000 objects for CHAOS_CHURN_SECS (default
//!              180): RSS at the start, the end and every minute of CHAOS_CHURN_IDLE_SECS
//!              (default 60) after everything is deleted
//! ```
//!
//! Exits non-zero when a scenario does not converge within 15 minutes.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use kuberator::{
    IntoOperator,
    manifests::rbac_rules_for,
    runtime::{Metrics, client_without_retry},
    testing::TestEnv,
};
use kuberator_tests::{Journal, OWNER_LABEL, Sample, SampleSpec, Samples};

/// How long a scenario may take to converge.
const CONVERGE: Duration = Duration::from_secs(900);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut scenarios: Vec<String> = std::env::args().skip(1).collect();
    if scenarios.is_empty() {
        scenarios = ["throttled", "outage", "churn"].map(String::from).to_vec();
    }
    for scenario in &scenarios {
        match scenario.as_str() {
            "throttled" => throttled().await?,
            "outage" => outage().await?,
            "churn" => churn().await?,
            other => anyhow::bail!("unknown scenario `{other}`: throttled, outage or churn"),
        }
    }
    Ok(())
}

/// The fault operator running in this process.
struct Running {
    journal: Arc<Journal>,
    metrics: Metrics,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<kuberator::Result<()>>,
}

impl Running {
    fn start(client: Client, concurrency: u16) -> anyhow::Result<Running> {
        let journal = Arc::new(Journal::default());
        let metrics = Metrics::new();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = Samples {
            journal: journal.clone(),
            work: Duration::ZERO,
        }
        .operator(client)?
        .concurrency(concurrency)
        .metrics(metrics.clone())
        .shutdown_on(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(operator.run());
        Ok(Running {
            journal,
            metrics,
            stop,
            task,
        })
    }

    fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics.encode(), prefix)
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn samples(client: &Client) -> Api<Sample> {
    Api::namespaced(client.clone(), "default")
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

/// Runs `work` on every item, `parallel` at a time.
async fn each<F, Fut>(items: &[String], parallel: usize, work: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter(items.iter().cloned().map(work))
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
}

async fn create_all(client: &Client, names: &[String], value: i32, parallel: usize) {
    let api = samples(client);
    each(names, parallel, |name| {
        let api = api.clone();
        async move {
            loop {
                match api
                    .create(&PostParams::default(), &sample(&name, value))
                    .await
                {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 409 => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    })
    .await;
}

async fn set_all(client: &Client, names: &[String], value: i32, parallel: usize) {
    let api = samples(client);
    each(names, parallel, |name| {
        let api = api.clone();
        async move {
            let patch = serde_json::json!({ "spec": { "value": value } });
            while api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    })
    .await;
}

async fn delete_all(client: &Client, names: &[String], parallel: usize) {
    let api = samples(client);
    each(names, parallel, |name| {
        let api = api.clone();
        async move {
            loop {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => return,
                    Err(kube::Error::Api(s)) if s.code == 404 => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    })
    .await;
}

/// How many of the live samples are converged (observed at their generation, value applied,
/// child at the value), how many exist, and how many children.
async fn converged(client: &Client) -> Option<(usize, usize, usize)> {
    let list = samples(client).list(&ListParams::default()).await.ok()?;
    let children: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let children = children
        .list(&ListParams::default().labels(OWNER_LABEL))
        .await
        .ok()?;
    let values: std::collections::HashMap<String, String> = children
        .items
        .iter()
        .map(|c| {
            let value = c.data.as_ref().and_then(|d| d.get("value").cloned());
            (c.name_any(), value.unwrap_or_default())
        })
        .collect();
    let done = list
        .items
        .iter()
        .filter(|s| {
            let status = s.status.clone().unwrap_or_default();
            s.metadata.deletion_timestamp.is_none()
                && status.observed_generation == s.metadata.generation
                && status.applied_value == Some(s.spec.value)
                && values.get(&s.name_any()) == Some(&s.spec.value.to_string())
        })
        .count();
    Some((done, list.items.len(), values.len()))
}

/// Waits until exactly `expected` samples exist, all converged, with no orphan child; returns
/// how long it took. Fails at once, with the operator's result, when the operator stopped.
async fn converge(
    client: &Client,
    operator: &mut Running,
    expected: usize,
    what: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if operator.task.is_finished() {
            let result = (&mut operator.task).await;
            anyhow::bail!("{what}: the operator stopped before converging: {result:?}");
        }
        let state = converged(client).await;
        if state == Some((expected, expected, expected)) {
            return Ok(started.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "  {what}: {state:?} (converged, samples, children) after {:?}",
                started.elapsed()
            );
        }
        if started.elapsed() > CONVERGE {
            anyhow::bail!("{what}: not converged after {CONVERGE:?}: {state:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn names(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i}")).collect()
}

fn per_object(journal: &Journal, names: &[String]) -> String {
    let counts: Vec<usize> = names.iter().map(|n| journal.applies(n)).collect();
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    format!("min {min}, max {max}, mean {mean:.2}")
}

/// Issue 12.1: 1,000 objects under APF throttling, the operator as a ServiceAccount.
async fn throttled() -> anyhow::Result<()> {
    println!("== throttled: inflight 5 / mutating 2, APF on, concurrency 32, 1,000 objects");
    let env = TestEnv::builder()
        .crd::<Sample>()
        .throttle(5, 2)
        .start()
        .await?;
    let options = Samples::rbac_options().service_account("default", "samples-operator");
    let access = env
        .service_account(&rbac_rules_for::<Sample>(&options))
        .await?;
    let mut operator = Running::start(client_without_retry(access.config.clone())?, 32)?;
    let admin = env.client();
    let all = names("busy", 1000);
    let started = Instant::now();
    create_all(&admin, &all, 1, 32).await;
    let created = started.elapsed();
    let after_last = converge(&admin, &mut operator, all.len(), "throttled").await?;
    let total = started.elapsed();
    let server = env.metrics_text().await?;
    println!(
        "throttled: 1000/1000 converged {total:.1?} after the first create (creates took \
         {created:.1?}, {after_last:.1?} after the last); operator saw {} 429s, {} request \
         timeouts; API server rejected {} requests (apiserver_flowcontrol_rejected_requests_total); \
         applies per object {}",
        operator.metric("kuberator_client_throttled_total"),
        operator.metric("kuberator_client_request_timeouts_total"),
        metric(&server, "apiserver_flowcontrol_rejected_requests_total"),
        per_object(&operator.journal, &all),
    );
    operator.stop().await
}

/// Issue 17.1 at 500 objects: the API server killed for 5 s.
async fn outage() -> anyhow::Result<()> {
    println!("== outage: 500 objects, the API server killed for 5 s");
    let mut env = TestEnv::builder().crd::<Sample>().start().await?;
    let client = env.client();
    let mut operator = Running::start(client.clone(), 8)?;
    let all = names("obj", 500);
    let started = Instant::now();
    create_all(&client, &all, 1, 16).await;
    let baseline = converge(&client, &mut operator, 500, "before the outage").await?;
    let baseline = baseline.max(started.elapsed());
    // The no-fault time of the same work as after the outage: 450 updates and 50 deletes.
    let update_started = Instant::now();
    set_all(&client, &all[50..], 2, 16).await;
    delete_all(&client, &all[..50], 16).await;
    let no_fault = update_started.elapsed()
        + converge(&client, &mut operator, 450, "no-fault updates").await?;
    let successes = || {
        let text = operator.metrics.encode();
        text.lines()
            .filter(|l| l.starts_with("controller_runtime_reconcile_total{"))
            .filter(|l| l.contains(r#"result="success""#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    env.stop_apiserver()?;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // A client of its own (no retries, no pool shared with the operator) records when the new
    // API server first answers anything, and when its /readyz first says ok.
    let watcher = restart_watcher(env.config().clone())?;
    let successes_before = successes();
    env.start_apiserver().await?;
    let ready = Instant::now();
    let (first_answer, readyz_ok) = watcher.await??;
    let answering = readyz_ok;
    let api = samples(&client);
    create_all(&client, &["probe".to_owned()], 5, 1).await;
    let probe_created = answering.elapsed();
    // The operator's first successful reconcile after the restart (every apply writes, so a
    // success needs the new server), polled every 10 ms. Everything converged before the
    // outage, so the probe created once /readyz is ok is work it has for sure.
    let first_success = loop {
        if successes() > successes_before {
            break Instant::now();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("no successful reconcile within 120 s of the outage");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let first = loop {
        let probe = api.get("probe").await.ok();
        if probe.and_then(|s| s.status).and_then(|s| s.applied_value) == Some(5) {
            break answering.elapsed();
        }
        if answering.elapsed() > CONVERGE {
            anyhow::bail!("no reconcile after the outage");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = Instant::now();
    let live: Vec<String> = all[100..].to_vec();
    set_all(&client, &live, 3, 16).await;
    delete_all(&client, &all[50..100], 16).await;
    let recovered = after.elapsed()
        + converge(&client, &mut operator, live.len() + 1, "after the outage").await?;
    let since = |at: Instant| at.saturating_duration_since(killed).as_secs_f64();
    println!(
        "outage: 500 objects created and converged in {baseline:.1?}; no fault: 450 updates + 50 \
         deletes converged in {no_fault:.1?}; API server killed 5 s: after the kill it first \
         answered at {:.2} s, /readyz ok at {:.2} s (start_apiserver returned at {:.2} s), first \
         successful reconcile at {:.2} s = {:.2} s after /readyz ok ({:.2} s after its first \
         answer); a probe created {probe_created:.2?} after /readyz ok was reconciled \
         {first:.2?} after /readyz ok; 400 updates + 50 deletes converged in {recovered:.1?} \
         after ({:.2}x the no-fault time)",
        since(first_answer),
        since(readyz_ok),
        since(ready),
        since(first_success),
        first_success
            .saturating_duration_since(readyz_ok)
            .as_secs_f64(),
        first_success
            .saturating_duration_since(first_answer)
            .as_secs_f64(),
        recovered.as_secs_f64() / no_fault.as_secs_f64()
    );
    operator.stop().await
}

/// Polls the API server's `/readyz` every 10 ms through a client of its own: when it first
/// answers anything (an HTTP response, even an error), and when `/readyz` first says `ok`.
fn restart_watcher(
    mut config: kube::Config,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<(Instant, Instant)>>> {
    config.default_retry = false;
    config.connect_timeout = Some(Duration::from_millis(200));
    config.read_timeout = Some(Duration::from_secs(1));
    let client = Client::try_from(config)?;
    Ok(tokio::spawn(async move {
        let started = Instant::now();
        let mut first_answer = None;
        loop {
            let request = http::Request::get("/readyz").body(Vec::new())?;
            let answer = tokio::time::timeout(Duration::from_secs(1), client.request_text(request));
            let now = Instant::now();
            match answer.await {
                Ok(Ok(body)) if body.trim() == "ok" => {
                    return Ok((first_answer.unwrap_or(now), now));
                }
                Ok(Ok(_) | Err(kube::Error::Api(_))) => {
                    first_answer.get_or_insert(now);
                }
                Ok(Err(_)) | Err(_) => {}
            }
            if started.elapsed() > CONVERGE {
                anyhow::bail!("the API server did not come back");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }))
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

/// Issue 17.7: create/update/delete churn of 1,000 objects; RSS start, end, after delete-all.
async fn churn() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("CHAOS_CHURN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    println!("== churn: 1,000 objects created, updated and deleted for {seconds} s");
    let env = TestEnv::builder().crd::<Sample>().start().await?;
    let client = env.client();
    let mut operator = Running::start(client.clone(), 16)?;
    let rss_start = rss_kib();
    let started = Instant::now();
    let mut round = 0;
    let mut samples_rss = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        round += 1;
        // Fresh names each round: every object is new to the per-object maps.
        let batch = names(&format!("churn{round}"), 1000);
        create_all(&client, &batch, 1, 32).await;
        set_all(&client, &batch, 2, 32).await;
        delete_all(&client, &batch, 32).await;
        converge(&client, &mut operator, 0, "churn round").await?;
        samples_rss.push(rss_kib());
    }
    let rss_end = rss_kib();
    // Past the TTLs of the time-bounded caches (event dedup 360 s, own writes 300 s) with
    // CHAOS_CHURN_IDLE_SECS=400: what stays then is neither a live object nor a cache entry.
    let idle: u64 = std::env::var("CHAOS_CHURN_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut idle_rss = Vec::new();
    for _ in 0..idle.div_ceil(60) {
        tokio::time::sleep(Duration::from_secs(60.min(idle))).await;
        idle_rss.push(rss_kib());
    }
    let rss_idle = rss_kib();
    println!("churn: RSS every minute of the idle time (KiB): {idle_rss:?}");
    let leftover = converged(&client)
        .await
        .map_or(usize::MAX, |(_, _, children)| children);
    println!(
        "churn: {round} rounds of 1,000 create+update+delete in {:.0?}; RSS {rss_start} KiB at \
         the start, {rss_end} KiB at the end, {rss_idle} KiB after {idle} s idle with everything \
         deleted; {leftover} children left; per round {samples_rss:?}; {} applies, {} \
         reconciles in all",
        started.elapsed(),
        operator.journal.total_applies(),
        operator.metric("controller_runtime_reconcile_total"),
    );
    operator.stop().await
}
