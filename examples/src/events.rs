//! Events: `events = "..."` gives the operator an event recorder, `ctx.emit` reports what it did,
//! and repeats are deduplicated into one Event with a count (`series.count`), as `kubectl
//! events` shows. Failed reconciles emit a `Warning` by themselves, with the error's reason.
//! Without a server, [`MockEventRecorder`] records the same
//! events in memory for unit tests (see [`rehearse`] and this module's tests).
//!
//! A `Backup` is scheduled: each reconcile emits `Normal Scheduled`. Changing the schedule twice
//! makes three emits of the same event: one Event, counted 3. An empty schedule is a terminal
//! error: one `Warning InvalidSchedule`.
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin events
//! ```
//!
//! The recorder needs `create` and `patch` on `events.k8s.io` `events` (see [`kuberator::events`]).

use kube::api::PostParams;
use kuberator::{events::MockEventRecorder, prelude::*, testing::TestEnv};
use serde_json::Value;

use crate::story::{self, kubectl, poll, until};

/// A scheduled backup.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "events.kuberator.dev",
    version = "v1",
    kind = "Backup",
    namespaced,
    status = "BackupStatus"
)]
pub struct BackupSpec {
    /// When to run, e.g. `@daily`.
    pub schedule: String,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// The schedule in force.
    pub schedule: Option<String>,
    /// The last reconcile error.
    #[status_error]
    pub error: Option<StatusError>,
}

/// Why a backup cannot be scheduled.
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum BackupError {
    /// Nothing to schedule until the spec changes.
    #[error("spec.schedule is empty")]
    #[status_error(terminal)]
    InvalidSchedule,
}

/// The operator (no state of its own).
pub struct Backups;

#[kuberator::operator(
    resource = Backup,
    namespaces("default"),
    events = "backups.events.kuberator.dev/operator"
)]
impl Backups {
    async fn apply(&self, backup: Arc<Backup>, ctx: &Ctx<Backup>) -> Result<Action> {
        if backup.spec.schedule.trim().is_empty() {
            // The runtime emits `Warning InvalidSchedule` (action `Reconcile`) for this.
            Err(BackupError::InvalidSchedule)?;
        }
        let status = BackupStatus {
            schedule: Some(backup.spec.schedule.clone()),
            ..BackupStatus::default()
        };
        ctx.update_status(&backup, status).await?;
        // Never fails the reconcile; repeats within 6 minutes are one Event with a count.
        ctx.emit(&backup, scheduled(&backup)).await;
        Ok(Action::await_change())
    }
}

/// The event `apply` emits. Its note is kept from the first emit: repeats only count.
pub fn scheduled(backup: &Backup) -> EventData {
    EventData::normal("Scheduled", "Reconcile")
        .note(format!("backups run {}", backup.spec.schedule))
}

/// What the in-memory rehearsal recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rehearsal {
    /// Emits of `Scheduled` counted by the mock.
    pub scheduled: u64,
    /// Distinct events recorded.
    pub distinct: usize,
    /// The `Scheduled` count after one more emit into a failing recorder (unchanged; the emit
    /// did not fail the caller).
    pub after_failure: u64,
}

/// The unit-test way: the same event three times into a [`MockEventRecorder`], no server.
pub async fn rehearse() -> Rehearsal {
    let events = MockEventRecorder::new();
    let backup = Backup::new(
        "nightly",
        BackupSpec {
            schedule: "@daily".into(),
        },
    );
    for _ in 0..3 {
        events.emit(&backup, scheduled(&backup)).await;
    }
    let (count, distinct) = (events.count_for("Scheduled"), events.events().len());
    // A recorder that fails (the server is down): `emit` logs and carries on, nothing recorded.
    events.set_failing(true);
    events.emit(&backup, scheduled(&backup)).await;
    Rehearsal {
        scheduled: count,
        distinct,
        after_failure: events.count_for("Scheduled"),
    }
}

/// What the story observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// `series.count` of the `Scheduled` Event of `nightly`, read with `kubectl events -o json`.
    pub scheduled_count: u64,
    /// How many `Scheduled` Events there are for `nightly` (deduplicated: one).
    pub scheduled_events: usize,
    /// The `Warning` Events of `nightly`: (reason, count).
    pub warnings: Vec<(String, u64)>,
    /// `kubectl events --for backup/nightly`.
    pub table: String,
    /// The same event logic against a `MockEventRecorder`.
    pub rehearsal: Rehearsal,
}

