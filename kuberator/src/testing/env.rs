//! `TestEnv`: start a control plane, wait for it, hand out clients, install CRDs, tear down.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    api::{DynamicObject, ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::{ApiResource, GroupVersionKind},
    runtime::wait::{await_condition, conditions},
};
use tempfile::TempDir;
use tracing::instrument::{WithDispatch, WithSubscriber as _};

use super::{
    assets::{self, Assets},
    certs::{Pki, PkiFiles, base64},
    process::{Exited, Processes, log_tail},
};
use crate::{Error, ObjectKey, Result};

/// Field manager of the server-side applies `TestEnv` makes.
const FIELD_MANAGER: &str = "kuberator-testenv";
/// Whole-start attempts when another process took one of the picked ports first.
const MAX_ATTEMPTS: u32 = 5;
/// Lines of a process log quoted in a start error.
const LOG_LINES: usize = 40;
/// Pause between readiness probes.
const POLL: Duration = Duration::from_millis(50);

/// A real etcd and kube-apiserver (and, on request, kube-controller-manager) on 127.0.0.1, for
/// tests, benchmarks and demos.
///
/// Each `TestEnv` has its own temporary folder (certificates, etcd data, logs, kubeconfig) and
/// its own free ports, so any number can run side by side, in one test process or many. The
/// binaries come from [`assets_dir`](super::assets_dir); build them once with
/// `scripts/control-plane.sh ensure`.
///
/// The API server trusts a fresh CA; [`client`](Self::client), the
/// [kubeconfig](Self::kubeconfig_path) and [`kubectl`](Self::kubectl) authenticate as `admin` in
/// `system:masters`, so RBAC never gets in the way unless a test builds its own restricted client.
/// The controller-manager is off by default: without it nothing garbage-collects dependents,
/// finishes namespace deletion or creates service-account tokens.
///
/// # Teardown
///
/// Dropping the `TestEnv` (also while a test panics) sends `SIGKILL` to the control plane's
/// process group, reaps every process before `drop` returns, and removes the temporary folder.
/// If the test process itself dies without unwinding (killed, `abort`, `exit`), a small watchdog
/// in the same process group notices the closed pipe from the test process and kills the group,
/// so no apiserver outlives its test. (The workspace forbids `unsafe`, which rules out
/// `prctl(PR_SET_PDEATHSIG)` in `pre_exec`; the watchdog does the same job.) Only the temporary
/// folder is left behind in that case.
///
/// Unix only (process groups).
///
/// # Example
///
/// ```no_run
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::{Api, api::PostParams};
/// use kuberator::testing::TestEnv;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let env = TestEnv::start().await?;
/// let config_maps: Api<ConfigMap> = Api::namespaced(env.client(), "default");
/// let mut config_map = ConfigMap::default();
/// config_map.metadata.name = Some("settings".into());
/// config_maps.create(&PostParams::default(), &config_map).await?;
/// # Ok(())
/// # }
/// ```
pub struct TestEnv {
    // Declared first so that, even without `Drop for TestEnv`, the processes die before the
    // folder they write to is removed.
    pub(super) processes: Processes,
    pub(super) client: Client,
    pub(super) config: kube::Config,
    pub(super) server_url: String,
    pub(super) kubeconfig_path: PathBuf,
    pub(super) assets: Assets,
    pub(super) apiserver_log: PathBuf,
    pub(super) etcd_pid: u32,
    pub(super) apiserver_pid: u32,
    pub(super) controller_manager_pid: Option<u32>,
    pub(super) started_in: Duration,
    pub(super) timeout: Duration,
    pub(super) dir: TempDir,
}

impl std::fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestEnv")
            .field("server_url", &self.server_url)
            .field("dir", &self.dir.path())
            .field("etcd_pid", &self.etcd_pid)
            .field("apiserver_pid", &self.apiserver_pid)
            .field("controller_manager_pid", &self.controller_manager_pid)
            .finish_non_exhaustive()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.processes.kill_all();
    }
}

/// Options for [`TestEnv`]; start with [`TestEnv::builder`].
///
/// ```no_run
/// use kuberator::testing::TestEnv;
/// # async fn example() -> kuberator::Result<()> {
/// let env = TestEnv::builder()
///     .controller_manager(true)
///     .timeout(std::time::Duration::from_secs(120))
///     .start()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `.start().await`"]
pub struct TestEnvBuilder {
    controller_manager: bool,
    assets_dir: Option<PathBuf>,
    timeout: Duration,
    crds: Vec<CustomResourceDefinition>,
    apiserver_args: Vec<String>,
    audit_log: bool,
}

