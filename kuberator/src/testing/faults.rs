//! Fault controls for [`TestEnv`]: stop, pause and restart the API server or etcd (same address,
//! same certificates, same data), and act as a ServiceAccount with given RBAC.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::ServiceAccount,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::{Serialize, de::DeserializeOwned};

use super::env::TestEnv;
use crate::{Error, ObjectKey, Result, manifests::Rbac};

const APISERVER: &str = "kube-apiserver";
const ETCD: &str = "etcd";
const FIELD_MANAGER: &str = "kuberator-testenv";

/// A ServiceAccount's credentials, from [`TestEnv::service_account`].
#[derive(Clone, Debug)]
pub struct ServiceAccountAccess {
    /// `system:serviceaccount:<namespace>:<name>`, as the API server (and its audit log) knows it.
    pub user_name: String,
    /// A kubeconfig with the ServiceAccount's token (for a replica process or kubectl).
    pub kubeconfig_path: PathBuf,
    /// The client configuration with the token.
    pub config: kube::Config,
}

impl ServiceAccountAccess {
    /// A client acting as the ServiceAccount.
    ///
    /// # Errors
    /// As `kube::Client::try_from`.
    pub fn client(&self) -> Result<Client> {
        Client::try_from(self.config.clone())
            .map_err(|e| Error::client("building the ServiceAccount's client", e))
    }
}

impl TestEnv {
    /// Pauses the API server (`SIGSTOP`): connections stay open and nothing answers, as with a
    /// stalled server or a network partition. [`resume_apiserver`](Self::resume_apiserver) ends
    /// it.
    ///
    /// # Errors
    /// [`Error::Anyhow`] when the signal cannot be sent.
    pub fn pause_apiserver(&mut self) -> Result<()> {
        Ok(self
            .processes
            .signal(APISERVER, rustix::process::Signal::STOP)?)
    }

    /// Resumes a paused API server (`SIGCONT`).
    ///
    /// # Errors
    /// [`Error::Anyhow`] when the signal cannot be sent.
    pub fn resume_apiserver(&mut self) -> Result<()> {
        Ok(self
            .processes
            .signal(APISERVER, rustix::process::Signal::CONT)?)
    }

