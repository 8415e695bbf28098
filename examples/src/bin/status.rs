//! `cargo run -p kuberator-examples --bin status`: the story of [`kuberator_examples::status`] on a
//! fresh local control plane. `RUST_LOG=info` shows the operator's logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(kuberator_examples::status::run).await
}
