//! No finalizer (so no `cleanup`), helper methods next to `apply`, a user error type as the
//! handler's error, and a private handler.
use kuberator::prelude::*;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
pub struct WebsiteSpec {
    pub image: String,
}

#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum WebsiteError {
    #[error("image is empty")]
    #[status_error(terminal)]
    EmptyImage,
}

struct Websites {
    default_image: &'static str,
}

#[kuberator::operator(resource = Website, namespaces("shop"), caching = Extendable)]
impl Websites {
    fn image<'a>(&'a self, site: &'a Website) -> &'a str {
        if site.spec.image.is_empty() {
            self.default_image
        } else {
            &site.spec.image
        }
    }

    async fn apply(&self, site: Arc<Website>) -> std::result::Result<Action, WebsiteError> {
        if self.image(&site).is_empty() {
            return Err(WebsiteError::EmptyImage);
        }
        Ok(Action::await_change())
    }

    /// Not a handler: an ordinary method may be called anything else.
    pub fn describe(&self) -> String {
        format!("websites, default image {}", self.default_image)
    }
}

#[tokio::main]
async fn main() {
    let websites = Websites {
        default_image: "nginx",
    };
    assert_eq!(websites.describe(), "websites, default image nginx");
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let _operator = websites.operator(client).unwrap();
}
