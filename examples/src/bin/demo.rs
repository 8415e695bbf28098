//! `make demo`: the StaticSite operator on a local control plane, told as a story.
//!
//! Flags: `--keep` leaves everything running and prints `export KUBECONFIG=…`; `--quiet` prints
//! only the summary. `RUST_LOG` sets the operator's log level (default `info`).
//!
//! `demo manifests --image IMAGE [--namespace NS] [--replicas N] [--out-dir DIR]` prints the
//! operator's install bundle instead (`kuberator::manifests::cli`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if kuberator::manifests::cli(kuberator_examples::static_site::bundle())? {
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    for arg in &args {
        if !matches!(arg.as_str(), "--keep" | "--quiet") {
            anyhow::bail!("unknown argument `{arg}` (expected `--keep` or `--quiet`)");
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kuberator_examples=info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .compact()
        .init();
    let options = kuberator_examples::demo::Options {
        keep: args.iter().any(|a| a == "--keep"),
        quiet: args.iter().any(|a| a == "--quiet"),
    };
    kuberator_examples::demo::run(options).await?;
    Ok(())
}
