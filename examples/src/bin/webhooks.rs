//! `cargo run -p kuberator-examples --bin webhooks`: the story of
//! [`kuberator_examples::webhooks`] (validate, default, convert) on a fresh local control plane.
//! `RUST_LOG=info` shows the operator's logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(kuberator_examples::webhooks::run).await
}
