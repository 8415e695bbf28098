//! A crate that imports kuberator as `kr`, defines its own `Box`, `Result`, `Arc`, `Action` and
//! `Client` where the macros expand, and denies `missing_docs` and `unreachable_pub`: the
//! generated code names nothing unqualified and nothing through `::kuberator` (issue 16, point 6).
//! Checked by `cargo clippy -p kuberator-renamed-dependency -- -D warnings` with pedantic and
//! `absolute_paths` warned below, which also proves the generated code adds no pedantic
//! warning.
#![deny(missing_docs, unreachable_pub)]
#![warn(clippy::pedantic, clippy::absolute_paths)]

pub mod api {
    //! The resource, its status and its error.
    use kr::{AsStatusError, ObserveGeneration, StatusError};
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    /// The spec of a `Website`.
    #[derive(kube::CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    #[kube(
        group = "example.com",
        version = "v1",
        kind = "Website",
        namespaced,
        status = "WebsiteStatus"
    )]
    pub struct WebsiteSpec {
        /// The image to serve.
        pub image: String,
    }

    /// The status of a `Website`.
    #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema, ObserveGeneration)]
    #[serde(rename_all = "camelCase")]
    #[kuberator(crate = kr)]
    pub struct WebsiteStatus {
        /// The generation last reconciled.
        pub observed_generation: Option<i64>,
        /// The last reconcile error.
        #[status_error]
        pub error: Option<StatusError>,
    }

    /// What can go wrong.
    #[derive(Debug, thiserror::Error, AsStatusError)]
    #[status_error(StatusError)]
    #[kuberator(crate = kr)]
    pub enum WebsiteError {
        /// The image is empty.
        #[error("image is empty")]
        #[status_error(terminal)]
        EmptyImage,
    }
}

pub mod operator {
    //! The operator, next to types that shadow every name generated code could use unqualified.
    use kr::{Ctx, events::EventData};

    use crate::api::{Website, WebsiteError};

    /// The standard names this module shadows, imported once so the handler below needs no
    /// absolute path of its own (the lint would otherwise flag the user's tokens, not the
    /// macro's).
    mod std_names {
        pub(super) use std::{result::Result, sync::Arc};
    }

    /// Shadows `std::boxed::Box`.
    pub struct Box;
    /// Shadows `std::result::Result`.
    pub struct Result;
    /// Shadows `std::sync::Arc`.
    pub struct Arc;
    /// Shadows `kuberator::Action`.
    pub struct Action;
    /// Shadows `kube::Client`.
    pub struct Client;
    /// Shadows `core::option::Option`.
    pub struct Option;

    /// The handler.
    pub struct Websites;

    #[kr::operator(
        crate = kr,
        resource = Website,
        finalizer = "websites.example.com/cleanup",
        namespaces("default"),
        events = "website-operator"
    )]
    impl Websites {
        async fn apply(
            &self,
            site: std_names::Arc<Website>,
            ctx: &Ctx<Website>,
        ) -> std_names::Result<kr::Action, WebsiteError> {
            if site.spec.image.is_empty() {
                return Err(WebsiteError::EmptyImage);
            }
            ctx.emit(&*site, EventData::normal("Applied", "Apply"))
                .await;
            Ok(kr::Action::await_change())
        }

        async fn cleanup(&self, _site: std_names::Arc<Website>) -> kr::Result<kr::Action> {
            Ok(kr::Action::await_change())
        }
    }
}

#[cfg(test)]
mod tests {
    use kr::IntoOperator;

    use crate::operator::Websites;

    #[tokio::test]
    async fn builds_the_operator() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let operator = Websites.operator(client).unwrap();
        drop(operator);
        let _rbac = Websites::rbac_options();
    }
}
