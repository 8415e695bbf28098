//! CRD YAML generation: the demo's [`StaticSite`] CRD as `kube`'s `CustomResourceExt::crd()`
//! derives it from the Rust types (OpenAPI schema, status subresource, printer columns, short
//! name), printed as YAML for `kubectl apply -f`, Helm or kustomize. The Rust types stay the one
//! source of truth; regenerate the file when they change.
//!
//! ```text
//! cargo run -p kuberator-examples --bin crd_yaml > staticsite-crd.yaml
//! ```
//!
//! [`run`] applies that YAML to a local control plane with kubectl, as a user would.

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kuberator::testing::TestEnv;

use crate::{static_site::StaticSite, story::kubectl};

/// The `StaticSite` CRD as YAML.
///
/// # Errors
/// When the CRD cannot be serialized (it always can).
pub fn yaml() -> anyhow::Result<String> {
    serde_saphyr::to_string(&StaticSite::crd()).context("serializing the StaticSite CRD")
}

/// Reads a CRD back from YAML, e.g. to check in CI that a committed file is up to date:
/// `crd_yaml::parse(&std::fs::read_to_string("staticsite-crd.yaml")?)? == StaticSite::crd()`.
///
/// # Errors
/// When `yaml` is not a CustomResourceDefinition.
pub fn parse(yaml: &str) -> anyhow::Result<CustomResourceDefinition> {
    serde_saphyr::from_str(yaml).context("parsing a CustomResourceDefinition")
}

/// What applying the YAML showed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The YAML applied.
    pub yaml: String,
    /// `kubectl apply -f staticsite-crd.yaml`.
    pub applied: String,
    /// `kubectl wait --for=condition=Established crd/staticsites.demo.kuberator.dev`.
    pub established: String,
    /// `kubectl api-resources --api-group=demo.kuberator.dev`.
    pub api_resources: String,
}

/// Writes the YAML to a file, applies it with kubectl and waits until it is established.
///
/// # Errors
/// A file or kubectl error.
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    let yaml = yaml()?;
    let path = env.dir().join("staticsite-crd.yaml");
    std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "{} lines of YAML in {}",
        yaml.lines().count(),
        path.display()
    );
    let file = path.to_string_lossy();
    let steps = [
        vec!["apply", "-f", &file],
        vec![
            "wait",
            "--for=condition=Established",
            "crd/staticsites.demo.kuberator.dev",
            "--timeout=30s",
        ],
        vec!["api-resources", "--api-group=demo.kuberator.dev"],
    ];
    let mut outputs = Vec::new();
    for args in steps {
        let out = kubectl(env, &args).await?;
        println!("$ kubectl {}", args.join(" "));
        for line in out.lines() {
            println!("  {line}");
        }
        outputs.push(out);
    }
    let [applied, established, api_resources] = <[String; 3]>::try_from(outputs)
        .map_err(|_| anyhow::anyhow!("expected three kubectl outputs"))?;
    Ok(Outcome {
        yaml,
        applied,
        established,
        api_resources,
    })
}
