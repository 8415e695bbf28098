//! The runnable examples of `kuberator-examples`, each against a fresh control plane with a
//! timeout; what they claim is checked on the API server, not only in what they return.

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{Api, ResourceExt};
use kuberator::{StatusError, conditions, testing::TestEnv};
use kuberator_examples::{
    caching::{self, Found, Lookup},
    cluster_scoped, crd_yaml, custom_repository, errors, events, quickstart_macro,
    quickstart_manual, shards, status, webhooks,
};

use crate::support::init_tracing;

/// How long one example may take, control plane not included.
const LIMIT: Duration = Duration::from_secs(120);

async fn env() -> TestEnv {
    init_tracing();
    TestEnv::start().await.expect("control plane")
}

/// Runs an example's story with the time limit.
async fn within<T>(example: impl Future<Output = anyhow::Result<T>>) -> T {
    tokio::time::timeout(LIMIT, example)
        .await
        .expect("the example timed out")
        .expect("the example failed")
}

#[tokio::test]
async fn the_two_quickstarts_behave_identically() {
    use quickstart_macro::{Call, FINALIZER, Greeting, GreetingStatus};

    let (macro_env, manual_env) = tokio::join!(env(), env());
    let (by_macro, by_hand) = tokio::join!(
        within(quickstart_macro::run(&macro_env)),
        within(quickstart_manual::run(&manual_env)),
    );
    assert_eq!(
        by_macro, by_hand,
        "the macro and the hand-written traits differ"
    );

    let status = |generation, message: &str| GreetingStatus {
        observed_generation: Some(generation),
        message: Some(message.to_owned()),
    };
    assert_eq!(by_macro.created, status(1, "Hello, World!"));
    assert_eq!(by_macro.finalizers, [FINALIZER]);
    assert_eq!(by_macro.updated, status(2, "Hello, Kuberator!"));
    let apply = |generation| Call::Apply {
        name: "hello".into(),
        generation: Some(generation),
    };
    let cleanup = Call::Cleanup {
        name: "hello".into(),
    };
    assert_eq!(by_macro.calls, [apply(1), apply(2), cleanup]);
    for env in [&macro_env, &manual_env] {
        let greetings: Api<Greeting> = Api::all(env.client());
        let left = greetings.list(&Default::default()).await.unwrap().items;
        assert!(left.is_empty(), "greetings left behind: {left:?}");
    }
}

#[tokio::test]
async fn status_conditions_work_with_kubectl_wait() {
    use status::Database;

    let env = env().await;
    let outcome = within(status::run(&env)).await;

    let (last, provisioning) = outcome.progress.split_last().unwrap();
    assert_eq!(last, "True Available: 3/3 replicas ready");
    assert!(
        !provisioning.is_empty()
            && provisioning
                .iter()
                .all(|p| p.starts_with("Unknown Scaling")),
        "{:?}",
        outcome.progress
    );
    assert_eq!(outcome.ready.ready_replicas, 3);
    assert!(conditions::is_ready_for(&outcome.ready.conditions, Some(1)));
    // `kubectl wait` after the scale returned only once generation 2 was Ready.
    assert_eq!(outcome.scaled.ready_replicas, 5);
    assert_eq!(outcome.scaled.observed_generation, Some(2));
    assert!(conditions::is_ready_for(
        &outcome.scaled.conditions,
        Some(2)
    ));

    let databases: Api<Database> = Api::namespaced(env.client(), "default");
    let orders = databases.get("orders").await.unwrap();
    let status = orders.status.unwrap();
    assert_eq!(status.observed_generation, orders.metadata.generation);
    assert!(conditions::is_true(&status.conditions, conditions::STALLED));
    let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "NoReplicas")
    );
    assert!(conditions::find(&status.conditions, conditions::RECONCILING).is_none());
    assert_eq!(status, outcome.stalled);
    assert!(outcome.table.contains("NoReplicas"), "{}", outcome.table);
}

