//! Quickstart with `#[kuberator::operator]`: a `Greeting` resource that the operator answers in
//! its status.
//!
//! `apply` writes `status.message` ("Hello, World!") with `status.observedGeneration` and creates
//! nothing else; the finalizer lets the operator see the deletion, and `cleanup` records a
//! farewell before the object goes. The macro generates the rest: the repository, the finalizer
//! flow, error recording, the controller loop and graceful shutdown.
//! [`quickstart_manual`](crate::quickstart_manual) is the same operator written with the traits
//! by hand; a test runs both through [`scenario`] and finds them identical.
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin quickstart_macro
//! ```
//!
//! In an operator of your own, `main` is one line after building the handler:
//! `Greeter { journal }.run(Client::try_default().await?).await?` (until SIGTERM / SIGINT).

use std::sync::Mutex;

use kube::api::{DeleteParams, PostParams};
use kuberator::{prelude::*, testing::TestEnv};

use crate::story::{self, until, until_deleted};

/// A greeting: whom to greet.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "quickstart.kuberator.dev",
    version = "v1",
    kind = "Greeting",
    namespaced,
    status = "GreetingStatus",
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message"}"#
)]
pub struct GreetingSpec {
    /// Whom to greet.
    pub name: String,
}

/// What the operator answers.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct GreetingStatus {
    /// The generation this status describes (set by `update_status`).
    pub observed_generation: Option<i64>,
    /// The greeting.
    pub message: Option<String>,
}

/// The finalizer, as written in the attribute below (which wants a literal to check it at
/// compile time).
pub const FINALIZER: &str = "greetings.quickstart.kuberator.dev/farewell";

/// The operator's own state: a journal of what it was asked to do.
pub struct Greeter {
    /// Shared with the story, which reads it at the end.
    pub journal: Journal,
}

#[kuberator::operator(
    resource = Greeting,
    finalizer = "greetings.quickstart.kuberator.dev/farewell",
    namespaces("default")
)]
impl Greeter {
    async fn apply(&self, greeting: Arc<Greeting>, ctx: &Ctx<Greeting>) -> Result<Action> {
        self.journal.record(Call::apply(&greeting));
        let status = GreetingStatus {
            message: Some(message(&greeting.spec)),
            ..GreetingStatus::default()
        };
        ctx.update_status(&greeting, status).await?;
        Ok(Action::await_change())
    }

    async fn cleanup(&self, greeting: Arc<Greeting>) -> Result<Action> {
        self.journal.record(Call::cleanup(&greeting));
        Ok(Action::await_change())
    }
}

/// The status message for `spec`.
pub fn message(spec: &GreetingSpec) -> String {
    format!("Hello, {}!", spec.name)
}

/// One call of the operator's handlers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `apply` of the object with this name, at this generation.
    Apply {
        /// The object's name.
        name: String,
        /// Its `metadata.generation`.
        generation: Option<i64>,
    },
    /// `cleanup` of the object with this name.
    Cleanup {
        /// The object's name.
        name: String,
    },
}

impl Call {
    /// An `apply` of `greeting`.
    pub fn apply(greeting: &Greeting) -> Self {
        Call::Apply {
            name: greeting.name_any(),
            generation: greeting.metadata.generation,
        }
    }

    /// A `cleanup` of `greeting`.
    pub fn cleanup(greeting: &Greeting) -> Self {
        Call::Cleanup {
            name: greeting.name_any(),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Apply { name, generation } => {
                write!(
                    f,
                    "apply({name}, generation {})",
                    generation.unwrap_or_default()
                )
            }
            Call::Cleanup { name } => write!(f, "cleanup({name})"),
        }
    }
}

/// The calls an operator made, in order (clones share it).
#[derive(Clone, Debug, Default)]
pub struct Journal(Arc<Mutex<Vec<Call>>>);

impl Journal {
    /// Appends `call`.
    pub fn record(&self, call: Call) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(call);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What [`scenario`] observed on the API server, and the calls the operator made.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The status once generation 1 was reconciled.
    pub created: GreetingStatus,
    /// The finalizers at that point.
    pub finalizers: Vec<String>,
    /// The status once the spec change (generation 2) was reconciled.
    pub updated: GreetingStatus,
    /// The operator's calls, in order, after the object was gone.
    pub calls: Vec<Call>,
}

/// The quickstart's story against any running Greeting operator that keeps `journal`: create →
/// status; change the spec → status of generation 2; delete → cleanup ran, object gone.
///
/// # Errors
/// An API error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn scenario(env: &TestEnv, journal: &Journal) -> anyhow::Result<Outcome> {
    let greetings: Api<Greeting> = Api::namespaced(env.client(), "default");
    let observed = |generation| {
        move |g: Option<&Greeting>| {
            g.and_then(|g| g.status.as_ref()?.observed_generation) == Some(generation)
        }
    };

    println!("1. create greeting/hello {{ name: World }}");
    let hello = Greeting::new(
        "hello",
        GreetingSpec {
            name: "World".into(),
        },
    );
    greetings.create(&PostParams::default(), &hello).await?;
    let created = until(&greetings, "hello", "generation 1", observed(1)).await?;
    let status = created.status.clone().unwrap_or_default();
    println!("   status: {}", serde_json::to_string(&status)?);
    println!("   finalizers: {:?}", created.finalizers());

    println!("2. change spec.name to Kuberator (generation 2)");
    let patch = serde_json::json!({ "spec": { "name": "Kuberator" } });
    greetings
        .patch("hello", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let updated = until(&greetings, "hello", "generation 2", observed(2)).await?;
    let updated = updated.status.unwrap_or_default();
    println!("   status: {}", serde_json::to_string(&updated)?);

    println!("3. delete greeting/hello");
    greetings.delete("hello", &DeleteParams::default()).await?;
    let uid = created.uid().unwrap_or_default();
    until_deleted(&greetings, "hello", &uid).await?;
    let calls = journal.calls();
    let shown: Vec<String> = calls.iter().map(ToString::to_string).collect();
    println!("   gone; the operator's calls: {}", shown.join(", "));

    Ok(Outcome {
        finalizers: created.finalizers().to_vec(),
        created: status,
        updated,
        calls,
    })
}

/// Installs the CRD, runs the macro-generated operator in the background and tells [`scenario`].
///
/// # Errors
/// As [`scenario`], or the operator failing to start or stop.
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Greeting>().await?;
    let journal = Journal::default();
    let operator = Greeter {
        journal: journal.clone(),
    }
    .operator(env.client())?;
    let running = story::background(|stop| operator.shutdown_on(stop).run());
    let outcome = scenario(env, &journal).await;
    running.stop().await??;
    outcome
}