impl Default for TestEnvBuilder {
    fn default() -> Self {
        TestEnvBuilder {
            controller_manager: false,
            assets_dir: None,
            timeout: Duration::from_secs(60),
            crds: Vec::new(),
            apiserver_args: Vec::new(),
            audit_log: false,
        }
    }
}

impl TestEnvBuilder {
    /// Also run `kube-controller-manager` (all default controllers, no leader election), for
    /// owner-reference garbage collection, namespace deletion and the like. Off by default.
    ///
    /// The garbage collector only watches the resources it discovered, and re-discovers only
    /// every 30 s or so. Register CRDs with [`crd`](Self::crd) so that they exist before the
    /// controller-manager starts and their objects are collected right away.
    pub fn controller_manager(mut self, enabled: bool) -> Self {
        self.controller_manager = enabled;
        self
    }

    /// Use the binaries in `dir` instead of the [`assets_dir`](super::assets_dir) lookup.
    pub fn assets_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.assets_dir = Some(dir.into());
        self
    }

    /// How long to wait for each process to become ready and for each CRD to be established
    /// (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Install `K`'s CRD during start, before the controller-manager (if any) starts.
    pub fn crd<K: CustomResourceExt>(self) -> Self {
        self.crd_value(K::crd())
    }

    /// Install this CRD during start, before the controller-manager (if any) starts.
    pub fn crd_value(mut self, crd: CustomResourceDefinition) -> Self {
        self.crds.push(crd);
        self
    }

    /// An extra `kube-apiserver` flag, e.g. `--feature-gates=…`; later flags override earlier
    /// ones, including the defaults.
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Writes the API server's audit log (metadata of every request: who, what, when) to
    /// [`TestEnv::audit_log_path`]; read it with [`TestEnv::audit_events`]. Off by default.
    pub fn audit_log(mut self, enabled: bool) -> Self {
        self.audit_log = enabled;
        self
    }

    /// Throttles the API server as a busy cluster does: at most `inflight` read and `mutating`
    /// write requests at once (`--max-requests-inflight`, `--max-mutating-requests-inflight`;
    /// API Priority and Fairness stays on and answers the excess with 429).
    pub fn throttle(self, inflight: u32, mutating: u32) -> Self {
        self.apiserver_arg(format!("--max-requests-inflight={inflight}"))
            .apiserver_arg(format!("--max-mutating-requests-inflight={mutating}"))
    }

    /// Starts the control plane and waits until the API server is ready, the `default`
    /// namespace exists, the CRDs are established and the controller-manager (if asked for) is
    /// healthy.
    ///
    /// Ports are picked by binding port 0; if another process takes one before the binary binds
    /// it, the whole start is retried with new ports (up to 5 times).
    ///
    /// # Errors
    ///
    /// [`Error::Anyhow`] naming the step that failed: binaries missing (with the command that
    /// builds them), a process that exited (with the tail of its log), or a timeout (with the
    /// tail of the API server's log).
    ///
    /// # Access control
    ///
    /// None needed: the `TestEnv` is the cluster's admin.
    pub async fn start(self) -> Result<TestEnv> {
        let began = Instant::now();
        let (dir, source) = match &self.assets_dir {
            Some(dir) => (dir.clone(), "TestEnvBuilder::assets_dir"),
            None => assets::located(),
        };
        let assets = Assets::check(dir, source, self.controller_manager)
            .context("starting the test control plane")?;
        let mut attempt = 1;
        loop {
            match self.start_once(&assets, began).await {
                Ok(env) => {
                    tracing::debug!(
                        started_in = ?env.started_in,
                        url = %env.server_url,
                        dir = %env.dir.path().display(),
                        "test control plane ready"
                    );
                    return Ok(env);
                }
                Err(Failure::PortTaken(err)) if attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, error = %err, "port taken, restarting the control plane");
                    attempt += 1;
                }
                Err(Failure::PortTaken(err) | Failure::Fatal(err)) => {
                    return Err(Error::Anyhow(
                        err.context("starting the test control plane"),
                    ));
                }
            }
        }
    }

    async fn start_once(&self, assets: &Assets, began: Instant) -> Result<TestEnv, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("kuberator-testenv-")
            .tempdir()
            .context("creating the temporary folder")?;
        let root = dir.path();
        let pki = Pki::generate().context("generating certificates")?;
        let files = pki
            .write(&root.join("pki"))
            .context("writing certificates")?;
        let [
            etcd_port,
            etcd_peer_port,
            apiserver_port,
            controller_manager_port,
        ] = free_ports()?;
        let mut processes = Processes::new()?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let etcd_pid = processes.spawn(
            "etcd",
            &assets.etcd,
            &etcd_args(root, &etcd_url, etcd_peer_port),
            root.join("etcd.log"),
            root,
        )?;

        let server_url = format!("https://127.0.0.1:{apiserver_port}");
        let mut args = apiserver_args(root, &files, &etcd_url, apiserver_port);
        if self.audit_log {
            let policy = root.join("audit-policy.yaml");
            std::fs::write(&policy, super::faults::AUDIT_POLICY)
                .with_context(|| format!("writing {}", policy.display()))?;
            args.push(format!("--audit-policy-file={}", policy.display()));
            args.push(format!(
                "--audit-log-path={}",
                root.join("audit.log").display()
            ));
            args.push("--audit-log-mode=blocking".into());
        }
        args.extend(self.apiserver_args.iter().cloned());
        let apiserver_log = root.join("kube-apiserver.log");
        let apiserver_pid = processes.spawn(
            "kube-apiserver",
            &assets.apiserver,
            &args,
            apiserver_log.clone(),
            root,
        )?;

        let kubeconfig_path = root.join("kubeconfig");
        let kubeconfig_text = kubeconfig_yaml(&pki, &server_url)?;
        std::fs::write(&kubeconfig_path, &kubeconfig_text)
            .with_context(|| format!("writing {}", kubeconfig_path.display()))?;
        let kubeconfig =
            Kubeconfig::from_yaml(&kubeconfig_text).context("reading back the kubeconfig")?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .context("loading the kubeconfig into kube::Config")?;
        let client = Client::try_from(config.clone()).context("building the kube client")?;

        let mut env = TestEnv {
            processes,
            client,
            config,
            server_url,
            kubeconfig_path,
            assets: assets.clone(),
            apiserver_log,
            etcd_pid,
            apiserver_pid,
            controller_manager_pid: None,
            started_in: Duration::ZERO,
            timeout: self.timeout,
            dir,
        };
        // Readiness polls fail by design until the servers are up; kube's client would log
        // each failure as an ERROR (and each self-signed handshake as a WARN), which reads as
        // broken. The last failure is part of the error returned on a timeout instead.
        quietly(env.wait_for_apiserver()).await?;
        for crd in &self.crds {
            quietly(env.install_crd_value(crd.clone()))
                .await
                .map_err(|err| Failure::Fatal(anyhow::Error::new(err)))?;
        }
        if self.controller_manager {
            quietly(env.start_controller_manager(&files, controller_manager_port)).await?;
        }
        if let Some(exited) = env.processes.exited() {
            return Err(exited_failure(exited));
        }
        env.started_in = began.elapsed();
        Ok(env)
    }
}

