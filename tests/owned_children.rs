//! Owned children and their owner: one `apply` per generation (the watch event of the operator's
//! own child write does not re-trigger the owner), while another writer's edit of a child still
//! does, and the operator puts the child back (drift correction). A child's status update
//! re-triggers only an owner that asked for it (`owns(Deployment, on = "status")`).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::{
    apps::v1::{Deployment, DeploymentSpec},
    core::v1::{ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kuberator::{prelude::*, testing::TestEnv};

use crate::support::{Mode, TestStatus, Widget, eventually, init_tracing};

/// Calls of `apply` by object name and generation.
type Calls = Arc<Mutex<BTreeMap<(String, i64), usize>>>;

pub struct Publisher {
    calls: Calls,
}

#[kuberator::operator(resource = Widget, namespaces("default"), owns(ConfigMap, Deployment))]
impl Publisher {
    async fn apply(&self, widget: Arc<Widget>, ctx: &Ctx<Widget>) -> Result<Action> {
        publish(&self.calls, &widget, ctx).await
    }
}

/// The same in `reporting`, re-triggered by its Deployment's status updates too.
pub struct Reporter {
    calls: Calls,
}

#[kuberator::operator(
    resource = Widget,
    namespaces("reporting"),
    owns(ConfigMap, Deployment, on = "status"),
)]
impl Reporter {
    async fn apply(&self, widget: Arc<Widget>, ctx: &Ctx<Widget>) -> Result<Action> {
        publish(&self.calls, &widget, ctx).await
    }
}

/// Counts the call, applies a ConfigMap holding the value and a one-replica Deployment, writes
/// the status.
async fn publish(calls: &Calls, widget: &Widget, ctx: &Ctx<Widget>) -> Result<Action> {
    let key = (widget.name_any(), widget.metadata.generation.unwrap_or(0));
    *calls.lock().unwrap().entry(key).or_default() += 1;
    let child = ConfigMap {
        metadata: ObjectMeta {
            name: Some(widget.name_any()),
            ..ObjectMeta::default()
        },
        data: Some([("value".to_owned(), widget.spec.value.to_string())].into()),
        ..ConfigMap::default()
    };
    ctx.apply_child(widget, child).await?;
    ctx.apply_child(widget, deployment(&widget.name_any()))
        .await?;
    let status = TestStatus {
        applied_value: Some(widget.spec.value),
        ..TestStatus::default()
    };
    ctx.update_status(widget, status).await?;
    Ok(Action::await_change())
}

fn deployment(name: &str) -> Deployment {
    let labels: BTreeMap<String, String> = [("app".to_owned(), name.to_owned())].into();
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: Some("nginx".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A status update of `name`'s Deployment, as kube-controller-manager makes during a rollout.
async fn deployment_status_update(deployments: &Api<Deployment>, name: &str, ready: i32) {
    deployments
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({
                "status": { "observedGeneration": 1, "replicas": 1, "readyReplicas": ready }
            })),
        )
        .await
        .unwrap();
}

