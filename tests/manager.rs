//! `kuberator::runtime::Manager` on the real API server: two controllers (the demo's
//! `StaticSite` and `SiteBackup` from `examples/src/site_backup.rs`) over four kinds in one
//! process: one WATCH per kind, cached reads with no GET, per-controller metrics, one Lease,
//! `/readyz` that waits for every controller, one permission check over the union RBAC.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use k8s_openapi::api::{core::v1::ConfigMap, rbac::v1::ClusterRole};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use kuberator::{
    Action, Operator, Reconciler,
    runtime::{LeaderElection, Manager},
    testing::TestEnv,
};
use kuberator_examples::{
    site_backup::{self, SiteBackup, SiteBackupSpec},
    static_site::{StaticSite, StaticSiteSpec},
    story,
};

use crate::{
    operations::{client_as, create_rbac, http_get, missing},
    support::*,
};

const SITES: &str = "staticsites.demo.kuberator.dev-operator";
const BACKUPS: &str = "sitebackups.demo.kuberator.dev-operator";

async fn env() -> TestEnv {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<StaticSite>().await.unwrap();
    env.install_crd::<SiteBackup>().await.unwrap();
    env
}

/// A free port on loopback for the manager's health server.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The API server's own request metrics, summed per verb and resource (without subresources):
/// `total <VERB>` from `apiserver_request_total`, `open WATCH` from the gauge of open
/// long-running requests.
struct Requests(BTreeMap<(String, String), f64>);

impl Requests {
    async fn scrape(client: &Client) -> Requests {
        let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
        let text = client.request_text(request).await.unwrap();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            // Finished requests, and the watches open right now (a WATCH is only counted in
            // `apiserver_request_total` when it ends).
            let (metric, labels) = if let Some(rest) = line.strip_prefix("apiserver_request_total{")
            {
                ("total", rest)
            } else if let Some(rest) = line.strip_prefix("apiserver_longrunning_requests{") {
                ("open", rest)
            } else {
                continue;
            };
            let Some((labels, value)) = labels.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
                    .unwrap_or_default()
            };
            if !label("subresource").is_empty() {
                continue;
            }
            *counts
                .entry((format!("{metric} {}", label("verb")), label("resource")))
                .or_insert(0.0) += value.parse::<f64>().unwrap();
        }
        Requests(counts)
    }

    fn since(&self, before: &Requests, verb: &str, resource: &str) -> u64 {
        let key = (verb.to_owned(), resource.to_owned());
        let now = self.0.get(&key).copied().unwrap_or_default();
        let then = before.0.get(&key).copied().unwrap_or_default();
        (now - then).round() as u64
    }
}

fn site(name: &str, title: &str) -> StaticSite {
    StaticSite::new(
        name,
        StaticSiteSpec {
            title: title.into(),
            content: "<p>hello</p>".into(),
            port: 8080,
        },
    )
}

fn backup(name: &str, site: &str) -> SiteBackup {
    SiteBackup::new(name, SiteBackupSpec { site: site.into() })
}

/// Lists (not GETs or watches, which the test counts) until `check` holds for object `name`.
async fn listed_until<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    eventually(what, || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|o| o.meta().name.as_deref() == Some(name) && check(o))
    })
    .await
}

fn published(site: &StaticSite) -> bool {
    site.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Published")
}

fn backed_up(generation: i64) -> impl Fn(&SiteBackup) -> bool {
    move |b| b.status.as_ref().and_then(|s| s.site_generation) == Some(generation)
}

