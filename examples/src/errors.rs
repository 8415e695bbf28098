//! Errors: a `#[derive(AsStatusError)]` enum whose variants say how they are retried, and a
//! status field marked `#[status_error]` where the runtime records the last error (cleared by
//! the next successful status write).
//!
//! A `Certificate` is issued for a domain. Three things go wrong, one per retry class:
//! - a domain without a dot is `terminal`: recorded in status, not retried until the spec
//!   changes;
//! - a fresh domain's DNS record needs time, `requeue_after = "2s"`: retried every 2 seconds;
//! - a flaky issuer is `retry` (the default): retried with exponential backoff (1 s, 2 s, …).
//!
//! The handler just uses `?`: the derive converts the enum into `kuberator::Error`, keeping its
//! retry class and its reason (the variant's name, or `reason = "..."`).
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin errors
//! ```

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::api::PostParams;
use kuberator::{prelude::*, testing::TestEnv};

use crate::story::{self, kubectl, until};

/// A TLS certificate for a domain.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "errors.kuberator.dev",
    version = "v1",
    kind = "Certificate",
    namespaced,
    status = "CertificateStatus",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.error.reason"}"#
)]
pub struct CertificateSpec {
    /// The domain to certify.
    pub domain: String,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// `Issued` once done.
    pub phase: Option<String>,
    /// The last reconcile error (reason and message), recorded by the runtime.
    #[status_error]
    pub error: Option<StatusError>,
}

/// Why a certificate is not issued (yet).
#[derive(Debug, thiserror::Error, AsStatusError)]
#[status_error(StatusError)]
pub enum CertificateError {
    /// Retrying cannot help: the spec must change.
    #[error("`{0}` is not a domain name")]
    #[status_error(terminal)]
    InvalidDomain(String),
    /// DNS takes a while: look again in 2 seconds.
    #[error("the DNS record of {0} has not propagated yet")]
    #[status_error(reason = "DnsPending", requeue_after = "2s")]
    DnsNotPropagated(String),
    /// Exponential backoff (the default class, written out here).
    #[error("the certificate issuer is unavailable")]
    #[status_error(retry)]
    IssuerUnavailable,
}

/// The operator's own state: when each certificate was attempted (a stand-in for a real issuer,
/// which answers only from the third attempt on for `new.*` and `flaky.*` domains). Clones share
/// the record.
#[derive(Clone, Default)]
pub struct Issuer {
    attempts: Arc<Mutex<HashMap<String, Vec<Instant>>>>,
}

#[kuberator::operator(resource = Certificate, namespaces("default"))]
impl Issuer {
    async fn apply(&self, cert: Arc<Certificate>, ctx: &Ctx<Certificate>) -> Result<Action> {
        let attempt = self.attempt(&cert.name_any());
        let domain = &cert.spec.domain;
        if !domain.contains('.') {
            Err(CertificateError::InvalidDomain(domain.clone()))?;
        }
        if domain.starts_with("new.") && attempt < 3 {
            Err(CertificateError::DnsNotPropagated(domain.clone()))?;
        }
        if domain.starts_with("flaky.") && attempt < 3 {
            Err(CertificateError::IssuerUnavailable)?;
        }
        let status = CertificateStatus {
            phase: Some("Issued".into()),
            ..CertificateStatus::default()
        };
        ctx.update_status(&cert, status).await?; // `error: None` clears the recorded error
        Ok(Action::await_change())
    }
}

impl Issuer {
    /// Records an attempt; returns its number (1 = first).
    fn attempt(&self, name: &str) -> usize {
        let mut attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let times = attempts.entry(name.to_owned()).or_default();
        times.push(Instant::now());
        times.len()
    }

    /// When `name` was attempted, relative to its first attempt.
    pub fn attempts(&self, name: &str) -> Vec<Duration> {
        let attempts = self
            .attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let times = attempts.get(name).cloned().unwrap_or_default();
        times.iter().map(|t| *t - times[0]).collect()
    }
}

/// What the story observed.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The first error each certificate showed in its status.
    pub errors: BTreeMap<String, StatusError>,
    /// When each certificate was attempted, relative to its first attempt.
    pub attempts: BTreeMap<String, Vec<Duration>>,
    /// How often `typo` had been attempted when the others were issued (after about 4 s).
    pub typo_attempts_before_fix: usize,
    /// `kubectl get certificates` at the end.
    pub table: String,
}

/// Runs the `Certificate` operator in the background and tells the story.
///
/// # Errors
/// An API or kubectl error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Certificate>().await?;
    let issuer = Issuer::default();
    // The operator takes its handler by value; the clone shares the attempts with the story.
    let operator = issuer.clone().operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    let outcome = tell(env, &issuer).await;
    running.stop().await??;
    outcome
}

async fn tell(env: &TestEnv, issuer: &Issuer) -> anyhow::Result<Outcome> {
    let certificates: Api<Certificate> = Api::namespaced(env.client(), "default");
    let mut outcome = Outcome::default();
    let error_of = |c: &Certificate| c.status.as_ref().and_then(|s| s.error.clone());
    let issued = |c: Option<&Certificate>| {
        c.and_then(|c| c.status.as_ref())
            .is_some_and(|s| s.phase.as_deref() == Some("Issued") && s.error.is_none())
    };

    println!("1. create three certificates: typo (terminal), fresh (requeue_after), flaky (retry)");
    for (name, domain) in [
        ("typo", "example"),
        ("fresh", "new.example.com"),
        ("flaky", "flaky.example.com"),
    ] {
        let cert = Certificate::new(
            name,
            CertificateSpec {
                domain: domain.into(),
            },
        );
        certificates.create(&PostParams::default(), &cert).await?;
    }
    for name in ["typo", "fresh", "flaky"] {
        let what = format!("an error in the status of {name}");
        let cert = until(&certificates, name, &what, |c: Option<&Certificate>| {
            c.and_then(error_of).is_some()
        })
        .await?;
        let error = error_of(&cert).unwrap_or_default();
        println!(
            "   {name}: status.error = {} ({})",
            error.reason, error.message
        );
        outcome.errors.insert(name.to_owned(), error);
    }

    println!("2. fresh and flaky are retried until issued; typo is left alone");
    for name in ["fresh", "flaky"] {
        until(&certificates, name, &format!("{name} issued"), issued).await?;
        let times: Vec<String> = issuer
            .attempts(name)
            .iter()
            .map(|t| format!("{:.1}s", t.as_secs_f64()))
            .collect();
        println!("   {name}: issued; attempts at {}", times.join(", "));
    }
    outcome.typo_attempts_before_fix = issuer.attempts("typo").len();
    println!(
        "   typo: {} attempt(s) so far",
        outcome.typo_attempts_before_fix
    );

    println!("3. fix typo's domain: a new generation, reconciled again, the error is cleared");
    let fix = serde_json::json!({ "spec": { "domain": "example.com" } });
    certificates
        .patch("typo", &PatchParams::default(), &Patch::Merge(&fix))
        .await?;
    until(&certificates, "typo", "typo issued", issued).await?;
    outcome.table = kubectl(env, &["get", "certificates"]).await?;
    println!("   $ kubectl get certificates");
    for line in outcome.table.lines() {
        println!("   {line}");
    }
    for name in ["typo", "fresh", "flaky"] {
        outcome
            .attempts
            .insert(name.to_owned(), issuer.attempts(name));
    }
    Ok(outcome)
}
