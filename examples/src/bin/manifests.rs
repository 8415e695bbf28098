//! `cargo run -p kuberator-examples --bin manifests -- --image IMAGE [--namespace NS]
//! [--replicas N] [--port PORT] [--out-dir DIR]`: the demo operator's install bundle
//! (Namespace, ServiceAccount, least-privilege RBAC, the `StaticSite` CRD, Deployment, metrics
//! Service, PodDisruptionBudget with more than one replica) for `kubectl apply -f -`, or written
//! into DIR with a `kustomization.yaml`. The same as `demo manifests …`: an operator's own binary
//! handles the subcommand with `kuberator::manifests::cli`. Needs no control plane.

fn main() -> anyhow::Result<()> {
    let args = std::iter::once("manifests".to_owned()).chain(std::env::args().skip(1));
    let mut stdout = std::io::stdout().lock();
    kuberator::manifests::cli_from(kuberator_examples::static_site::bundle(), args, &mut stdout)?;
    Ok(())
}
