//! `my-operator manifests --image …`: the install bundle from the operator's own binary.

use std::{io::Write, path::PathBuf};

use anyhow::Context as _;

use super::Bundle;
use crate::error::{Error, Result};

/// The usage of the `manifests` subcommand.
pub const USAGE: &str = "\
usage: <operator> manifests --image IMAGE [--namespace NS] [--replicas N] [--port PORT] [--out-dir DIR]

Prints the install bundle (Namespace, ServiceAccount, RBAC, CRDs, Deployment, metrics Service,
PodDisruptionBudget with more than one replica) as one YAML stream for `kubectl apply -f -`,
or writes it into DIR as one file per part plus a kustomization.yaml (`kubectl apply -k DIR`).

  --image IMAGE     the operator's container image (required)
  --namespace NS    the namespace the operator runs in (default: <name>-system)
  --replicas N      replicas (default 1; more need leader election in the operator)
  --port PORT       the port of /metrics, /healthz and /readyz (default 8080)
  --out-dir DIR     write files into DIR instead of printing one stream
";

/// Handles `<binary> manifests [flags]` from the process's arguments: prints `bundle` (with the
/// flags applied) to stdout, or writes it with `--out-dir`, and returns `true`; returns `false`
/// when the first argument is not `manifests`, so `main` goes on to run the operator.
///
/// ```no_run
/// # use kube::CustomResource;
/// # use schemars::JsonSchema;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
/// # #[kube(group = "example.com", version = "v1", kind = "Website", namespaced)]
/// # pub struct WebsiteSpec { pub image: String }
/// use kuberator::manifests::{self, Bundle, RbacOptions};
///
/// fn main() -> anyhow::Result<()> {
///     // With `#[kuberator::operator]`: `Bundle::for_operator::<Website>(&Websites::rbac_options())`.
///     let bundle = Bundle::for_operator::<Website>(&RbacOptions::new("websites.example.com-operator"));
///     if manifests::cli(bundle)? {
///         return Ok(()); // `website-operator manifests --image …` printed the bundle
///     }
///     // … run the operator
///     Ok(())
/// }
/// ```
///
/// # Errors
/// [`Error::Anyhow`] with the usage for an unknown flag or a missing value, or as
/// [`Bundle::deployment`] and [`Bundle::write_dir`].
pub fn cli(bundle: Bundle) -> Result<bool> {
    let stdout = std::io::stdout();
    cli_from(bundle, std::env::args().skip(1), &mut stdout.lock())
}

/// [`cli`] with the arguments (without the binary's name) and the output given.
///
/// # Errors
/// As [`cli`].
pub fn cli_from<I, S>(mut bundle: Bundle, args: I, out: &mut dyn Write) -> Result<bool>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    if args.next().as_deref() != Some("manifests") {
        return Ok(false);
    }
    let usage = |message: String| Error::Anyhow(anyhow::anyhow!("{message}\n\n{USAGE}"));
    let mut out_dir = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            out.write_all(USAGE.as_bytes())
                .context("writing the usage")?;
            return Ok(true);
        }
        let value = match inline.or_else(|| args.next()) {
            Some(value) => value,
            None => return Err(usage(format!("`{flag}` needs a value"))),
        };
        let number = |value: &str| {
            value
                .parse::<i32>()
                .map_err(|_| usage(format!("`{flag}` needs a number, not `{value}`")))
        };
        bundle = match flag.as_str() {
            "--image" => bundle.image(value),
            "--namespace" => bundle.namespace(value),
            "--replicas" => bundle.replicas(number(&value)?),
            "--port" => bundle.port(number(&value)?),
            "--out-dir" => {
                out_dir = Some(PathBuf::from(value));
                bundle
            }
            _ => return Err(usage(format!("unknown argument `{arg}`"))),
        };
    }
    match out_dir {
        Some(dir) => {
            let files = bundle.write_dir(&dir)?;
            writeln!(
                out,
                "wrote {bundle} into {}: {}",
                dir.display(),
                files.join(", ")
            )
            .context("writing the summary")?;
        }
        None => out
            .write_all(bundle.to_yaml()?.as_bytes())
            .context("writing the bundle")?,
    }
    Ok(true)
}
