//! Errors recorded in a status the user did not write yet: a status with a field the schema
//! requires still gets the error (a complete status from `Default`), and kstatus conditions are
//! set in the same write: `Stalled` for a terminal error, `Reconciling` for a retried one.

use kube::api::PostParams;
use kuberator::{
    conditions::{self, Condition},
    prelude::*,
    testing::TestEnv,
};

use crate::support::{eventually, init_tracing};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "strict.kuberator.dev",
    version = "v1",
    kind = "Strict",
    namespaced,
    status = "StrictStatus"
)]
pub struct StrictSpec {
    /// `terminal`, `retry` or anything else (succeeds without writing status).
    pub fail: String,
}

/// `hidden` and `conditions` are required by the schema (no `Option`, no serde default). The
/// derive finds the error slot and the `conditions` field (`RecordError::conditions`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct StrictStatus {
    pub observed_generation: Option<i64>,
    pub hidden: bool,
    #[status_error]
    pub error: Option<StatusError>,
    #[schemars(schema_with = "kuberator::conditions::schema")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum StrictError {
    #[error("spec.fail asks for a terminal error")]
    #[status_error(terminal)]
    AskedTerminal,
    #[error("spec.fail asks for a retried error")]
    AskedRetry,
}

pub struct Stricts;

#[kuberator::operator(resource = Strict, namespaces("default"))]
impl Stricts {
    async fn apply(&self, strict: Arc<Strict>) -> Result<Action> {
        match strict.spec.fail.as_str() {
            "terminal" => Err(StrictError::AskedTerminal.into()),
            "retry" => Err(StrictError::AskedRetry.into()),
            _ => Ok(Action::await_change()),
        }
    }
}

fn condition<'a>(status: &'a StrictStatus, type_: &str) -> Option<&'a Condition> {
    conditions::find(&status.conditions, type_)
}

#[tokio::test]
async fn errors_land_in_a_status_with_required_fields_with_kstatus_conditions() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<Strict>().await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = Stricts
        .operator(env.client())
        .unwrap()
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(operator.run());
    let api: Api<Strict> = Api::namespaced(env.client(), "default");
    for (name, fail) in [("terminal", "terminal"), ("retried", "retry")] {
        let object = Strict::new(name, StrictSpec { fail: fail.into() });
        api.create(&PostParams::default(), &object).await.unwrap();
    }
    let status = |name: &'static str| {
        let api = api.clone();
        async move {
            eventually(&format!("the error in {name}'s status"), || async {
                let status = api.get_status(name).await.ok()?.status?;
                status.error.is_some().then_some(status)
            })
            .await
        }
    };

    let terminal = status("terminal").await;
    assert_eq!(terminal.error.as_ref().unwrap().reason, "AskedTerminal");
    assert_eq!(terminal.observed_generation, Some(1));
    assert!(!terminal.hidden);
    let stalled = condition(&terminal, conditions::STALLED).expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "AskedTerminal")
    );
    assert_eq!(stalled.message, "spec.fail asks for a terminal error");
    let ready = condition(&terminal, conditions::READY).expect("Ready");
    assert_eq!(ready.status, "False");
    assert!(condition(&terminal, conditions::RECONCILING).is_none());

    let retried = status("retried").await;
    assert_eq!(retried.error.as_ref().unwrap().reason, "AskedRetry");
    let reconciling = condition(&retried, conditions::RECONCILING).expect("Reconciling");
    assert_eq!(
        (reconciling.status.as_str(), reconciling.reason.as_str()),
        ("True", "AskedRetry")
    );
    assert!(condition(&retried, conditions::STALLED).is_none());

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
