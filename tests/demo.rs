//! The demo behind `make demo`, run as a test: every step checks its claim through the API
//! (children created and garbage-collected, status and events as shown).

use kuberator_examples::demo::{Options, run};

#[tokio::test]
async fn the_demo_runs_start_to_finish() {
    let report = run(Options {
        keep: false,
        quiet: true,
    })
    .await
    .expect("the demo failed");
    assert_eq!(report.published, 3);
    assert_eq!(
        report.validation_error,
        "spec.port 70000 is not a valid port (1-65535)"
    );
    // One `apply` per generation of `home` (two): its own child writes do not re-trigger it.
    assert_eq!(report.published_event_count, 2, "{report:?}");
    assert!(report.children_collected);
    assert!(report.ready, "/readyz was not 200");
    assert_eq!(report.lease_holder, "demo-replica");
    let count = |result: &str| {
        report
            .reconcile_metrics
            .iter()
            .find(|l| l.contains(&format!("result=\"{result}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert!(
        count("success") >= Some(4),
        "{:?}",
        report.reconcile_metrics
    );
    assert_eq!(count("error"), Some(1), "{:?}", report.reconcile_metrics);
    // The webhook scenes: kubectl shows the validator's own message, the stored object the
    // default, and the object written as v1alpha1 reads as v1 with every field converted.
    assert!(
        report.webhook_refusal.contains(
            "denied the request: spec.region: unknown region `mars-north`: buckets live in \
             eu-west or us-east"
        ),
        "{}",
        report.webhook_refusal
    );
    assert_eq!(report.defaulted_storage_class, "standard");
    assert_eq!(
        report.converted_spec,
        serde_json::json!({ "region": "us-east", "retentionDays": 365, "storageClass": "cold" })
    );
}

/// The generated manifests (CRD, ServiceAccount, least-privilege ClusterRole and binding) apply
/// cleanly with kubectl, and the role holds exactly the demo operator's permissions.
#[tokio::test]
async fn the_demo_manifests_apply_with_kubectl() {
    use tokio::io::AsyncWriteExt;
    let env = kuberator::testing::TestEnv::start().await.unwrap();
    let yaml = kuberator_examples::static_site::manifests("default").unwrap();
    let mut child = env
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .await
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let applied = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "customresourcedefinition.apiextensions.k8s.io/staticsites.demo.kuberator.dev",
        "serviceaccount/staticsites-operator",
        "clusterrole.rbac.authorization.k8s.io/staticsites.demo.kuberator.dev-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/",
    ] {
        assert!(applied.contains(kind), "{kind} not applied:\n{applied}");
    }
    let role = env
        .kubectl_json([
            "get",
            "clusterrole",
            "staticsites.demo.kuberator.dev-operator",
        ])
        .await
        .unwrap();
    let resources: Vec<String> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["resources"].as_array().unwrap().clone())
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        resources,
        [
            "staticsites",
            "staticsites/status",
            "staticsites/finalizers",
            "configmaps",
            "services",
            "events"
        ]
    );
}