/// Runs `future` with logging off (the readiness polls, whose failures are expected).
fn quietly<F: std::future::Future>(future: F) -> WithDispatch<F> {
    future.with_subscriber(tracing::subscriber::NoSubscriber::default())
}

/// Why one start attempt failed.
enum Failure {
    /// A process could not bind its port: retry with new ports.
    PortTaken(anyhow::Error),
    /// Anything else.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Fatal(err)
    }
}

fn exited_failure(exited: Exited) -> Failure {
    let tail = log_tail(&exited.log, LOG_LINES);
    let err = anyhow!(
        "{} exited ({}) during start; last lines of {}:\n{tail}",
        exited.name,
        exited.status,
        exited.log.display(),
    );
    if tail.contains("address already in use") {
        Failure::PortTaken(err)
    } else {
        Failure::Fatal(err)
    }
}

/// `N` distinct free ports on 127.0.0.1 (all held open until all are picked).
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("picking free ports")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr().context("picking free ports")?.port();
    }
    Ok(ports)
}

fn etcd_args(root: &Path, url: &str, peer_port: u16) -> Vec<String> {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name=testenv".into(),
        format!("--data-dir={}", root.join("etcd").display()),
        format!("--listen-client-urls={url}"),
        format!("--advertise-client-urls={url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=testenv={peer_url}"),
        "--unsafe-no-fsync=true".into(),
        "--log-level=warn".into(),
    ]
}

