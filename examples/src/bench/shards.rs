//! The sharding rows: one kind's objects over 1, 2 and 4 replicas of a sharded operator
//! (`bench_operator shard`), each reconcile spending a fixed time in simulated I/O; throughput
//! per replica count and its ratio over one replica, and each replica's share.
//!
//! The objects are created first, each labelled with the owner rendezvous hashing gives it
//! among the replicas of the run (the state right after a rebalance), so the replicas start
//! straight into their own objects: the row measures sharded reconciling, not the claims.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use anyhow::{Context, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use kuberator::{
    Action, Operator, Reconciler,
    runtime::{Sharding, rendezvous},
    testing::TestEnv,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    time::Instant,
};

/// The shard group of the benchmark replicas.
pub const GROUP: &str = "bench";
/// The label every benchmark object carries.
const SELECTOR: &str = "kuberator-bench=shard";
/// What a replica prints after each reconcile, followed by the object's name.
const DONE: &str = "done ";

/// One run: `replicas` replicas over the objects.
#[derive(Debug)]
pub struct ShardResult {
    /// Replicas in the run.
    pub replicas: usize,
    /// Seconds from starting the replicas until every object was reconciled once.
    pub seconds: f64,
    /// Seconds from the first reconcile to the last (the replicas' start-up left out: process
    /// start, the initial list, the membership Leases settling).
    pub working_seconds: f64,
    /// Objects reconciled per replica.
    pub shares: Vec<usize>,
    /// Per replica, seconds from starting the replicas to its first and to its last reconcile
    /// (where each one's start-up ends, and whether one finishes late).
    pub spans: Vec<(f64, f64)>,
}

/// Runs 1, 2, 4 … replicas (`counts`) over `n` objects with `work` per reconcile.
///
/// # Errors
/// The control plane or a replica fails to start, or a run does not finish in time.
pub async fn compare(
    operator_bin: &std::path::Path,
    n: usize,
    counts: &[usize],
    work: Duration,
    concurrency: u16,
) -> anyhow::Result<Vec<ShardResult>> {
    let mut results = Vec::new();
    for &replicas in counts {
        eprintln!("[bench] shards: {replicas} replica(s) over {n} objects …");
        results.push(measure(operator_bin, n, replicas, work, concurrency).await?);
    }
    Ok(results)
}

fn member(index: usize) -> String {
    format!("bench-{index}")
}

async fn measure(
    operator_bin: &std::path::Path,
    n: usize,
    replicas: usize,
    work: Duration,
    concurrency: u16,
) -> anyhow::Result<ShardResult> {
    let env = TestEnv::builder()
        .timeout(Duration::from_secs(120))
        .start()
        .await
        .context("starting the control plane")?;
    let members: Vec<String> = (0..replicas).map(member).collect();
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let label = Sharding::new("default", GROUP).label_key();
    futures::stream::iter(0..n)
        .map(|i| {
            let (api, members, label) = (api.clone(), members.clone(), label.clone());
            async move {
                let name = format!("object-{i:05}");
                let owner = rendezvous(
                    members.iter().map(String::as_str),
                    &format!("default/{name}"),
                )
                .unwrap_or_default()
                .to_owned();
                let object = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name),
                        labels: Some(
                            [
                                ("kuberator-bench".to_owned(), "shard".to_owned()),
                                (label, owner),
                            ]
                            .into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &object).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;

    let start = Instant::now();
    let (done, mut lines) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut children = Vec::new();
    for (index, identity) in members.iter().enumerate() {
        let mut child = Command::new(operator_bin)
            .args(["shard", "--kubeconfig"])
            .arg(env.kubeconfig_path())
            .args(["--identity", identity])
            .args(["--work-ms", &work.as_millis().to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", operator_bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let done = done.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Some(name) = line.strip_prefix(DONE) {
                    let _ = done.send((index, name.to_owned()));
                }
            }
        });
        children.push(child);
    }
    drop(done);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = start + Duration::from_secs(300);
    let mut first = None;
    let mut spans = vec![(f64::NAN, f64::NAN); replicas];
    while seen.len() < n {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some((index, name))) => {
                let now = Instant::now();
                first.get_or_insert(now);
                let at = (now - start).as_secs_f64();
                let span = &mut spans[index];
                if span.0.is_nan() {
                    span.0 = at;
                }
                span.1 = at;
                seen.entry(name).or_insert(index);
            }
            Ok(None) => bail!("every replica exited before all objects were reconciled"),
            Err(_) => bail!("{} of {n} objects reconciled after 300 s", seen.len()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let working_seconds = first.map_or(seconds, |first| first.elapsed().as_secs_f64());
    let mut shares = vec![0; replicas];
    for index in seen.values() {
        shares[*index] += 1;
    }
    for child in &mut children {
        let _ = child.start_kill();
    }
    Ok(ShardResult {
        replicas,
        seconds,
        working_seconds,
        shares,
        spans,
    })
}

/// The rows as a table, with each run's throughput ratio over the first run: from the
/// replicas' start (the headline) and from their first reconcile (start-up left out).
pub fn shards_table(n: usize, work: Duration, results: &[ShardResult]) -> String {
    let mut out = format!(
        "sharding: {n} objects, {} ms of simulated I/O per reconcile\n\n| replicas | time to reconcile all | objects/s | ratio over 1 replica | first to last reconcile | ratio without start-up | shares | each replica's first–last reconcile |\n|---|---|---|---|---|---|---|---|\n",
        work.as_millis()
    );
    let base = results.first().map_or(1.0, |r| n as f64 / r.seconds);
    let working_base = results
        .first()
        .map_or(1.0, |r| n as f64 / r.working_seconds);
    for result in results {
        let rate = n as f64 / result.seconds;
        let working_rate = n as f64 / result.working_seconds;
        let spans: Vec<String> = result
            .spans
            .iter()
            .map(|(first, last)| format!("{first:.2}–{last:.2} s"))
            .collect();
        out.push_str(&format!(
            "| {} | {:.2} s | {:.0} | {:.2}× | {:.2} s | {:.2}× | {:?} | {} |\n",
            result.replicas,
            result.seconds,
            rate,
            rate / base,
            result.working_seconds,
            working_rate / working_base,
            result.shares,
            spans.join(", ")
        ));
    }
    out
}

/// A reconcile that waits `work` (the simulated I/O) and prints `done <name>`.
struct Work(Duration);

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Work {
    async fn reconcile(&self, object: std::sync::Arc<ConfigMap>) -> kuberator::Result<Action> {
        tokio::time::sleep(self.0).await;
        println!("{DONE}{}", object.name_any());
        Ok(Action::await_change())
    }
}

/// `bench_operator shard`: one member of the group [`GROUP`], until SIGTERM.
///
/// # Errors
/// The operator fails to start.
pub async fn run(
    client: Client,
    identity: String,
    work: Duration,
    concurrency: u16,
) -> anyhow::Result<()> {
    Operator::with_reconciler(client, Work(work))
        .namespaces(["default"])
        .label_selector(SELECTOR)
        .concurrency(concurrency)
        .sharding(Sharding::new("default", GROUP).identity(identity))
        .shutdown_on_signal()
        .run()
        .await?;
    Ok(())
}
