//! `cargo run -p kuberator-examples --bin custom_repository`: the story of [`kuberator_examples::custom_repository`] on a
//! fresh local control plane. `RUST_LOG=info` shows the operator's logs too.

use kuberator::testing::TestEnv;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()),
        )
        .init();
    let started = std::time::Instant::now();
    println!("Starting a local control plane (etcd + kube-apiserver) …");
    let env = TestEnv::start().await?;
    kuberator_examples::custom_repository::run(&env).await?;
    drop(env);
    println!("Done in {:.1}s.", started.elapsed().as_secs_f64());
    Ok(())
}
