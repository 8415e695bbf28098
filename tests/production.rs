//! The production features wired into `Operator`: metrics and health endpoints, and leader
//! election gating the reconciles of a real operator.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::api::PostParams;
use kuberator::{
    Operator,
    runtime::{LeaderElection, Metrics},
};

use crate::{operations::http_get, runtime::OwnsReconciler, support::*};

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// An operator with `.health(addr)` and `.leader_election(..)`: `/readyz` turns 200 once the
/// watch synced, `/metrics` counts exactly the reconciles done and shows the Lease held; the
/// Lease is released on shutdown.
#[tokio::test]
async fn an_operator_serves_metrics_and_health_and_leads_through_a_lease() {
    init_tracing();
    let env = kuberator::testing::TestEnv::start().await.unwrap();
    env.install_crd::<Widget>().await.unwrap();
    let client = env.client();
    let record = Arc::new(Record::default());
    let operator = Arc::new(TestOperator::<Widget>::new(client.clone(), record.clone()));
    let addr = free_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        Operator::with_reconciler(client.clone(), OwnsReconciler(operator))
            .name("widgets")
            .concurrency(2)
            .metrics(Metrics::new())
            .health(addr)
            .leader_election(
                LeaderElection::new(client.clone(), "default", "widgets-leader")
                    .identity("replica-a"),
            )
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    eventually("/readyz", || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        let (code, _) = tokio::time::timeout(Duration::from_secs(2), http_get(addr, "/readyz"))
            .await
            .ok()?;
        (code == 200).then_some(())
    })
    .await;
    let api = api::<Widget>(client.clone());
    for i in 0..4 {
        api.create(
            &PostParams::default(),
            &Widget::build(&format!("m{i}"), i, Mode::Ok),
        )
        .await
        .unwrap();
    }
    api.create(
        &PostParams::default(),
        &Widget::build("bad", 9, Mode::Terminal),
    )
    .await
    .unwrap();
    eventually("five reconciles", || async {
        (record.applies() == 5).then_some(())
    })
    .await;
    let metrics = eventually("the metrics of five reconciles", || async {
        let (code, body) = http_get(addr, "/metrics").await;
        (code == 200
            && body.contains(
                r#"controller_runtime_reconcile_total{controller="widgets",result="success"} 4"#,
            ))
        .then_some(body)
    })
    .await;
    assert!(
        metrics.contains(
            r#"controller_runtime_terminal_reconcile_errors_total{controller="widgets"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"controller_runtime_max_concurrent_reconciles{controller="widgets"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"leader_election_master_status{name="widgets-leader"} 1"#),
        "{metrics}"
    );
    let (code, _) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200);

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client, "default");
    let lease = leases.get("widgets-leader").await.unwrap();
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.is_empty(),
        "the Lease is released on shutdown, held by {holder:?}"
    );
}
