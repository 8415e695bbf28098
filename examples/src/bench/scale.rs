//! The scale runs (`make bench ARGS=--scale`, not in CI): for each size M (default 10,000,
//! 50,000 and 100,000 objects of a 256-byte spec) and each watching implementation, the driver
//! pre-creates M objects with no operator running, then starts the operator and measures:
//!
//! - **watch open**: process start → the API server counts its watch (the initial list is done;
//!   the driver's stand-in for `/readyz`, the same for every implementation);
//! - **a new object during the backlog**: created the moment the watch is open, its create →
//!   status latency (no starvation behind the initial list);
//! - **last initial reconcile**: process start → the last of the M statuses seen;
//! - **steady RSS** 5 s after that, and the slope in bytes per object between sizes;
//! - **relist peak**: the peak RSS is reset (`/proc/<pid>/clear_refs`), the API server restarted
//!   (its new watch cache answers the old resourceVersion with 410 Gone, so every watch
//!   re-lists), and `VmHWM` read once the watch is back and 5 s have passed, against the steady
//!   RSS. The LISTs the new API server served say whether the operator did re-list.
//!
//! The run is bounded: a size is skipped once the budget (`--scale-budget-secs`) is spent.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use futures::{StreamExt, TryStreamExt};
use kube::{Api, api::PostParams};

use super::{
    BenchObject, NAMESPACE, bench_object,
    driver::{Bench, Impl, markdown},
    metrics::RequestCounts,
    proc::{self, Memory},
};

/// Creates at once while pre-creating (the API server, not the driver, is the limit).
const CREATE_CONCURRENCY: usize = 32;

/// One implementation at one size.
#[derive(Clone, Debug)]
pub struct ScaleResult {
    /// Which implementation.
    pub implementation: Impl,
    /// Pre-created objects.
    pub m: usize,
    /// Time the driver took to create them (the API server's pace).
    pub created_in: Duration,
    /// Process start → its watch open.
    pub watch_open: Duration,
    /// Process start → the last initial status seen.
    pub last_initial: Duration,
    /// Create → status of one object created as the watch opened.
    pub probe: Option<Duration>,
    /// Memory 5 s after the last initial reconcile.
    pub steady: Memory,
    /// `VmHWM` during the forced relist (peak reset first); `None` if it could not be forced.
    pub relist_hwm_kib: Option<u64>,
    /// LISTs of the bench resource the restarted API server served (≥ 1: the operator re-listed).
    pub relists: f64,
    /// Reconcile calls the process reported.
    pub reconciles: Option<u64>,
}

