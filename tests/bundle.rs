//! The install bundle (`kuberator::manifests::Bundle`) of the demo operator: accepted by the real
//! API server object by object (server-side dry run, as a stream and as a kustomize folder),
//! then applied, and the operator run in-process with a token of the bundle's ServiceAccount
//! through the whole scenario.

use std::{process::Stdio, time::Duration};

use kuberator::IntoOperator;

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    coordination::v1::Lease,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    events::v1::Event,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    config::AuthInfo,
};
use kuberator::{
    manifests::{Bundle, cli_from},
    runtime::LeaderElection,
    testing::TestEnv,
    webhook::{Webhook, WebhookServer},
};
use kuberator_examples::static_site::{FINALIZER, StaticSite, StaticSiteSpec, StaticSites};
use tokio::{io::AsyncWriteExt, sync::oneshot};

use crate::support::*;

const NAMESPACE: &str = "staticsites-system";

/// `kubectl <args>` with `stdin`; its stdout, stderr and success.
pub async fn kubectl(env: &TestEnv, args: &[&str], stdin: &str) -> (String, String, bool) {
    let mut child = env
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// The demo operator's bundle as its binary prints it: `manifests --image … --namespace …
/// --replicas 2` (two replicas: leader election and a PodDisruptionBudget).
fn bundle() -> (Bundle, String) {
    let bundle =
        Bundle::for_operator::<StaticSite>(&StaticSites::rbac_options()).leader_election(true);
    let mut yaml = Vec::new();
    let args = [
        "manifests",
        "--image",
        "registry.example.invalid/staticsites-operator:0.1.0",
        "--namespace",
        NAMESPACE,
        "--replicas",
        "2",
    ];
    assert!(cli_from(bundle.clone(), args, &mut yaml).unwrap());
    let bundle = bundle
        .image("registry.example.invalid/staticsites-operator:0.1.0")
        .namespace(NAMESPACE)
        .replicas(2);
    (bundle, String::from_utf8(yaml).unwrap())
}

/// Every line of `kubectl apply` output names one of `objects` with `suffix`, each once.
fn assert_each_applied(out: &str, objects: &[serde_json::Value], suffix: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), objects.len(), "{out}");
    for object in objects {
        let name = object["metadata"]["name"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap().to_lowercase();
        let names_it = |l: &&str| {
            (l.starts_with(&format!("{kind}/")) || l.starts_with(&format!("{kind}.")))
                && l.contains(&format!("/{name} "))
                && l.ends_with(suffix)
        };
        assert!(
            lines.iter().any(names_it),
            "{kind}/{name} not {suffix}:\n{out}"
        );
    }
}

/// A client authenticated only by a fresh token of the ServiceAccount (TokenRequest API).
pub async fn service_account_client(env: &TestEnv, namespace: &str, name: &str) -> Client {
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client(), namespace);
    let request = TokenRequest {
        // No audiences: the API server's own.
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let mut config = env.config().clone();
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..AuthInfo::default()
    };
    Client::try_from(config).unwrap()
}

fn site(content: &str) -> StaticSite {
    StaticSite::new(
        "home",
        StaticSiteSpec {
            title: "Home".into(),
            content: content.into(),
            port: 8080,
        },
    )
}

