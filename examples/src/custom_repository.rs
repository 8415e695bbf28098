//! A repository of your own: implement [`Finalize`] on a type that keeps the operator's
//! bookkeeping next to the API provider, instead of using [`K8sRepository`](kuberator::K8sRepository).
//!
//! `Finalize` asks for two things, the API provider and (optionally) a field manager; the
//! finalizer flow and the status writes (`update_status`, `update_status_with_error`,
//! `record_error`) come with it. Here the [`Ledger`] also numbers invoices: it hands out the next
//! number, stores it in an annotation on the `Invoice` (so a reconcile of the same invoice gets
//! the same number back), and remembers the numbers voided by `cleanup`. The [`Context`] and the
//! [`Reconcile`] are written by hand as in [`quickstart_manual`](crate::quickstart_manual), with
//! the `Ledger` as their repository type.
//!
//! Against the local control plane (a fresh etcd + kube-apiserver, gone at exit):
//!
//! ```text
//! cargo run -p kuberator-examples --bin custom_repository
//! ```

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use kube::{
    Api, Client, CustomResource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::watcher,
};
use kuberator::{
    Action, CachingStrategy, Context, Error, Finalize, ObjectKey, ObserveGeneration, ProvideApi,
    Reconcile, Result, StaticApiProvider, testing::TestEnv,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::story::{self, until, until_deleted};

/// The annotation holding an invoice's number.
pub const NUMBER: &str = "billing.kuberator.dev/number";

/// An invoice to a customer.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "billing.kuberator.dev",
    version = "v1",
    kind = "Invoice",
    namespaced,
    status = "InvoiceStatus",
    printcolumn = r#"{"name":"Customer","type":"string","jsonPath":".spec.customer"}"#,
    printcolumn = r#"{"name":"Number","type":"integer","jsonPath":".status.number"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceSpec {
    /// Who pays.
    pub customer: String,
    /// How much, in cents.
    pub amount_cents: i64,
}

/// What the operator reports.
#[derive(
    Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema, ObserveGeneration,
)]
#[serde(rename_all = "camelCase")]
pub struct InvoiceStatus {
    /// The generation this status describes.
    pub observed_generation: Option<i64>,
    /// The invoice's number.
    pub number: Option<u64>,
}

/// The custom repository: the API provider plus the ledger's own state.
pub struct Ledger {
    provider: StaticApiProvider<Invoice>,
    last_number: AtomicU64,
    voided: Mutex<Vec<u64>>,
}

impl Finalize<Invoice, StaticApiProvider<Invoice>> for Ledger {
    fn api_provider(&self) -> &StaticApiProvider<Invoice> {
        &self.provider
    }

    fn field_manager(&self) -> &str {
        "billing.kuberator.dev-ledger"
    }
}

impl Ledger {
    /// A ledger for invoices in `default`, numbering from 1.
    pub fn new(client: Client) -> Self {
        Self {
            provider: StaticApiProvider::new(client, ["default"], CachingStrategy::Strict),
            last_number: AtomicU64::new(0),
            voided: Mutex::new(Vec::new()),
        }
    }

    /// The invoice's number, if it has one.
    pub fn number_of(invoice: &Invoice) -> Option<u64> {
        invoice.annotations().get(NUMBER)?.parse().ok()
    }

    /// The invoice's number: the one it has, or the next one, written to its annotation first.
    ///
    /// # Errors
    /// An API error writing the annotation.
    ///
    /// # Access control
    /// `patch` on `invoices`.
    pub async fn number(&self, invoice: &Invoice) -> Result<u64> {
        if let Some(number) = Self::number_of(invoice) {
            return Ok(number);
        }
        let number = self.last_number.fetch_add(1, Ordering::SeqCst) + 1;
        let api = self.api_provider().get(invoice.namespace().as_deref())?;
        let patch = serde_json::json!({
            "metadata": { "annotations": { NUMBER: number.to_string() } }
        });
        let params = PatchParams {
            field_manager: Some(self.field_manager().to_owned()),
            ..PatchParams::default()
        };
        api.patch(&invoice.name_any(), &params, &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube("numbering", ObjectKey::of(invoice), e))?;
        Ok(number)
    }

    /// Records that `number` was voided.
    pub fn void(&self, number: u64) {
        self.voided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(number);
    }

