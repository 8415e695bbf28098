//! `make bench`: kuberator against raw kube-rs and against the API server's limit, on a local
//! control plane. See `BENCHMARKS.md` and `--help`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The control plane's readiness probes log connection errors while it starts.
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = kuberator_examples::bench::driver::parse_args(&args)?;
    kuberator_examples::bench::driver::run(options).await
}
