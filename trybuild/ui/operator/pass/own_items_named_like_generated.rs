//! The generated items are anonymous: the user's own `WebsitesOperator`, `WebsitesRepository`
//! and `operator` method do not clash with them (the generated ones are `IntoOperator`'s).
use kuberator::K8sRepository as WebsitesRepository;
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

pub struct WebsitesOperator;

impl Websites {
    pub fn operator(self) -> WebsitesOperator {
        WebsitesOperator
    }
}

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }
}

#[tokio::main]
async fn main() {
    let WebsitesOperator = Websites.operator();
    let _: Option<WebsitesRepository<Website, StaticApiProvider<Website>>> = None;
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let _operator: Operator<Website> = IntoOperator::operator(Websites, client).unwrap();
}
