//! The benchmark driver: a `TestEnv`, the four implementations as child processes, the tables.

use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use kuberator::{
    events::{EmitEvent, EventData, EventRecorder},
    testing::TestEnv,
};
use serde_json::json;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::{Child, ChildStdin, Command},
    sync::watch,
};

use super::{
    BenchObject, DEFAULT_CONCURRENCY, NAMESPACE, RECONCILES_LINE, bench_object, is_observed,
    limit::Created,
    metrics::{RequestCounts, RequestKind, gauge},
    proc::{self, Memory},
};

/// One of the four implementations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impl {
    /// `#[kuberator::operator]`.
    Kuberator,
    /// A raw kube-rs `Controller`.
    Raw,
    /// Go's controller-runtime (its own binary, see [`super::controller_runtime`]).
    ControllerRuntime,
    /// A plain client doing the same writes, fed by the driver.
    Limit,
}

impl Impl {
    /// All four, in table order.
    pub const ALL: [Impl; 4] = [
        Impl::Kuberator,
        Impl::Raw,
        Impl::ControllerRuntime,
        Impl::Limit,
    ];

    /// The name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Kuberator => "kuberator",
            Impl::Raw => "raw",
            Impl::ControllerRuntime => "controller-runtime",
            Impl::Limit => "limit",
        }
    }

    /// Parses a name.
    pub fn parse(name: &str) -> Option<Self> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether the implementation watches (and so is ready only once its watch is open).
    fn watches(self) -> bool {
        !matches!(self, Impl::Limit)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Object counts of the throughput runs (empty: no throughput runs).
    pub counts: Vec<usize>,
    /// The implementations of the throughput runs.
    pub impls: Vec<Impl>,
    /// Reconciles at once in every implementation; also the driver's create concurrency.
    pub concurrency: u16,
    /// Runs per implementation and N (the table shows the median by rate).
    pub rounds: usize,
    /// Cached objects of the memory comparison (0: skipped).
    pub memory_objects: usize,
    /// Emits of the event storm (0: skipped).
    pub storm_emits: usize,
    /// Sites (and as many backups) of the manager comparison (0: skipped).
    pub manager_objects: usize,
    /// Objects of the reconciles-per-generation row with owned children (0: skipped).
    pub generations_objects: usize,
    /// Objects of the sharding rows (0: skipped).
    pub shard_objects: usize,
    /// Replica counts of the sharding rows.
    pub shard_replicas: Vec<usize>,
    /// Simulated I/O per reconcile in the sharding rows, in milliseconds.
    pub shard_work_ms: u64,
    /// The `bench_operator` binary (default: next to this one, built with cargo first).
    pub operator_bin: Option<PathBuf>,
    /// The controller-runtime binary (default: built and cached by its `build.sh`).
    pub controller_runtime_bin: Option<PathBuf>,
    /// Sizes of the scale runs (empty: none; `--scale`: 10,000, 50,000, 100,000).
    pub scale_sizes: Vec<usize>,
    /// Seconds after which the scale runs start no further size.
    pub scale_budget_secs: u64,
    /// Creates of each kind of the admission-latency row (0: skipped).
    pub webhook_requests: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            counts: vec![200, 1000, 5000],
            impls: Impl::ALL.to_vec(),
            concurrency: DEFAULT_CONCURRENCY,
            rounds: 1,
            memory_objects: 10_000,
            storm_emits: 10_000,
            manager_objects: 500,
            generations_objects: 500,
            shard_objects: 3000,
            shard_replicas: vec![1, 2, 4],
            shard_work_ms: 20,
            operator_bin: None,
            controller_runtime_bin: None,
            scale_sizes: Vec::new(),
            scale_budget_secs: 1800,
            webhook_requests: 1000,
        }
    }
}

impl Options {
    /// `--scale`: only the scale runs, 10,000, 50,000 and 100,000 objects.
    pub fn scale() -> Self {
        Self {
            counts: Vec::new(),
            memory_objects: 0,
            storm_emits: 0,
            manager_objects: 0,
            generations_objects: 0,
            shard_objects: 0,
            scale_sizes: vec![10_000, 50_000, 100_000],
            webhook_requests: 0,
            ..Self::default()
        }
    }

    /// `--webhooks`: only the admission-latency row (1000 creates of each kind).
    pub fn webhooks() -> Self {
        Self {
            counts: Vec::new(),
            memory_objects: 0,
            storm_emits: 0,
            manager_objects: 0,
            generations_objects: 0,
            shard_objects: 0,
            ..Self::default()
        }
    }

    /// Whether anything but the admission-latency row runs (they need `bench_operator`).
    fn needs_operator(&self) -> bool {
        !self.counts.is_empty()
            || self.memory_objects > 0
            || self.storm_emits > 0
            || self.manager_objects > 0
            || self.generations_objects > 0
            || (self.shard_objects > 0 && !self.shard_replicas.is_empty())
            || !self.scale_sizes.is_empty()
    }

