//! Test control plane: a real etcd + kube-apiserver on loopback ([`TestEnv`]).
//!
//! ```no_run
//! use kuberator::testing::TestEnv;
//!
//! # async fn example() -> kuberator::Result<()> {
//! let env = TestEnv::start().await?; // a few seconds; dropped = killed and cleaned up
//! let client: kube::Client = env.client(); // the cluster admin
//! # let _ = client;
//! println!("{}", env.kubectl_json(["get", "namespaces"]).await?);
//! # Ok(())
//! # }
//! ```
//!
//! The binaries (`etcd`, `kube-apiserver`, `kubectl`, `kube-controller-manager`) are built once
//! by `scripts/control-plane.sh ensure`; see [`assets_dir`] for where they are looked up.

mod assets;
mod background;
mod certs;
mod env;
mod faults;
mod kubectl;
mod process;

pub use assets::{
    KUBERNETES_VERSION, SUPPORTED_KUBERNETES_VERSIONS, assets_dir, kubernetes_version,
};
pub use background::{Background, DEFAULT_TIMEOUT, StopSignal, background, until};
pub use env::{TestEnv, TestEnvBuilder};
pub use faults::ServiceAccountAccess;
