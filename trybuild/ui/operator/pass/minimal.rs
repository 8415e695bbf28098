//! The smallest operator: a resource and `apply`.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() {
    // No cluster here: build the operator (context, cached API handles) without running it.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let operator: Operator<Website> = Websites.operator(client).unwrap();
    drop(operator);
}
