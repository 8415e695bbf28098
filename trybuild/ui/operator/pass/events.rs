//! `events = "…"`: handlers emit Kubernetes events through the context.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

#[kuberator::operator(resource = Website, events = "websites.example.com/operator")]
impl Websites {
    async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
        ctx.emit(
            &site,
            EventData::normal("Deployed", "Reconcile").note("image rolled out"),
        )
        .await;
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let operator = Websites.operator(client);
    assert!(operator.is_ok());
}