/// Edits `name`'s child as another writer would (`kubectl patch`), then waits until the operator
/// put the owner's value back.
async fn drift_and_correction(env: &TestEnv, configmaps: &Api<ConfigMap>, name: &str, value: i32) {
    let out = env
        .kubectl()
        .args([
            "patch",
            "configmap",
            name,
            "-p",
            r#"{"data":{"value":"drift"}}"#,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(&format!("{name}'s child corrected"), || async {
        let child = configmaps.get(name).await.ok()?;
        (child.data?.get("value")? == &value.to_string()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn one_apply_per_generation_and_an_edited_child_is_put_back() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<Widget>().await.unwrap();
    let calls = Calls::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = Publisher {
        calls: calls.clone(),
    }
    .operator(env.client())
    .unwrap()
    .shutdown_on(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(operator.run());
    let widgets: Api<Widget> = Api::namespaced(env.client(), "default");
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client(), "default");
    let converged = |name: &'static str, generation: i64, value: i32| {
        let (widgets, configmaps) = (widgets.clone(), configmaps.clone());
        async move {
            eventually(&format!("{name} at generation {generation}"), || async {
                let status = widgets.get_status(name).await.ok()?.status?;
                let child = configmaps.get(name).await.ok()?;
                (status.observed_generation == Some(generation)
                    && status.applied_value == Some(value)
                    && child.data?.get("value")? == &value.to_string())
                    .then_some(())
            })
            .await;
        }
    };

    for name in ["site", "marker"] {
        let widget = Widget::new(
            name,
            crate::support::WidgetSpec {
                value: 1,
                mode: Mode::Ok,
            },
        );
        widgets
            .create(&PostParams::default(), &widget)
            .await
            .unwrap();
    }
    converged("site", 1, 1).await;
    converged("marker", 1, 1).await;

    // A spec change: generation 2, one more apply.
    widgets
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "value": 2 } })),
        )
        .await
        .unwrap();
    converged("site", 2, 2).await;

    // Another writer's edit of the child re-triggers the owner, which puts its value back.
    drift_and_correction(&env, &configmaps, "site", 2).await;

    // The same edit of marker's child: its event comes through the same ConfigMap watch after
    // every event of site's child above, so once it is corrected, an echo of site's writes would
    // have re-triggered site already.
    drift_and_correction(&env, &configmaps, "marker", 1).await;

    // A status-only change of site's Deployment does not re-trigger site (the default, `owns`
    // without `on`); a spec edit of marker's Deployment (`kubectl scale`) does, once, and the
    // operator puts the replicas back. Both through the same Deployment watch, in this order.
    let deployments: Api<Deployment> = Api::namespaced(env.client(), "default");
    deployment_status_update(&deployments, "site", 1).await;
    let out = env
        .kubectl()
        .args(["scale", "deployment", "marker", "--replicas=3"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("marker's replicas put back", || async {
        let deployment = deployments.get("marker").await.ok()?;
        (deployment.metadata.generation == Some(3) && deployment.spec?.replicas == Some(1))
            .then_some(())
    })
    .await;

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let counted = calls.lock().unwrap().clone();
    let expected: BTreeMap<(String, i64), usize> = [
        (("marker".to_owned(), 1), 3), // created, its ConfigMap edited, its Deployment scaled
        (("site".to_owned(), 1), 1),   // created
        (("site".to_owned(), 2), 2),   // spec changed, then its child edited; not its status
    ]
    .into();
    assert_eq!(counted, expected, "calls of apply by (name, generation)");

    // `on = "status"`: each status update of the child re-triggers the owner once.
    let namespaces: Api<Namespace> = Api::all(env.client());
    let mut namespace = Namespace::default();
    namespace.metadata.name = Some("reporting".into());
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let calls = Calls::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = Reporter {
        calls: calls.clone(),
    }
    .operator(env.client())
    .unwrap()
    .shutdown_on(async move {
        let _ = stopped.await;
    });
    let task = tokio::spawn(operator.run());
    let widgets: Api<Widget> = Api::namespaced(env.client(), "reporting");
    let widget = Widget::new(
        "reporter",
        crate::support::WidgetSpec {
            value: 1,
            mode: Mode::Ok,
        },
    );
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(env.client(), "reporting");
    let applies = |count: usize| {
        let calls = calls.clone();
        async move {
            eventually(&format!("{count} applies of reporter"), || async {
                (calls.lock().unwrap().get(&("reporter".to_owned(), 1)) == Some(&count))
                    .then_some(())
            })
            .await;
        }
    };
    applies(1).await;
    eventually("reporter's Deployment", || async {
        deployments.get("reporter").await.ok()
    })
    .await;
    deployment_status_update(&deployments, "reporter", 0).await;
    applies(2).await;
    deployment_status_update(&deployments, "reporter", 1).await;
    applies(3).await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
