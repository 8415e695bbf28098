//! One replica of the fault operator (`kuberator_tests::Samples`) for
//! `faults::a_paused_leader_writes_nothing_after_its_renew_deadline`: leader election with short
//! timings (lease 4 s, renew deadline 3 s, retry 1 s), each apply working 2 s before it writes,
//! printing `leader <bool> <ns>` and `apply start|end <name> <value> <ns>` lines (unix
//! nanoseconds).
//!
//! Settings: `KUBERATOR_REPLICA_KUBECONFIG` (its own ServiceAccount's), `KUBERATOR_REPLICA_IDENTITY`;
//! the process exits when its stdin closes (the test went away).

use std::{io::Read, sync::Arc, time::Duration};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
};
use kuberator::IntoOperator;
use kuberator::runtime::LeaderElection;
use kuberator_tests::{Journal, Samples, unix_nanos};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let kubeconfig = std::env::var("KUBERATOR_REPLICA_KUBECONFIG")?;
    let identity = std::env::var("KUBERATOR_REPLICA_IDENTITY")?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kuberator=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(3);
    });
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let leadership = Arc::new(
        LeaderElection::new(client.clone(), "default", "fault-replicas")
            .identity(identity)
            .lease_duration(Duration::from_secs(4))
            .renew_deadline(Duration::from_secs(3))
            .retry_period(Duration::from_secs(1))
            .start()?,
    );
    let mut state = leadership.subscribe();
    tokio::spawn(async move {
        loop {
            let leader = *state.borrow_and_update();
            println!("leader {leader} {}", unix_nanos());
            if state.changed().await.is_err() {
                return;
            }
        }
    });
    let samples = Samples {
        journal: Arc::new(Journal::printing()),
        work: Duration::from_secs(2),
    };
    samples
        .operator(client)?
        .with_leadership(leadership)
        .shutdown_on_signal()
        .run()
        .await?;
    Ok(())
}
