use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
#[serde(rename_all = "camelCase")]
pub struct WebsiteStatus {
    pub observed_generation: Option<i64>,
}

pub struct Websites;

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
        ctx.update_status(&site, WebsiteStatus::default()).await?;
        Ok(Action::await_change())
    }
}

fn main() {}
