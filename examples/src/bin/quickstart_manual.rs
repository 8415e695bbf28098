//! `cargo run -p kuberator-examples --bin quickstart_manual`: the story of [`kuberator_examples::quickstart_manual`] on a
//! fresh local control plane. `RUST_LOG=info` shows the operator's logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(
        kuberator_examples::quickstart_manual::run,
    )
    .await
}
