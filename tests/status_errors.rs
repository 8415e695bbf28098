//! Errors recorded in a status the user did not write yet: a status with a field the schema
//! requires still gets the error (a complete status from `Default`), and kstatus conditions are
//! set in the same write: `Stalled` for a terminal error, `Reconciling` for a retried one.
//!
//! The same with `status_writes = "apply"` (forced server-side apply as the field manager), on an
//! operator whose health server has paths of its own and an extra route.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams, PostParams};
use kuberator::{
    conditions::{self, Condition},
    manifests::Bundle,
    prelude::*,
    runtime::health::{Request, Response},
    testing::TestEnv,
};

use crate::{
    operations::http_get,
    support::{eventually, init_tracing},
};

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

/// The same kind, reconciled in `applied` with status written by server-side apply; `ok` objects
/// get a status with `hidden: true`. The health server moves its probes and adds `/`.
pub struct AppliedStricts;

/// The extra route: what controller-rs serves on `/`.
async fn index(request: Request<()>) -> Response<String> {
    Response::new(format!(
        "{{\"operator\":\"stricts\",\"query\":{:?}}}",
        request.uri().query().unwrap_or("")
    ))
}

const APPLIER: &str = "stricts.example.com/applier";

#[kuberator::operator(
    resource = Strict,
    namespaces("applied"),
    field_manager = "stricts.example.com/applier",
    status_writes = "apply",
    health(addr = "127.0.0.1:0", liveness = "/health", readiness = "/health/ready", metrics = "/prom", route("/", index)),
)]
impl AppliedStricts {
    async fn apply(&self, strict: Arc<Strict>, ctx: &Ctx<Strict>) -> Result<Action> {
        match strict.spec.fail.as_str() {
            "terminal" => Err(StrictError::AskedTerminal.into()),
            "retry" => Err(StrictError::AskedRetry.into()),
            _ => {
                let status = StrictStatus {
                    hidden: true,
                    ..StrictStatus::default()
                };
                ctx.update_status(&strict, status).await?;
                Ok(Action::await_change())
            }
        }
    }
}

/// The managed-fields entry of `manager` on the status subresource, as `(operation, fields)`.
fn status_manager(object: &Strict, manager: &str) -> Option<(String, String)> {
    object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|entry| {
            entry.manager.as_deref() == Some(manager)
                && entry.subresource.as_deref() == Some("status")
        })
        .map(|entry| {
            (
                entry.operation.clone().unwrap_or_default(),
                entry
                    .fields_v1
                    .as_ref()
                    .map(|fields| fields.0.to_string())
                    .unwrap_or_default(),
            )
        })
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
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

    // `status_writes = "apply"`: the status lands by server-side apply, owned by the field
    // manager on the status subresource, and errors are still recorded (the whole status
    // applied: `hidden` written by the handler stays).
    let namespaces: Api<Namespace> = Api::all(env.client());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some("applied".into());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let addr = free_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = AppliedStricts
        .operator(env.client())
        .unwrap()
        .health(addr)
        .shutdown_on(async move {
            let _ = stopped.await;
        });
    let task = tokio::spawn(operator.run());
    eventually("200 on the moved readiness path", || async {
        tokio::net::TcpStream::connect(addr).await.ok()?;
        (http_get(addr, "/health/ready").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(http_get(addr, "/health").await, (200, "ok\n".to_owned()));
    let (code, metrics) = http_get(addr, "/prom").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("controller_runtime_reconcile_total"),
        "{metrics}"
    );
    assert_eq!(
        http_get(addr, "/?verbose=1").await,
        (
            200,
            r#"{"operator":"stricts","query":"verbose=1"}"#.to_owned()
        )
    );
    for moved in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http_get(addr, moved).await.0, 404, "{moved} moved away");
    }
    // The install bundle's probes ask the paths this server answers on.
    let bundle = Bundle::for_operator::<Strict>(&AppliedStricts::rbac_options())
        .image("example.com/stricts:1");
    let deployment = serde_json::to_value(bundle.deployment().unwrap()).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut probed = Vec::new();
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        assert_eq!(http_get(addr, path).await.0, 200, "{probe} on {path}");
        probed.push(path.to_owned());
    }
    assert_eq!(probed, ["/health", "/health/ready"]);

    let api: Api<Strict> = Api::namespaced(env.client(), "applied");
    for (name, fail) in [("ok", ""), ("terminal", "terminal")] {
        let object = Strict::new(name, StrictSpec { fail: fail.into() });
        api.create(&PostParams::default(), &object).await.unwrap();
    }
    let ok = eventually("the applied status of ok", || async {
        let object = api.get_status("ok").await.ok()?;
        object.status.as_ref()?.hidden.then_some(object)
    })
    .await;
    assert_eq!(ok.status.as_ref().unwrap().observed_generation, Some(1));
    let (operation, fields) = status_manager(&ok, APPLIER).expect("the applier's status entry");
    assert_eq!(operation, "Apply");
    assert!(fields.contains("f:hidden"), "{fields}");

    let terminal = eventually("the applied error of terminal", || async {
        let object = api.get_status("terminal").await.ok()?;
        object.status.as_ref()?.error.is_some().then_some(object)
    })
    .await;
    let status = terminal.status.as_ref().unwrap();
    assert_eq!(status.error.as_ref().unwrap().reason, "AskedTerminal");
    let stalled = condition(status, conditions::STALLED).expect("Stalled");
    assert_eq!(stalled.status, "True");
    let (operation, fields) =
        status_manager(&terminal, APPLIER).expect("the applier's status entry");
    assert_eq!(operation, "Apply");
    assert!(fields.contains("f:error"), "{fields}");

    // A failure after a successful write: the error joins the status the handler applied.
    api.patch(
        "ok",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({ "spec": { "fail": "terminal" } })),
    )
    .await
    .unwrap();
    let failed = eventually("the error of ok at generation 2", || async {
        let status = api.get_status("ok").await.ok()?.status?;
        (status.error.is_some() && status.observed_generation == Some(2)).then_some(status)
    })
    .await;
    assert!(
        failed.hidden,
        "the handler's field survives the applied error"
    );
    assert_eq!(failed.error.unwrap().reason, "AskedTerminal");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
