//! `apiserver_request_total` from the API server's `/metrics`: requests by verb and resource.

use std::collections::BTreeMap;

/// Which requests a counter counts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKind {
    /// `verb` label: `POST`, `PATCH`, `GET`, `LIST`, `WATCH`, `DELETE` …
    pub verb: String,
    /// `resource` label (empty for non-resource URLs such as `/metrics`).
    pub resource: String,
    /// `subresource` label (`status`, or empty).
    pub subresource: String,
}

impl RequestKind {
    /// `PATCH benchobjects/status`.
    pub fn label(&self) -> String {
        if self.subresource.is_empty() {
            format!("{} {}", self.verb, self.resource)
        } else {
            format!("{} {}/{}", self.verb, self.resource, self.subresource)
        }
    }

    /// Whether this request changes state.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "POST"
                | "PUT"
                | "PATCH"
                | "DELETE"
                | "APPLY"
                | "CREATE"
                | "UPDATE"
                | "DELETECOLLECTION"
        )
    }
}

/// Request counts by kind (summed over response codes, scopes and versions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestCounts(pub BTreeMap<RequestKind, f64>);

impl RequestCounts {
    /// Parses `apiserver_request_total` out of a Prometheus text exposition.
    pub fn parse(text: &str) -> Self {
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let label = |name: &str| label_value(labels, name).unwrap_or_default();
            let kind = RequestKind {
                verb: label("verb"),
                resource: label("resource"),
                subresource: label("subresource"),
            };
            *counts.entry(kind).or_insert(0.0) += value;
        }
        Self(counts)
    }

    /// `self - before`, leaving out kinds that did not change.
    pub fn since(&self, before: &Self) -> Self {
        let mut delta = BTreeMap::new();
        for (kind, after) in &self.0 {
            let diff = after - before.0.get(kind).copied().unwrap_or(0.0);
            if diff > 0.0 {
                delta.insert(kind.clone(), diff);
            }
        }
        Self(delta)
    }

    /// Resource requests (leaves out non-resource URLs such as `/metrics` and `/readyz`).
    pub fn resource_requests(&self) -> f64 {
        self.0
            .iter()
            .filter(|(kind, _)| !kind.resource.is_empty())
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests of kinds matching `filter`.
    pub fn sum(&self, filter: impl Fn(&RequestKind) -> bool) -> f64 {
        self.0
            .iter()
            .filter(|(kind, _)| filter(kind))
            .map(|(_, n)| n)
            .sum()
    }

    /// `PATCH benchobjects/status=1000, POST events=1000`, largest first.
    pub fn breakdown(&self) -> String {
        let mut kinds: Vec<(&RequestKind, &f64)> = self
            .0
            .iter()
            .filter(|(kind, _)| !kind.resource.is_empty())
            .collect();
        kinds.sort_by(|a, b| b.1.total_cmp(a.1));
        kinds
            .iter()
            .map(|(kind, n)| format!("{}={n}", kind.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn label_value(labels: &str, name: &str) -> Option<String> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(labels[start..end].to_owned())
}

/// A gauge's value summed over the label sets whose labels contain every `needle`.
pub fn gauge(text: &str, metric: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(metric)?.strip_prefix('{'))
        .filter(|rest| needles.iter().all(|needle| rest.contains(needle)))
        .filter_map(|rest| rest.rsplit_once("} ")?.1.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP apiserver_request_total x
apiserver_request_total{code="201",component="apiserver",dry_run="",group="events.k8s.io",resource="events",scope="resource",subresource="",verb="POST",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="bench.kuberator.dev",resource="benchobjects",scope="resource",subresource="status",verb="PATCH",version="v1"} 5
apiserver_request_total{code="409",component="apiserver",dry_run="",group="bench.kuberator.dev",resource="benchobjects",scope="resource",subresource="status",verb="PATCH",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="",scope="",subresource="/metrics",verb="GET",version=""} 7
"#;

    #[test]
    fn parses_and_subtracts() {
        let after = RequestCounts::parse(TEXT);
        assert_eq!(after.0.len(), 3);
        assert_eq!(after.resource_requests(), 9.0);
        let before = RequestCounts::parse(&TEXT.replace("} 3", "} 1"));
        let delta = after.since(&before);
        assert_eq!(delta.resource_requests(), 2.0);
        assert_eq!(delta.breakdown(), "POST events=2");
        assert_eq!(after.sum(RequestKind::is_write), 9.0);
    }

    #[test]
    fn sums_gauges() {
        let text = "g{a=\"1\",verb=\"WATCH\"} 2\ng{a=\"2\",verb=\"LIST\"} 5\n";
        assert_eq!(gauge(text, "g", &["verb=\"WATCH\""]), 2.0);
    }
}
