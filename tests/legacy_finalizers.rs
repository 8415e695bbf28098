//! A port from another operator: objects carrying the old operator's finalizer get this
//! operator's instead, and an object stuck in `Terminating` on the old finalizer is cleaned up and
//! released. Runs the operator with `kuberator::testing::background`.

use std::sync::{Arc, Mutex};

use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kuberator::{
    prelude::*,
    testing::{TestEnv, background},
};

use crate::support::{Mode, Widget, WidgetSpec, eventually, init_tracing};

const OLD: &str = "old.example.com/cleanup";
const NEW: &str = "widgets.test.kuberator.dev/cleanup";

pub struct Ported {
    cleaned: Arc<Mutex<Vec<String>>>,
}

#[kuberator::operator(
    resource = Widget,
    namespaces("default"),
    finalizer = "widgets.test.kuberator.dev/cleanup",
    legacy_finalizers("old.example.com/cleanup"),
)]
impl Ported {
    async fn apply(&self, _widget: Arc<Widget>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn cleanup(&self, widget: Arc<Widget>) -> Result<Action> {
        self.cleaned.lock().unwrap().push(widget.name_any());
        Ok(Action::await_change())
    }
}

fn widget(name: &str) -> Widget {
    let mut widget = Widget::new(
        name,
        WidgetSpec {
            value: 1,
            mode: Mode::Ok,
        },
    );
    widget.metadata = ObjectMeta {
        name: Some(name.into()),
        finalizers: Some(vec![OLD.into()]),
        ..ObjectMeta::default()
    };
    widget
}

#[tokio::test]
async fn legacy_finalizers_are_replaced_and_a_stuck_object_is_released() {
    init_tracing();
    let env = TestEnv::start().await.expect("control plane");
    env.install_crd::<Widget>().await.unwrap();
    let widgets: Api<Widget> = Api::namespaced(env.client(), "default");
    // Written by the old operator: one live object, one deleted while no operator ran.
    for name in ["live", "stuck"] {
        widgets
            .create(&PostParams::default(), &widget(name))
            .await
            .unwrap();
    }
    widgets
        .delete("stuck", &DeleteParams::default())
        .await
        .unwrap();
    let stuck = widgets.get("stuck").await.unwrap();
    assert!(
        stuck.metadata.deletion_timestamp.is_some(),
        "stuck is Terminating"
    );

    let cleaned = Arc::new(Mutex::new(Vec::new()));
    let operator = Ported {
        cleaned: cleaned.clone(),
    }
    .operator(env.client())
    .unwrap();
    let running = background(|stop| operator.shutdown_on(stop).run());

    let finalizers = eventually("live carries the new finalizer only", || async {
        let live = widgets.get("live").await.ok()?;
        let finalizers = live.finalizers().to_vec();
        (finalizers == [NEW.to_owned()]).then_some(finalizers)
    })
    .await;
    assert_eq!(finalizers, [NEW]);
    eventually("stuck is gone", || async {
        widgets.get_opt("stuck").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(
        *cleaned.lock().unwrap(),
        ["stuck"],
        "cleanup ran for the stuck object"
    );

    // The new finalizer works as its own: deleting live runs cleanup and releases it.
    widgets
        .delete("live", &DeleteParams::default())
        .await
        .unwrap();
    eventually("live is gone", || async {
        widgets.get_opt("live").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(*cleaned.lock().unwrap(), ["stuck", "live"]);
    running.stop().await.unwrap().unwrap();
}