    /// `--quick`: a smoke run in about a minute.
    pub fn quick() -> Self {
        Self {
            counts: vec![200],
            memory_objects: 1000,
            storm_emits: 2000,
            manager_objects: 100,
            generations_objects: 100,
            shard_objects: 300,
            shard_replicas: vec![1, 2, 4],
            shard_work_ms: 20,
            webhook_requests: 200,
            ..Self::default()
        }
    }
}

/// The usage text.
pub const USAGE: &str = "\
usage: bench [--quick | --scale | --webhooks] [--n 200,1000,5000] [--impls kuberator,raw,controller-runtime,limit]
             [--concurrency 8]
             [--rounds 1]
             [--memory-objects 10000] [--storm-emits 10000] [--manager-objects 500]
             [--generations-objects 500] [--shard-objects 3000] [--shard-replicas 1,2,4] [--shard-work-ms 20]
             [--operator-bin PATH] [--controller-runtime-bin PATH]
             [--scale-sizes 10000,50000,100000] [--scale-budget-secs 1800]
             [--webhook-requests 1000]

  --quick            N=200, 1000 objects for memory, 2000 storm emits, 100 manager sites
                     (a smoke run)
  --n LIST           object counts of the throughput runs (0 or empty: none)
  --impls LIST       implementations of the throughput runs
  --concurrency C    reconciles at once in every implementation (default 8)
  --rounds R         runs per implementation and N, order rotated; the median is shown
  --memory-objects M objects for the RSS comparison (0: skip)
  --storm-emits E    identical emits of the event storm (0: skip)
  --manager-objects S sites (and S backups) of the manager-vs-separate-operators row (0: skip)
  --generations-objects G  objects of the reconciles-per-generation row with owned
                     children, two generations each (0: skip; --quick: 100)
  --shard-objects N  objects of the sharding rows (0: skip; --quick: 300)
  --shard-replicas L replica counts of the sharding rows (default 1,2,4)
  --shard-work-ms W  simulated I/O per reconcile in the sharding rows (default 20)
  --scale            only the scale runs (sizes below; not part of the default run)
  --scale-sizes LIST pre-created objects of the scale runs (default with --scale:
                     10000,50000,100000; 100,000 take minutes to create)
  --scale-budget-secs B  start no further scale size after B seconds (default 1800)
  --webhooks         only the admission-latency row (not part of --scale)
  --webhook-requests R  creates of each kind of the admission-latency row: without webhooks
                     and through kuberator's validating + mutating webhook (0: skip;
                     --quick: 200)
  --operator-bin P   the bench_operator binary (default: built with cargo, next to this one)
  --controller-runtime-bin P  the Go baseline (default: built and cached by
                     examples/bench/controller-runtime/build.sh with the machine's Go)";

/// Parses the command line (without the program name).
///
/// # Errors
/// An unknown flag or a malformed value, with the usage.
pub fn parse_args(args: &[String]) -> anyhow::Result<Options> {
    let mut options = if args.iter().any(|a| a == "--quick") {
        Options::quick()
    } else if args.iter().any(|a| a == "--scale") {
        Options::scale()
    } else if args.iter().any(|a| a == "--webhooks") {
        Options::webhooks()
    } else {
        Options::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        if flag == "--quick" || flag == "--scale" || flag == "--webhooks" {
            continue;
        }
        if flag == "--help" || flag == "-h" {
            bail!("{USAGE}");
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| anyhow!("`{flag}` needs a value\n{USAGE}"))?,
        };
        match flag {
            "--n" => {
                options.counts = value
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .filter(|n| !matches!(n, Ok(0)))
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("`--n {value}`"))?;
            }
            "--impls" => {
                options.impls = value
                    .split(',')
                    .map(|s| {
                        Impl::parse(s.trim()).ok_or_else(|| anyhow!("unknown implementation `{s}`"))
                    })
                    .collect::<anyhow::Result<_>>()?;
            }
            "--concurrency" => options.concurrency = value.parse::<u16>()?.max(1),
            "--rounds" => options.rounds = value.parse::<usize>()?.max(1),
            "--memory-objects" => options.memory_objects = value.parse()?,
            "--storm-emits" => options.storm_emits = value.parse()?,
            "--manager-objects" => options.manager_objects = value.parse()?,
            "--generations-objects" => options.generations_objects = value.parse()?,
            "--shard-objects" => options.shard_objects = value.parse()?,
            "--shard-replicas" => {
                options.shard_replicas = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--shard-work-ms" => options.shard_work_ms = value.parse()?,
            "--scale-sizes" => {
                options.scale_sizes = value
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("`--scale-sizes {value}`"))?;
            }
            "--scale-budget-secs" => options.scale_budget_secs = value.parse()?,
            "--webhook-requests" => options.webhook_requests = value.parse()?,
            "--operator-bin" => options.operator_bin = Some(value.into()),
            "--controller-runtime-bin" => options.controller_runtime_bin = Some(value.into()),
            _ => bail!("unknown argument `{arg}`\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Runs everything `options` asks for and prints the tables.
///
/// # Errors
/// The control plane does not start, a child fails, or a run times out.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let operator_bin = match options.needs_operator() {
        true => operator_binary(options.operator_bin.as_deref()).await?,
        false => PathBuf::new(),
    };
    let controller_runtime_bin = if options.impls.contains(&Impl::ControllerRuntime) {
        Some(super::controller_runtime::binary(options.controller_runtime_bin.as_deref()).await?)
    } else {
        None
    };
    let started = Instant::now();
    let env = TestEnv::builder()
        .crd::<BenchObject>()
        .timeout(Duration::from_secs(120))
        .start()
        .await
        .context("starting the control plane (run `make control-plane` first?)")?;
    let mut bench = Bench {
        observer: Observer::start(env.client()),
        env,
        operator_bin,
        controller_runtime_bin,
        concurrency: options.concurrency,
        ready_timeout: Duration::from_secs(30),
    };
    print_header(&bench.env).await;
    println!(
        "concurrency {} (reconciles at once in every implementation, and the driver's creates)\n",
        options.concurrency
    );

    // Warm the API server up (connections, caches, etcd) without counting it.
    if !options.counts.is_empty() {
        bench.throughput(Impl::Limit, 100, "warmup").await?;
    }
    let mut summary = Vec::new();
    for (index, &n) in options.counts.iter().enumerate() {
        let mut runs: Vec<RunResult> = Vec::new();
        for round in 0..options.rounds {
            // Rotate the order so that no implementation always runs first, or always right
            // after the same one, while other load on the machine comes and goes.
            let mut order = options.impls.clone();
            let len = order.len().max(1);
            order.rotate_left((index + round) % len);
            for implementation in order {
                let result = bench
                    .throughput(implementation, n, &format!("r{index}x{round}"))
                    .await?;
                runs.push(result);
            }
        }
        let results = medians(&options.impls, runs, options.rounds);
        println!("{}", throughput_table(n, &results));
        summary.push((n, results));
    }
    if options.memory_objects > 0 {
        let memory = bench.memory(options.memory_objects).await?;
        println!("{}", memory_table(options.memory_objects, &memory));
    }
    if options.generations_objects > 0 {
        let mut results = Vec::new();
        for implementation in options.impls.iter().filter(|i| i.watches()) {
            results.push(
                bench
                    .generations(*implementation, options.generations_objects)
                    .await?,
            );
        }
        println!(
            "{}",
            super::children::generations_table(options.generations_objects, &results)
        );
    }
    if options.storm_emits > 0 {
        let storms = bench.storm(options.storm_emits).await?;
        println!("{}", storm_table(options.storm_emits, &storms));
    }
    if options.manager_objects > 0 {
        let results = super::manager::compare(
            &bench.operator_bin,
            options.manager_objects,
            options.concurrency,
            options.rounds,
        )
        .await?;
        println!(
            "{}",
            super::manager::manager_table(options.manager_objects, &results)
        );
    }
    if options.shard_objects > 0 && !options.shard_replicas.is_empty() {
        let work = Duration::from_millis(options.shard_work_ms);
        let results = super::shards::compare(
            &bench.operator_bin,
            options.shard_objects,
            &options.shard_replicas,
            work,
            options.concurrency,
        )
        .await?;
        println!(
            "{}",
            super::shards::shards_table(options.shard_objects, work, &results)
        );
    }
    if !options.scale_sizes.is_empty() {
        bench.ready_timeout = Duration::from_secs(600);
        let budget = Duration::from_secs(options.scale_budget_secs);
        let mut results = Vec::new();
        for &m in &options.scale_sizes {
            if started.elapsed() > budget {
                println!("scale: {m} objects skipped, the {budget:?} budget is spent\n");
                continue;
            }
            for implementation in options.impls.iter().filter(|i| i.watches()) {
                results.push(bench.scale_run(*implementation, m).await?);
                // Print as we go: a long run shows what it has so far.
                eprintln!("{}", super::scale::scale_table(&results));
            }
        }
        println!("{}", super::scale::scale_table(&results));
    }
    if options.webhook_requests > 0 {
        let results = super::webhooks::measure(&bench.env, options.webhook_requests).await?;
        println!(
            "{}",
            super::webhooks::webhooks_table(options.webhook_requests, &results)
        );
    }
    if !summary.is_empty() {
        println!("{}", ratio_summary(&summary));
    }
    println!("total time {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The `bench_operator` binary: the given one, or the one next to this binary after
/// `cargo build` (when run through cargo, which sets `CARGO`).
async fn operator_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| anyhow!("{} has no folder", exe.display()))?;
    let path = dir.join("bench_operator");
    if let Ok(cargo) = std::env::var("CARGO") {
        let release = dir.file_name().is_some_and(|d| d == "release");
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "kuberator-examples",
            "--bin",
            "bench_operator",
        ]);
        if release {
            build.arg("--release");
        }
        let status = build.status().await?;
        if !status.success() {
            bail!("building bench_operator failed: {status}");
        }
    }
    if !path.exists() {
        bail!(
            "{} is missing: build it with `cargo build --release -p kuberator-examples --bin bench_operator`",
            path.display()
        );
    }
    Ok(path)
}

