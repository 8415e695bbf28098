//! The manager row of `make bench`: the two controllers of [`crate::site_backup`] (sites, and
//! backups that read and watch the sites) run by one [`Manager`](kuberator::runtime::Manager)
//! ([`site_backup::manager`]) against the same two controllers run as two separate operators in
//! one process, which is what a user had before the manager.
//!
//! Both layouts get a fresh control plane with the same pre-created objects (`m` sites and one
//! backup per site). The table shows the watches the API server holds open for the process (per
//! resource), its resident memory once everything is reconciled, and the start-up time: process
//! start until every site is published and every backup has backed its site up.

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use kuberator::{IntoOperator, Operator, runtime::Caches, testing::TestEnv};
use tokio::process::Command;

use super::proc::{self, Memory};
use crate::{
    site_backup::{self, SiteBackup, SiteBackupSpec, SiteBackups},
    static_site::{StaticSite, StaticSiteSpec, StaticSites},
};

/// How the two controllers are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One `Manager` with both controllers: one watch per kind.
    Manager,
    /// Two operators, each with its own watches, run side by side in one process.
    Separate,
}

impl Layout {
    /// Both, in table order.
    pub const ALL: [Layout; 2] = [Layout::Manager, Layout::Separate];

    /// The name on the `bench_operator` command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Manager => "manager",
            Layout::Separate => "separate",
        }
    }

    /// Parses a `bench_operator` implementation name.
    pub fn parse(name: &str) -> Option<Self> {
        Layout::ALL.into_iter().find(|l| l.name() == name)
    }
}

/// Runs both controllers in `layout` until SIGTERM (the `bench_operator` side).
///
/// # Errors
/// An operator cannot be built or fails to start.
pub async fn run(client: Client, layout: Layout) -> anyhow::Result<()> {
    match layout {
        Layout::Manager => {
            site_backup::manager(client)?
                .shutdown_on_signal()
                .run()
                .await?
        }
        Layout::Separate => {
            let sites: Operator<StaticSite> =
                StaticSites.operator(client.clone())?.shutdown_on_signal();
            // The backups watch the sites themselves: nothing shares the sites' watch.
            let caches = Caches::new();
            let lookup = caches.clone();
            let backups = SiteBackups
                .operator(client)?
                .reads::<StaticSite>()
                .share_caches(caches)
                .watches::<StaticSite, _, _>(move |site| site_backup::backups_of(&lookup, &site))
                .shutdown_on_signal();
            tokio::try_join!(sites.run(), backups.run())?;
        }
    }
    Ok(())
}

/// What one layout measured.
#[derive(Clone, Debug)]
pub struct LayoutResult {
    /// The layout.
    pub layout: Layout,
    /// Watches the API server held open for the process, per resource.
    pub watches: BTreeMap<String, f64>,
    /// Resident memory once everything was reconciled (and 3 s of settling).
    pub memory: Memory,
    /// Process start until every site was published and every backup done.
    pub startup: Duration,
}

impl LayoutResult {
    fn total_watches(&self) -> f64 {
        self.watches.values().sum()
    }
}

/// Runs each layout `rounds` times on a fresh control plane with `m` sites and `m` backups;
/// returns the median run of each layout by start-up time.
///
/// # Errors
/// A control plane does not start, the child fails, or it does not converge in time.
pub async fn compare(
    operator_bin: &std::path::Path,
    m: usize,
    concurrency: u16,
    rounds: usize,
) -> anyhow::Result<Vec<LayoutResult>> {
    let mut results = Vec::new();
    for layout in Layout::ALL {
        let mut runs = Vec::new();
        for round in 0..rounds.max(1) {
            eprintln!(
                "[bench] manager: {} with {m} sites and {m} backups (round {}) …",
                layout.name(),
                round + 1
            );
            runs.push(measure(operator_bin, layout, m, concurrency).await?);
        }
        runs.sort_by_key(|r| r.startup);
        results.push(runs.swap_remove(runs.len() / 2));
    }
    Ok(results)
}

async fn measure(
    operator_bin: &std::path::Path,
    layout: Layout,
    m: usize,
    concurrency: u16,
) -> anyhow::Result<LayoutResult> {
    let env = TestEnv::builder()
        .crd::<StaticSite>()
        .crd::<SiteBackup>()
        .timeout(Duration::from_secs(120))
        .start()
        .await
        .context("starting the control plane")?;
    let client = env.client();
    create(&client, m, concurrency).await?;
    let before = open_watches(&env).await?;

    let start = Instant::now();
    let mut child = Command::new(operator_bin)
        .arg(layout.name())
        .arg("--kubeconfig")
        .arg(env.kubeconfig_path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", operator_bin.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("child exited at once"))?;
    let deadline = start + Duration::from_secs(120) + Duration::from_millis(100) * m as u32;
    loop {
        if converged(&client, m).await? {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!("{} exited early: {status}", layout.name());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: not converged after {:?}",
                layout.name(),
                start.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let startup = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let memory = proc::memory(pid)?;
    let after = open_watches(&env).await?;
    let watches = after
        .into_iter()
        .map(|(resource, open)| {
            let delta = open - before.get(&resource).copied().unwrap_or_default();
            (resource, delta)
        })
        .filter(|(_, delta)| *delta > 0.0)
        .collect();

    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("{} exited with an error: {status}", layout.name());
            }
        }
        Err(_) => {
            child.kill().await?;
            bail!("{} did not stop within 30 s of SIGTERM", layout.name());
        }
    }
    Ok(LayoutResult {
        layout,
        watches,
        memory,
        startup,
    })
}

