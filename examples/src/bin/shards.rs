//! `cargo run -p kuberator-examples --bin shards`: the story of [`kuberator_examples::shards`]
//! (three replicas split the objects, one crashes, the others take over) on a fresh local
//! control plane. `RUST_LOG=info` shows the replicas' logs too.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kuberator_examples::story::main_on_local_control_plane(kuberator_examples::shards::run).await
}
