use kube::api::DynamicObject;
use kuberator::prelude::*;

pub struct Websites;

#[kuberator::operator(resource = DynamicObject)]
impl Websites {
    async fn apply(&self, _site: Arc<DynamicObject>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

fn main() {}
