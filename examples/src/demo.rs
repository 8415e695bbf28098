//! The demo behind `make demo`: the [`StaticSite`](crate::static_site) operator on
//! a local control plane (etcd, kube-apiserver, kube-controller-manager), driven with kubectl as
//! a person would, told as a short story, and checked through the API at every step.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::{Api, ResourceExt};
use kuberator::IntoOperator;
use kuberator::runtime::LeaderElection;
use kuberator::testing::TestEnv;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
};

use crate::static_site::{FINALIZER, StaticSite, StaticSites};
use crate::webhooks as buckets;

/// What the demo saw, for tests and the summary.
#[derive(Debug, Default)]
pub struct Report {
    /// Sites published (phase `Published`) at the first check.
    pub published: usize,
    /// The error message recorded for the site that failed validation.
    pub validation_error: String,
    /// The `series.count` of the repeated `Published` event of `home` (1 per generation).
    pub published_event_count: u64,
    /// Whether the deleted site's children were garbage-collected.
    pub children_collected: bool,
    /// `/readyz` answered 200.
    pub ready: bool,
    /// The `controller_runtime_reconcile_total` lines scraped from `/metrics`.
    pub reconcile_metrics: Vec<String>,
    /// Who holds the operator's Lease.
    pub lease_holder: String,
    /// kubectl's error for a Bucket in an unknown region (the validating webhook's message).
    pub webhook_refusal: String,
    /// `spec.storageClass` of the stored Bucket, set by the mutating webhook.
    pub defaulted_storage_class: String,
    /// `spec` of the Bucket written as `v1alpha1`, read as `v1`.
    pub converted_spec: serde_json::Value,
    /// Wall time of the whole story.
    pub elapsed: Duration,
}

/// Options of the demo.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Leave the control plane and operator running; print how to reach them; stop on Ctrl-C.
    pub keep: bool,
    /// Print nothing but the summary.
    pub quiet: bool,
}

struct Story {
    quiet: bool,
    bold: bool,
    started: Instant,
    step: usize,
}

impl Story {
    fn step(&mut self, text: &str) {
        self.step += 1;
        if !self.quiet {
            let (on, off) = if self.bold {
                ("\x1b[1m", "\x1b[0m")
            } else {
                ("", "")
            };
            println!(
                "\n{on}[{:>5.1}s] {}. {text}{off}",
                self.started.elapsed().as_secs_f64(),
                self.step
            );
        }
    }

    fn say(&self, text: &str) {
        if !self.quiet {
            println!("  {text}");
        }
    }

    fn show(&self, command: &str, output: &str) {
        if !self.quiet {
            println!("  $ {command}");
            for line in output.lines() {
                println!("    {line}");
            }
        }
    }
}

const SITES: &str = r#"apiVersion: demo.kuberator.dev/v1
kind: StaticSite
metadata:
  name: home
spec:
  title: Home
  content: "<p>Welcome!</p>"
---
apiVersion: demo.kuberator.dev/v1
kind: StaticSite
metadata:
  name: blog
spec:
  title: Blog
  content: "<p>First post</p>"
  port: 8080
---
apiVersion: demo.kuberator.dev/v1
kind: StaticSite
metadata:
  name: shop
spec:
  title: Shop
  content: "<p>Everything must go</p>"
"#;

/// Runs `kubectl args…` (with `stdin` if given), returns its stdout; fails with its stderr.
async fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut command = env.kubectl();
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command.spawn().context("starting kubectl")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).await?;
        drop(pipe);
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn shown(env: &TestEnv, story: &Story, args: &[&str]) -> anyhow::Result<String> {
    let out = kubectl(env, args, None).await?;
    story.show(&format!("kubectl {}", args.join(" ")), &out);
    Ok(out)
}

/// A free port on 127.0.0.1 for the operator's health endpoint.
fn free_local_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A plain HTTP/1.1 GET, as `curl` would do it: the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((code, body.to_owned()))
}

