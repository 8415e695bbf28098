//! `cargo run -p kuberator-examples --bin errors`: the story of [`kuberator_examples::errors`] on a
//! fresh local control plane. `RUST_LOG=info` shows the operator's logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(kuberator_examples::errors::run).await
}