pub(super) struct Bench {
    pub(super) observer: Observer,
    pub(super) env: TestEnv,
    operator_bin: PathBuf,
    controller_runtime_bin: Option<PathBuf>,
    pub(super) concurrency: u16,
    /// How long a started implementation may take to open its watch.
    pub(super) ready_timeout: Duration,
}

/// One throughput run's numbers.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Which implementation.
    pub implementation: Impl,
    /// Objects.
    pub n: usize,
    /// First create sent → last status observed.
    pub wall: Duration,
    /// Create sent → status observed, per object, sorted.
    pub latencies: Vec<Duration>,
    /// Reconcile calls the process reported.
    pub reconciles: Option<u64>,
    /// The operator's memory when all statuses were observed.
    pub memory: Memory,
    /// Requests the API server counted during the run (the driver's creates included).
    pub requests: RequestCounts,
    /// CPU seconds: the operator's, the API server's and etcd's, during the run.
    pub cpu: Cpu,
}

/// CPU seconds spent during a run, by process.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// The implementation's process (start-up included).
    pub operator: f64,
    /// kube-apiserver.
    pub apiserver: f64,
    /// etcd.
    pub etcd: f64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    /// Resource requests other than the driver's creates.
    fn operator_requests(&self) -> f64 {
        self.requests.resource_requests() - self.n as f64
    }

    /// Writes other than the driver's creates.
    fn operator_writes(&self) -> f64 {
        self.requests.sum(RequestKind::is_write) - self.n as f64
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Per implementation, the run with the median rate (and the rates of all rounds, printed).
fn medians(impls: &[Impl], runs: Vec<RunResult>, rounds: usize) -> Vec<RunResult> {
    let mut results = Vec::new();
    for implementation in impls {
        let mut mine: Vec<RunResult> = runs
            .iter()
            .filter(|r| r.implementation == *implementation)
            .cloned()
            .collect();
        mine.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
        if rounds > 1 {
            let rates: Vec<String> = mine.iter().map(|r| format!("{:.0}", r.rate())).collect();
            eprintln!(
                "[bench] {} objects/s over {rounds} rounds: {} (median shown)",
                implementation.name(),
                rates.join(", ")
            );
        }
        if !mine.is_empty() {
            results.push(mine.swap_remove(mine.len() / 2));
        }
    }
    results
}

/// A started `bench_operator` child.
pub(super) struct Operator {
    child: Child,
    pid: u32,
    stdin: Option<ChildStdin>,
    stdout: tokio::task::JoinHandle<Vec<String>>,
}

impl Operator {
    /// The child's process id.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    pub(super) async fn stop(mut self) -> anyhow::Result<Option<u64>> {
        // The limit stops by itself once stdin closes and its last writes are done.
        if let Some(stdin) = self.stdin.take() {
            drop(stdin);
            if let Ok(status) =
                tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await
            {
                status?;
                let lines = self.stdout.await?;
                return Ok(reconcile_count(&lines));
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    tracing::warn!(%status, "operator exited with an error");
                }
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("operator {} did not stop within 60 s of SIGTERM", self.pid);
            }
        }
        let lines = self.stdout.await?;
        Ok(reconcile_count(&lines))
    }
}

