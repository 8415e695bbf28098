//! Where the control-plane binaries live, and the check that they are there.

use std::{
    env,
    path::{Path, PathBuf},
};

/// The Kubernetes version `scripts/control-plane.sh` builds and [`assets_dir`] looks for by
/// default.
pub const KUBERNETES_VERSION: &str = "1.36.3";

/// The supported Kubernetes minors, oldest first, each pinned to the patch release
/// `scripts/control-plane.sh` builds for it (`KUBERATOR_K8S_VERSION=1.33.x`).
pub const SUPPORTED_KUBERNETES_VERSIONS: [&str; 5] =
    ["1.33.13", "1.34.4", "1.35.4", "1.36.3", "1.37.2"];

/// The Kubernetes version of the assets folder: `KUBERATOR_K8S_VERSION` resolved as the
/// control-plane script resolves it (`1.33`, `1.33.x` or a pinned `1.33.13` mean the pinned
/// patch of that minor; another full version is taken as given), else [`KUBERNETES_VERSION`].
pub fn kubernetes_version() -> String {
    match env::var("KUBERATOR_K8S_VERSION") {
        Ok(wanted) if !wanted.is_empty() => resolve_version(&wanted),
        _ => KUBERNETES_VERSION.to_owned(),
    }
}

fn resolve_version(wanted: &str) -> String {
    let wanted = wanted.strip_suffix(".x").unwrap_or(wanted);
    SUPPORTED_KUBERNETES_VERSIONS
        .iter()
        .find(|pinned| {
            **pinned == wanted
                || pinned
                    .rsplit_once('.')
                    .is_some_and(|(minor, _)| minor == wanted)
        })
        .map_or_else(|| wanted.to_owned(), |pinned| (*pinned).to_owned())
}

/// The folder holding `etcd`, `kube-apiserver`, `kubectl` and `kube-controller-manager`.
///
/// Looked up in this order (the first one set and non-empty wins):
/// 1. `KUBEBUILDER_ASSETS`, so controller-runtime's `setup-envtest` binaries work as they are;
/// 2. `KUBERATOR_ASSETS`;
/// 3. `$KUBERATOR_CACHE/control-plane/v<version>`;
/// 4. `${XDG_CACHE_HOME:-$HOME/.cache}/kuberator/control-plane/v<version>`, where
///    `scripts/control-plane.sh ensure` puts them,
///
/// with the version of [`kubernetes_version`] (`KUBERATOR_K8S_VERSION`, default 1.36.3).
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
    let version_dir = format!("v{}", kubernetes_version());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_resolve_as_the_control_plane_script_resolves_them() {
        for (wanted, resolved) in [
            ("1.33", "1.33.13"),
            ("1.33.x", "1.33.13"),
            ("1.33.13", "1.33.13"),
            ("1.37.x", "1.37.2"),
            ("1.36", KUBERNETES_VERSION),
            ("1.35.1", "1.35.1"),
        ] {
            assert_eq!(resolve_version(wanted), resolved, "{wanted}");
        }
        // The script pins the same patches.
        let script = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/control-plane.sh"
        ))
        .unwrap();
        let pinned = format!("PINNED=\"{}\"", SUPPORTED_KUBERNETES_VERSIONS.join(" "));
        assert!(script.contains(&pinned), "the script lacks {pinned}");
    }
}