/// The acceptance test.
#[tokio::test]
async fn the_bundle_is_accepted_applied_and_runs_the_operator_as_its_service_account() {
    init_tracing();
    let env = TestEnv::start().await.unwrap();
    let (bundle, yaml) = bundle();
    let objects = bundle.objects().unwrap();
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "ClusterRoleBinding",
            "RoleBinding",
            "Service",
            "Deployment",
            "PodDisruptionBudget"
        ]
    );

    // Server-side dry run of every object. Objects in a namespace that does not exist yet are
    // refused by the API server, so the Namespace (itself dry-run first) is created before.
    let namespace_yaml = yaml.split("---\n").next().unwrap();
    let (out, err, ok) = kubectl(
        &env,
        &["apply", "--dry-run=server", "-f", "-"],
        namespace_yaml,
    )
    .await;
    assert!(ok, "{err}");
    assert_each_applied(&out, &objects[..1], "created (server dry run)");
    let (_, err, ok) = kubectl(&env, &["apply", "-f", "-"], namespace_yaml).await;
    assert!(ok, "{err}");
    let (out, err, ok) = kubectl(&env, &["apply", "--dry-run=server", "-f", "-"], &yaml).await;
    assert!(ok, "{err}");
    // No Pod Security warning: the pod template meets `restricted`, which the Namespace enforces.
    assert!(!err.contains("Warning"), "{err}");
    assert_each_applied(
        &out[out.find('\n').unwrap() + 1..],
        &objects[1..],
        "created (server dry run)",
    );

    // (Pod Security does check the template: one that may escalate privileges is warned about.)
    let mut escalating = objects[8].clone();
    escalating["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] =
        true.into();
    let (_, err, ok) = kubectl(
        &env,
        &["apply", "--dry-run=server", "-f", "-"],
        &escalating.to_string(),
    )
    .await;
    assert!(
        ok && err.contains("Warning") && err.contains("allowPrivilegeEscalation"),
        "{err}"
    );

    // With admission webhooks: their Service, container port, RBAC (the certificate Secret
    // and the configurations by name) and configurations (no caBundle yet, a namespace
    // selector) pass the same dry run.
    let with_webhooks = bundle
        .clone()
        .webhook_server(WebhookServer::in_cluster(NAMESPACE, "staticsites-webhooks"))
        .webhook(
            &Webhook::<StaticSite>::new()
                .validate(|_, _| Ok(()))
                .default(|_| {})
                .namespace_selector(LabelSelector {
                    match_labels: Some([("webhooks".to_owned(), "on".to_owned())].into()),
                    ..LabelSelector::default()
                }),
        );
    let webhook_yaml = with_webhooks.to_yaml().unwrap();
    let (out, err, ok) = kubectl(
        &env,
        &["apply", "--dry-run=server", "-f", "-"],
        &webhook_yaml,
    )
    .await;
    assert!(ok, "{err}");
    for created in [
        "service/staticsites-webhooks created (server dry run)",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/staticsites-webhooks created (server dry run)",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/staticsites-webhooks created (server dry run)",
    ] {
        assert!(
            out.lines().any(|line| line == created),
            "{created} not in:\n{out}"
        );
    }
    assert_eq!(
        out.lines().count(),
        with_webhooks.objects().unwrap().len(),
        "{out}"
    );

    // The kustomize folder renders and passes the same dry run.
    let dir = env.dir().join("bundle");
    bundle.write_dir(&dir).unwrap();
    let (out, err, ok) = kubectl(
        &env,
        &["apply", "--dry-run=server", "-k", dir.to_str().unwrap()],
        "",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), objects.len(), "{out}");

    // Really applied: everything (the Deployment's pods never start: no scheduler, no kubelet).
    let (out, err, ok) = kubectl(&env, &["apply", "-f", "-"], &yaml).await;
    assert!(ok, "{err}");
    assert_each_applied(
        &out[out.find('\n').unwrap() + 1..],
        &objects[1..],
        "created",
    );
    let (_, err, ok) = kubectl(
        &env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/staticsites.demo.kuberator.dev",
            "--timeout=30s",
        ],
        "",
    )
    .await;
    assert!(ok, "{err}");

    // The operator, in-process, authenticated only by the bundle's ServiceAccount's token:
    // checks its permissions, elects itself leader, reconciles, cleans up.
    let account = bundle.service_account_ref();
    let operator = service_account_client(&env, &account.namespace, &account.name).await;
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(
        StaticSites
            .operator(operator.clone())
            .unwrap()
            .leader_election(
                LeaderElection::new(operator.clone(), NAMESPACE, "staticsites-operator")
                    .identity("bundle-test"),
            )
            .check_permissions(bundle.rbac_objects())
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    let secrets: Api<Secret> = Api::all(operator.clone());
    assert!(
        secrets.list(&ListParams::default()).await.is_err(),
        "least privilege: no Secrets"
    );

    let sites: Api<StaticSite> = Api::namespaced(env.client(), "default");
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    sites
        .create(&PostParams::default(), &site("<p>hello</p>"))
        .await
        .unwrap();
    let published = eventually("the site published as the ServiceAccount", || async {
        let site = sites.get("home").await.ok()?;
        let status = site.status.as_ref()?;
        (status.observed_generation == Some(1) && status.phase.as_deref() == Some("Published"))
            .then_some(site)
    })
    .await;
    assert_eq!(published.finalizers(), [FINALIZER.to_owned()]);
    let page = config_maps.get("home-page").await.unwrap();
    assert!(page.data.unwrap()["index.html"].contains("<p>hello</p>"));
    Api::<Service>::namespaced(env.client(), "default")
        .get("home")
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(env.client(), NAMESPACE);
    let lease = leases.get("staticsites-operator").await.unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("bundle-test")
    );

    // A change of spec reaches the child.
    sites
        .patch(
            "home",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"content": "<p>changed</p>"}})),
        )
        .await
        .unwrap();
    eventually("the page updated", || async {
        let page = config_maps.get("home-page").await.ok()?;
        page.data?["index.html"]
            .contains("<p>changed</p>")
            .then_some(())
    })
    .await;
    let events: Api<Event> = Api::namespaced(env.client(), "default");
    eventually("a Published event from the ServiceAccount", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Published"))
            .then_some(())
    })
    .await;

    // Deleting runs the cleanup and removes the finalizer, as the ServiceAccount.
    sites.delete("home", &Default::default()).await.unwrap();
    eventually("the site gone after cleanup", || async {
        sites.get_opt("home").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(!running.is_finished(), "the operator stopped early");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