fn reconcile_count(lines: &[String]) -> Option<u64> {
    lines
        .iter()
        .find_map(|line| line.strip_prefix(RECONCILES_LINE)?.trim().parse().ok())
}

impl Bench {
    async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.env.metrics_text().await?)
    }

    pub(super) async fn requests(&self) -> anyhow::Result<RequestCounts> {
        Ok(RequestCounts::parse(&self.metrics().await?))
    }

    /// Open watches on the bench resource, as the API server counts them.
    pub(super) async fn open_watches(&self) -> anyhow::Result<f64> {
        Ok(gauge(
            &self.metrics().await?,
            "apiserver_longrunning_requests",
            &["resource=\"benchobjects\"", "verb=\"WATCH\""],
        ))
    }

    async fn spawn(&self, implementation: Impl) -> anyhow::Result<Operator> {
        self.spawn_with(implementation, &[]).await
    }

    /// Starts `implementation` with `extra` arguments; returns once it watches.
    pub(super) async fn spawn_with(
        &self,
        implementation: Impl,
        extra: &[&str],
    ) -> anyhow::Result<Operator> {
        let watches = self.open_watches().await?;
        let mut command = match (implementation, &self.controller_runtime_bin) {
            (Impl::ControllerRuntime, Some(bin)) => Command::new(bin),
            (Impl::ControllerRuntime, None) => bail!("the controller-runtime binary was not built"),
            _ => {
                let mut command = Command::new(&self.operator_bin);
                command.arg(implementation.name());
                command
            }
        };
        let mut child = command
            .arg("--kubeconfig")
            .arg(self.env.kubeconfig_path())
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .args(extra)
            .stdin(if implementation.watches() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.operator_bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("child exited at once"))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let stdout = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut all = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                all.push(line);
            }
            all
        });
        if implementation.watches() {
            // Ready once its watch is open (the initial list is done then).
            let deadline = Instant::now() + self.ready_timeout;
            while self.open_watches().await? <= watches {
                if Instant::now() > deadline {
                    bail!(
                        "{} opened no watch within {:?}",
                        implementation.name(),
                        self.ready_timeout
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Operator {
            child,
            pid,
            stdin,
            stdout,
        })
    }

    /// Creates `names` with the driver's concurrency; returns when each create was sent. With
    /// `stdin`, announces each created object on it (for the limit).
    pub(super) async fn create(
        &self,
        names: &[String],
        stdin: Option<&mut ChildStdin>,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let api: Api<BenchObject> = Api::namespaced(self.env.client(), NAMESPACE);
        let stdin = stdin.map(tokio::sync::Mutex::new);
        let stdin = stdin.as_ref();
        let api = &api;
        let sent: Vec<(String, Instant)> = futures::stream::iter(names.iter().cloned())
            .map(|name| async move {
                let object = bench_object(&name);
                let at = Instant::now();
                let created = api.create(&PostParams::default(), &object).await?;
                if let Some(stdin) = stdin {
                    let line = Created {
                        name: created.name_any(),
                        uid: created.uid().unwrap_or_default(),
                        resource_version: created.resource_version().unwrap_or_default(),
                        generation: created.metadata.generation.unwrap_or(1),
                    }
                    .to_line();
                    stdin.lock().await.write_all(line.as_bytes()).await?;
                }
                anyhow::Ok((name, at))
            })
            .buffer_unordered(usize::from(self.concurrency))
            .try_collect()
            .await?;
        Ok(sent.into_iter().collect())
    }

    /// One throughput run: start the implementation, create `n` objects, wait for every
    /// status, stop it, clean up.
    async fn throughput(
        &self,
        implementation: Impl,
        n: usize,
        tag: &str,
    ) -> anyhow::Result<RunResult> {
        let prefix = format!("{}-{n}-{tag}-", implementation.name());
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let mut observed = self.observer.track(&prefix);
        eprintln!("[bench] {}: {n} objects …", implementation.name());
        let before = self.requests().await?;
        let server_cpu = |env: &TestEnv| -> anyhow::Result<(f64, f64)> {
            Ok((
                proc::cpu_seconds(env.apiserver_pid())?,
                proc::cpu_seconds(env.etcd_pid())?,
            ))
        };
        let (apiserver_before, etcd_before) = server_cpu(&self.env)?;
        let mut operator = self.spawn(implementation).await?;
        let start = Instant::now();
        let sent = self.create(&names, operator.stdin.as_mut()).await?;
        let timeout = Duration::from_secs(60) + Duration::from_millis(40) * n as u32;
        let waited = tokio::time::timeout(timeout, observed.wait_for(|seen| *seen >= n)).await;
        let memory = proc::memory(operator.pid)?;
        let (apiserver_after, etcd_after) = server_cpu(&self.env)?;
        let cpu = Cpu {
            operator: proc::cpu_seconds(operator.pid)?,
            apiserver: apiserver_after - apiserver_before,
            etcd: etcd_after - etcd_before,
        };
        let seen = self.observer.take();
        if waited.is_err() {
            operator.stop().await?;
            bail!(
                "{}: only {} of {n} statuses observed after {timeout:?}",
                implementation.name(),
                seen.len()
            );
        }
        let reconciles = operator.stop().await?;
        let after = self.requests().await?;
        let end = seen.values().max().copied().unwrap_or(start);
        let mut latencies: Vec<Duration> = sent
            .iter()
            .filter_map(|(name, at)| Some(seen.get(name)?.saturating_duration_since(*at)))
            .collect();
        latencies.sort();
        self.cleanup().await?;
        Ok(RunResult {
            implementation,
            n,
            wall: end.saturating_duration_since(start),
            latencies,
            reconciles,
            memory,
            requests: after.since(&before),
            cpu,
        })
    }

    /// Deletes every bench object (finalizers removed first) and every event, and waits.
    pub(super) async fn cleanup(&self) -> anyhow::Result<()> {
        let api: Api<BenchObject> = Api::namespaced(self.env.client(), NAMESPACE);
        let objects = api.list_metadata(&ListParams::default()).await?;
        let api = &api;
        let remove = json!({ "metadata": { "finalizers": null } });
        let remove = &remove;
        futures::stream::iter(objects.items)
            .filter(|o| futures::future::ready(!o.finalizers().is_empty()))
            .map(|o| async move {
                match api
                    .patch_metadata(
                        &o.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(remove),
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(32)
            .try_collect::<Vec<()>>()
            .await?;
        api.delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let events: Api<K8sEvent> = Api::namespaced(self.env.client(), NAMESPACE);
        events
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left = api
                .list_metadata(&ListParams::default().limit(1))
                .await?
                .items
                .len();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("bench objects still there 180 s after deleting them");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// RSS with `m` cached objects: create them with no operator running, start the operator,
    /// wait until it reconciled all, let it settle, read its memory.
    async fn memory(&self, m: usize) -> anyhow::Result<Vec<(Impl, Memory, Option<u64>)>> {
        let mut results = Vec::new();
        let implementations = [Impl::Kuberator, Impl::Raw, Impl::ControllerRuntime]
            .into_iter()
            .filter(|i| *i != Impl::ControllerRuntime || self.controller_runtime_bin.is_some());
        for implementation in implementations {
            let prefix = format!("mem-{}-", implementation.name());
            let names: Vec<String> = (0..m).map(|i| format!("{prefix}{i}")).collect();
            let mut observed = self.observer.track(&prefix);
            eprintln!(
                "[bench] memory: creating {m} objects for {} …",
                implementation.name()
            );
            self.create(&names, None).await?;
            let operator = self.spawn(implementation).await?;
            let timeout = Duration::from_secs(60) + Duration::from_millis(40) * m as u32;
            if tokio::time::timeout(timeout, observed.wait_for(|seen| *seen >= m))
                .await
                .is_err()
            {
                operator.stop().await?;
                bail!(
                    "memory: {} did not reconcile {m} objects",
                    implementation.name()
                );
            }
            // Steady state: no reconcile left, allocator settled.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let memory = proc::memory(operator.pid)?;
            self.observer.take();
            let reconciles = operator.stop().await?;
            self.cleanup().await?;
            results.push((implementation, memory, reconciles));
        }
        Ok(results)
    }

    /// 10,000 identical emits on one object through kuberator's `EventRecorder` and through
    /// kube-rs' `Recorder`: writes, time and the final `series.count`.
    async fn storm(&self, emits: usize) -> anyhow::Result<Vec<StormResult>> {
        let api: Api<BenchObject> = Api::namespaced(self.env.client(), NAMESPACE);
        let mut results = Vec::new();
        for recorder in ["kuberator EventRecorder", "kube-rs Recorder"] {
            eprintln!("[bench] storm: {emits} emits through the {recorder} …");
            let name = format!("storm-{}", results.len());
            let object = api
                .create(&PostParams::default(), &bench_object(&name))
                .await?;
            let before = self.requests().await?;
            let start = Instant::now();
            if results.is_empty() {
                let events = EventRecorder::new(self.env.client(), "bench.kuberator.dev/storm");
                for _ in 0..emits {
                    events
                        .try_emit(
                            &object,
                            EventData::warning("Storm", "Reconcile").note("the same failure"),
                        )
                        .await?;
                }
                events.flush().await?;
            } else {
                use kube::runtime::events::{Event, EventType, Recorder, Reporter};
                let recorder = Recorder::new(
                    self.env.client(),
                    Reporter {
                        controller: "bench.kuberator.dev/storm".into(),
                        instance: Some("storm".into()),
                    },
                );
                let reference = object.object_ref(&());
                for _ in 0..emits {
                    recorder
                        .publish(
                            &Event {
                                type_: EventType::Warning,
                                reason: "Storm".into(),
                                note: Some("the same failure".into()),
                                action: "Reconcile".into(),
                                secondary: None,
                            },
                            &reference,
                        )
                        .await?;
                }
            }
            let elapsed = start.elapsed();
            let requests = self.requests().await?.since(&before);
            let (events, count) = series_count(&self.env.client(), &object).await?;
            results.push(StormResult {
                recorder,
                elapsed,
                writes: requests.sum(|k| k.resource == "events" && k.is_write()),
                events,
                count,
            });
        }
        self.cleanup().await?;
        Ok(results)
    }
}

/// The Events about `object` and the sum of their counts (`series.count`, or 1 without series).
async fn series_count(client: &Client, object: &BenchObject) -> anyhow::Result<(usize, i64)> {
    let uid = object.uid();
    let events: Api<K8sEvent> = Api::namespaced(client.clone(), NAMESPACE);
    let about: Vec<K8sEvent> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.clone()) == uid)
        .collect();
    let count = about
        .iter()
        .map(|e| e.series.as_ref().map_or(1, |s| i64::from(s.count)))
        .sum();
    Ok((about.len(), count))
}

/// One recorder's storm.
#[derive(Clone, Debug)]
pub struct StormResult {
    /// Which recorder.
    pub recorder: &'static str,
    /// The emits and the final flush.
    pub elapsed: Duration,
    /// Event writes the API server counted.
    pub writes: f64,
    /// Events about the object.
    pub events: usize,
    /// Their summed `series.count`.
    pub count: i64,
}

/// Records when the driver's own watch first sees each tracked object with its status observed.
pub(super) struct Observer {
    state: Arc<Mutex<Tracking>>,
}

struct Tracking {
    prefix: String,
    /// Objects count once their observed generation is at least this one.
    min_generation: i64,
    seen: HashMap<String, Instant>,
    count: watch::Sender<usize>,
}

impl Observer {
    fn start(client: Client) -> Self {
        let (count, _) = watch::channel(0);
        let state = Arc::new(Mutex::new(Tracking {
            prefix: "\0".into(),
            min_generation: 0,
            seen: HashMap::new(),
            count,
        }));
        let tracking = state.clone();
        let api: Api<BenchObject> = Api::namespaced(client, NAMESPACE);
        tokio::spawn(async move {
            let mut objects = std::pin::pin!(
                watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
            );
            while let Some(object) = objects.next().await {
                let Ok(object) = object else { continue };
                let now = Instant::now();
                if !is_observed(&object) {
                    continue;
                }
                let mut tracking = lock(&tracking);
                let name = object.name_any();
                if name.starts_with(&tracking.prefix)
                    && object.metadata.generation.unwrap_or_default() >= tracking.min_generation
                    && !tracking.seen.contains_key(&name)
                {
                    tracking.seen.insert(name, now);
                    let seen = tracking.seen.len();
                    tracking.count.send_replace(seen);
                }
            }
        });
        Self { state }
    }

    /// Starts tracking objects named `prefix…`; the receiver counts the ones seen.
    fn track(&self, prefix: &str) -> watch::Receiver<usize> {
        self.track_generation(prefix, 0)
    }

    /// Like `track`, counting an object only once it is observed at `min_generation` or later.
    pub(super) fn track_generation(
        &self,
        prefix: &str,
        min_generation: i64,
    ) -> watch::Receiver<usize> {
        let mut tracking = lock(&self.state);
        tracking.prefix = prefix.to_owned();
        tracking.min_generation = min_generation;
        tracking.seen.clear();
        tracking.count.send_replace(0);
        tracking.count.subscribe()
    }

    /// Stops tracking; returns when each object was seen.
    pub(super) fn take(&self) -> HashMap<String, Instant> {
        let mut tracking = lock(&self.state);
        tracking.prefix = "\0".into();
        std::mem::take(&mut tracking.seen)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn print_header(env: &TestEnv) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
        );
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let apiserver = env
        .get_text("/version")
        .await
        .ok()
        .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
        .and_then(|v| v["gitVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let version = |name: &str| {
        lock.split("[[package]]")
            .find(|p| p.contains(&format!("name = \"{name}\"\n")))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map_or_else(|| "?".into(), |v| v.trim_end_matches('"').to_owned())
    };
    println!("# kuberator benchmarks");
    println!(
        "machine: {cores} cores ({model}), {memory} memory; {rustc}; kube {}, k8s-openapi {}; \
         kube-apiserver {apiserver}; control plane up in {:.1} s",
        version("kube"),
        version("k8s-openapi"),
        env.started_in().as_secs_f64()
    );
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

/// Renders a Markdown table: header row, then rows.
pub(crate) fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}|",
        header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

/// The table of one N: a column per implementation and the ratios kuberator/raw,
/// kuberator/controller-runtime and kuberator/limit.
pub fn throughput_table(n: usize, results: &[RunResult]) -> String {
    let find = |i: Impl| results.iter().find(|r| r.implementation == i);
    let (k, raw, go, limit) = (
        find(Impl::Kuberator),
        find(Impl::Raw),
        find(Impl::ControllerRuntime),
        find(Impl::Limit),
    );
    type Metric = (&'static str, fn(&RunResult) -> f64, fn(f64) -> String);
    let metrics: [Metric; 11] = [
        (
            "wall time (s)",
            |r| r.wall.as_secs_f64(),
            |v| format!("{v:.2}"),
        ),
        ("objects/s (higher is better)", RunResult::rate, |v| {
            format!("{v:.0}")
        }),
        (
            "p50 create→status (ms)",
            |r| r.percentile(50.0).as_secs_f64() * 1000.0,
            |v| format!("{v:.0}"),
        ),
        (
            "p99 create→status (ms)",
            |r| r.percentile(99.0).as_secs_f64() * 1000.0,
            |v| format!("{v:.0}"),
        ),
        (
            "reconcile calls (ideal N)",
            |r| r.reconciles.map_or(f64::NAN, |c| c as f64),
            |v| format!("{v:.0}"),
        ),
        (
            "peak RSS (MiB)",
            |r| r.memory.hwm_kib as f64 / 1024.0,
            |v| format!("{v:.1}"),
        ),
        (
            "API requests (operator)",
            RunResult::operator_requests,
            |v| format!("{v:.0}"),
        ),
        ("API writes (operator)", RunResult::operator_writes, |v| {
            format!("{v:.0}")
        }),
        (
            "operator CPU (ms/object)",
            |r| r.cpu.operator * 1000.0 / r.n as f64,
            |v| format!("{v:.2}"),
        ),
        (
            "apiserver CPU (ms/object)",
            |r| r.cpu.apiserver * 1000.0 / r.n as f64,
            |v| format!("{v:.2}"),
        ),
        (
            "etcd CPU (ms/object)",
            |r| r.cpu.etcd * 1000.0 / r.n as f64,
            |v| format!("{v:.2}"),
        ),
    ];
    let cell = |r: Option<&RunResult>, f: fn(&RunResult) -> f64, show: fn(f64) -> String| {
        r.map_or_else(|| "-".into(), |r| show(f(r)))
    };
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|(name, f, show)| {
            let value = |r: Option<&RunResult>| r.map(f);
            let ratio_to = |other: Option<&RunResult>| match (value(k), value(other)) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            };
            vec![
                (*name).to_owned(),
                cell(k, *f, *show),
                cell(raw, *f, *show),
                cell(go, *f, *show),
                cell(limit, *f, *show),
                ratio_to(raw),
                ratio_to(go),
                ratio_to(limit),
            ]
        })
        .collect();
    let mut out = format!("## Throughput, N = {n}\n\n");
    out += &markdown(
        &[
            "",
            "kuberator",
            "raw kube-rs",
            "controller-runtime",
            "limit",
            "kuberator/raw",
            "kuberator/controller-runtime",
            "kuberator/limit",
        ],
        &rows,
    );
    out += "\nrequests by kind (operator's, plus the driver's N creates):\n";
    for r in results {
        let _ = writeln!(
            out,
            "- {}: {}",
            r.implementation.name(),
            r.requests.breakdown()
        );
    }
    out
}

/// The RSS comparison.
pub fn memory_table(m: usize, results: &[(Impl, Memory, Option<u64>)]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(i, mem, reconciles)| {
            vec![
                i.name().to_owned(),
                format!("{:.1}", mem.rss_kib as f64 / 1024.0),
                format!("{:.1}", mem.hwm_kib as f64 / 1024.0),
                reconciles.map_or_else(|| "-".into(), |c| c.to_string()),
            ]
        })
        .collect();
    let mut out = format!("## Memory with {m} cached objects (steady state)\n\n");
    out += &markdown(
        &["", "VmRSS (MiB)", "VmHWM (MiB)", "reconcile calls"],
        &rows,
    );
    let rss = |i: Impl| {
        results
            .iter()
            .find(|(r, ..)| *r == i)
            .map(|(_, mem, _)| mem.rss_kib as f64)
    };
    if let Some(k) = rss(Impl::Kuberator) {
        out += "\n";
        for other in [Impl::Raw, Impl::ControllerRuntime] {
            if let Some(b) = rss(other) {
                let _ = writeln!(out, "kuberator/{} RSS: {}", other.name(), ratio(k, b));
            }
        }
    }
    out
}

/// The event storm comparison.
pub fn storm_table(emits: usize, results: &[StormResult]) -> String {
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.recorder.to_owned(),
                format!("{:.0}", r.writes),
                r.events.to_string(),
                r.count.to_string(),
                ms(r.elapsed),
            ]
        })
        .collect();
    let mut out = format!("## Event storm: {emits} identical emits on one object\n\n");
    out += &markdown(
        &[
            "recorder",
            "API writes",
            "Events",
            "final series.count",
            "time (ms)",
        ],
        &rows,
    );
    out
}

