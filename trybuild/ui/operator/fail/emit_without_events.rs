use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
        ctx.emit(&site, EventData::normal("Applied", "applied")).await;
        Ok(Action::await_change())
    }
}

fn main() {}