/// `m` sites and one backup of each, in the default namespace.
async fn create(client: &Client, m: usize, concurrency: u16) -> anyhow::Result<()> {
    let sites: Api<StaticSite> = Api::namespaced(client.clone(), "default");
    let backups: Api<SiteBackup> = Api::namespaced(client.clone(), "default");
    let (sites, backups) = (&sites, &backups);
    futures::stream::iter(0..m)
        .map(|i| async move {
            let name = format!("site-{i}");
            let site = StaticSite::new(
                &name,
                StaticSiteSpec {
                    title: format!("Site {i}"),
                    content: "<p>hello</p>".repeat(16),
                    port: 8080,
                },
            );
            sites.create(&PostParams::default(), &site).await?;
            let backup = SiteBackup::new(&format!("backup-{i}"), SiteBackupSpec { site: name });
            backups.create(&PostParams::default(), &backup).await?;
            anyhow::Ok(())
        })
        .buffer_unordered(usize::from(concurrency.max(1)))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Whether all `m` sites are published at their generation and all `m` backups backed up.
async fn converged(client: &Client, m: usize) -> anyhow::Result<bool> {
    let sites: Api<StaticSite> = Api::namespaced(client.clone(), "default");
    let published = sites
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|site| {
            site.status.as_ref().is_some_and(|s| {
                s.phase.as_deref() == Some("Published")
                    && s.observed_generation == site.metadata.generation
            })
        })
        .count();
    if published < m {
        return Ok(false);
    }
    let backups: Api<SiteBackup> = Api::namespaced(client.clone(), "default");
    let done = backups
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|b| {
            b.status
                .as_ref()
                .is_some_and(|s| s.phase.as_deref() == Some("BackedUp"))
        })
        .count();
    Ok(done >= m)
}

/// Open WATCH requests per resource, as the API server counts them.
async fn open_watches(env: &TestEnv) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = env.metrics_text().await?;
    let mut open = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_longrunning_requests{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
        };
        if label("verb").as_deref() != Some("WATCH") {
            continue;
        }
        let resource = label("resource").unwrap_or_default();
        *open.entry(resource).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    Ok(open)
}

/// The table: watches per resource, RSS and start-up time per layout, and manager/separate.
pub fn manager_table(m: usize, results: &[LayoutResult]) -> String {
    let find = |l: Layout| results.iter().find(|r| r.layout == l);
    let (Some(manager), Some(separate)) = (find(Layout::Manager), find(Layout::Separate)) else {
        return String::new();
    };
    let resources: std::collections::BTreeSet<&String> = manager
        .watches
        .keys()
        .chain(separate.watches.keys())
        .collect();
    let ratio = |a: f64, b: f64| {
        if b == 0.0 {
            "-".to_owned()
        } else {
            format!("{:.2}", a / b)
        }
    };
    let mut rows: Vec<Vec<String>> = resources
        .into_iter()
        .map(|resource| {
            let a = manager.watches.get(resource).copied().unwrap_or_default();
            let b = separate.watches.get(resource).copied().unwrap_or_default();
            vec![
                format!("open watches on {resource}"),
                format!("{a:.0}"),
                format!("{b:.0}"),
                ratio(a, b),
            ]
        })
        .collect();
    rows.push(vec![
        "open watches, all".into(),
        format!("{:.0}", manager.total_watches()),
        format!("{:.0}", separate.total_watches()),
        ratio(manager.total_watches(), separate.total_watches()),
    ]);
    let mib = |kib: u64| kib as f64 / 1024.0;
    rows.push(vec![
        "RSS (MiB)".into(),
        format!("{:.1}", mib(manager.memory.rss_kib)),
        format!("{:.1}", mib(separate.memory.rss_kib)),
        ratio(mib(manager.memory.rss_kib), mib(separate.memory.rss_kib)),
    ]);
    rows.push(vec![
        "peak RSS (MiB)".into(),
        format!("{:.1}", mib(manager.memory.hwm_kib)),
        format!("{:.1}", mib(separate.memory.hwm_kib)),
        ratio(mib(manager.memory.hwm_kib), mib(separate.memory.hwm_kib)),
    ]);
    rows.push(vec![
        "start-up to all reconciled (s)".into(),
        format!("{:.1}", manager.startup.as_secs_f64()),
        format!("{:.1}", separate.startup.as_secs_f64()),
        ratio(
            manager.startup.as_secs_f64(),
            separate.startup.as_secs_f64(),
        ),
    ]);
    let mut out = format!(
        "## Manager: {m} sites + {m} backups, two controllers sharing the site kind\n\n\
         One `Manager` running both controllers of `examples/src/site_backup.rs` against the same \
         two run as separate operators in one process.\n\n"
    );
    out.push_str(&super::driver::markdown(
        &["", "manager", "separate", "manager/separate"],
        &rows,
    ));
    out
}
