//! Whether the API server serves the kinds an operator watches (a CRD not installed is a clear
//! start-up error instead of an endless `404 page not found` loop).

use std::borrow::Cow;

use kube::{Client, Resource, runtime::watcher};

use crate::error::{Error, Result};

/// A kind the operator watches, by group, version and plural.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WatchedKind {
    group: String,
    version: String,
    plural: String,
    kind: String,
}

impl WatchedKind {
    pub(crate) fn of<K: Resource<DynamicType = ()>>() -> Self {
        Self {
            group: K::group(&()).into_owned(),
            version: K::version(&()).into_owned(),
            plural: K::plural(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
        }
    }

    /// `websites.example.com`, or `configmaps` for the core group.
    pub(crate) fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Built-in groups are served by every API server; anything else comes from a CRD.
    fn is_custom(&self) -> bool {
        !(self.group.is_empty() || self.group.ends_with(".k8s.io") || !self.group.contains('.'))
    }

    /// What to tell the user when the kind is not served.
    pub(crate) fn not_served(&self) -> Error {
        let message = if self.is_custom() {
            format!(
                "CRD {} is not installed: kubectl apply -f <crd.yaml> (the YAML of `{}::crd()`, \
                 or of `kuberator::manifests::to_yaml`)",
                self.resource_name(),
                self.kind,
            )
        } else {
            format!(
                "{} ({}) is not served by this API server",
                self.resource_name(),
                self.api_version()
            )
        };
        Error::NotServed {
            resource: self.resource_name(),
            message,
        }
    }
}

/// Checks by discovery that every kind is served, failing with [`Error::NotServed`] for the
/// first one that is not.
///
/// # Access control
/// Discovery (`get` on `/api` and `/apis`, granted to every authenticated user).
pub(crate) async fn check_served(client: &Client, kinds: &[WatchedKind]) -> Result<()> {
    for kind in kinds {
        let version = kind.api_version();
        let listed = if kind.group.is_empty() {
            client.list_core_api_resources(&version).await
        } else {
            client.list_api_group_resources(&version).await
        };
        match listed {
            Ok(list) if list.resources.iter().any(|r| r.name == kind.plural) => {}
            Ok(_) => return Err(kind.not_served()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Err(kind.not_served()),
            Err(source) => {
                return Err(Error::client(
                    Cow::Owned(format!("discovering {version}")),
                    source,
                ));
            }
        }
    }
    Ok(())
}

/// Whether a watch error means the kind is no longer served (its CRD was deleted).
pub(crate) fn is_not_found(error: &watcher::Error) -> bool {
    let source = match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return false,
    };
    matches!(source, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{apps::v1::Deployment, core::v1::ConfigMap};

    use super::*;

    fn custom() -> WatchedKind {
        WatchedKind {
            group: "kube.rs".into(),
            version: "v1".into(),
            plural: "documents".into(),
            kind: "Document".into(),
        }
    }

    #[test]
    fn a_missing_crd_names_itself_and_the_fix() {
        let message = custom().not_served().to_string();
        assert!(
            message.starts_with("CRD documents.kube.rs is not installed: kubectl apply -f"),
            "{message}"
        );
        assert!(message.contains("Document::crd()"), "{message}");
    }

    #[test]
    fn built_in_kinds_are_not_called_crds() {
        assert!(!WatchedKind::of::<ConfigMap>().is_custom());
        assert!(!WatchedKind::of::<Deployment>().is_custom());
        let message = WatchedKind::of::<Deployment>().not_served().to_string();
        assert_eq!(
            message,
            "deployments.apps (apps/v1) is not served by this API server"
        );
    }
}
