//! Production operations against the real API server: leader election (in one process and
//! across two replica processes), `/metrics` and `/readyz` after a known workload, and the
//! generated least-privilege RBAC checked with SelfSubjectAccessReview as a ServiceAccount.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::SocketAddr,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use kuberator::{
    Action, Operator, Reconciler,
    events::EmitEvent,
    manifests::{MissingPermissions, Rbac, RbacOptions, check_permissions, rbac_rules_for},
    runtime::{ControllerMetrics, HealthServer, LeaderElection, Leadership, Metrics, Readiness},
    testing::TestEnv,
};
use tokio::sync::oneshot;

use crate::support::*;

const LEASE_DURATION: Duration = Duration::from_secs(15);
const RETRY_PERIOD: Duration = Duration::from_secs(2);

async fn env() -> TestEnv {
    init_tracing();
    TestEnv::start().await.expect("control plane")
}

async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .get_opt(name)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

/// Watches two electors for `duration`: never both leaders at once.
async fn never_both(a: &Leadership, b: &Leadership, duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        assert!(
            !(a.is_leader() && b.is_leader()),
            "two leaders at once: {} and {}",
            a.identity(),
            b.identity()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two electors in one process: exactly one leads; dropping the leader without releasing (a
/// crash) hands over within lease duration + retry period, never earlier than the Lease allows.
#[tokio::test]
async fn two_electors_elect_one_leader_and_fail_over_after_a_crash() {
    let env = env().await;
    let elector = |identity: &str| {
        LeaderElection::new(env.client(), "default", "crash-test")
            .identity(identity)
            .start()
            .unwrap()
    };
    let a = elector("replica-a");
    tokio::time::timeout(Duration::from_secs(10), a.acquired())
        .await
        .expect("a leads");
    let b = elector("replica-b");
    never_both(&a, &b, Duration::from_secs(5)).await;
    assert!(a.is_leader() && !b.is_leader());
    assert_eq!(
        lease_holder(&env.client(), "crash-test").await.as_deref(),
        Some("replica-a")
    );

    drop(a);
    let crashed = Instant::now();
    tokio::time::timeout(
        LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(1),
        b.acquired(),
    )
    .await
    .expect("b leads within lease duration + retry period");
    let failover = crashed.elapsed();
    eprintln!("failover after a crash (in-process): {failover:?}");
    assert!(
        failover <= LEASE_DURATION + RETRY_PERIOD,
        "failover took {failover:?}"
    );
    // `a` renewed at most a retry period (plus a round trip) before it was dropped.
    assert!(
        failover >= LEASE_DURATION - RETRY_PERIOD - Duration::from_millis(500),
        "b took over after {failover:?}, before the Lease expired"
    );
    assert_eq!(
        lease_holder(&env.client(), "crash-test").await.as_deref(),
        Some("replica-b")
    );
}

/// Releasing the Lease hands over at once (the standby watches the Lease).
#[tokio::test]
async fn release_hands_over_in_under_three_seconds() {
    let env = env().await;
    let metrics = Metrics::new();
    let a = LeaderElection::new(env.client(), "default", "release-test")
        .identity("replica-a")
        .metrics(metrics.clone())
        .start()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), a.acquired())
        .await
        .expect("a leads");
    assert!(
        metrics
            .encode()
            .contains(r#"leader_election_master_status{name="release-test"} 1"#)
    );
    let b = Arc::new(
        LeaderElection::new(env.client(), "default", "release-test")
            .identity("replica-b")
            .start()
            .unwrap(),
    );
    never_both(&a, &b, Duration::from_secs(3)).await;

    let b2 = b.clone();
    let waiting = tokio::spawn(async move {
        b2.acquired().await;
        Instant::now()
    });
    let released = Instant::now();
    a.release().await;
    assert!(!a.is_leader());
    assert!(
        metrics
            .encode()
            .contains(r#"leader_election_master_status{name="release-test"} 0"#)
    );
    let acquired = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("b leads after the release")
        .unwrap();
    let handover = acquired - released;
    eprintln!("handover after release (in-process): {handover:?}");
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    assert_eq!(
        lease_holder(&env.client(), "release-test").await.as_deref(),
        Some("replica-b")
    );
    b.release().await;
    assert_eq!(lease_holder(&env.client(), "release-test").await, None);
}

// ---------------------------------------------------------------------------------------------
// Two replica processes.
//
// The replica is the `replica` binary of this package (`tests/bin/replica.rs`): an `Operator`
// with leader election wired in, printing its reconciles with timestamps.

/// Now, in unix nanoseconds (the replicas' time stamps).
pub fn unix_nanos_now() -> u128 {
    unix_nanos()
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A running replica process and its output lines.
pub struct Replica {
    name: &'static str,
    child: Child,
    _stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    fn spawn(name: &'static str, env: &TestEnv) -> Replica {
        Replica::spawn_with(name, env, false)
    }

    /// A replica running a `Manager` of two controllers (labelled ConfigMaps and Secrets).
    pub fn spawn_manager(name: &'static str, env: &TestEnv) -> Replica {
        Replica::spawn_with(name, env, true)
    }

    fn spawn_with(name: &'static str, env: &TestEnv, manager: bool) -> Replica {
        Replica::spawn_mode(name, env, if manager { "manager" } else { "single" }, &[])
    }

    /// A replica in `KUBERATOR_REPLICA_MODE=mode` (`manager`, `child`, `shard` …; see
    /// `tests/bin/replica.rs`) with extra environment variables.
    pub fn spawn_mode(
        name: &'static str,
        env: &TestEnv,
        mode: &str,
        vars: &[(&str, String)],
    ) -> Replica {
        let manager = mode == "manager";
        let mut child = Command::new(env!("CARGO_BIN_EXE_replica"))
            .env("KUBERATOR_REPLICA_MODE", mode)
            .envs(vars.iter().map(|(key, value)| (*key, value.as_str())))
            .env("KUBERATOR_REPLICA_MANAGER", if manager { "1" } else { "0" })
            .env("KUBERATOR_REPLICA_KUBECONFIG", env.kubeconfig_path())
            .env("KUBERATOR_REPLICA_IDENTITY", name)
            .env("RUST_LOG", "kuberator=info")
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
            name,
            child,
            _stdin: stdin,
            lines,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// The time of the first line starting with `prefix` (its last field), if any.
    pub fn first(&self, prefix: &str) -> Option<u128> {
        self.lines()
            .iter()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn reconciles(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.starts_with("reconcile start"))
            .count()
    }

    pub fn signal(&self, signal: &str) -> u128 {
        let at = unix_nanos();
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
        at
    }

    pub async fn wait_exit(&mut self, within: Duration) {
        let end = Instant::now() + within;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < end, "{} did not exit", self.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reconcile intervals `[start, end]`; one still open ends at `killed_at` (or now).
    pub fn intervals(&self, killed_at: Option<u128>) -> Vec<(u128, u128, String)> {
        let mut open: BTreeMap<String, u128> = BTreeMap::new();
        let mut intervals = Vec::new();
        for line in self.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            if let ["reconcile", what, name, at] = fields[..] {
                let at: u128 = at.parse().unwrap();
                match what {
                    "start" => {
                        assert!(
                            open.insert(name.to_owned(), at).is_none(),
                            "{}: {name} reconciled twice at once",
                            self.name
                        );
                    }
                    _ => {
                        let start = open.remove(name).unwrap();
                        intervals.push((start, at, name.to_owned()));
                    }
                }
            }
        }
        let end = killed_at.unwrap_or_else(unix_nanos);
        intervals.extend(open.into_iter().map(|(name, start)| (start, end, name)));
        intervals
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn create_config_map(api: &Api<ConfigMap>, name: &str) {
    let object = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([("kuberator-test".to_owned(), "replica".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    };
    api.create(&PostParams::default(), &object).await.unwrap();
}

/// Waits until `replica` logged a reconcile start of `name`; returns its time.
pub async fn reconciled_by(replica: &Replica, name: &str, within: Duration) -> u128 {
    let prefix = format!("reconcile start {name} ");
    let end = Instant::now() + within;
    loop {
        if let Some(at) = replica.first(&prefix) {
            return at;
        }
        assert!(
            Instant::now() < end,
            "{} did not reconcile {name} within {within:?}; its output:\n{}",
            replica.name,
            replica.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_line(replica: &Replica, prefix: &str, within: Duration) -> u128 {
    let end = Instant::now() + within;
    loop {
        if let Some(at) = replica.first(prefix) {
            return at;
        }
        assert!(
            Instant::now() < end,
            "{} never logged `{prefix}`; its output:\n{}",
            replica.name,
            replica.lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn millis(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap())
}

/// The issue's acceptance test: two operator processes on one control plane. Exactly one
/// reconciles; SIGKILL the leader and the other reconciles new objects within lease duration +
/// retry period; SIGTERM the leader and a standby takes over in under 3 s; reconcile intervals
/// of different replicas never overlap.
#[tokio::test]
async fn two_replica_processes_never_reconcile_at_the_same_time() {
    let env = env().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let second = Duration::from_secs(1);

    let mut a = Replica::spawn("replica-a", &env);
    wait_line(&a, "leader true", 30 * second).await;
    let mut b = Replica::spawn("replica-b", &env);
    wait_line(&b, "leader false", 30 * second).await;
    for i in 0..4 {
        create_config_map(&api, &format!("before-{i}")).await;
    }
    for i in 0..4 {
        reconciled_by(&a, &format!("before-{i}"), 30 * second).await;
    }
    tokio::time::sleep(2 * second).await;
    assert_eq!(
        b.reconciles(),
        0,
        "the standby reconciled:\n{:?}",
        b.lines()
    );
    assert_eq!(
        a.reconciles(),
        4,
        "one reconcile per object: {:?}",
        a.lines()
    );

    // SIGKILL the leader while it reconciles: the standby takes over once the Lease expires.
    create_config_map(&api, "during-kill").await;
    reconciled_by(&a, "during-kill", 10 * second).await;
    let killed = a.signal("KILL");
    a.wait_exit(10 * second).await;
    create_config_map(&api, "after-kill").await;
    let b_started = reconciled_by(&b, "after-kill", 30 * second).await;
    let failover = millis(b_started - killed);
    eprintln!("failover after SIGKILL (two processes): {failover:?}");
    assert!(
        failover <= LEASE_DURATION + RETRY_PERIOD,
        "failover took {failover:?}"
    );

    // A new standby, then SIGTERM the leader: handover in under 3 s.
    let mut c = Replica::spawn("replica-c", &env);
    wait_line(&c, "leader false", 30 * second).await;
    tokio::time::sleep(2 * second).await;
    assert_eq!(c.reconciles(), 0);
    create_config_map(&api, "during-term").await;
    reconciled_by(&b, "during-term", 10 * second).await;
    let terminated = b.signal("TERM");
    let c_started = wait_line(&c, "reconcile start", 10 * second).await;
    let handover = millis(c_started - terminated);
    eprintln!("handover after SIGTERM (two processes): {handover:?}");
    assert!(
        handover < Duration::from_secs(3),
        "handover took {handover:?}"
    );
    b.wait_exit(10 * second).await;
    assert!(
        b.first("exited").is_some(),
        "b exited cleanly: {:?}",
        b.lines()
    );
    reconciled_by(&c, "during-term", 10 * second).await;
    create_config_map(&api, "after-term").await;
    reconciled_by(&c, "after-term", 10 * second).await;
    let c_terminated = c.signal("TERM");
    c.wait_exit(10 * second).await;

    // No two replicas ever reconciled at the same time.
    let replicas = [
        ("a", a.intervals(Some(killed))),
        ("b", b.intervals(Some(terminated + 10_000_000_000))),
        ("c", c.intervals(Some(c_terminated + 10_000_000_000))),
    ];
    for (i, (x, xs)) in replicas.iter().enumerate() {
        for (y, ys) in &replicas[i + 1..] {
            for (xs_start, xs_end, x_name) in xs {
                for (ys_start, ys_end, y_name) in ys {
                    assert!(
                        xs_end < ys_start || ys_end < xs_start,
                        "{x} reconciled {x_name} while {y} reconciled {y_name}"
                    );
                }
            }
        }
    }
    eprintln!(
        "reconciles (two processes): a {}, b {}, c {}",
        replicas[0].1.len(),
        replicas[1].1.len(),
        replicas[2].1.len()
    );
    let total: usize = replicas.iter().map(|(_, i)| i.len()).sum();
    assert!(total >= 10, "{total} reconciles");
}

// ---------------------------------------------------------------------------------------------
// Metrics and readiness.

/// Counts ConfigMaps, failing terminally on those with `data.fail`, and records metrics as the
/// operator does (see `wip/OPS_INTEGRATION.md`).
struct Counting {
    metrics: ControllerMetrics,
}

#[async_trait]
impl Reconciler<ConfigMap> for Counting {
    async fn reconcile(&self, object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        let _queued = self.metrics.queued();
        let timer = self.metrics.reconcile_started();
        let result = if object.data.as_ref().is_some_and(|d| d.contains_key("fail")) {
            Err(kuberator::Error::handler(TestError::Hopeless(0)))
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Action::await_change())
        };
        timer.finish(&result);
        result
    }
}

/// A raw HTTP/1.1 GET; the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    })
    .await
    .unwrap()
}

/// Scrapes `/metrics` after 6 good and 2 terminally failing objects: the totals match the work.
/// `/readyz` is 503 until the initial list synced, then 200.
#[tokio::test]
async fn metrics_and_readiness_after_a_known_workload() {
    let env = env().await;
    let api: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let metrics = Metrics::new();
    let readiness = Readiness::new();
    let server = HealthServer::bind(
        ([127, 0, 0, 1], 0).into(),
        Some(metrics.clone()),
        readiness.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = server_stopped.await;
    }));
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(http_get(addr, "/readyz").await.0, 503);

    for i in 0..8 {
        let mut object = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("metrics-{i}")),
                labels: Some([("kuberator-test".to_owned(), "metrics".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        if i >= 6 {
            object.data = Some([("fail".to_owned(), "yes".to_owned())].into());
        }
        api.create(&PostParams::default(), &object).await.unwrap();
    }

    // Readiness as the operator will derive it: the initial list of the watched scope synced.
    let (reader, writer) = kube::runtime::reflector::store::<ConfigMap>();
    let watch = kube::runtime::reflector(
        writer,
        kube::runtime::watcher(
            api.clone(),
            kube::runtime::watcher::Config::default().labels("kuberator-test=metrics"),
        ),
    );
    let syncing = tokio::spawn(futures::StreamExt::for_each(watch, |_| async {}));
    let ready = readiness.clone();
    tokio::spawn(async move {
        if reader.wait_until_ready().await.is_ok() {
            ready.set_ready(true);
        }
    });

    let controller = metrics.controller("configmaps");
    controller.set_max_concurrent_reconciles(2);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(
        Operator::with_reconciler(
            env.client(),
            Counting {
                metrics: controller,
            },
        )
        .namespaces(["default"])
        .label_selector("kuberator-test=metrics")
        .concurrency(2)
        .shutdown_on(async move {
            let _ = stopped.await;
        })
        .run(),
    );

    let expected = [
        r#"controller_runtime_reconcile_total{controller="configmaps",result="success"} 6"#,
        r#"controller_runtime_reconcile_total{controller="configmaps",result="error"} 2"#,
        r#"controller_runtime_reconcile_errors_total{controller="configmaps",reason="Hopeless"} 2"#,
        r#"controller_runtime_terminal_reconcile_errors_total{controller="configmaps"} 2"#,
        r#"controller_runtime_reconcile_time_seconds_count{controller="configmaps"} 8"#,
        r#"controller_runtime_max_concurrent_reconciles{controller="configmaps"} 2"#,
        r#"controller_runtime_active_workers{controller="configmaps"} 0"#,
        r#"workqueue_depth{name="configmaps"} 0"#,
    ];
    let body = eventually("the workload in /metrics", || async {
        let (status, body) = http_get(addr, "/metrics").await;
        (status == 200 && expected.iter().all(|line| body.lines().any(|l| l == *line)))
            .then_some(body)
    })
    .await;
    assert!(body.ends_with("# EOF\n"));
    // Nothing more happens: terminal errors are not retried, successes wait for a change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, again) = http_get(addr, "/metrics").await;
    for line in expected {
        assert!(again.lines().any(|l| l == line), "{line} changed:\n{again}");
    }
    eventually("ready", || async {
        (http_get(addr, "/readyz").await == (200, "ok\n".to_owned())).then_some(())
    })
    .await;

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    syncing.abort();
    stop_server.send(()).unwrap();
    serving.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Generated RBAC, checked and used as a ServiceAccount.

/// A client that impersonates `user` (the admin may impersonate anyone).
pub fn client_as(env: &TestEnv, user: &str) -> Client {
    let mut config = env.config().clone();
    config.auth_info.impersonate = Some(user.to_owned());
    Client::try_from(config).unwrap()
}

/// Creates the ServiceAccount, roles and bindings of `rbac` as the admin.
pub async fn create_rbac(client: &Client, rbac: &Rbac) {
    let post = PostParams::default();
    let namespace = |meta: &ObjectMeta| meta.namespace.clone().unwrap();
    if let Some(account) = rbac.service_account() {
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace(&account.metadata))
            .create(&post, &account)
            .await
            .unwrap();
    }
    for role in rbac.cluster_roles() {
        Api::<ClusterRole>::all(client.clone())
            .create(&post, &role)
            .await
            .unwrap();
    }
    for role in rbac.roles() {
        Api::<Role>::namespaced(client.clone(), &namespace(&role.metadata))
            .create(&post, &role)
            .await
            .unwrap();
    }
    for binding in rbac.cluster_role_bindings() {
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&post, &binding)
            .await
            .unwrap();
    }
    for binding in rbac.role_bindings() {
        Api::<RoleBinding>::namespaced(client.clone(), &namespace(&binding.metadata))
            .create(&post, &binding)
            .await
            .unwrap();
    }
}

pub fn missing(error: &kuberator::Error) -> Vec<String> {
    error
        .downcast_ref::<MissingPermissions>()
        .unwrap_or_else(|| panic!("not a MissingPermissions error: {error}"))
        .missing
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// A ServiceAccount bound to exactly the generated Roles passes the SelfSubjectAccessReview
/// check; one verb removed from its Role, the check fails with a message naming it.
#[tokio::test]
async fn generated_roles_pass_the_permission_check_and_a_removed_verb_is_named() {
    let env = env().await;
    env.install_crd::<Widget>().await.unwrap();
    let rbac = rbac_rules_for::<Widget>(
        &RbacOptions::new("widget-operator")
            .namespaces(["default"])
            .finalizer(true)
            .events(true)
            .owns::<ConfigMap>()
            .leader_election("default")
            .service_account("default", "widget-operator"),
    );
    let operator = client_as(&env, &rbac.service_account.as_ref().unwrap().user_name());

    // Nothing bound yet: every permission is missing, all named in one error.
    let error = check_permissions(&operator, &rbac).await.unwrap_err();
    assert_eq!(missing(&error).len(), rbac.permissions().len(), "{error}");

    create_rbac(&env.client(), &rbac).await;
    eventually("the generated RBAC to pass the check", || async {
        check_permissions(&operator, &rbac).await.ok()
    })
    .await;

    // Remove `patch` on widgets/status from the Role (its rule's only verb: the rule goes).
    let roles: Api<Role> = Api::namespaced(env.client(), "default");
    let mut role = roles.get("widget-operator").await.unwrap();
    let rules = role.rules.as_mut().unwrap();
    for rule in rules.iter_mut() {
        if rule.resources.as_deref() == Some(&["widgets/status".to_owned()]) {
            rule.verbs.retain(|verb| verb != "patch");
        }
    }
    rules.retain(|rule| !rule.verbs.is_empty());
    roles
        .replace("widget-operator", &PostParams::default(), &role)
        .await
        .unwrap();
    let error = eventually("the check to fail", || async {
        check_permissions(&operator, &rbac).await.err()
    })
    .await;
    assert_eq!(
        missing(&error),
        ["`patch` on `widgets.test.kuberator.dev/status` in namespace `default`"]
    );
    let message = error.to_string();
    eprintln!("permission check error: {message}");
    assert!(
        message.contains("lacks 1 RBAC permission")
            && message.contains("`patch` on `widgets.test.kuberator.dev/status`"),
        "{message}"
    );
}

/// The operator runs as a ServiceAccount bound to exactly the generated ClusterRole: the full
/// apply (finalizer) → status → event → delete (cleanup) scenario passes.
#[tokio::test]
async fn operator_runs_as_a_service_account_bound_to_exactly_the_generated_cluster_role() {
    let env = env().await;
    env.install_crd::<Widget>().await.unwrap();
    let rbac = rbac_rules_for::<Widget>(
        &RbacOptions::new("widget-operator")
            .finalizer(true)
            .events(true)
            .service_account("default", "widget-operator"),
    );
    create_rbac(&env.client(), &rbac).await;
    let operator = client_as(&env, &rbac.service_account.as_ref().unwrap().user_name());
    eventually("the generated RBAC to pass the check", || async {
        check_permissions(&operator, &rbac).await.ok()
    })
    .await;
    // Still least privilege: no Secrets, no other namespaces' Leases.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::all(operator.clone());
    assert!(secrets.list(&Default::default()).await.is_err());

    let record = Arc::new(Record::default());
    let running = Running::start(
        TestReconciler {
            api: Api::all(operator.clone()),
            operator: Arc::new(TestOperator::<Widget>::new(
                operator.clone(),
                record.clone(),
            )),
        },
        2,
    );
    let widgets: Api<Widget> = Api::namespaced(env.client(), "default");
    widgets
        .create(&PostParams::default(), &Widget::build("w", 1, Mode::Ok))
        .await
        .unwrap();
    let applied = eventually("status written as the ServiceAccount", || async {
        let widget = widgets.get("w").await.ok()?;
        let generation = widget.status.as_ref()?.observed_generation;
        (generation == Some(1)).then_some(widget)
    })
    .await;
    assert_eq!(applied.finalizers(), [FINALIZER.to_owned()]);

    let recorder = kuberator::events::EventRecorder::new(operator.clone(), "widget-operator");
    recorder
        .try_emit(
            &applied,
            kuberator::events::EventData::normal("Applied", "Reconcile"),
        )
        .await
        .unwrap();
    recorder.flush().await.unwrap();

    widgets.delete("w", &Default::default()).await.unwrap();
    eventually("the widget gone after cleanup", || async {
        widgets.get_opt("w").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(record.cleanups(), 1);
    assert_eq!(
        record.errors_seen.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    running.stop().await;
}