#[tokio::test]
async fn errors_land_in_status_and_are_retried_by_class() {
    use errors::Certificate;

    let env = env().await;
    let outcome = within(errors::run(&env)).await;

    let error = |reason: &str, message: &str| StatusError {
        reason: reason.into(),
        message: message.into(),
    };
    assert_eq!(
        outcome.errors["typo"],
        error("InvalidDomain", "`example` is not a domain name")
    );
    assert_eq!(
        outcome.errors["fresh"],
        error(
            "DnsPending",
            "the DNS record of new.example.com has not propagated yet"
        )
    );
    assert_eq!(
        outcome.errors["flaky"],
        error("IssuerUnavailable", "the certificate issuer is unavailable")
    );

    // terminal: one attempt while the others were retried for ~4 s, one more after the fix.
    assert_eq!(outcome.typo_attempts_before_fix, 1);
    assert_eq!(outcome.attempts["typo"].len(), 2);
    // requeue_after = "2s": every ~2 s.
    let gaps = |name: &str| -> Vec<f64> {
        let times = &outcome.attempts[name];
        times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect()
    };
    let fresh = gaps("fresh");
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(
        fresh.iter().all(|gap| (1.9..3.5).contains(gap)),
        "{fresh:?}"
    );
    // retry: exponential backoff, ~1 s then ~2 s.
    let flaky = gaps("flaky");
    assert_eq!(flaky.len(), 2, "{flaky:?}");
    assert!((0.5..1.9).contains(&flaky[0]), "{flaky:?}");
    assert!(flaky[1] > flaky[0] && flaky[1] < 3.5, "{flaky:?}");

    let certificates: Api<Certificate> = Api::namespaced(env.client(), "default");
    for cert in certificates.list(&Default::default()).await.unwrap() {
        let status = cert.status.clone().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Issued"), "{cert:?}");
        assert_eq!(status.error, None, "{cert:?}");
        assert_eq!(status.observed_generation, cert.metadata.generation);
    }
    assert_eq!(
        certificates.get("typo").await.unwrap().metadata.generation,
        Some(2)
    );
}

#[tokio::test]
async fn events_are_deduplicated_and_read_back_with_kubectl() {
    use events::Backup;

    let env = env().await;
    let outcome = within(events::run(&env)).await;

    assert_eq!(outcome.scheduled_count, 3);
    assert_eq!(outcome.scheduled_events, 1);
    assert_eq!(outcome.warnings, [("InvalidSchedule".to_owned(), 1)]);
    assert_eq!(
        outcome.rehearsal,
        events::Rehearsal {
            scheduled: 3,
            distinct: 1,
            after_failure: 3,
        }
    );

    // After the operator stopped (and flushed): as kubectl shows them.
    let on_server = events::events_of(&env, "nightly").await.unwrap();
    assert_eq!(on_server.len(), 2, "{on_server:#?}");
    let scheduled = on_server
        .iter()
        .find(|e| e["reason"] == "Scheduled")
        .unwrap();
    assert_eq!(events::series_count(scheduled), 3);
    assert_eq!(scheduled["type"], "Normal");
    let warning = on_server
        .iter()
        .find(|e| e["reason"] == "InvalidSchedule")
        .unwrap();
    assert_eq!(warning["type"], "Warning");
    assert_eq!(events::series_count(warning), 1);

    let backups: Api<Backup> = Api::namespaced(env.client(), "default");
    let status = backups.get("nightly").await.unwrap().status.unwrap();
    assert_eq!(
        status.error.map(|e| e.reason).as_deref(),
        Some("InvalidSchedule")
    );
    assert_eq!(status.observed_generation, Some(4));
}

