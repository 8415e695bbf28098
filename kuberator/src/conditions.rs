//! kstatus conditions: `Ready`, `Reconciling` and `Stalled`, each with `observedGeneration`, and a
//! `lastTransitionTime` that moves only when a condition's status changes.
//!
//! The helpers follow [kstatus](https://github.com/kubernetes-sigs/cli-utils/blob/master/pkg/kstatus/README.md)
//! as Flux and controller-runtime users apply it: while work is in progress `Reconciling` is
//! `True` and `Ready` is `Unknown`; when the object is done `Ready` is `True` and the abnormal-true
//! conditions (`Reconciling`, `Stalled`) are removed; when no progress can be made without a
//! change `Stalled` is `True` and `Ready` is `False`. `kubectl wait --for=condition=Ready` then
//! works on any resource whose status carries a `conditions` list.
//!
//! ```
//! use kuberator::conditions::{self, Condition};
//!
//! let mut list: Vec<Condition> = Vec::new();
//! conditions::mark_reconciling(&mut list, Some(3), "Progressing", "creating the deployment");
//! assert!(conditions::is_true(&list, conditions::RECONCILING));
//!
//! conditions::mark_ready(&mut list, Some(3), "Available", "2/2 replicas ready");
//! assert!(conditions::is_ready_for(&list, Some(3)));
//! assert!(conditions::find(&list, conditions::RECONCILING).is_none());
//! ```
//!
//! In a custom resource's status, give the list this module's [`schema`] (k8s-openapi types do
//! not implement `JsonSchema` unless its `schemars` feature is on):
//!
//! ```
//! # use schemars::JsonSchema;
//! # use serde::{Deserialize, Serialize};
//! use kuberator::conditions::Condition;
//!
//! #[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
//! #[serde(rename_all = "camelCase")]
//! pub struct WebsiteStatus {
//!     pub observed_generation: Option<i64>,
//!     #[serde(default)]
//!     #[schemars(schema_with = "kuberator::conditions::schema")]
//!     pub conditions: Vec<Condition>,
//! }
//! ```

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The `Ready` condition: `True` when the object is fully reconciled.
pub const READY: &str = "Ready";
/// The `Reconciling` condition (kstatus): `True` while work toward the desired state is in
/// progress.
pub const RECONCILING: &str = "Reconciling";
/// The `Stalled` condition (kstatus): `True` when no progress can be made without a change.
pub const STALLED: &str = "Stalled";

/// A condition's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    /// `"True"`.
    True,
    /// `"False"`.
    False,
    /// `"Unknown"`.
    Unknown,
}

impl ConditionStatus {
    /// The API spelling: `"True"`, `"False"` or `"Unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The current time, as a condition's `lastTransitionTime`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// A new condition with `lastTransitionTime` = now. `reason` should be a short CamelCase word
/// (the API server requires one); an empty reason becomes the status itself.
pub fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: if reason.is_empty() {
            status.as_str().to_owned()
        } else {
            reason.to_owned()
        },
        message: message.to_owned(),
        observed_generation,
        last_transition_time: now(),
    }
}

/// Adds or updates `condition` in `conditions` (keyed by `type`) and returns whether anything
/// changed.
///
/// An existing condition keeps its `lastTransitionTime` unless its status changes; reason,
/// message and `observedGeneration` are updated either way. A new condition keeps the time it
/// was built with.
pub fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            let mut changed = false;
            if existing.status != condition.status {
                existing.status = condition.status;
                existing.last_transition_time = condition.last_transition_time;
                changed = true;
            }
            if existing.reason != condition.reason {
                existing.reason = condition.reason;
                changed = true;
            }
            if existing.message != condition.message {
                existing.message = condition.message;
                changed = true;
            }
            if existing.observed_generation != condition.observed_generation {
                existing.observed_generation = condition.observed_generation;
                changed = true;
            }
            changed
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// Removes the condition of `type_`; returns whether there was one.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

/// Whether `Ready` is `True` and was computed for `generation` (the object's
/// `metadata.generation`): what a client waiting for the object should check.
pub fn is_ready_for(conditions: &[Condition], generation: Option<i64>) -> bool {
    find(conditions, READY).is_some_and(|c| {
        c.status == ConditionStatus::True.as_str() && c.observed_generation == generation
    })
}

