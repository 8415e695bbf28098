//! Admission webhooks on the real API server (`kuberator::webhook`): the manager serves them on
//! 127.0.0.1 with a certificate it created itself, the caBundle is injected with no manual
//! step, and `kubectl apply` shows the handler's own messages.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    core::v1::{ConfigMap, Secret},
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResource, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use kuberator::{
    Action, Operator, Reconciler,
    runtime::Manager,
    testing::TestEnv,
    webhook::{Certificates, Conversion, Denied, Validator, Webhook, WebhookServer},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{operations::http_get, support::*};

/// The kind the webhooks guard.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "webhooks.test.kuberator.dev",
    version = "v1",
    kind = "Database",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    pub engine: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// Engines `validate` accepts; `panic` and `hang` make the handler misbehave on purpose.
const ENGINES: [&str; 2] = ["postgres", "mysql"];

/// The validator as a [`Validator`] (async: `hang` sleeps past the timeout without blocking).
struct DatabaseValidator;

#[async_trait::async_trait]
impl Validator<Database> for DatabaseValidator {
    async fn validate(&self, new: &Database, old: Option<&Database>) -> Result<(), Denied> {
        if new.spec.engine == "hang" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        validate(new, old)
    }
}

fn validate(new: &Database, old: Option<&Database>) -> Result<(), Denied> {
    match new.spec.engine.as_str() {
        "panic" => panic!("the validator fell over"),
        "hang" => {}
        engine if !ENGINES.contains(&engine) => {
            return Err(Denied::new(format!(
                "must be one of {}, not `{engine}`",
                ENGINES.join(", ")
            ))
            .field("spec.engine"));
        }
        _ => {}
    }
    match old {
        Some(old) if old.spec.region != new.spec.region => Err(Denied::immutable(
            "spec.region",
            &old.spec.region,
            &new.spec.region,
        )),
        _ => Ok(()),
    }
}

pub fn database_webhook() -> Webhook<Database> {
    Webhook::<Database>::new()
        .validator(DatabaseValidator)
        .default(|db: &mut Database| {
            db.spec.replicas.get_or_insert(3);
            db.labels_mut()
                .entry("tier".into())
                .or_insert_with(|| "data".into());
        })
        .timeout(Duration::from_millis(500))
}

pub struct Noop;

#[async_trait::async_trait]
impl Reconciler<Database> for Noop {
    async fn reconcile(&self, _db: Arc<Database>) -> kuberator::Result<Action> {
        Ok(Action::await_change())
    }
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

pub async fn env() -> TestEnv {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<Database>().await.unwrap();
    env
}

pub fn database(name: &str, engine: &str, region: &str) -> Database {
    Database::new(
        name,
        DatabaseSpec {
            engine: engine.into(),
            region: region.into(),
            replicas: None,
        },
    )
}

/// `kubectl apply -f <file>` of `object`: Ok(stdout) or Err(stderr).
async fn kubectl_apply(env: &TestEnv, object: &impl Serialize) -> Result<String, String> {
    let file = env.dir().join(format!("apply-{}.json", rand_suffix()));
    std::fs::write(&file, serde_json::to_vec(object).unwrap()).unwrap();
    let output = env
        .kubectl()
        .args(["apply", "-n", "default", "-f"])
        .arg(&file)
        .output()
        .await
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn rand_suffix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst).to_string()
}

/// Waits until the API server calls the webhook (its configuration informer has caught up):
/// a dry-run create of an invalid object is refused.
pub async fn until_enforced(api: &Api<Database>) {
    eventually("the validating webhook to be enforced", || async {
        let params = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        api.create(&params, &database("probe", "oracle", "eu"))
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

fn base64_of(pem: &[u8]) -> serde_json::Value {
    serde_json::to_value(k8s_openapi::ByteString(pem.to_vec())).unwrap()
}

/// One manager with the operator's own webhook for `Database` and a manager-level webhook for
/// the built-in `ConfigMap`, served by one server: the caBundle is injected from the Secret it
/// created; `kubectl apply` shows the handlers' messages; defaults are stored; an immutable
/// field is refused with old and new value; a panic and a hang deny only their own request;
/// the webhook metrics are in `/metrics`.
#[tokio::test]
async fn kubectl_sees_validation_defaults_and_failures_of_the_handlers() {
    let env = env().await;
    let client = env.client();
    let health = free_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let operator = Operator::with_reconciler(client.clone(), Noop)
        .webhook(database_webhook())
        .webhook_server(WebhookServer::local().configuration_name("databases"));
    let config_maps = Webhook::<ConfigMap>::new().validate(|cm: &ConfigMap, _| {
        match cm.data.as_ref().and_then(|d| d.get("password")) {
            Some(_) => Err(Denied::new("passwords belong in a Secret").field("data.password")),
            None => Ok(()),
        }
    });
    let manager = Manager::new(client.clone())
        .add(operator)
        .webhook(config_maps)
        .health(health)
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let running = tokio::spawn(manager.run());

    // The caBundle is the CA of the Secret the manager created; nobody else wrote it.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let configuration = eventually("the webhook configurations", || async {
        validating.get_opt("databases").await.unwrap()
    })
    .await;
    let secret = secrets.get("kuberator-webhook-tls").await.unwrap();
    let ca = &secret.data.as_ref().unwrap()["ca.crt"].0;
    let hooks = serde_json::to_value(&configuration).unwrap()["webhooks"].clone();
    assert_eq!(hooks.as_array().unwrap().len(), 2, "{hooks}");
    for hook in hooks.as_array().unwrap() {
        assert_eq!(hook["clientConfig"]["caBundle"], base64_of(ca), "{hook}");
        assert!(
            hook["clientConfig"]["url"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:"),
            "{hook}"
        );
        assert_eq!(hook["failurePolicy"], "Fail");
    }
    let mutation = mutating.get("databases").await.unwrap();
    assert_eq!(
        serde_json::to_value(&mutation).unwrap()["webhooks"][0]["clientConfig"]["url"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap()
            .1,
        "mutate-webhooks-test-kuberator-dev-v1-database"
    );
    let databases: Api<Database> = Api::namespaced(client.clone(), "default");
    until_enforced(&databases).await;

    // Invalid: the handler's message and field, through kubectl.
    let refused = kubectl_apply(&env, &database("shop", "oracle", "eu"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(
            "denied the request: spec.engine: must be one of postgres, mysql, not `oracle`"
        ),
        "{refused}"
    );
    assert!(databases.get_opt("shop").await.unwrap().is_none());

    // Valid: stored with the defaults.
    kubectl_apply(&env, &database("shop", "postgres", "eu"))
        .await
        .unwrap();
    let stored = env
        .kubectl_json(["get", "database", "shop", "-n", "default"])
        .await
        .unwrap();
    assert_eq!(stored["spec"]["replicas"], 3, "{stored}");
    assert_eq!(stored["metadata"]["labels"]["tier"], "data", "{stored}");
    assert_eq!(stored["spec"]["engine"], "postgres");

    // An immutable field: refused with the old and the new value.
    let refused = kubectl_apply(&env, &database("shop", "postgres", "us"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(r#"spec.region: is immutable (was "eu", now "us")"#),
        "{refused}"
    );
    // A change the handler allows still passes (and keeps the default it set).
    let mut scaled = database("shop", "mysql", "eu");
    scaled.spec.replicas = Some(5);
    kubectl_apply(&env, &scaled).await.unwrap();
    assert_eq!(databases.get("shop").await.unwrap().spec.replicas, Some(5));

    // A panicking handler denies that one request; the next one is served.
    let refused = kubectl_apply(&env, &database("boom", "panic", "eu"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(
            "the validating handler panicked on Database default/boom (the validator fell over)"
        ),
        "{refused}"
    );
    kubectl_apply(&env, &database("after-panic", "mysql", "eu"))
        .await
        .unwrap();
    // A handler past its timeout (500 ms) denies that one request.
    let refused = kubectl_apply(&env, &database("slow", "hang", "eu"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(
            "the validating handler did not answer for Database default/slow within 500ms"
        ),
        "{refused}"
    );
    kubectl_apply(&env, &database("after-hang", "postgres", "eu"))
        .await
        .unwrap();

    // The built-in kind on the same server.
    let mut cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("settings".into()),
            ..ObjectMeta::default()
        },
        data: Some([("password".to_owned(), "hunter2".to_owned())].into()),
        ..ConfigMap::default()
    };
    let refused = kubectl_apply(&env, &cm).await.unwrap_err();
    assert!(
        refused.contains("data.password: passwords belong in a Secret"),
        "{refused}"
    );
    cm.data = Some([("color".to_owned(), "blue".to_owned())].into());
    kubectl_apply(&env, &cm).await.unwrap();

    let (status, metrics) = http_get(health, "/metrics").await;
    assert_eq!(status, 200);
    let path = "/validate-webhooks-test-kuberator-dev-v1-database";
    let line = |name: &str| {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` in:\n{metrics}"))
            .to_owned()
    };
    let requests = line(&format!(
        r#"controller_runtime_webhook_requests_total{{webhook="{path}",code="200"}}"#
    ));
    let count: f64 = requests.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 8.0, "{requests}");
    line(&format!(
        r#"controller_runtime_webhook_latency_seconds_count{{webhook="{path}"}}"#
    ));
    let in_flight = line(&format!(
        r#"controller_runtime_webhook_requests_in_flight{{webhook="{path}"}}"#
    ));
    assert!(in_flight.ends_with(" 0"), "{in_flight}");
    line(
        r#"controller_runtime_webhook_requests_total{webhook="/validate--v1-configmap",code="200"}"#,
    );

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Requests of the rotation test: 100 a second for three minutes, from this many senders.
const ROTATION_SENDERS: u32 = 8;
const ROTATION_RATE: u32 = 100;
const ROTATION_SECONDS: u32 = 180;

/// What one admission request of the rotation test came back with.
enum Outcome {
    /// Admitted with the default applied, as expected.
    Admitted,
    /// Refused with the handler's message, as expected (every tenth object is invalid).
    Denied,
    /// Anything else: a TLS error, a timeout, a missing default, a wrong message.
    Failed(String),
}

/// One dry-run create (the API server calls every webhook of both replicas and persists
/// nothing); every tenth object has an invalid engine and must be refused by the validator.
async fn admission_request(databases: &Api<Database>, n: u32) -> Outcome {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let invalid = n % 10 == 9;
    let engine = if invalid { "oracle" } else { "postgres" };
    let name = format!("rotation-{n}");
    match (
        databases
            .create(&params, &database(&name, engine, "eu"))
            .await,
        invalid,
    ) {
        (Ok(stored), false) if stored.spec.replicas == Some(3) => Outcome::Admitted,
        (Ok(stored), _) => Outcome::Failed(format!("{name}: admitted as {:?}", stored.spec)),
        (Err(error), true) if error.to_string().contains("spec.engine: must be one of") => {
            Outcome::Denied
        }
        (Err(error), _) => Outcome::Failed(format!("{name}: {error}")),
    }
}

/// The issue's scale: two replicas (two managers, one Secret) with a serving certificate of
/// one minute (renewed when a third is left, every 40 s), and 100 admission requests a second
/// for three minutes (18,000, a bounded loop on loopback: eight senders on a ticker) through
/// both replicas' validating and mutating webhooks. No request fails, every replica served at
/// least two new certificates meanwhile, and both end on the certificate in the Secret.
#[tokio::test]
async fn a_minute_long_certificate_rotates_under_100_admissions_a_second_without_a_failure() {
    let env = env().await;
    let client = env.client();
    let certificates =
        Certificates::secret("default", "databases-tls").serving_validity(Duration::from_secs(60));
    let mut stops = Vec::new();
    let mut runs = Vec::new();
    let mut healths = Vec::new();
    for replica in ["a", "b"] {
        let health = free_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        // Each replica has its own configuration (its own URL), so every request passes both.
        let server = WebhookServer::local()
            .configuration_name(format!("databases-{replica}"))
            .certificates(certificates.clone());
        let manager = Manager::new(client.clone())
            .add(
                Operator::with_reconciler(client.clone(), Noop)
                    .name(format!("databases-{replica}"))
                    .webhook(database_webhook()),
            )
            .webhook_server(server)
            .health(health)
            .shutdown_on(async move {
                let _ = stopped.await;
            });
        runs.push(tokio::spawn(manager.run()));
        stops.push(stop);
        healths.push(health);
    }
    let databases: Api<Database> = Api::namespaced(client.clone(), "default");
    for name in ["databases-a", "databases-b"] {
        let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        eventually("both configurations", || async {
            validating.get_opt(name).await.unwrap()
        })
        .await;
    }
    until_enforced(&databases).await;

    let metric = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in:\n{metrics}"))
    };
    let changes = async || {
        let mut changes = Vec::new();
        for health in &healths {
            let (_, metrics) = http_get(*health, "/metrics").await;
            changes.push(metric(
                &metrics,
                "kuberator_webhook_certificate_changes_total",
            ));
        }
        changes
    };
    let changes_before = changes().await;

    // Eight senders, each on its own ticker of 12.5 requests a second (missed ticks are caught
    // up): 100 a second in all; each request's latency is kept for the printout.
    let started = Instant::now();
    let per_sender = ROTATION_RATE * ROTATION_SECONDS / ROTATION_SENDERS;
    let period = Duration::from_secs(1) * ROTATION_SENDERS / ROTATION_RATE;
    let senders: Vec<_> = (0..ROTATION_SENDERS)
        .map(|sender| {
            let databases = databases.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(period);
                let mut outcomes = Vec::with_capacity(per_sender as usize);
                for i in 0..per_sender {
                    ticker.tick().await;
                    let sent = Instant::now();
                    let outcome =
                        admission_request(&databases, i * ROTATION_SENDERS + sender).await;
                    outcomes.push((outcome, sent.elapsed()));
                }
                outcomes
            })
        })
        .collect();
    // Meanwhile: when each replica served a new certificate (seconds since the first request).
    let (done, mut finished) = oneshot::channel::<()>();
    let watch = {
        let healths = healths.clone();
        tokio::spawn(async move {
            let mut seen = vec![Vec::new(); healths.len()];
            let mut last: Vec<Option<f64>> = vec![None; healths.len()];
            loop {
                for (i, health) in healths.iter().enumerate() {
                    let (_, metrics) = http_get(*health, "/metrics").await;
                    let now = metrics
                        .lines()
                        .find(|l| l.starts_with("kuberator_webhook_certificate_changes_total"))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
                    if last[i].is_some() && now != last[i] {
                        seen[i].push(started.elapsed().as_secs());
                    }
                    last[i] = now;
                }
                tokio::select! {
                    _ = &mut finished => return seen,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
    };
    let mut outcomes = Vec::new();
    for sender in senders {
        outcomes.extend(sender.await.unwrap());
    }
    let elapsed = started.elapsed();
    let changes_after = changes().await;
    done.send(()).unwrap();
    let rotated_at = watch.await.unwrap();

    let sent = outcomes.len();
    let denied = outcomes
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Denied))
        .count();
    let admitted = outcomes
        .iter()
        .filter(|(o, _)| matches!(o, Outcome::Admitted))
        .count();
    let failures: Vec<&String> = outcomes
        .iter()
        .filter_map(|(o, _)| match o {
            Outcome::Failed(why) => Some(why),
            _ => None,
        })
        .collect();
    let mut latencies: Vec<Duration> = outcomes.iter().map(|(_, l)| *l).collect();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let rotations: Vec<f64> = changes_after
        .iter()
        .zip(&changes_before)
        .map(|(after, before)| after - before)
        .collect();
    println!(
        "rotation under load: {sent} admission requests in {:.1} s ({:.0}/s): {admitted} \
         admitted with the default, {denied} denied by the validator as expected, {} failed; \
         new certificates served per replica: {rotations:?} (at {rotated_at:?} s); latency p50 {:?}, p99 {:?}, max {:?}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        failures.len(),
        at(0.5),
        at(0.99),
        latencies[latencies.len() - 1],
    );
    assert_eq!(sent as u32, ROTATION_RATE * ROTATION_SECONDS);
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(denied, sent / 10);
    for (replica, rotated) in rotations.iter().enumerate() {
        assert!(
            *rotated >= 2.0,
            "replica {replica} served {rotated} new certificates in {elapsed:?}"
        );
    }

    // Both replicas end on the certificate in the Secret (the same expiry second).
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    eventually("both replicas serving the Secret's certificate", || async {
        let secret = secrets.get("databases-tls").await.unwrap();
        let not_after: f64 = secret.annotations()["webhook.kuberator.dev/not-after"]
            .parse()
            .unwrap();
        let mut same = true;
        for health in &healths {
            let (_, metrics) = http_get(*health, "/metrics").await;
            same &= metric(
                &metrics,
                "kuberator_webhook_certificate_expiry_timestamp_seconds",
            ) == not_after;
        }
        same.then_some(())
    })
    .await;

    for stop in stops {
        stop.send(()).unwrap();
    }
    for run in runs {
        tokio::time::timeout(WAIT, run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A CA and a serving certificate for 127.0.0.1, as PEM: (ca, cert, key).
fn own_certificates(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

/// Writes each file atomically (a rename), as a mounted Secret changes.
fn write_certificates(dir: &std::path::Path, (ca, cert, key): &(String, String, String)) {
    for (name, text) in [("tls.key", key), ("tls.crt", cert), ("ca.crt", ca)] {
        let next = dir.join(format!("{name}.next"));
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, dir.join(name)).unwrap();
    }
}

/// Certificates the user brings (files, e.g. from cert-manager): served, their CA injected, and
/// when the files change (a new CA too) the new CA reaches the caBundle and the new
/// certificate is served, with admission working before and after.
#[tokio::test]
async fn brought_certificates_are_reloaded_when_their_files_change() {
    let env = env().await;
    let client = env.client();
    let dir = tempfile::tempdir().unwrap();
    let first = own_certificates("first-ca");
    write_certificates(dir.path(), &first);
    let health = free_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let certificates = Certificates::files(dir.path().join("tls.crt"), dir.path().join("tls.key"))
        .ca_file(dir.path().join("ca.crt"))
        .reload_interval(Duration::from_millis(200));
    let manager = Manager::new(client.clone())
        .add(Operator::with_reconciler(client.clone(), Noop).webhook(database_webhook()))
        .webhook_server(
            WebhookServer::local()
                .configuration_name("databases")
                .certificates(certificates),
        )
        .health(health)
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let running = tokio::spawn(manager.run());
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let ca_bundle = || async {
        let configuration = validating.get_opt("databases").await.unwrap()?;
        Some(serde_json::to_value(&configuration).unwrap()["webhooks"][0]["clientConfig"]["caBundle"].clone())
    };
    assert_eq!(
        eventually("the configuration", ca_bundle).await,
        base64_of(first.0.as_bytes())
    );
    let databases: Api<Database> = Api::namespaced(client.clone(), "default");
    until_enforced(&databases).await;
    databases
        .create(
            &PostParams::default(),
            &database("before", "postgres", "eu"),
        )
        .await
        .unwrap();

    // Files replaced one by one, the CA last and late (not a Secret volume's atomic swap):
    // the new certificate is not served beside the old CA, admission keeps working.
    let second = own_certificates("second-ca");
    let torn = (first.0.clone(), second.1.clone(), second.2.clone());
    write_certificates(dir.path(), &torn);
    tokio::time::sleep(Duration::from_millis(800)).await;
    databases
        .create(&PostParams::default(), &database("torn", "postgres", "eu"))
        .await
        .unwrap();
    write_certificates(dir.path(), &second);
    eventually("the second certificate served", || async {
        let (_, metrics) = http_get(health, "/metrics").await;
        metrics
            .lines()
            .any(|line| line == "kuberator_webhook_certificate_changes_total 1")
            .then_some(())
    })
    .await;
    // Served once both CAs were trusted; the old one leaves the bundle right after.
    eventually("the second CA alone in the caBundle", || async {
        (ca_bundle().await? == base64_of(second.0.as_bytes())).then_some(())
    })
    .await;
    let refused = databases
        .create(&PostParams::default(), &database("bad", "oracle", "eu"))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("spec.engine: must be one of"),
        "{refused}"
    );
    let after = databases
        .create(&PostParams::default(), &database("after", "postgres", "eu"))
        .await
        .unwrap();
    assert_eq!(after.spec.replicas, Some(3));

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The webhooks of a `#[kuberator::operator]` block: `validate` and `default` are its methods,
/// `webhooks = …` names the in-cluster Service (replaced here by the local server).
pub struct MacroDatabases {
    default_replicas: i32,
}

#[kuberator::operator(
    resource = Database,
    name = "databases-operator",
    webhooks = "databases-webhooks"
)]
impl MacroDatabases {
    async fn apply(&self, _db: Arc<Database>) -> kuberator::Result<Action> {
        Ok(Action::await_change())
    }

    async fn validate(&self, new: &Database, old: Option<&Database>) -> Result<(), Denied> {
        validate(new, old)
    }

    async fn default(&self, db: &mut Database) {
        db.spec.replicas.get_or_insert(self.default_replicas);
    }
}

/// A `#[kuberator::operator]` with `validate` and `default`, bound to exactly its generated
/// RBAC plus `WebhookServer::rbac` (the Secret and the configurations by name): it creates its
/// certificate and configurations, `kubectl apply` of a bad object is refused with the
/// handler's message, a good one is stored with the method's default.
#[tokio::test]
async fn the_macro_operator_serves_its_methods_with_exactly_its_generated_rbac() {
    use kuberator::{IntoOperator, manifests::rbac_rules_for};
    let env = env().await;
    let server = WebhookServer::local().configuration_name("databases");
    let options = MacroDatabases::rbac_options()
        .status(false)
        .service_account("default", "databases-operator");
    let mut rbac = rbac_rules_for::<Database>(&options);
    rbac.merge(server.rbac("databases-operator"));
    let access = env.service_account(&rbac).await.unwrap();
    let client = access.client().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let operator = MacroDatabases {
        default_replicas: 2,
    }
    .operator(client.clone())
    .unwrap()
    .webhook_server(server)
    .check_permissions(rbac)
    .shutdown_on(async move {
        let _ = stopped.await;
    });
    let mut running = tokio::spawn(operator.run());
    let databases: Api<Database> = Api::namespaced(env.client(), "default");
    tokio::select! {
        () = until_enforced(&databases) => {}
        stopped = &mut running => panic!("the operator stopped before serving: {stopped:?}"),
    }

    let refused = kubectl_apply(&env, &database("bound", "oracle", "eu"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(
            "denied the request: spec.engine: must be one of postgres, mysql, not `oracle`"
        ),
        "{refused}"
    );
    kubectl_apply(&env, &database("bound", "postgres", "eu"))
        .await
        .unwrap();
    assert_eq!(databases.get("bound").await.unwrap().spec.replicas, Some(2));
    let refused = kubectl_apply(&env, &database("bound", "postgres", "us"))
        .await
        .unwrap_err();
    assert!(
        refused.contains(r#"spec.region: is immutable (was "eu", now "us")"#),
        "{refused}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The old version of the converted kind: the owner as one string, `Name <email>`.
pub mod accounts_v1alpha1 {
    use super::*;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "conversion.test.kuberator.dev",
        version = "v1alpha1",
        kind = "Account",
        namespaced
    )]
    pub struct AccountSpec {
        pub owner: String,
        pub plan: String,
    }
}

/// The new (storage) version: the owner split into name and email.
pub mod accounts_v1 {
    use super::*;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    #[kube(
        group = "conversion.test.kuberator.dev",
        version = "v1",
        kind = "Account",
        namespaced
    )]
    pub struct AccountSpec {
        pub owner: Owner,
        pub plan: String,
    }

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
    pub struct Owner {
        pub name: String,
        pub email: String,
    }
}

impl TryFrom<accounts_v1alpha1::AccountSpec> for accounts_v1::AccountSpec {
    type Error = String;

    fn try_from(old: accounts_v1alpha1::AccountSpec) -> Result<Self, String> {
        let (name, email) = old
            .owner
            .strip_suffix('>')
            .and_then(|owner| owner.split_once(" <"))
            .ok_or_else(|| format!("owner `{}` has no `<email>`", old.owner))?;
        Ok(accounts_v1::AccountSpec {
            owner: accounts_v1::Owner {
                name: name.to_owned(),
                email: email.to_owned(),
            },
            plan: old.plan,
        })
    }
}

impl From<accounts_v1::AccountSpec> for accounts_v1alpha1::AccountSpec {
    fn from(new: accounts_v1::AccountSpec) -> Self {
        accounts_v1alpha1::AccountSpec {
            owner: format!("{} <{}>", new.owner.name, new.owner.email),
            plan: new.plan,
        }
    }
}

pub fn account_conversion() -> Conversion<accounts_v1::Account> {
    Conversion::<accounts_v1::Account>::new().version::<accounts_v1alpha1::Account>()
}

struct NoopAccounts;

#[async_trait::async_trait]
impl Reconciler<accounts_v1::Account> for NoopAccounts {
    async fn reconcile(&self, _a: Arc<accounts_v1::Account>) -> kuberator::Result<Action> {
        Ok(Action::await_change())
    }
}

/// The operator serves the conversion of a two-version CRD: the caBundle and URL are patched
/// into the CRD's conversion stanza with no manual step; an object applied as `v1alpha1` with
/// kubectl is stored as `v1` and read back as either version with every field kept; an object
/// that cannot be converted is refused with its name and the reason; `/convert` is counted in
/// the webhook metrics.
#[tokio::test]
async fn objects_written_as_the_old_version_are_read_as_the_new_one() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd_value(account_conversion().crd().unwrap())
        .await
        .unwrap();
    let client = env.client();
    let health = free_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let operator = Operator::with_reconciler(client.clone(), NoopAccounts)
        .conversion(account_conversion())
        .webhook_server(WebhookServer::local().configuration_name("accounts"));
    let manager = Manager::new(client.clone())
        .add(operator)
        .health(health)
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let running = tokio::spawn(manager.run());

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = account_conversion().crd_name().to_owned();
    let conversion = eventually("the conversion webhook in the CRD", || async {
        let crd = crds.get(&name).await.unwrap();
        let conversion = serde_json::to_value(crd.spec.conversion).unwrap();
        (conversion["strategy"] == "Webhook").then_some(conversion)
    })
    .await;
    let secret = Api::<Secret>::namespaced(client.clone(), "default")
        .get("kuberator-webhook-tls")
        .await
        .unwrap();
    let ca = &secret.data.as_ref().unwrap()["ca.crt"].0;
    let webhook = &conversion["webhook"];
    assert_eq!(
        webhook["clientConfig"]["caBundle"],
        base64_of(ca),
        "{webhook}"
    );
    assert_eq!(
        webhook["conversionReviewVersions"],
        serde_json::json!(["v1"])
    );
    let url = webhook["clientConfig"]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://127.0.0.1:") && url.ends_with("/convert"),
        "{url}"
    );

    // Written as v1alpha1 (the API server converts it to the storage version v1 through the
    // webhook; retried until the API server has picked up the patched CRD).
    let mut alice = accounts_v1alpha1::Account::new(
        "alice",
        accounts_v1alpha1::AccountSpec {
            owner: "Alice Liddell <alice@example.com>".into(),
            plan: "gold".into(),
        },
    );
    alice
        .labels_mut()
        .insert("team".into(), "wonderland".into());
    eventually("the v1alpha1 object stored", || async {
        kubectl_apply(&env, &alice).await.ok()
    })
    .await;
    let group = "conversion.test.kuberator.dev";
    let as_v1 = env
        .kubectl_json([
            "get",
            &format!("accounts.v1.{group}"),
            "alice",
            "-n",
            "default",
        ])
        .await
        .unwrap();
    assert_eq!(as_v1["apiVersion"], format!("{group}/v1"));
    assert_eq!(
        as_v1["spec"],
        serde_json::json!({
            "owner": { "name": "Alice Liddell", "email": "alice@example.com" },
            "plan": "gold",
        })
    );
    assert_eq!(as_v1["metadata"]["labels"]["team"], "wonderland");
    let typed: Api<accounts_v1::Account> = Api::namespaced(client.clone(), "default");
    assert_eq!(
        typed.get("alice").await.unwrap().spec.owner.email,
        "alice@example.com"
    );
    let as_old = env
        .kubectl_json([
            "get",
            &format!("accounts.v1alpha1.{group}"),
            "alice",
            "-n",
            "default",
        ])
        .await
        .unwrap();
    assert_eq!(as_old["apiVersion"], format!("{group}/v1alpha1"));
    assert_eq!(
        serde_json::from_value::<accounts_v1alpha1::AccountSpec>(as_old["spec"].clone()).unwrap(),
        alice.spec
    );
    assert_eq!(as_old["metadata"]["uid"], as_v1["metadata"]["uid"]);
    assert_eq!(as_old["metadata"]["labels"]["team"], "wonderland");

    // A spec that cannot be converted: refused, naming the object and the reason.
    let bob = accounts_v1alpha1::Account::new(
        "bob",
        accounts_v1alpha1::AccountSpec {
            owner: "bob".into(),
            plan: "free".into(),
        },
    );
    let refused = kubectl_apply(&env, &bob).await.unwrap_err();
    assert!(
        refused.contains(&format!(
            "cannot convert Account default/bob from {group}/v1alpha1 to {group}/v1: owner \
             `bob` has no `<email>`"
        )),
        "{refused}"
    );
    assert!(typed.get_opt("bob").await.unwrap().is_none());

    let (status, metrics) = http_get(health, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"controller_runtime_webhook_requests_total{webhook="/convert",code="200"}"#
        ),
        "{metrics}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The install bundle of a `#[kuberator::operator]` with `validate`, `default` and a
/// conversion (the Bucket example): `Bundle::for_operator` derives the webhook Service,
/// the webhook configurations and their RBAC from the macro's `rbac_options()`, and
/// `Bundle::conversion` ships the two-version CRD with `strategy: Webhook` and the RBAC to
/// patch it. Everything passes a server-side dry run and is applied with kubectl (but the
/// configurations, which point at the in-cluster Service: the operator runs here on
/// 127.0.0.1); the operator, authenticated only by the bundle's ServiceAccount and checked
/// against exactly the bundle's RBAC, injects its CA, validates, defaults and converts.
#[tokio::test]
async fn the_bundle_of_a_macro_operator_with_webhooks_and_conversion_runs_it_with_its_rbac() {
    use crate::bundle::{kubectl, service_account_client};
    use kuberator::{IntoOperator, manifests::Bundle};
    use kuberator_examples::webhooks::{self as buckets, Buckets, v1::Bucket};

    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    let namespace = "buckets-system";
    let bundle = Bundle::for_operator::<Bucket>(&Buckets::rbac_options().status(false))
        .image("registry.example.invalid/buckets-operator:0.1.0")
        .namespace(namespace)
        .conversion(&buckets::conversion());
    let files = bundle.files().unwrap();
    let names: Vec<&str> = files.iter().map(|(file, _)| *file).collect();
    assert_eq!(
        names,
        [
            "namespace.yaml",
            "crds.yaml",
            "rbac.yaml",
            "service.yaml",
            "deployment.yaml",
            "webhooks.yaml"
        ]
    );
    // kubectl reads a `List` of objects as it reads a YAML stream.
    let list_of = |objects: &[serde_json::Value]| {
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects }).to_string()
    };
    let (_, err, ok) = kubectl(&env, &["apply", "-f", "-"], &list_of(&files[0].1)).await;
    assert!(ok, "{err}");
    let everything = bundle.to_yaml().unwrap();
    let (out, err, ok) =
        kubectl(&env, &["apply", "--dry-run=server", "-f", "-"], &everything).await;
    assert!(ok, "{err}");
    for created in [
        "customresourcedefinition.apiextensions.k8s.io/buckets.webhooks.kuberator.dev created (server dry run)",
        "service/bucket-webhooks created (server dry run)",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/bucket-webhooks created (server dry run)",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/bucket-webhooks created (server dry run)",
        "clusterrole.rbac.authorization.k8s.io/buckets-operator-conversion created (server dry run)",
    ] {
        assert!(
            out.lines().any(|l| l == created),
            "{created} not in:\n{out}"
        );
    }
    let applied: Vec<serde_json::Value> = files
        .iter()
        .filter(|(file, _)| *file != "webhooks.yaml")
        .flat_map(|(_, objects)| objects.clone())
        .collect();
    let (_, err, ok) = kubectl(&env, &["apply", "-f", "-"], &list_of(&applied)).await;
    assert!(ok, "{err}");
    let (_, err, ok) = kubectl(
        &env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/buckets.webhooks.kuberator.dev",
            "--timeout=30s",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");
    let crd = env
        .kubectl_json(["get", "crd", "buckets.webhooks.kuberator.dev"])
        .await
        .unwrap();
    assert_eq!(crd["spec"]["conversion"]["strategy"], "Webhook");
    assert_eq!(
        crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["name"],
        "bucket-webhooks"
    );

    // The operator as the bundle's ServiceAccount; on 127.0.0.1 with the names the bundle's
    // RBAC grants (the configurations `bucket-webhooks`, the Secret `bucket-webhooks-tls`).
    let account = bundle.service_account_ref();
    let client = service_account_client(&env, &account.namespace, &account.name).await;
    let server = WebhookServer::local()
        .configuration_name("bucket-webhooks")
        .certificates(Certificates::secret(namespace, "bucket-webhooks-tls"));
    let (stop, stopped) = oneshot::channel::<()>();
    let operator = Buckets
        .operator(client.clone())
        .unwrap()
        .conversion(buckets::conversion())
        .webhook_server(server)
        .check_permissions(bundle.rbac_objects())
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let mut running = tokio::spawn(operator.run());
    tokio::select! {
        result = buckets::until_served(&env) => result.unwrap(),
        stopped = &mut running => panic!("the operator stopped before serving: {stopped:?}"),
    }
    // It pointed the CRD at itself: the URL and its CA instead of the Service.
    let crd = env
        .kubectl_json(["get", "crd", "buckets.webhooks.kuberator.dev"])
        .await
        .unwrap();
    let client_config = &crd["spec"]["conversion"]["webhook"]["clientConfig"];
    assert!(client_config["service"].is_null(), "{client_config}");
    assert!(client_config["caBundle"].is_string(), "{client_config}");

    let refused = buckets::apply(&env, buckets::INVALID).await.unwrap_err();
    assert!(
        refused.contains("spec.region: unknown region `mars-north`"),
        "{refused}"
    );
    buckets::apply(&env, buckets::VALID).await.unwrap();
    buckets::apply(&env, buckets::OLD_VERSION).await.unwrap();
    let stored: Api<Bucket> = Api::namespaced(env.client(), "default");
    assert_eq!(
        stored
            .get("logs")
            .await
            .unwrap()
            .spec
            .storage_class
            .as_deref(),
        Some("standard")
    );
    assert_eq!(
        stored.get("archive").await.unwrap().spec.retention_days,
        365
    );
    assert!(!running.is_finished(), "the operator stopped early");
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