impl Bench {
    /// One scale run of `implementation` over `m` pre-created objects.
    pub(super) async fn scale_run(
        &mut self,
        implementation: Impl,
        m: usize,
    ) -> anyhow::Result<ScaleResult> {
        let prefix = format!("scale-{}-{m}-", implementation.name());
        eprintln!(
            "[bench] scale: creating {m} objects for {} …",
            implementation.name()
        );
        let created = Instant::now();
        let api: Api<BenchObject> = Api::namespaced(self.env.client(), NAMESPACE);
        let api = &api;
        futures::stream::iter(0..m)
            .map(|i| {
                let name = format!("{prefix}{i}");
                async move {
                    api.create(&PostParams::default(), &bench_object(&name))
                        .await
                }
            })
            .buffer_unordered(CREATE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await
            .context("pre-creating the scale objects")?;
        let created_in = created.elapsed();
        let mut observed = self.observer.track_generation(&prefix, 0);
        let started = Instant::now();
        let operator = self.spawn_with(implementation, &[]).await?;
        let watch_open = started.elapsed();
        let probe = format!("{prefix}probe");
        let probe_sent = Instant::now();
        api.create(&PostParams::default(), &bench_object(&probe))
            .await?;
        let timeout = Duration::from_secs(120) + Duration::from_millis(20) * m as u32;
        if tokio::time::timeout(timeout, observed.wait_for(|seen| *seen > m))
            .await
            .is_err()
        {
            operator.stop().await?;
            bail!(
                "scale: {} did not reconcile {m} objects within {timeout:?}",
                implementation.name()
            );
        }
        let seen = self.observer.take();
        let last_initial = seen
            .iter()
            .filter(|(name, _)| **name != probe)
            .map(|(_, at)| at.saturating_duration_since(started))
            .max()
            .unwrap_or_default();
        let probe = seen
            .get(&probe)
            .map(|at| at.saturating_duration_since(probe_sent));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let steady = proc::memory(operator.pid())?;

        // The forced relist.
        eprintln!(
            "[bench] scale: restarting the API server under {} …",
            implementation.name()
        );
        let reset = std::fs::write(format!("/proc/{}/clear_refs", operator.pid()), "5");
        let watches = self.open_watches().await?;
        self.env.restart_apiserver().await?;
        let deadline = Instant::now() + timeout;
        while self.open_watches().await.unwrap_or(0.0) < watches {
            if Instant::now() > deadline {
                operator.stop().await?;
                bail!(
                    "scale: {} did not watch again after the restart",
                    implementation.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let relist_hwm_kib = match reset {
            Ok(()) => Some(proc::memory(operator.pid())?.hwm_kib),
            Err(error) => {
                eprintln!("[bench] scale: cannot reset the peak RSS ({error}); no relist peak");
                None
            }
        };
        let relists = RequestCounts::parse(&self.env.metrics_text().await?)
            .sum(|k| k.resource == "benchobjects" && k.verb == "LIST");
        let reconciles = operator.stop().await?;
        self.cleanup().await?;
        Ok(ScaleResult {
            implementation,
            m,
            created_in,
            watch_open,
            last_initial,
            probe,
            steady,
            relist_hwm_kib,
            relists,
            reconciles,
        })
    }
}

/// The scale table: one row per implementation and size, then the slopes.
pub fn scale_table(results: &[ScaleResult]) -> String {
    let secs = |d: Duration| format!("{:.1}", d.as_secs_f64());
    let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.implementation.name().to_owned(),
                r.m.to_string(),
                secs(r.created_in),
                secs(r.watch_open),
                secs(r.last_initial),
                r.probe.map_or_else(
                    || "-".into(),
                    |p| format!("{:.0}", p.as_secs_f64() * 1000.0),
                ),
                mib(r.steady.rss_kib),
                format!("{:.0}", r.steady.rss_kib as f64 * 1024.0 / r.m as f64),
                r.relist_hwm_kib.map_or_else(|| "-".into(), mib),
                r.relist_hwm_kib.map_or_else(
                    || "-".into(),
                    |h| format!("{:.2}", h as f64 / r.steady.rss_kib as f64),
                ),
                format!("{:.0}", r.relists),
                r.reconciles.map_or_else(|| "-".into(), |c| c.to_string()),
            ]
        })
        .collect();
    let mut out =
        "## Scale: M pre-created objects (256-byte spec), operator started after\n\n".to_owned();
    out += &markdown(
        &[
            "",
            "M",
            "created in (s)",
            "watch open (s)",
            "last initial reconcile (s)",
            "new object during backlog (ms)",
            "steady RSS (MiB)",
            "RSS / object (bytes)",
            "relist peak (MiB)",
            "relist peak / steady",
            "LISTs after restart",
            "reconcile calls (ideal M + 1)",
        ],
        &rows,
    );
    // Slopes between consecutive sizes of the same implementation.
    let mut slopes = String::new();
    for implementation in Impl::ALL {
        let mine: Vec<&ScaleResult> = results
            .iter()
            .filter(|r| r.implementation == implementation)
            .collect();
        for pair in mine.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if b.m > a.m {
                let slope = (b.steady.rss_kib as f64 - a.steady.rss_kib as f64) * 1024.0
                    / (b.m - a.m) as f64;
                let _ = writeln!(
                    slopes,
                    "- {}: {slope:.0} bytes per object from {} to {} (goal for kuberator ≤ 2048)",
                    implementation.name(),
                    a.m,
                    b.m
                );
            }
        }
    }
    if !slopes.is_empty() {
        out += "\nRSS slope:\n";
        out += &slopes;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(m: usize, rss_kib: u64) -> ScaleResult {
        ScaleResult {
            implementation: Impl::Kuberator,
            m,
            created_in: Duration::from_secs(1),
            watch_open: Duration::from_millis(300),
            last_initial: Duration::from_secs(2),
            probe: Some(Duration::from_millis(40)),
            steady: Memory {
                rss_kib,
                hwm_kib: rss_kib,
            },
            relist_hwm_kib: Some(rss_kib * 5 / 4),
            relists: 1.0,
            reconciles: Some(m as u64 + 1),
        }
    }

    #[test]
    fn slope_is_the_rss_difference_per_added_object() {
        // 10,000 → 50,000 objects, 20 MiB → 80 MiB: 60 MiB over 40,000 objects.
        let table = scale_table(&[result(10_000, 20 * 1024), result(50_000, 80 * 1024)]);
        let slope = 60.0 * 1024.0 * 1024.0 / 40_000.0;
        assert!(
            table.contains(&format!(
                "kuberator: {slope:.0} bytes per object from 10000 to 50000"
            )),
            "{table}"
        );
        assert!(table.contains("| 1.25 |"), "relist ratio: {table}");
    }
}