/// controller-runtime envtest's flags, plus certificates, loopback-only serving and no endpoint
/// reconciler.
fn apiserver_args(root: &Path, files: &PkiFiles, etcd_url: &str, port: u16) -> Vec<String> {
    vec![
        "--advertise-address=127.0.0.1".into(),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--etcd-servers={etcd_url}"),
        format!("--cert-dir={}", root.join("apiserver-certs").display()),
        format!("--tls-cert-file={}", files.serving_cert.display()),
        format!("--tls-private-key-file={}", files.serving_key.display()),
        format!("--client-ca-file={}", files.ca_cert.display()),
        "--authorization-mode=RBAC".into(),
        // Room for 65,534 Services: an operator that gives each object a Service must not run out
        // of ClusterIPs in a test of a few hundred objects (a /24 did, at 254).
        "--service-cluster-ip-range=10.0.0.0/16".into(),
        "--allow-privileged=true".into(),
        // No controller-manager by default, so no default service account to admit pods with.
        "--disable-admission-plugins=ServiceAccount".into(),
        "--endpoint-reconciler-type=none".into(),
        format!("--service-account-issuer=https://127.0.0.1:{port}/"),
        format!(
            "--service-account-key-file={}",
            files.sa_public_key.display()
        ),
        format!(
            "--service-account-signing-key-file={}",
            files.sa_private_key.display()
        ),
    ]
}

/// A kubeconfig with embedded certificates that kube-rs and kubectl both read.
fn kubeconfig_yaml(pki: &Pki, server_url: &str) -> anyhow::Result<String> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "kuberator-testenv",
            "cluster": {
                "server": server_url,
                "certificate-authority-data": base64(pki.ca_cert.as_bytes()),
            },
        }],
        "users": [{
            "name": "admin",
            "user": {
                "client-certificate-data": base64(pki.admin_cert.as_bytes()),
                "client-key-data": base64(pki.admin_key.as_bytes()),
            },
        }],
        "contexts": [{
            "name": "kuberator-testenv",
            "context": {
                "cluster": "kuberator-testenv",
                "user": "admin",
                "namespace": "default",
            },
        }],
        "current-context": "kuberator-testenv",
        "preferences": {},
    });
    serde_saphyr::to_string(&kubeconfig).context("writing the kubeconfig")
}

impl TestEnv {
    /// Starts a control plane with the default options: etcd and kube-apiserver, no
    /// controller-manager. Same as `TestEnv::builder().start()`.
    ///
    /// # Errors
    ///
    /// See [`TestEnvBuilder::start`].
    ///
    /// # Access control
    ///
    /// None needed: the `TestEnv` is the cluster's admin.
    pub async fn start() -> Result<TestEnv> {
        TestEnv::builder().start().await
    }