    /// The numbers voided so far.
    pub fn voided(&self) -> Vec<u64> {
        self.voided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The operator's core, with the [`Ledger`] as its repository.
pub struct Billing {
    ledger: Arc<Ledger>,
}

#[async_trait]
impl Context<Invoice, Ledger, StaticApiProvider<Invoice>> for Billing {
    fn k8s_repository(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    fn finalizer(&self) -> Option<&'static str> {
        Some("invoices.billing.kuberator.dev/void")
    }

    async fn handle_apply(&self, invoice: Arc<Invoice>) -> Result<Action> {
        let number = self.ledger.number(&invoice).await?;
        let status = InvoiceStatus {
            number: Some(number),
            ..InvoiceStatus::default()
        };
        self.ledger.update_status(&invoice, status).await?; // from `Finalize`
        Ok(Action::await_change())
    }

    async fn handle_cleanup(&self, invoice: Arc<Invoice>) -> Result<Action> {
        if let Some(number) = Ledger::number_of(&invoice) {
            self.ledger.void(number);
        }
        Ok(Action::await_change())
    }

    async fn handle_error(&self, invoice: Arc<Invoice>, error: &Error) {
        if let Err(e) = self.ledger.record_error(&invoice, Some(error)).await {
            tracing::warn!(error = %e, "cannot record the error in status");
        }
    }
}

/// Where to watch: invoices in `default`.
pub struct BillingReconciler {
    api: Api<Invoice>,
    context: Arc<Billing>,
}

impl Reconcile<Invoice, Billing, Ledger, StaticApiProvider<Invoice>> for BillingReconciler {
    fn destruct(self) -> (Api<Invoice>, watcher::Config, Arc<Billing>) {
        (self.api, watcher::Config::default(), self.context)
    }
}

/// What the story observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The number each invoice got.
    pub numbers: BTreeMap<String, u64>,
    /// `march`'s number after its amount changed (the same).
    pub number_after_update: Option<u64>,
    /// The numbers the ledger voided.
    pub voided: Vec<u64>,
}

/// Runs the billing operator (up to 4 reconciles at once) and tells the story.
///
/// # Errors
/// An API error, or a step that does not happen within [`story::TIMEOUT`].
pub async fn run(env: &TestEnv) -> anyhow::Result<Outcome> {
    env.install_crd::<Invoice>().await?;
    let ledger = Arc::new(Ledger::new(env.client()));
    let reconciler = BillingReconciler {
        api: Api::namespaced(env.client(), "default"),
        context: Arc::new(Billing {
            ledger: ledger.clone(),
        }),
    };
    let running = story::background(|stop| reconciler.start_concurrent(Some(4), Some(stop)));
    let outcome = tell(env, &ledger).await;
    running.stop().await?;
    outcome
}

async fn tell(env: &TestEnv, ledger: &Ledger) -> anyhow::Result<Outcome> {
    let invoices: Api<Invoice> = Api::namespaced(env.client(), "default");
    let reconciled = |generation| {
        move |i: Option<&Invoice>| {
            i.and_then(|i| i.status.as_ref()?.observed_generation) == Some(generation)
        }
    };
    let mut numbers = BTreeMap::new();

    println!("1. create invoices march and april: the ledger numbers them");
    for (name, customer) in [("march", "Acme"), ("april", "Globex")] {
        let spec = InvoiceSpec {
            customer: customer.into(),
            amount_cents: 10_000,
        };
        invoices
            .create(&PostParams::default(), &Invoice::new(name, spec))
            .await?;
        let invoice = until(&invoices, name, "its number", reconciled(1)).await?;
        let number = invoice.status.and_then(|s| s.number).unwrap_or_default();
        println!("   {name}: number {number}");
        numbers.insert(name.to_owned(), number);
    }

    println!("2. change march's amount: a new generation, the same number");
    let patch = serde_json::json!({ "spec": { "amountCents": 12_500 } });
    invoices
        .patch("march", &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let march = until(&invoices, "march", "generation 2", reconciled(2)).await?;
    let number_after_update = march.status.as_ref().and_then(|s| s.number);
    println!("   march: number {number_after_update:?}");

    println!("3. delete march: cleanup voids its number in the ledger");
    invoices.delete("march", &DeleteParams::default()).await?;
    until_deleted(&invoices, "march", &march.uid().unwrap_or_default()).await?;
    let voided = ledger.voided();
    println!("   voided: {voided:?}");
    Ok(Outcome {
        numbers,
        number_after_update,
        voided,
    })
}
