//! Admission webhooks in the operator block: `validate`, `validate_delete` and `default`, on a
//! handler that also derives `Default` (its `Default::default` and the webhook's `default` do
//! not clash) and holds state.
use kuberator::prelude::*;
use kuberator::webhook::WebhookServer;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
    pub replicas: Option<i32>,
}

#[derive(Default)]
pub struct Websites {
    default_replicas: i32,
}

#[kuberator::operator(resource = Website, webhooks = "website-webhooks")]
impl Websites {
    async fn apply(&self, _site: Arc<Website>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn validate(&self, new: &Website, old: Option<&Website>) -> Result<(), Denied> {
        if new.spec.image.is_empty() {
            return Err(Denied::new("must not be empty").field("spec.image"));
        }
        match old {
            Some(old) if old.spec.image != new.spec.image => Err(Denied::immutable(
                "spec.image",
                &old.spec.image,
                &new.spec.image,
            )),
            _ => Ok(()),
        }
    }

    async fn validate_delete(&self, old: &Website) -> Result<(), Denied> {
        match old.labels().get("protected") {
            Some(_) => Err(Denied::new(
                "is protected: remove the `protected` label first",
            )),
            None => Ok(()),
        }
    }

    async fn default(&self, obj: &mut Website) {
        obj.spec.replicas.get_or_insert(self.default_replicas);
    }
}

/// With a Service in another namespace.
pub struct Shops;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Shop")]
pub struct ShopSpec {
    pub owner: String,
}

#[kuberator::operator(resource = Shop, webhooks = "platform/shop-webhooks")]
impl Shops {
    async fn apply(&self, _shop: Arc<Shop>) -> Result<Action> {
        Ok(Action::await_change())
    }

    async fn default(&self, shop: &mut Shop) {
        if shop.spec.owner.is_empty() {
            shop.spec.owner = "platform".to_owned();
        }
    }
}

#[tokio::main]
async fn main() {
    // No cluster here: build the operators without running them.
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let handler = Websites::default();
    assert_eq!(handler.default_replicas, 0);
    let operator: Operator<Website> = handler
        .operator(client.clone())
        .unwrap()
        // Next to a local API server (TestEnv), the local server replaces the Service.
        .webhook_server(WebhookServer::local());
    drop(operator);
    let operator: Operator<Shop> = Shops.operator(client).unwrap();
    drop(operator);
}