    /// Kills the API server (`SIGKILL`); connections are refused until
    /// [`start_apiserver`](Self::start_apiserver).
    ///
    /// # Errors
    /// [`Error::Anyhow`] when it cannot be killed.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        Ok(self.processes.kill(APISERVER)?)
    }

    /// Starts the API server again with the same flags (address, certificates, etcd) and waits
    /// until `/readyz` is `ok`. Clients made before keep working.
    ///
    /// # Errors
    /// [`Error::Anyhow`] when it cannot start or does not become ready within the timeout.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        self.apiserver_pid = self.processes.restart(APISERVER)?;
        self.wait_until_ready().await
    }

    /// [`stop_apiserver`](Self::stop_apiserver), then [`start_apiserver`](Self::start_apiserver).
    ///
    /// # Errors
    /// As those two.
    pub async fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver()?;
        self.start_apiserver().await
    }

    /// Kills etcd (`SIGKILL`); the API server answers errors until [`start_etcd`](Self::start_etcd).
    ///
    /// # Errors
    /// [`Error::Anyhow`] when it cannot be killed.
    pub fn stop_etcd(&mut self) -> Result<()> {
        Ok(self.processes.kill(ETCD)?)
    }

    /// Starts etcd again on the same data and port, and waits until the API server is ready.
    ///
    /// # Errors
    /// [`Error::Anyhow`] when it cannot start or the API server is not ready in time.
    pub async fn start_etcd(&mut self) -> Result<()> {
        self.etcd_pid = self.processes.restart(ETCD)?;
        self.wait_until_ready().await
    }

    /// [`stop_etcd`](Self::stop_etcd), then [`start_etcd`](Self::start_etcd).
    ///
    /// # Errors
    /// As those two.
    pub async fn restart_etcd(&mut self) -> Result<()> {
        self.stop_etcd()?;
        self.start_etcd().await
    }

    /// Waits until the API server's `/readyz` answers `ok` (etcd included).
    ///
    /// # Errors
    /// [`Error::Anyhow`] after the `TestEnv`'s timeout, with the last answer.
    pub async fn wait_until_ready(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + self.timeout;
        loop {
            let last = match tokio::time::timeout(Duration::from_secs(2), self.get_text("/readyz"))
                .await
            {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(error)) => error.to_string(),
                Err(_) => "no answer within 2 s".into(),
            };
            if std::time::Instant::now() >= deadline {
                return Err(anyhow!(
                    "kube-apiserver not ready after {:?}: {}",
                    self.timeout,
                    last.chars().take(500).collect::<String>()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates the ServiceAccount, roles and bindings of `rbac` (which must name a
    /// ServiceAccount, see [`RbacOptions::service_account`](crate::manifests::RbacOptions::service_account))
    /// and returns credentials acting as it, with a token valid for an hour. This is how to run
    /// an operator under exactly the permissions it will have in a cluster (and tell its
    /// requests apart in the API server's metrics and audit log).
    ///
    /// # Errors
    /// [`Error::Anyhow`] without a ServiceAccount in `rbac`; API errors.
    ///
    /// # Access control
    /// The `TestEnv`'s admin does it.
    pub async fn service_account(&self, rbac: &Rbac) -> Result<ServiceAccountAccess> {
        let account = rbac
            .service_account
            .clone()
            .ok_or_else(|| anyhow!("the RBAC names no ServiceAccount"))?;
        let client = self.client();
        let namespaced = |ns: &str| -> Api<ServiceAccount> { Api::namespaced(client.clone(), ns) };
        if let Some(sa) = rbac.service_account() {
            apply(namespaced(&account.namespace), &sa).await?;
        }
        for role in rbac.cluster_roles() {
            apply(Api::<ClusterRole>::all(client.clone()), &role).await?;
        }
        for binding in rbac.cluster_role_bindings() {
            apply(Api::<ClusterRoleBinding>::all(client.clone()), &binding).await?;
        }
        for role in rbac.roles() {
            let ns = role.metadata.namespace.clone().unwrap_or_default();
            apply(Api::<Role>::namespaced(client.clone(), &ns), &role).await?;
        }
        for binding in rbac.role_bindings() {
            let ns = binding.metadata.namespace.clone().unwrap_or_default();
            apply(
                Api::<RoleBinding>::namespaced(client.clone(), &ns),
                &binding,
            )
            .await?;
        }
        // Built and read as JSON: the optionality of `spec` and `status.token` differs between the
        // Kubernetes versions k8s-openapi supports, and the library picks none of them.
        let request: TokenRequest =
            serde_json::from_value(serde_json::json!({ "spec": { "expirationSeconds": 3600 } }))
                .context("building the TokenRequest")?;
        let issued = namespaced(&account.namespace)
            .create_token_request(&account.name, &PostParams::default(), &request)
            .await
            .map_err(|e| Error::client("requesting a ServiceAccount token", e))?;
        let token = serde_json::to_value(&issued)
            .context("reading the TokenRequest")?
            .pointer("/status/token")
            .and_then(serde_json::Value::as_str)
            .filter(|token| !token.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("the TokenRequest came back without a token"))?;
        let text = std::fs::read_to_string(&self.kubeconfig_path)
            .with_context(|| format!("reading {}", self.kubeconfig_path.display()))?;
        let mut kubeconfig: serde_json::Value =
            serde_saphyr::from_str(&text).context("parsing the kubeconfig")?;
        kubeconfig["users"][0]["user"] = serde_json::json!({ "token": token });
        let kubeconfig_path = self
            .dir
            .path()
            .join(format!("kubeconfig-{}-{}", account.namespace, account.name));
        let text = serde_saphyr::to_string(&kubeconfig).context("writing the kubeconfig")?;
        std::fs::write(&kubeconfig_path, &text)
            .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
        let config = kube::Config::from_custom_kubeconfig(
            Kubeconfig::from_yaml(&text).context("reading back the kubeconfig")?,
            &KubeConfigOptions::default(),
        )
        .await
        .context("loading the ServiceAccount's kubeconfig")?;
        Ok(ServiceAccountAccess {
            user_name: account.user_name(),
            kubeconfig_path,
            config,
        })
    }

    /// The API server's audit log, when started with [`TestEnvBuilder::audit_log`](super::TestEnvBuilder::audit_log).
    pub fn audit_log_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Every audit event so far (one JSON object per request stage `ResponseComplete`, level
    /// `Metadata`: `user.username`, `verb`, `objectRef`, `requestReceivedTimestamp`, …).
    ///
    /// # Errors
    /// [`Error::Anyhow`] when the log cannot be read (not enabled?).
    pub fn audit_events(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.audit_log_path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (enable it with TestEnvBuilder::audit_log)",
                path.display()
            )
        })?;
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }
}

async fn apply<K>(api: Api<K>, object: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let mut value = serde_json::to_value(object).context("serializing an RBAC object")?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(value),
    )
    .await
    .map_err(|e| Error::kube("applying", ObjectKey::of(object), e))?;
    Ok(())
}

/// The audit policy of [`TestEnvBuilder::audit_log`](super::TestEnvBuilder::audit_log): metadata
/// of every request, at completion only.
pub(crate) const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
";