/// Two controllers over four kinds (StaticSite shared: primary of one, related kind of the
/// other; ConfigMap owned by both): the API server sees exactly one WATCH per kind, both
/// controllers reconcile on the shared kind's changes, the backup handler reads sites from the
/// shared cache (no GET of any site), and `/metrics` reports both controllers under their
/// names with one `leader_election_master_status`.
#[tokio::test]
async fn two_controllers_share_one_watch_per_kind_and_read_through_the_cache() {
    let env = env().await;
    let client = env.client();
    let before = Requests::scrape(&client).await;
    let addr = free_addr();
    let manager = site_backup::manager(client.clone())
        .unwrap()
        .health(addr)
        .leader_election(
            LeaderElection::new(client.clone(), "default", "site-manager").identity("only"),
        );
    let running = story::background(|stop| manager.shutdown_on(stop).run());

    let sites: Api<StaticSite> = Api::namespaced(client.clone(), "default");
    let backups: Api<SiteBackup> = Api::namespaced(client.clone(), "default");
    let post = PostParams::default();
    backups
        .create(&post, &backup("nightly", "home"))
        .await
        .unwrap();
    sites.create(&post, &site("home", "Home")).await.unwrap();
    listed_until(&sites, "home", "the site published", published).await;
    listed_until(
        &backups,
        "nightly",
        "the backup of generation 1",
        backed_up(1),
    )
    .await;

    // A change of the shared kind reaches both controllers.
    let mut home = listed_until(&sites, "home", "the site", |_| true).await;
    home.spec.title = "Home, renamed".into();
    sites.replace("home", &post, &home).await.unwrap();
    listed_until(
        &backups,
        "nightly",
        "the backup of generation 2",
        backed_up(2),
    )
    .await;
    let copy: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let data = copy.get("nightly-backup").await.unwrap().data.unwrap();
    assert_eq!(data["title"], "Home, renamed");

    let after = Requests::scrape(&client).await;
    for resource in ["staticsites", "sitebackups", "configmaps", "services"] {
        let watches = after.since(&before, "open WATCH", resource);
        eprintln!("WATCH {resource}: {watches}");
        assert_eq!(watches, 1, "WATCH requests on {resource}");
    }
    assert_eq!(
        after.since(&before, "total GET", "staticsites"),
        0,
        "the backup controller reads sites from the cache"
    );

    let (status, metrics) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for controller in [SITES, BACKUPS] {
        let success = metrics
            .lines()
            .find(|l| {
                l.starts_with("controller_runtime_reconcile_total{")
                    && l.contains(&format!("controller=\"{controller}\""))
                    && l.contains("result=\"success\"")
            })
            .unwrap_or_else(|| panic!("no reconcile_total for {controller}:\n{metrics}"));
        let count: f64 = success.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1.0, "{success}");
    }
    let leader_lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("leader_election_master_status{"))
        .collect();
    assert_eq!(
        leader_lines,
        [r#"leader_election_master_status{name="site-manager"} 1"#]
    );
    let (status, _) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200);
    running.stop().await.unwrap().unwrap();
}

struct Noop;

#[async_trait::async_trait]
impl Reconciler<ConfigMap> for Noop {
    async fn reconcile(&self, _object: Arc<ConfigMap>) -> kuberator::Result<Action> {
        Ok(Action::await_change())
    }
}

/// A controller that reads a kind from the cache which no controller watches fails the
/// manager's start, naming the controller and the kind (no silent new watch).
#[tokio::test]
async fn reading_a_kind_nobody_watches_fails_the_start() {
    let env = env().await;
    let client = env.client();
    let error = Manager::new(client.clone())
        .add(
            Operator::<ConfigMap>::with_reconciler(client.clone(), Noop)
                .name("maps")
                .reads::<k8s_openapi::api::core::v1::Secret>(),
        )
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("controller `maps` reads Secret")
            && error.contains("no controller of the manager watches it"),
        "{error}"
    );
}

