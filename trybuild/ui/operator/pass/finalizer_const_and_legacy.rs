//! A finalizer from a `&str` const (checked at compile time), an unprefixed name Kubernetes
//! accepts, and the finalizers of a previous operator to migrate from.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

const FINALIZER: &str = "websites.example.com";

#[kuberator::operator(
    resource = Website,
    finalizer = FINALIZER,
    legacy_finalizers("old-operator.example.com/cleanup", "websites")
)]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn cleanup(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }
}
#[tokio::main]
async fn main() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let operator: Operator<Website> = Websites.operator(client).unwrap();
    drop(operator);
}
