//! Where the control-plane binaries live, and the check that they are there.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The Kubernetes version `scripts/control-plane.sh` builds and [`assets_dir`] looks for.
pub const KUBERNETES_VERSION: &str = "1.36.3";

/// The folder holding `etcd`, `kube-apiserver`, `kubectl` and `kube-controller-manager`.
///
/// Looked up in this order (the first one set and non-empty wins):
/// 1. `KUBEBUILDER_ASSETS`, so controller-runtime's `setup-envtest` binaries work as they are;
/// 2. `KUBERATOR_ASSETS`;
/// 3. `$KUBERATOR_CACHE/control-plane/v1.36.3`;
/// 4. `${XDG_CACHE_HOME:-$HOME/.cache}/kuberator/control-plane/v1.36.3`, where
///    `scripts/control-plane.sh ensure` puts them.
///
/// The folder is not checked here; [`TestEnv::start`](super::TestEnv::start) does that.
pub fn assets_dir() -> PathBuf {
    located().0
}

/// The assets folder and which setting chose it (for error messages).
pub(crate) fn located() -> (PathBuf, &'static str) {
    let var = |name: &str| {
        env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let version_dir = format!("v{KUBERNETES_VERSION}");
    if let Some(dir) = var("KUBEBUILDER_ASSETS") {
        return (dir, "KUBEBUILDER_ASSETS");
    }
    if let Some(dir) = var("KUBERATOR_ASSETS") {
        return (dir, "KUBERATOR_ASSETS");
    }
    if let Some(cache) = var("KUBERATOR_CACHE") {
        return (
            cache.join("control-plane").join(version_dir),
            "KUBERATOR_CACHE",
        );
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|home| home.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    (
        cache
            .join("kuberator")
            .join("control-plane")
            .join(version_dir),
        "the default cache folder",
    )
}

/// The binaries of one assets folder.
#[derive(Clone, Debug)]
pub(crate) struct Assets {
    pub(crate) dir: PathBuf,
    pub(crate) etcd: PathBuf,
    pub(crate) apiserver: PathBuf,
    pub(crate) controller_manager: PathBuf,
    pub(crate) kubectl: PathBuf,
}

impl Assets {
    /// The binaries in `dir`, checking that the ones needed now are executable files.
    pub(crate) fn check(
        dir: PathBuf,
        source: &str,
        controller_manager: bool,
    ) -> anyhow::Result<Assets> {
        let assets = Assets {
            etcd: dir.join("etcd"),
            apiserver: dir.join("kube-apiserver"),
            controller_manager: dir.join("kube-controller-manager"),
            kubectl: dir.join("kubectl"),
            dir,
        };
        let mut needed = vec![&assets.etcd, &assets.apiserver];
        if controller_manager {
            needed.push(&assets.controller_manager);
        }
        let missing: Vec<String> = needed
            .into_iter()
            .filter(|path| !is_executable(path))
            .filter_map(|path| path.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .collect();
        if !missing.is_empty() {
            anyhow::bail!(
                "control-plane binaries missing: {} not found (or not executable) in {} (chosen by \
                 {source}); run `scripts/control-plane.sh ensure` to build them, or point \
                 KUBEBUILDER_ASSETS or KUBERATOR_ASSETS at a folder that has them",
                missing.join(", "),
                assets.dir.display(),
            );
        }
        Ok(assets)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
