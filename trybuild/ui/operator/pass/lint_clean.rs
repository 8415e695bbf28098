//! The generated code is warning-free under strict lints, with the handler and the resource in a
//! private module and a crate-private handler type.
#![deny(warnings, unreachable_pub, missing_docs, unused_qualifications)]

mod sites {
    use kuberator::prelude::*;

    #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    pub(crate) struct WebsiteSpec {
        pub(crate) image: String,
    }

    pub(crate) struct Websites;

    #[kuberator::operator(resource = Website, finalizer = "websites.example.com/cleanup")]
    impl Websites {
        async fn apply(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
            let _ = (site.spec.image.len(), ctx.name());
            Ok(Action::await_change())
        }

        async fn cleanup(&self, _site: Arc<Website>) -> Result<Action> {
            Ok(Action::await_change())
        }
    }
}

#[tokio::main]
async fn main() {
    use kuberator::IntoOperator;

    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let _operator = sites::Websites.operator(client).unwrap();
}
