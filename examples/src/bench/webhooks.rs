//! The admission-latency row: creates through the real API server of a kind without webhooks
//! and of the same kind shape guarded by a validating and a mutating webhook that kuberator
//! serves (in the driver's process, on 127.0.0.1, with the certificate it created), one
//! create at a time, alternating between the two kinds so that load on the machine hits both
//! alike.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::api::{DeleteParams, ListParams, PostParams};
use kuberator::{
    prelude::*,
    testing::TestEnv,
    webhook::{Webhook, WebhookServer},
};

/// The kind without webhooks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "bench.kuberator.dev",
    version = "v1",
    kind = "Plain",
    namespaced
)]
pub struct PlainSpec {
    /// Filler, as in the throughput objects.
    pub payload: String,
    /// Set by the defaulting webhook of [`Admitted`] when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// The kind every create of which passes kuberator's validating and mutating webhooks.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "bench.kuberator.dev",
    version = "v1",
    kind = "Admitted",
    namespaced
)]
pub struct AdmittedSpec {
    /// Filler, as in the throughput objects; must not be empty.
    pub payload: String,
    /// Defaulted to 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// The namespace of the row's objects.
const NAMESPACE: &str = "default";

/// Latencies of one kind, sorted.
#[derive(Clone, Debug)]
pub struct Latencies {
    /// What was created.
    pub label: &'static str,
    /// Create sent → response, per create, sorted.
    pub sorted: Vec<Duration>,
}

impl Latencies {
    fn percentile(&self, p: f64) -> Duration {
        if self.sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.sorted.len() as f64).ceil() as usize;
        self.sorted[rank.clamp(1, self.sorted.len()) - 1]
    }

    fn mean(&self) -> Duration {
        self.sorted.iter().sum::<Duration>() / u32::try_from(self.sorted.len().max(1)).unwrap_or(1)
    }
}

struct Noop;

#[async_trait::async_trait]
impl kuberator::Reconciler<Admitted> for Noop {
    async fn reconcile(&self, _object: Arc<Admitted>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

fn webhook() -> Webhook<Admitted> {
    Webhook::<Admitted>::new()
        .validate(|new: &Admitted, _old| match new.spec.payload.is_empty() {
            true => Err(kuberator::webhook::Denied::new("must not be empty").field("spec.payload")),
            false => Ok(()),
        })
        .default(|object: &mut Admitted| {
            object.spec.replicas.get_or_insert(3);
        })
}

/// Runs `requests` creates of each kind (after 50 of each unmeasured), alternating, and
/// deletes them again.
///
/// # Errors
/// A CRD that cannot be installed, the operator not starting, a create failing.
pub async fn measure(env: &TestEnv, requests: usize) -> anyhow::Result<[Latencies; 2]> {
    env.install_crd::<Plain>().await?;
    env.install_crd::<Admitted>().await?;
    let client = env.client();
    let operator = Operator::with_reconciler(client.clone(), Noop)
        .webhook(webhook())
        .webhook_server(WebhookServer::local().configuration_name("bench-admitted"));
    let running = kuberator::testing::background(|stop| operator.shutdown_on(stop).run());
    let plain: Api<Plain> = Api::namespaced(client.clone(), NAMESPACE);
    let admitted: Api<Admitted> = Api::namespaced(client.clone(), NAMESPACE);
    // Enforced once an empty payload is refused (a dry run).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let dry = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let probe = Admitted::new(
            "probe",
            AdmittedSpec {
                payload: String::new(),
                replicas: None,
            },
        );
        if admitted.create(&dry, &probe).await.is_err() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the webhooks were not called within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let payload = "x".repeat(256);
    let mut plain_latencies = Vec::with_capacity(requests);
    let mut admitted_latencies = Vec::with_capacity(requests);
    let params = PostParams::default();
    for i in 0..requests + 50 {
        let name = format!("latency-{i}");
        let object = Plain::new(
            &name,
            PlainSpec {
                payload: payload.clone(),
                replicas: None,
            },
        );
        let started = Instant::now();
        plain
            .create(&params, &object)
            .await
            .with_context(|| format!("creating Plain {name}"))?;
        let plain_took = started.elapsed();
        let object = Admitted::new(
            &name,
            AdmittedSpec {
                payload: payload.clone(),
                replicas: None,
            },
        );
        let started = Instant::now();
        let stored = admitted
            .create(&params, &object)
            .await
            .with_context(|| format!("creating Admitted {name}"))?;
        let admitted_took = started.elapsed();
        anyhow::ensure!(
            stored.spec.replicas == Some(3),
            "Admitted {name} was stored without its default"
        );
        if i >= 50 {
            plain_latencies.push(plain_took);
            admitted_latencies.push(admitted_took);
        }
    }
    running.stop().await??;
    let all = ListParams::default();
    plain
        .delete_collection(&DeleteParams::default(), &all)
        .await?;
    admitted
        .delete_collection(&DeleteParams::default(), &all)
        .await?;
    plain_latencies.sort();
    admitted_latencies.sort();
    Ok([
        Latencies {
            label: "without webhooks",
            sorted: plain_latencies,
        },
        Latencies {
            label: "validating + mutating webhook (kuberator)",
            sorted: admitted_latencies,
        },
    ])
}

/// The table of [`measure`].
pub fn webhooks_table(requests: usize, results: &[Latencies; 2]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut out = format!(
        "admission latency: {requests} creates of each kind through the API server, one at a \
         time, alternating\n\n| kind | p50 (ms) | p99 (ms) | mean (ms) |\n|---|---|---|---|\n"
    );
    for result in results {
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} |\n",
            result.label,
            ms(result.percentile(50.0)),
            ms(result.percentile(99.0)),
            ms(result.mean()),
        ));
    }
    let [plain, admitted] = results;
    out.push_str(&format!(
        "\nthe webhooks add {:.2} ms at p50 and {:.2} ms at p99\n",
        ms(admitted.percentile(50.0)) - ms(plain.percentile(50.0)),
        ms(admitted.percentile(99.0)) - ms(plain.percentile(99.0)),
    ));
    out
}