/// Runs the `Backup` operator in the background and tells the story.
///
/// # Errors
/// An API or kubectl error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Backup>().await?;
    let operator = Backups.operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    let outcome = tell(env).await;
    running.stop().await??; // flushes pending counts
    outcome
}

async fn tell(env: &TestEnv) -> anyhow::Result<Outcome> {
    let backups: Api<Backup> = Api::namespaced(env.client(), "default");
    let reconciled = |generation| {
        move |b: Option<&Backup>| {
            b.and_then(|b| b.status.as_ref()?.observed_generation) == Some(generation)
        }
    };
    let set_schedule =
        |schedule: &str| Patch::Merge(serde_json::json!({ "spec": { "schedule": schedule } }));

    println!("1. create backup/nightly @daily, then change its schedule twice");
    let nightly = Backup::new(
        "nightly",
        BackupSpec {
            schedule: "@daily".into(),
        },
    );
    backups.create(&PostParams::default(), &nightly).await?;
    until(&backups, "nightly", "generation 1", reconciled(1)).await?;
    for (generation, schedule) in [(2, "@hourly"), (3, "0 3 * * *")] {
        backups
            .patch("nightly", &PatchParams::default(), &set_schedule(schedule))
            .await?;
        until(
            &backups,
            "nightly",
            "the new schedule",
            reconciled(generation),
        )
        .await?;
    }
    let (scheduled_count, scheduled_events) =
        poll("the Scheduled event counted 3 times", || async {
            let events = events_of(env, "nightly").await.ok()?;
            let scheduled: Vec<&Value> = events
                .iter()
                .filter(|e| e["reason"] == "Scheduled")
                .collect();
            let count = scheduled.first().map(|e| series_count(e))?;
            (count >= 3).then_some((count, scheduled.len()))
        })
        .await?;
    println!("   Scheduled: {scheduled_events} Event, series.count {scheduled_count}");

    println!("2. empty the schedule: a terminal error, and a Warning event from the runtime");
    backups
        .patch("nightly", &PatchParams::default(), &set_schedule(""))
        .await?;
    let warnings = poll("the InvalidSchedule warning", || async {
        let events = events_of(env, "nightly").await.ok()?;
        let warnings: Vec<(String, u64)> = events
            .iter()
            .filter(|e| e["type"] == "Warning")
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_owned(),
                    series_count(e),
                )
            })
            .collect();
        (!warnings.is_empty()).then_some(warnings)
    })
    .await?;
    let table = kubectl(env, &["events", "--for", "backup/nightly"]).await?;
    println!("   $ kubectl events --for backup/nightly");
    for line in table.lines() {
        println!("   {line}");
    }

    println!("3. the same event logic in a unit test, with MockEventRecorder");
    let rehearsal = rehearse().await;
    println!(
        "   3 emits → {} event, count {}; a failing recorder does not fail the caller",
        rehearsal.distinct, rehearsal.scheduled
    );
    Ok(Outcome {
        scheduled_count,
        scheduled_events,
        warnings,
        table,
        rehearsal,
    })
}

/// The Events about `name` in `default`, as `kubectl events -o json` prints them.
///
/// # Errors
/// When kubectl fails.
pub async fn events_of(env: &TestEnv, name: &str) -> anyhow::Result<Vec<Value>> {
    let list = env.kubectl_json(["events", "-n", "default"]).await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    Ok(items
        .into_iter()
        .filter(|e| e["regarding"]["name"] == name || e["involvedObject"]["name"] == name)
        .collect())
}

/// How many times an Event happened: `series.count`, or 1 for a single occurrence.
pub fn series_count(event: &Value) -> u64 {
    event["series"]["count"]
        .as_u64()
        .or_else(|| event["count"].as_u64())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use kuberator::events::{EmitEvent, MockEventRecorder};

    use super::*;

    #[tokio::test]
    async fn repeats_of_scheduled_are_one_event_with_a_count() {
        let events = MockEventRecorder::new();
        let backup = Backup::new(
            "nightly",
            BackupSpec {
                schedule: "@daily".into(),
            },
        );
        for _ in 0..3 {
            events.emit(&backup, scheduled(&backup)).await;
        }
        let recorded = events.find("Scheduled").unwrap();
        assert_eq!(recorded.count, 3);
        assert_eq!(recorded.data.note.as_deref(), Some("backups run @daily"));
        assert_eq!(events.events().len(), 1);
    }

    #[tokio::test]
    async fn the_rehearsal_counts_like_the_server() {
        let rehearsal = rehearse().await;
        assert_eq!(
            rehearsal,
            Rehearsal {
                scheduled: 3,
                distinct: 1,
                after_failure: 3
            }
        );
    }
}
