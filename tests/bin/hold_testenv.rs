//! Starts a `TestEnv`, prints `TESTENV <etcd pid> <apiserver pid> <dir>` and waits to be killed:
//! the child process of `control_plane::killed_test_process_takes_its_control_plane_along`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = kuberator::testing::TestEnv::start().await?;
    println!(
        "TESTENV {} {} {}",
        env.etcd_pid(),
        env.apiserver_pid(),
        env.dir().display()
    );
    tokio::time::sleep(std::time::Duration::from_secs(120)).await;
    Ok(())
}
