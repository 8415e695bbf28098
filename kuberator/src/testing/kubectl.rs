//! The version-matched `kubectl` of the assets folder, pointed at a `TestEnv`.

use std::ffi::OsStr;

use anyhow::{Context as _, anyhow};

use super::TestEnv;
use crate::Result;

impl TestEnv {
    /// A `kubectl` command for this control plane: the binary from the assets folder (matching
    /// the API server's version, not the one on `PATH`) with `--kubeconfig` and a private
    /// `--cache-dir` set. Add the subcommand and run it; the process is killed if the command's
    /// future is dropped.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let env = kuberator::testing::TestEnv::start().await?;
    /// let output = env.kubectl().args(["get", "namespaces"]).output().await?;
    /// assert!(output.status.success());
    /// # Ok(())
    /// # }
    /// ```
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.assets.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig_path)
            .arg("--cache-dir")
            .arg(self.dir.path().join("kubectl-cache"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs `kubectl <args> -o json` and parses its output.
    ///
    /// ```no_run
    /// # async fn example() -> kuberator::Result<()> {
    /// let env = kuberator::testing::TestEnv::start().await?;
    /// let version = env.kubectl_json(["version"]).await?;
    /// println!("{}", version["serverVersion"]["gitVersion"]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Anyhow`](crate::Error::Anyhow) if kubectl cannot be run (e.g. it is missing
    /// from the assets folder), exits unsuccessfully (with its stderr), or prints something
    /// other than JSON.
    ///
    /// # Access control
    ///
    /// Whatever the subcommand needs; the kubeconfig is the cluster admin's.
    pub async fn kubectl_json<I, S>(&self, args: I) -> Result<serde_json::Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let shown = args
            .iter()
            .map(|arg| arg.as_ref().to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let output = self
            .kubectl()
            .args(&args)
            .args(["-o", "json"])
            .output()
            .await
            .with_context(|| {
                format!(
                    "running {} (build it with `scripts/control-plane.sh ensure`)",
                    self.assets.kubectl.display()
                )
            })?;
        if !output.status.success() {
            return Err(anyhow!(
                "`kubectl {shown} -o json` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        let value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("parsing the output of `kubectl {shown} -o json`"))?;
        Ok(value)
    }
}