#[tokio::test]
async fn caching_strategies_hit_miss_and_refuse() {
    let env = env().await;
    let outcome = within(caching::run(&env)).await;

    let row = |provider: &str, namespace: &str, found: Found| Lookup {
        provider: provider.into(),
        namespace: namespace.into(),
        found,
    };
    let refused = || Found::Refused("namespace `misc` is not cached (cached: shop, blog)".into());
    assert_eq!(
        outcome.lookups,
        [
            row("Strict", "shop", Found::Borrowed),
            row("Strict", "misc", refused()),
            row("Strict", "misc", refused()),
            row("Adhoc", "shop", Found::Borrowed),
            row("Adhoc", "misc", Found::Owned),
            row("Adhoc", "misc", Found::Owned),
            row("Extendable", "shop", Found::Borrowed),
            row("Extendable", "misc", Found::Borrowed),
            row("Extendable", "misc", Found::Borrowed),
            row("CachedApiProvider", "shop", Found::Borrowed),
            row("CachedApiProvider", "misc", Found::Borrowed),
            row("CachedApiProvider", "misc", Found::Borrowed),
        ]
    );
    assert_eq!(outcome.learned, (0, 2));

    // Each handle wrote a ConfigMap where it claims to point; the refused one wrote nothing.
    let probes = |namespace| caching::probes(env.client(), namespace);
    assert_eq!(
        probes("shop").await.unwrap(),
        ["adhoc", "cached", "extendable", "strict"]
    );
    assert_eq!(
        probes("misc").await.unwrap(),
        ["adhoc", "cached", "extendable"]
    );
    assert!(probes("blog").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_cluster_scoped_resource_is_operated_by_the_macro() {
    use cluster_scoped::{Tenant, TenantStatus};

    let env = env().await;
    let outcome = within(cluster_scoped::run(&env)).await;

    assert_eq!(
        outcome.created,
        TenantStatus {
            observed_generation: Some(1),
            namespace: Some("tenant-acme".into()),
        }
    );
    assert_eq!(
        outcome.owner_labels,
        [Some("alice".to_owned()), Some("bob".to_owned())]
    );
    assert_eq!(
        outcome.namespace_phase_after_delete.as_deref(),
        Some("Terminating")
    );

    let crds: Api<CustomResourceDefinition> = Api::all(env.client());
    let crd = crds.get("tenants.cluster.kuberator.dev").await.unwrap();
    assert_eq!(crd.spec.scope, "Cluster");
    let tenants: Api<Tenant> = Api::all(env.client());
    assert!(
        tenants
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let namespaces: Api<Namespace> = Api::all(env.client());
    let namespace = namespaces.get("tenant-acme").await.unwrap();
    assert!(namespace.metadata.deletion_timestamp.is_some());
    assert_eq!(namespace.owner_references()[0].kind, "Tenant");
}

#[tokio::test]
async fn a_custom_repository_keeps_its_own_state() {
    use custom_repository::{Invoice, NUMBER};

    let env = env().await;
    let outcome = within(custom_repository::run(&env)).await;

    assert_eq!(
        outcome.numbers,
        [("april".to_owned(), 2), ("march".to_owned(), 1)].into()
    );
    assert_eq!(outcome.number_after_update, Some(1));
    assert_eq!(outcome.voided, [1]);

    let invoices: Api<Invoice> = Api::namespaced(env.client(), "default");
    assert!(invoices.get_opt("march").await.unwrap().is_none());
    let april = invoices.get("april").await.unwrap();
    assert_eq!(april.annotations()[NUMBER], "2");
    assert_eq!(april.status.as_ref().unwrap().number, Some(2));
    assert_eq!(april.finalizers(), ["invoices.billing.kuberator.dev/void"]);
}

#[tokio::test]
async fn the_crd_yaml_parses_back_and_installs() {
    use kube::CustomResourceExt;
    use kuberator_examples::static_site::StaticSite;

    // The YAML is the CRD, field for field.
    let yaml = crd_yaml::yaml().unwrap();
    let parsed = crd_yaml::parse(&yaml).unwrap();
    assert_eq!(
        serde_json::to_value(&parsed).unwrap(),
        serde_json::to_value(StaticSite::crd()).unwrap()
    );

    let env = env().await;
    let outcome = within(crd_yaml::run(&env)).await;
    assert_eq!(outcome.yaml, yaml);
    assert!(
        outcome.established.contains("condition met"),
        "{}",
        outcome.established
    );
    assert!(
        outcome.api_resources.contains("staticsites"),
        "{}",
        outcome.api_resources
    );

    let crds: Api<CustomResourceDefinition> = Api::all(env.client());
    let installed = crds.get("staticsites.demo.kuberator.dev").await.unwrap();
    let version = &installed.spec.versions[0];
    assert_eq!(
        installed.spec.names.short_names,
        Some(vec!["site".to_owned()])
    );
    assert_eq!(
        version.additional_printer_columns.as_ref().map(Vec::len),
        Some(5)
    );
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let sites: Api<StaticSite> = Api::namespaced(env.client(), "default");
    assert!(
        sites
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn the_webhooks_example_refuses_defaults_and_converts_through_kubectl() {
    use webhooks::v1::Bucket;

    let env = env().await;
    let outcome = within(webhooks::run(&env)).await;
    assert!(
        outcome.refused.contains(
            "denied the request: spec.region: unknown region `mars-north`: buckets live in \
             eu-west or us-east"
        ),
        "{}",
        outcome.refused
    );
    assert_eq!(outcome.defaulted_storage_class, "standard");
    assert!(
        outcome
            .immutable
            .contains(r#"spec.region: is immutable (was "eu-west", now "us-east")"#),
        "{}",
        outcome.immutable
    );
    assert_eq!(
        outcome.as_v1,
        serde_json::json!({ "region": "us-east", "retentionDays": 365, "storageClass": "cold" })
    );
    assert_eq!(
        outcome.as_v1alpha1,
        serde_json::json!({ "region": "us-east", "retention": "365d", "storageClass": "cold" })
    );
    assert!(
        outcome.unconvertible.contains(
            "cannot convert Bucket default/forever from webhooks.kuberator.dev/v1alpha1 to \
             webhooks.kuberator.dev/v1: retention `forever` is not a number of days such as `30d`"
        ),
        "{}",
        outcome.unconvertible
    );
    // On the server: the default stored, the region unchanged, nothing stored for the refusals.
    let buckets: Api<Bucket> = Api::namespaced(env.client(), "default");
    let logs = buckets.get("logs").await.unwrap();
    assert_eq!(logs.spec.storage_class.as_deref(), Some("standard"));
    assert_eq!(logs.spec.region, "eu-west");
    assert_eq!(
        buckets.get("archive").await.unwrap().spec.retention_days,
        365
    );
    assert!(buckets.get_opt("forever").await.unwrap().is_none());
}

#[tokio::test]
async fn the_shards_example_splits_the_objects_and_the_survivors_take_over_a_crashed_replica() {
    let env = env().await;
    let outcome = within(shards::run(&env)).await;
    // All three own a share; each reconciled exactly what its owner label says (the story waits
    // for label and stamp to agree with rendezvous hashing).
    assert_eq!(outcome.split.len(), 3, "{:?}", outcome.split);
    assert_eq!(outcome.split.values().sum::<usize>(), shards::OBJECTS);
    assert!(
        outcome.split.values().all(|share| *share > 0),
        "{:?}",
        outcome.split
    );
    // The crashed member's objects went to the survivors, nothing moved between them.
    let crashed = shards::MEMBERS[2];
    assert_eq!(outcome.taken_over, outcome.split[crashed]);
    assert!(!outcome.after_crash.contains_key(crashed));
    assert_eq!(outcome.after_crash.values().sum::<usize>(), shards::OBJECTS);
    assert_eq!(outcome.moved_between_survivors, 0);
    // Not before the crashed member's Lease expired (nothing was released), and within it + 5 s.
    assert!(
        outcome.takeover >= shards::LEASE / 2
            && outcome.takeover <= shards::LEASE + Duration::from_secs(5),
        "taken over after {:?}",
        outcome.takeover
    );
    // On the server: every object stamped by the member its label names, a survivor.
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(env.client(), "default");
    let label = kuberator::runtime::Sharding::new("default", shards::GROUP).label_key();
    let list = api
        .list(&kube::api::ListParams::default().labels("app=shards-example"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), shards::OBJECTS);
    for object in &list.items {
        let owner = object.labels().get(&label).cloned().unwrap_or_default();
        let stamp = object
            .data
            .as_ref()
            .and_then(|data| data.get(shards::RECONCILED_BY))
            .cloned()
            .unwrap_or_default();
        assert_eq!(owner, stamp, "{}", object.name_any());
        assert_ne!(owner, crashed, "{}", object.name_any());
    }
}
