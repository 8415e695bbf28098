//! A CRD that is not installed: `run()` fails at start-up naming it and the fix; one deleted
//! while running turns `/readyz` 503, is logged with the same hint at each watch retry (not in a
//! tight loop), and the operator is ready again once the CRD is back.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, api::DeleteParams};
use kuberator::{Action, Error, Operator, Reconciler, Result, testing::TestEnv};

use crate::{observability::CapturedLogs, operations::http_get, support::*};

struct Idle;

#[async_trait::async_trait]
impl Reconciler<Widget> for Idle {
    async fn reconcile(&self, _widget: Arc<Widget>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

const HINT: &str = "CRD widgets.test.kuberator.dev is not installed: kubectl apply -f";

#[tokio::test]
async fn run_fails_at_start_up_when_the_crd_is_not_installed() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        Operator::with_reconciler(env.client(), Idle).run(),
    )
    .await
    .expect("run() returns instead of retrying forever");
    let error = result.expect_err("no CRD, no operator");
    assert!(matches!(error, Error::NotServed { .. }), "{error:?}");
    assert!(error.to_string().contains(HINT), "{error}");
}

async fn readyz(addr: SocketAddr) -> Option<u16> {
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let (code, _) = tokio::time::timeout(Duration::from_secs(2), http_get(addr, "/readyz"))
        .await
        .ok()?;
    Some(code)
}

#[tokio::test]
async fn a_crd_deleted_while_running_is_not_ready_with_the_hint_until_it_is_back() {
    let (logs, _guard) = CapturedLogs::install("warn");
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<Widget>().await.unwrap();
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        Operator::with_reconciler(env.client(), Idle)
            .health(addr)
            .shutdown_on(async move {
                let _ = stopped.await;
            })
            .run(),
    );
    let ready = |code: u16| async move {
        eventually(&format!("/readyz {code}"), || async {
            (readyz(addr).await? == code).then_some(())
        })
        .await;
    };
    ready(200).await;

    let crds: Api<CustomResourceDefinition> = Api::all(env.client());
    crds.delete("widgets.test.kuberator.dev", &DeleteParams::default())
        .await
        .unwrap();
    ready(503).await;
    eventually("the hint in the log", || async {
        logs.lines().iter().any(|l| l.contains(HINT)).then_some(())
    })
    .await;
    // Retried with backoff, so a few lines in 3 s, not hundreds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hints = logs.lines().iter().filter(|l| l.contains(HINT)).count();
    assert!(hints <= 10, "{hints} hint lines in about 3 s");

    env.install_crd::<Widget>().await.unwrap();
    ready(200).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
