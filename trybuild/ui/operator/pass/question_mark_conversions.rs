//! `?` on `serde_json::Error` and on `Box<dyn Error + Send + Sync>` in a handler; a plain `async fn`
//! without `.await` is fine under `clippy::pedantic` (`unused_async` is allowed on handlers). Now a
//! test target of its own, this case is linted by `cargo clippy` in `make test`, so the generated
//! code is checked against clippy's pedantic group, not only rustc's lints.
#![deny(clippy::pedantic)]
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

pub struct Websites;

fn upstream(image: &str) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if image.is_empty() {
        return Err("no image".into());
    }
    Ok(())
}

#[kuberator::operator(resource = Website)]
impl Websites {
    async fn apply(&self, site: Arc<Website>) -> Result<Action> {
        let _value: serde_json::Value = serde_json::to_value(&site.spec)?;
        upstream(&site.spec.image)?;
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