/// The object is done: `Ready` = `True`; `Reconciling` and `Stalled` are removed. Returns whether
/// anything changed.
pub fn mark_ready(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> bool {
    let mut changed = set_condition(
        conditions,
        condition(READY, ConditionStatus::True, reason, message, generation),
    );
    changed |= remove_condition(conditions, RECONCILING);
    changed |= remove_condition(conditions, STALLED);
    changed
}

/// Work is in progress: `Reconciling` = `True`, `Ready` = `Unknown` (same reason and message);
/// `Stalled` is removed. Returns whether anything changed.
pub fn mark_reconciling(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> bool {
    let mut changed = set_condition(
        conditions,
        condition(
            RECONCILING,
            ConditionStatus::True,
            reason,
            message,
            generation,
        ),
    );
    changed |= set_condition(
        conditions,
        condition(READY, ConditionStatus::Unknown, reason, message, generation),
    );
    changed |= remove_condition(conditions, STALLED);
    changed
}

/// No progress is possible without a change (e.g. a terminal error): `Stalled` = `True`,
/// `Ready` = `False` (same reason and message); `Reconciling` is removed. Returns whether
/// anything changed.
pub fn mark_stalled(
    conditions: &mut Vec<Condition>,
    generation: Option<i64>,
    reason: &str,
    message: &str,
) -> bool {
    let mut changed = set_condition(
        conditions,
        condition(STALLED, ConditionStatus::True, reason, message, generation),
    );
    changed |= set_condition(
        conditions,
        condition(READY, ConditionStatus::False, reason, message, generation),
    );
    changed |= remove_condition(conditions, RECONCILING);
    changed
}

/// The OpenAPI schema of a `conditions` list (`metav1.Condition`, a list-map keyed by `type`),
/// for `#[schemars(schema_with = "kuberator::conditions::schema")]`.
pub fn schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": { "type": "string", "description": "Type of the condition, e.g. Ready." },
                "status": {
                    "type": "string",
                    "enum": ["True", "False", "Unknown"],
                    "description": "Status of the condition."
                },
                "observedGeneration": {
                    "type": "integer",
                    "format": "int64",
                    "description": "The metadata.generation the condition was computed for."
                },
                "lastTransitionTime": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the status last changed."
                },
                "reason": { "type": "string", "description": "CamelCase reason for the last transition." },
                "message": { "type": "string", "description": "Human-readable details." }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn cond(type_: &str, status: ConditionStatus, reason: &str, time: i64) -> Condition {
        Condition {
            last_transition_time: at(time),
            ..condition(type_, status, reason, "", Some(1))
        }
    }

    #[test]
    fn new_conditions_are_added_with_their_time() {
        let mut list = Vec::new();
        assert!(set_condition(
            &mut list,
            cond(READY, ConditionStatus::False, "Waiting", 10)
        ));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].status, "False");
        assert_eq!(list[0].last_transition_time, at(10));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut list = vec![cond(READY, ConditionStatus::False, "Waiting", 10)];

        // Same status, new reason, message and generation: updated, time kept.
        let mut update = cond(READY, ConditionStatus::False, "StillWaiting", 20);
        update.message = "1/2 replicas".into();
        update.observed_generation = Some(2);
        assert!(set_condition(&mut list, update));
        assert_eq!(list[0].reason, "StillWaiting");
        assert_eq!(list[0].message, "1/2 replicas");
        assert_eq!(list[0].observed_generation, Some(2));
        assert_eq!(list[0].last_transition_time, at(10));

        // Status change: time moves.
        assert!(set_condition(
            &mut list,
            cond(READY, ConditionStatus::True, "Available", 30)
        ));
        assert_eq!(list[0].status, "True");
        assert_eq!(list[0].last_transition_time, at(30));

        // Nothing new: no change reported, time kept.
        assert!(!set_condition(
            &mut list,
            cond(READY, ConditionStatus::True, "Available", 40)
        ));
        assert_eq!(list[0].last_transition_time, at(30));
        assert_eq!(list.len(), 1);
    }

    #[test]
    fn other_conditions_are_left_alone() {
        let mut list = vec![
            cond("Custom", ConditionStatus::True, "Mine", 5),
            cond(READY, ConditionStatus::False, "Waiting", 10),
        ];
        set_condition(
            &mut list,
            cond(READY, ConditionStatus::True, "Available", 20),
        );
        assert_eq!(list[0], cond("Custom", ConditionStatus::True, "Mine", 5));
        assert_eq!(list[1].status, "True");
    }

    #[test]
    fn kstatus_lifecycle_reconciling_stalled_ready() {
        let mut list = Vec::new();
        assert!(mark_reconciling(
            &mut list,
            Some(1),
            "Progressing",
            "working"
        ));
        assert!(is_true(&list, RECONCILING));
        assert_eq!(
            find(&list, READY).map(|c| c.status.as_str()),
            Some("Unknown")
        );
        assert!(!is_ready_for(&list, Some(1)));
        // Repeating the same call changes nothing.
        assert!(!mark_reconciling(
            &mut list,
            Some(1),
            "Progressing",
            "working"
        ));

        assert!(mark_stalled(
            &mut list,
            Some(1),
            "EmptyImage",
            "image is empty"
        ));
        assert!(is_true(&list, STALLED));
        assert!(find(&list, RECONCILING).is_none());
        let ready = find(&list, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "EmptyImage")
        );

        assert!(mark_ready(&mut list, Some(2), "Available", "done"));
        assert_eq!(list.len(), 1, "only Ready is left: {list:?}");
        assert!(is_ready_for(&list, Some(2)));
        assert!(!is_ready_for(&list, Some(3)), "stale generation");
        assert!(!mark_ready(&mut list, Some(2), "Available", "done"));
    }

    #[test]
    fn empty_reason_becomes_the_status_and_bool_converts() {
        let c = condition(READY, true.into(), "", "", None);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "True"));
        assert_eq!(ConditionStatus::from(false).to_string(), "False");
    }

    #[test]
    fn serialized_condition_matches_the_api_shape() {
        let c = cond(READY, ConditionStatus::True, "Available", 0);
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Ready", "status": "True", "reason": "Available", "message": "",
                "observedGeneration": 1, "lastTransitionTime": "1970-01-01T00:00:00Z",
            })
        );
    }

    #[test]
    fn schema_is_a_list_map_keyed_by_type() {
        let schema = schema(&mut schemars::SchemaGenerator::default());
        let value = serde_json::to_value(&schema).unwrap();
        assert_eq!(
            value["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            value["items"]["properties"]["status"]["enum"],
            serde_json::json!(["True", "False", "Unknown"])
        );
    }
}