    /// Options: controller-manager, assets folder, timeout, CRDs, extra API server flags.
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder::default()
    }

    /// A client authenticated as the cluster admin (cheap: clones share one connection pool).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The client configuration, to build clients with other settings.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// The API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The kubeconfig (certificates embedded, context namespace `default`), for kubectl or any
    /// other client.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The temporary folder holding certificates, etcd's data, the kubeconfig and the process
    /// logs (`etcd.log`, `kube-apiserver.log`, `kube-controller-manager.log`); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The folder the binaries came from.
    pub fn assets_dir(&self) -> &Path {
        &self.assets.dir
    }

    /// The API server's log file.
    pub fn apiserver_log_path(&self) -> &Path {
        &self.apiserver_log
    }

    /// The process id of etcd.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd_pid
    }

    /// The process id of kube-apiserver.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver_pid
    }

    /// The process id of kube-controller-manager, if it was asked for.
    pub fn controller_manager_pid(&self) -> Option<u32> {
        self.controller_manager_pid
    }

    /// How long [`start`](TestEnvBuilder::start) took, retries and CRDs included.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// `GET` an arbitrary API server path (e.g. `/readyz?verbose`, `/version`) as text.
    ///
    /// # Errors
    ///
    /// [`Error::Client`] when the request fails or the server answers with an error status.
    ///
    /// # Access control
    ///
    /// Whatever the path needs; the `TestEnv`'s client is the cluster's admin.
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|err| anyhow::Error::new(err).context(format!("building GET {path}")))?;
        self.client
            .request_text(request)
            .await
            .map_err(|source| Error::client(format!("GET {path}"), source))
    }

    /// The API server's Prometheus metrics (`GET /metrics`).
    ///
    /// # Errors
    ///
    /// As [`get_text`](Self::get_text).
    ///
    /// # Access control
    ///
    /// `get` on the non-resource URL `/metrics` (the admin has it).
    pub async fn metrics_text(&self) -> Result<String> {
        self.get_text("/metrics").await
    }

    /// Installs `K`'s CRD (server-side apply, so re-installing is fine) and returns once it is
    /// `Established` and its resource can be listed.
    ///
    /// With the controller-manager running, its garbage collector only notices the new resource
    /// at its next periodic discovery (measured: about 40 s); register the CRD with
    /// [`TestEnvBuilder::crd`] instead when a test relies on garbage collection.
    ///
    /// # Errors
    ///
    /// [`Error::Kube`] if the apply fails, [`Error::Client`] if the resource cannot be listed in
    /// time, [`Error::Anyhow`] if it is not established within the timeout.
    ///
    /// # Access control
    ///
    /// `patch`, `get`, `watch` on `customresourcedefinitions`, `list` on the new resource.
    ///
    /// ```no_run
    /// # use kube::CustomResource;
    /// # use schemars::JsonSchema;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
    /// #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
    /// pub struct WebsiteSpec { pub image: String }
    ///
    /// # async fn example() -> kuberator::Result<()> {
    /// let env = kuberator::testing::TestEnv::start().await?;
    /// env.install_crd::<Website>().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn install_crd<K: CustomResourceExt>(&self) -> Result<CustomResourceDefinition> {
        self.install_crd_value(K::crd()).await
    }

    /// Installs a CRD given as a value (e.g. read from YAML); see [`install_crd`](Self::install_crd).
    ///
    /// # Errors
    ///
    /// As [`install_crd`](Self::install_crd), and [`Error::MissingField`] without a name.
    ///
    /// # Access control
    ///
    /// As [`install_crd`](Self::install_crd).
    pub async fn install_crd_value(
        &self,
        crd: CustomResourceDefinition,
    ) -> Result<CustomResourceDefinition> {
        let deadline = Instant::now() + self.timeout;
        let key = ObjectKey::of(&crd);
        let Some(name) = crd.metadata.name.clone() else {
            return Err(Error::MissingField {
                object: key,
                field: "metadata.name",
            });
        };
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(|source| Error::kube("applying", key.clone(), source))?;
        let established = tokio::time::timeout(
            self.timeout,
            await_condition(api, &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow!("{key} is not Established after {:?}", self.timeout))?
        .map_err(|err| {
            anyhow::Error::new(err).context(format!("waiting for {key} to be Established"))
        })?;

        let spec = &crd.spec;
        for version in spec.versions.iter().filter(|version| version.served) {
            let gvk = GroupVersionKind::gvk(&spec.group, &version.name, &spec.names.kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, &spec.names.plural);
            let api: Api<DynamicObject> = Api::all_with(self.client(), &resource);
            loop {
                match api.list_metadata(&ListParams::default().limit(1)).await {
                    Ok(_) => break,
                    Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                    Err(source) => {
                        let action = format!(
                            "listing {}.{}/{} after installing its CRD",
                            spec.names.plural, spec.group, version.name
                        );
                        return Err(Error::client(action, source));
                    }
                }
            }
        }
        Ok(established.unwrap_or(applied))
    }

    /// Polls `/readyz` until it says `ok`, then waits for the `default` namespace.
    async fn wait_for_apiserver(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + self.timeout;
        for path in ["/readyz", "/api/v1/namespaces/default"] {
            loop {
                if let Some(exited) = self.processes.exited() {
                    return Err(exited_failure(exited));
                }
                let last =
                    match tokio::time::timeout(Duration::from_secs(5), self.get_text(path)).await {
                        Ok(Ok(body)) if path != "/readyz" || body.trim() == "ok" => break,
                        Ok(Ok(body)) => body,
                        Ok(Err(err)) => err.to_string(),
                        Err(_) => "no answer within 5 s".into(),
                    };
                if Instant::now() >= deadline {
                    return Err(Failure::Fatal(anyhow!(
                        "kube-apiserver not ready after {:?} (GET {path}: {}); last lines of {}:\n{}",
                        self.timeout,
                        last.chars().take(2000).collect::<String>(),
                        self.apiserver_log.display(),
                        log_tail(&self.apiserver_log, LOG_LINES),
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Starts kube-controller-manager against this API server and waits for its `/healthz`.
    async fn start_controller_manager(
        &mut self,
        files: &PkiFiles,
        port: u16,
    ) -> Result<(), Failure> {
        let root = self.dir.path().to_owned();
        let args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path.display()),
            "--controllers=*".into(),
            "--use-service-account-credentials=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!(
                "--cert-dir={}",
                root.join("controller-manager-certs").display()
            ),
            format!(
                "--service-account-private-key-file={}",
                files.sa_private_key.display()
            ),
            format!("--root-ca-file={}", files.ca_cert.display()),
            format!("--cluster-signing-cert-file={}", files.ca_cert.display()),
            format!("--cluster-signing-key-file={}", files.ca_key.display()),
            "--service-cluster-ip-range=10.0.0.0/16".into(),
        ];
        let log = root.join("kube-controller-manager.log");
        let pid = self.processes.spawn(
            "kube-controller-manager",
            &self.assets.controller_manager,
            &args,
            log.clone(),
            &root,
        )?;
        self.controller_manager_pid = Some(pid);

        // Its serving certificate is self-signed; `/healthz` is open to anonymous requests.
        let url = format!("https://127.0.0.1:{port}")
            .parse()
            .context("controller-manager URL")?;
        let mut config = kube::Config::new(url);
        config.accept_invalid_certs = true;
        let client = Client::try_from(config).context("building the controller-manager client")?;
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(exited) = self.processes.exited() {
                return Err(exited_failure(exited));
            }
            let request = http::Request::get("/healthz")
                .body(Vec::new())
                .context("building GET /healthz")?;
            let last =
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                    Ok(Ok(body)) => body,
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => "no answer within 5 s".into(),
                };
            if Instant::now() >= deadline {
                return Err(Failure::Fatal(anyhow!(
                    "kube-controller-manager not healthy after {:?} (GET /healthz: {}); last lines of {}:\n{}",
                    self.timeout,
                    last.chars().take(2000).collect::<String>(),
                    log.display(),
                    log_tail(&log, LOG_LINES),
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn exited_with_log(dir: &Path, log: &str) -> Exited {
        let path = dir.join("etcd.log");
        std::fs::write(&path, log).unwrap();
        Exited {
            name: "etcd",
            status: std::process::ExitStatus::from_raw(1 << 8),
            log: path,
        }
    }

    #[test]
    fn a_taken_port_retries_and_anything_else_fails() {
        let dir = tempfile::tempdir().unwrap();
        let taken = exited_with_log(
            dir.path(),
            "starting\n{\"level\":\"fatal\",\"error\":\"listen tcp 127.0.0.1:41469: bind: address already in use\"}\n",
        );
        assert!(matches!(exited_failure(taken), Failure::PortTaken(_)));

        let broken = exited_with_log(dir.path(), "starting\nerror: unknown flag --nope\n");
        let Failure::Fatal(err) = exited_failure(broken) else {
            panic!("a bad flag is not a port race");
        };
        let message = err.to_string();
        assert!(message.contains("etcd exited"), "{message}");
        assert!(message.contains("unknown flag --nope"), "{message}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports: [u16; 4] = free_ports().unwrap();
        let mut sorted = ports.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4, "{ports:?}");
    }

    #[test]
    fn kubeconfig_is_read_by_kube() {
        let pki = Pki::generate().unwrap();
        let yaml = kubeconfig_yaml(&pki, "https://127.0.0.1:6443").unwrap();
        let kubeconfig = Kubeconfig::from_yaml(&yaml).unwrap();
        assert_eq!(
            kubeconfig.current_context.as_deref(),
            Some("kuberator-testenv")
        );
        let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
    }
}