/// The throughput goals at each N.
pub fn ratio_summary(summary: &[(usize, Vec<RunResult>)]) -> String {
    let mut rows = Vec::new();
    for (n, results) in summary {
        let find = |i: Impl| results.iter().find(|r| r.implementation == i);
        let rate = |i| find(i).map(RunResult::rate);
        let pair = |other| match (rate(Impl::Kuberator), rate(other)) {
            (Some(a), Some(b)) => ratio(a, b),
            _ => "-".into(),
        };
        let calls = find(Impl::Kuberator)
            .and_then(|r| r.reconciles)
            .map_or_else(|| "-".into(), |c| format!("{c} (N = {n})"));
        rows.push(vec![
            n.to_string(),
            pair(Impl::Raw),
            pair(Impl::ControllerRuntime),
            pair(Impl::Limit),
            calls,
        ]);
    }
    let mut out = "## Throughput ratios (goals: kuberator/raw ≥ 0.95, kuberator/controller-runtime ≥ 1.5, kuberator/limit ≥ 0.8 at N = 1000, 5000; reconcile calls = N)\n\n".to_owned();
    out += &markdown(
        &[
            "N",
            "kuberator/raw",
            "kuberator/controller-runtime",
            "kuberator/limit",
            "kuberator reconcile calls",
        ],
        &rows,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn controller_runtime_is_an_implementation() {
        let options = parse_args(&args("--impls kuberator,controller-runtime")).unwrap();
        assert_eq!(options.impls, [Impl::Kuberator, Impl::ControllerRuntime]);
        assert_eq!(Impl::ControllerRuntime.name(), "controller-runtime");
        assert!(Impl::ControllerRuntime.watches());
        assert_eq!(parse_args(&[]).unwrap().impls, Impl::ALL);
    }

    #[test]
    fn scale_runs_only_the_scale_sizes() {
        let options = parse_args(&args("--scale")).unwrap();
        assert_eq!(options.scale_sizes, [10_000, 50_000, 100_000]);
        assert!(options.counts.is_empty());
        assert_eq!(
            (
                options.memory_objects,
                options.generations_objects,
                options.storm_emits
            ),
            (0, 0, 0)
        );
        let options = parse_args(&args("--scale --scale-sizes 1000,10000")).unwrap();
        assert_eq!(options.scale_sizes, [1000, 10_000]);
        assert!(parse_args(&args("--scale-sizes ten")).is_err());
        assert!(parse_args(&[]).unwrap().scale_sizes.is_empty());
        assert_eq!(options.webhook_requests, 0);
    }

    #[test]
    fn webhooks_runs_only_the_admission_latency_row() {
        let options = parse_args(&args("--webhooks")).unwrap();
        assert_eq!(options.webhook_requests, 1000);
        assert!(!options.needs_operator());
        let options = parse_args(&args("--webhooks --webhook-requests 300")).unwrap();
        assert_eq!(options.webhook_requests, 300);
        let full = parse_args(&[]).unwrap();
        assert!(full.needs_operator());
        assert_eq!(full.webhook_requests, 1000);
        assert_eq!(parse_args(&args("--quick")).unwrap().webhook_requests, 200);
    }
}