/// The lines of `kubectl get -o yaml` output from `spec:` on (what `sed -n '/^spec:/,$p'` keeps).
fn from_spec(yaml: &str) -> String {
    yaml.lines()
        .skip_while(|line| *line != "spec:")
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `check` every 100 ms for up to 60 s.
async fn until<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the whole story; every claim it prints is checked through the API first.
///
/// # Errors
/// The first step whose result is not what the story says.
pub async fn run(options: Options) -> anyhow::Result<Report> {
    let mut story = Story {
        quiet: options.quiet,
        bold: std::io::IsTerminal::is_terminal(&std::io::stdout()),
        started: Instant::now(),
        step: 0,
    };
    let mut report = Report::default();

    story.step("Starting a local control plane: etcd, kube-apiserver, kube-controller-manager");
    // The CRD goes in before the controller-manager starts, so its garbage collector knows the
    // kind from its first discovery (it rediscovers only every 30 s).
    let env = TestEnv::builder()
        .controller_manager(true)
        .crd::<StaticSite>()
        .start()
        .await?;
    let version = env.kubectl_json(["version"]).await?;
    story.say(&format!(
        "kube-apiserver {} on {} (up in {:.1}s)",
        version["serverVersion"]["gitVersion"]
            .as_str()
            .unwrap_or("?"),
        env.server_url(),
        env.started_in().as_secs_f64()
    ));

    story.step("Installing the StaticSite CRD and starting the operator (#[kuberator::operator])");
    let (stop, stopped) = oneshot::channel::<()>();
    let health = free_local_addr()?;
    let operator = StaticSites
        .operator(env.client())?
        .health(health)
        .leader_election(
            LeaderElection::new(env.client(), "default", "staticsites-operator")
                .identity("demo-replica"),
        )
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let running = tokio::spawn(operator.run());
    let sites: Api<StaticSite> = Api::namespaced(env.client(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let services: Api<Service> = Api::namespaced(env.client(), "default");

    story.step("kubectl apply: three sites");
    let out = kubectl(&env, &["apply", "-f", "-"], Some(SITES)).await?;
    story.show("kubectl apply -f sites.yaml", &out);
    until("three published sites", || async {
        let list = sites.list(&Default::default()).await.ok()?;
        let published = list
            .items
            .iter()
            .filter(|s| s.status.as_ref().and_then(|st| st.phase.as_deref()) == Some("Published"))
            .count();
        (published == 3).then_some(())
    })
    .await?;
    report.published = 3;
    for site in sites.list(&Default::default()).await?.items {
        ensure!(
            site.finalizers().contains(&FINALIZER.to_owned()),
            "finalizer missing"
        );
    }
    shown(&env, &story, &["get", "staticsites"]).await?;
    shown(
        &env,
        &story,
        &[
            "get",
            "configmaps,services",
            "-l",
            "app.kubernetes.io/managed-by=kuberator-demo",
        ],
    )
    .await?;
    let wait = kubectl(
        &env,
        &[
            "wait",
            "--for=condition=Ready",
            "staticsite/home",
            "--timeout=30s",
        ],
        None,
    )
    .await?;
    story.show("kubectl wait --for=condition=Ready staticsite/home", &wait);

    story.step("Changing home's title: a new generation, reconciled once more");
    let out = kubectl(
        &env,
        &[
            "patch",
            "staticsite",
            "home",
            "--type=merge",
            "-p",
            r#"{"spec":{"title":"Home, sweet home"}}"#,
        ],
        None,
    )
    .await?;
    story.show(
        "kubectl patch staticsite home -p '{\"spec\":{\"title\":\"Home, sweet home\"}}'",
        &out,
    );
    until("home at generation 2", || async {
        let s = sites.get("home").await.ok()?;
        (s.status?.observed_generation == Some(2)).then_some(())
    })
    .await?;
    let page = config_maps.get("home-page").await?;
    ensure!(
        page.data.unwrap_or_default()["index.html"].contains("Home, sweet home"),
        "the page was not updated"
    );
    story.say("home-page now says \"Home, sweet home\"");

    story.step("Breaking blog: port 70000 fails the handler's validation (a terminal error)");
    let out = kubectl(
        &env,
        &[
            "patch",
            "staticsite",
            "blog",
            "--type=merge",
            "-p",
            r#"{"spec":{"port":70000}}"#,
        ],
        None,
    )
    .await?;
    story.show(
        "kubectl patch staticsite blog -p '{\"spec\":{\"port\":70000}}'",
        &out,
    );
    report.validation_error = until("blog's error in status", || async {
        let s = sites.get("blog").await.ok()?;
        let status = s.status?;
        (status.observed_generation == Some(2)).then_some(())?;
        status.error.map(|e| e.message)
    })
    .await?;
    shown(&env, &story, &["get", "staticsites"]).await?;

    story.step("Events, deduplicated (kubectl events)");
    report.published_event_count = until("the Published event of home counted twice", || async {
        let events = env.kubectl_json(["events", "-o", "json"]).await.ok()?;
        let count = events["items"].as_array()?.iter().find_map(|e| {
            let about = if e["regarding"].is_null() {
                &e["involvedObject"]
            } else {
                &e["regarding"]
            };
            (about["name"] == "home" && e["reason"] == "Published").then(|| {
                e["series"]["count"]
                    .as_u64()
                    .or(e["count"].as_u64())
                    .unwrap_or(1)
            })
        })?;
        (count >= 2).then_some(count)
    })
    .await?;
    shown(&env, &story, &["events", "--for", "staticsite/home"]).await?;
    until("the warning event of blog", || async {
        let events = env
            .kubectl_json(["events", "--types=Warning", "-o", "json"])
            .await
            .ok()?;
        events["items"]
            .as_array()?
            .iter()
            .any(|e| e["reason"] == "InvalidPort")
            .then_some(())
    })
    .await?;
    shown(&env, &story, &["events", "--for", "staticsite/blog"]).await?;

    story.step("Operations: health, metrics (controller-runtime's names) and the leader's Lease");
    let (code, _) = until("/readyz", || async {
        http_get(health, "/readyz").await.ok()
    })
    .await?;
    report.ready = code == 200;
    story.show(&format!("curl http://{health}/readyz"), &format!("{code}"));
    let (_, metrics) = http_get(health, "/metrics").await?;
    report.reconcile_metrics = metrics
        .lines()
        .filter(|l| l.starts_with("controller_runtime_reconcile_total{"))
        .map(str::to_owned)
        .collect();
    let shown_metrics: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("controller_runtime_reconcile_total{")
                || l.starts_with("controller_runtime_terminal_reconcile_errors_total{")
                || l.starts_with("controller_runtime_max_concurrent_reconciles{")
                || l.starts_with("leader_election_master_status{")
        })
        .collect();
    story.show(
        &format!(
            "curl -s http://{health}/metrics | grep -E 'reconcile_total|terminal|concurrent|master'"
        ),
        &shown_metrics.join("\n"),
    );
    report.lease_holder = kubectl(
        &env,
        &[
            "get",
            "lease",
            "staticsites-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    )
    .await?;
    story.show(
        "kubectl get lease staticsites-operator -o jsonpath='{.spec.holderIdentity}'",
        &report.lease_holder,
    );

    story.step(
        "Deleting shop: cleanup runs, the finalizer goes, the garbage collector takes its children",
    );
    let out = kubectl(&env, &["delete", "staticsite", "shop", "--wait=true"], None).await?;
    story.show("kubectl delete staticsite shop", &out);
    until("shop's children collected", || async {
        let page = config_maps.get_opt("shop-page").await.ok()?;
        let svc = services.get_opt("shop").await.ok()?;
        (page.is_none() && svc.is_none()).then_some(())
    })
    .await?;
    report.children_collected = true;
    shown(
        &env,
        &story,
        &[
            "get",
            "staticsites,configmaps,services",
            "-l",
            "app.kubernetes.io/managed-by=kuberator-demo",
        ],
    )
    .await?;
    shown(&env, &story, &["get", "staticsites"]).await?;

    story.step(
        "Admission webhooks: a Bucket operator validates and defaults objects before they are stored",
    );
    buckets::install_crd(&env).await?;
    let bucket_operator = buckets::operator(env.client())?;
    let (stop_buckets, buckets_stopped) = oneshot::channel::<()>();
    let buckets_running = tokio::spawn(
        bucket_operator
            .shutdown_on(async move {
                let _ = buckets_stopped.await;
            })
            .run(),
    );
    buckets::until_served(&env).await?;
    story.say(
        "its `validate` and `default` methods are served on 127.0.0.1 with a certificate it \
         created; it wrote the CA into its webhook configurations itself",
    );
    report.webhook_refusal = match buckets::apply(&env, buckets::INVALID).await {
        Ok(out) => bail!("a bucket in mars-north was accepted: {out}"),
        Err(refusal) => refusal,
    };
    story.show(
        "kubectl apply -f bucket.yaml    # spec.region: mars-north",
        &report.webhook_refusal,
    );
    let out = buckets::apply(&env, buckets::VALID)
        .await
        .map_err(anyhow::Error::msg)?;
    story.show(
        "kubectl apply -f bucket.yaml    # spec.region: eu-west, no storageClass",
        &out,
    );
    let yaml = kubectl(&env, &["get", "bucket", "logs", "-o", "yaml"], None).await?;
    report.defaulted_storage_class =
        env.kubectl_json(["get", "bucket", "logs"]).await?["spec"]["storageClass"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    story.show(
        "kubectl get bucket logs -o yaml | sed -n '/^spec:/,$p'    # storageClass: the default",
        &from_spec(&yaml),
    );

    story.step("Conversion: a Bucket written as v1alpha1 (retention: 365d), read back as v1");
    let out = buckets::apply(&env, buckets::OLD_VERSION)
        .await
        .map_err(anyhow::Error::msg)?;
    story.show(
        "kubectl apply -f old-bucket.yaml    # apiVersion: webhooks.kuberator.dev/v1alpha1",
        &out,
    );
    let v1 = format!("buckets.v1.{}", buckets::GROUP);
    let yaml = kubectl(&env, &["get", &v1, "archive", "-o", "yaml"], None).await?;
    report.converted_spec = env.kubectl_json(["get", &v1, "archive"]).await?["spec"].clone();
    story.show(
        &format!("kubectl get {v1} archive -o yaml | sed -n '/^spec:/,$p'"),
        &from_spec(&yaml),
    );
    shown(&env, &story, &["get", "buckets"]).await?;

    if options.keep {
        story.step("Keeping everything running (Ctrl-C to stop)");
        println!("  export KUBECONFIG={}", env.kubeconfig_path().display());
        println!(
            "  kubectl get staticsites,buckets,configmaps,services    # kubectl: {}",
            env.assets_dir().join("kubectl").display()
        );
        kuberator::shutdown_signal().await;
    }

    story.step("Shutting down: the operators finish in-flight work, the control plane stops");
    let _ = stop.send(());
    let _ = stop_buckets.send(());
    running.await.context("operator task")??;
    buckets_running.await.context("bucket operator task")??;
    drop(env);
    report.elapsed = story.started.elapsed();
    println!(
        "\nSummary: {} sites published, 1 update reconciled, 1 validation error in status ({:?}), \
         Published event of home counted {}x, ready: {}, Lease held by {:?}, shop's children \
         garbage-collected: {}; a Bucket refused by the webhook, one defaulted (storageClass \
         {:?}), one written as v1alpha1 read as v1 (retentionDays {}). {:.1}s in all.",
        report.published,
        report.validation_error,
        report.published_event_count,
        report.ready,
        report.lease_holder,
        report.children_collected,
        report.defaulted_storage_class,
        report.converted_spec["retentionDays"],
        report.elapsed.as_secs_f64()
    );
    Ok(report)
}
