//! `cargo run -p kuberator-examples --bin manifests > staticsites.yaml`: prints what the demo
//! operator needs in a cluster — the `StaticSite` CRD, a ServiceAccount, and a least-privilege
//! ClusterRole and binding generated from its `#[kuberator::operator]` keys (the resource with its
//! status and finalizers, the owned ConfigMaps and Services, events) — ready for
//! `kubectl apply -f staticsites.yaml`. Needs no control plane.
//!
//! `--namespace NS` sets the ServiceAccount's namespace (default `kuberator-system`).

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let namespace = match args.as_slice() {
        [] => "kuberator-system".to_owned(),
        [flag, namespace] if flag == "--namespace" => namespace.clone(),
        _ => anyhow::bail!("usage: manifests [--namespace NS]"),
    };
    print!(
        "{}",
        kuberator_examples::static_site::manifests(&namespace)?
    );
    Ok(())
}
