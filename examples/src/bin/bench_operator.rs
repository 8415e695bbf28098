//! One benchmark implementation as its own process, so that its memory is its own:
//! `bench_operator kuberator|raw|limit|manager|separate --kubeconfig PATH [--concurrency C]
//! [--children true]` (`--children`: kuberator and raw with one owned `ConfigMap` per object).
//! Runs until SIGTERM (the limit also stops when stdin closes), then prints `reconciles=<count>`
//! (not for `manager` and `separate`, the two layouts of the manager row).

use anyhow::{anyhow, bail};
use kuberator_examples::bench::{
    DEFAULT_CONCURRENCY, RECONCILES_LINE, children, client_from_kubeconfig, kuberator_impl, limit,
    manager::{self, Layout},
    raw,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let implementation = args
        .next()
        .ok_or_else(|| anyhow!("usage: bench_operator kuberator|raw|limit --kubeconfig PATH"))?;
    let mut kubeconfig = None;
    let mut concurrency = DEFAULT_CONCURRENCY;
    let mut identity = None;
    let mut work_ms = 20_u64;
    let mut children = false;
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow!("`{arg}` needs a value"))?;
        match arg.as_str() {
            "--kubeconfig" => kubeconfig = Some(value),
            "--concurrency" => concurrency = value.parse()?,
            "--identity" => identity = Some(value),
            "--work-ms" => work_ms = value.parse()?,
            "--children" => children = value.parse()?,
            _ => bail!("unknown argument `{arg}`"),
        }
    }
    let kubeconfig = kubeconfig.ok_or_else(|| anyhow!("--kubeconfig is required"))?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let reconciles = match implementation.as_str() {
        "kuberator" if children => children::run_kuberator(client, concurrency).await?,
        "raw" if children => children::run_raw(client, concurrency).await?,
        "kuberator" => kuberator_impl::run(client, concurrency).await?,
        "raw" => raw::run(client, concurrency).await?,
        "limit" => limit::run(client, concurrency).await?,
        "shard" => {
            let identity = identity.ok_or_else(|| anyhow!("shard needs --identity"))?;
            let work = std::time::Duration::from_millis(work_ms);
            kuberator_examples::bench::shards::run(client, identity, work, concurrency).await?;
            return Ok(());
        }
        other => {
            let layout = Layout::parse(other).ok_or_else(|| {
                anyhow!(
                    "unknown implementation `{other}` (kuberator, raw, limit, manager or separate)"
                )
            })?;
            manager::run(client, layout).await?;
            return Ok(());
        }
    };
    println!("{RECONCILES_LINE}{reconciles}");
    Ok(())
}
