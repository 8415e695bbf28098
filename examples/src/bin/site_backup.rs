//! `cargo run -p kuberator-examples --bin site_backup`: the story of
//! [`kuberator_examples::site_backup`] (two CRDs, one manager) on a fresh local control plane.
//! `RUST_LOG=info` shows the operators' logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(kuberator_examples::site_backup::run)
        .await
}