/// The manager runs as a ServiceAccount bound to exactly the union RBAC of both controllers.
/// With `list` on sitebackups removed, the start-up check names that verb; run without the
/// check, the sites controller works while `/readyz` is 503 naming the backup controller, whose
/// watch is retried; with the verb restored, `/readyz` turns 200 and backups work.
#[tokio::test]
async fn union_rbac_runs_both_controllers_and_readyz_waits_for_each() {
    let env = env().await;
    let rbac = site_backup::rbac("default");
    assert_eq!(rbac.grants.len(), 1, "one ClusterRole for both controllers");
    let rules = &rbac.grants[0].rules;
    let configmaps = rules
        .iter()
        .filter(|r| r.resources.as_deref() == Some(&["configmaps".to_owned()][..]))
        .count();
    assert_eq!(configmaps, 1, "ConfigMap rules merged: {rules:?}");
    create_rbac(&env.client(), &rbac).await;
    let account = client_as(&env, &rbac.service_account.as_ref().unwrap().user_name());

    // Take `list` on sitebackups away: the backup controller's watch cannot list.
    let roles: Api<ClusterRole> = Api::all(env.client());
    let set_backup_verbs = |keep_list: bool| {
        let roles = roles.clone();
        async move {
            let mut role = roles.get("site-operator").await.unwrap();
            for rule in role.rules.as_mut().unwrap() {
                if rule.resources.as_deref() == Some(&["sitebackups".to_owned()][..]) {
                    rule.verbs.retain(|v| v != "list");
                    if keep_list {
                        rule.verbs.push("list".into());
                    }
                }
            }
            roles
                .replace("site-operator", &PostParams::default(), &role)
                .await
                .unwrap();
        }
    };
    set_backup_verbs(false).await;
    let error = eventually("the start-up check to name the missing verb", || async {
        site_backup::manager(account.clone())
            .unwrap()
            .check_permissions(rbac.clone())
            .run()
            .await
            .err()
    })
    .await;
    assert_eq!(
        missing(&error),
        ["`list` on `sitebackups.demo.kuberator.dev` in all namespaces"],
        "{error}"
    );

    let addr = free_addr();
    let manager = site_backup::manager(account.clone()).unwrap().health(addr);
    let running = story::background(|stop| manager.shutdown_on(stop).run());
    let sites: Api<StaticSite> = Api::namespaced(env.client(), "default");
    let backups: Api<SiteBackup> = Api::namespaced(env.client(), "default");
    let post = PostParams::default();
    sites.create(&post, &site("home", "Home")).await.unwrap();
    listed_until(
        &sites,
        "home",
        "the site published as the account",
        published,
    )
    .await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(BACKUPS) && !body.contains(SITES), "{body}");

    set_backup_verbs(true).await;
    eventually("/readyz to turn 200", || async {
        (http_get(addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    backups
        .create(&post, &backup("nightly", "home"))
        .await
        .unwrap();
    listed_until(
        &backups,
        "nightly",
        "the backup as the account",
        backed_up(1),
    )
    .await;
    kuberator::manifests::check_permissions(&account, &rbac)
        .await
        .unwrap();
    running.stop().await.unwrap().unwrap();
}

/// The example's story (`cargo run -p kuberator-examples --bin site_backup`): a backup waits
/// for its site, follows it through a change; `kubectl get sitebackups` shows it.
#[tokio::test]
async fn the_site_backup_story_runs() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    let report = site_backup::run(&env).await.unwrap();
    assert_eq!(report.first["title"], "Home");
    assert_eq!(report.first["generation"], "1");
    assert_eq!(report.second["title"], "Home, renamed");
    assert_eq!(report.second["generation"], "2");
    assert!(
        report.table.contains("nightly") && report.table.contains("BackedUp"),
        "{}",
        report.table
    );
    let yaml = site_backup::manifests("operators").unwrap();
    for kind in [
        "kind: CustomResourceDefinition\n",
        "name: staticsites.demo.kuberator.dev",
        "name: sitebackups.demo.kuberator.dev",
        "kind: ClusterRole\n",
        "kind: ServiceAccount\n",
    ] {
        assert!(yaml.contains(kind), "{kind} missing from:\n{yaml}");
    }
}

/// With the backup controller's CRD not installed, the manager's start fails with an error
/// naming that controller and the CRD (and not the sites controller, whose CRD is there).
#[tokio::test]
async fn a_missing_crd_fails_the_start_naming_the_controller_and_the_crd() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<StaticSite>().await.unwrap();
    let error = site_backup::manager(env.client())
        .unwrap()
        .run()
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, kuberator::Error::NotServed { .. }),
        "{error:?}"
    );
    assert!(
        message.contains(&format!("controller `{BACKUPS}` cannot start"))
            && message.contains("CRD sitebackups.demo.kuberator.dev is not installed")
            && !message.contains(SITES),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// Two manager processes.

/// Two processes, each a `Manager` of two controllers (ConfigMaps and Secrets, `tests/bin/
/// replica.rs` with `KUBERATOR_REPLICA_MANAGER=1`) under the manager's one Lease: exactly one
/// process reconciles, for every controller; SIGTERM on the leader hands every controller over to
/// the standby in under 3 s.
#[tokio::test]
async fn two_manager_processes_hand_every_controller_over_on_sigterm() {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Secret;
    use kube::api::ObjectMeta;

    use crate::operations::{Replica, millis, reconciled_by, wait_line};

    let env = env().await;
    let second = Duration::from_secs(1);
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let secrets: Api<Secret> = Api::namespaced(env.client(), "default");
    let meta = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some([("kuberator-test".to_owned(), "replica".to_owned())].into()),
        ..ObjectMeta::default()
    };
    let create_both = |name: &'static str| {
        let (config_maps, secrets) = (config_maps.clone(), secrets.clone());
        let (cm, secret) = (
            ConfigMap {
                metadata: meta(name),
                ..ConfigMap::default()
            },
            Secret {
                metadata: meta(name),
                ..Secret::default()
            },
        );
        async move {
            config_maps
                .create(&PostParams::default(), &cm)
                .await
                .unwrap();
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .unwrap();
        }
    };

    let mut a = Replica::spawn_manager("manager-a", &env);
    wait_line(&a, "leader true", 30 * second).await;
    let mut b = Replica::spawn_manager("manager-b", &env);
    wait_line(&b, "leader false", 30 * second).await;
    create_both("before").await;
    reconciled_by(&a, "ConfigMap/before", 30 * second).await;
    reconciled_by(&a, "Secret/before", 30 * second).await;
    tokio::time::sleep(2 * second).await;
    assert_eq!(b.reconciles(), 0, "the standby reconciled: {:?}", b.lines());
    assert_eq!(
        a.reconciles(),
        2,
        "one reconcile per object: {:?}",
        a.lines()
    );

    let terminated = a.signal("TERM");
    let first = wait_line(&b, "reconcile start", 10 * second).await;
    let handover = millis(first - terminated);
    eprintln!("manager handover after SIGTERM (two processes): {handover:?}");
    assert!(handover < 3 * second, "handover took {handover:?}");
    a.wait_exit(10 * second).await;
    assert!(
        a.first("exited").is_some(),
        "a exited cleanly: {:?}",
        a.lines()
    );

    // Both controllers of the new leader work; the old one did nothing after its signal.
    create_both("after").await;
    let cm_at = reconciled_by(&b, "ConfigMap/after", 10 * second).await;
    let secret_at = reconciled_by(&b, "Secret/after", 10 * second).await;
    eprintln!(
        "after handover: ConfigMap {:?}, Secret {:?} after the signal",
        millis(cm_at - terminated),
        millis(secret_at - terminated)
    );
    let signal_at = a.first("signal").unwrap();
    let late: Vec<_> = a
        .intervals(None)
        .into_iter()
        .filter(|(start, _, _)| *start > signal_at)
        .collect();
    assert!(
        late.is_empty(),
        "the old leader reconciled after SIGTERM: {late:?}"
    );
    let c_terminated = b.signal("TERM");
    b.wait_exit(10 * second).await;
    // Intervals of the two processes never overlap.
    for (xs, xe, x) in a.intervals(Some(terminated)) {
        for (ys, ye, y) in b.intervals(Some(c_terminated)) {
            assert!(
                xe < ys || ye < xs,
                "a reconciled {x} while b reconciled {y}"
            );
        }
    }
}
