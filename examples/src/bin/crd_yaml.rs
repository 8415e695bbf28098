//! `cargo run -p kuberator-examples --bin crd_yaml > staticsite-crd.yaml`: prints the demo's
//! `StaticSite` CRD as YAML (see [`kuberator_examples::crd_yaml`]). Needs no control plane.

fn main() -> anyhow::Result<()> {
    print!("{}", kuberator_examples::crd_yaml::yaml()?);
    Ok(())
}
