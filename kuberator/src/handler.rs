//! `Handler` and `Ctx`: the compact form of an operator that `#[kuberator::operator]` generates.

use std::sync::Arc;

use async_trait::async_trait;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::object::HasStatus,
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    cache::{ApiScope, CachingStrategy, ProvideApi, StaticApiProvider},
    error::{Error, ObjectKey, Result},
    events::{EmitEvent, EventData, EventRecorder},
    finalize::{Finalize, Object, StatusWrites, with_finalizer},
    repository::K8sRepository,
    runtime::{Backoff, Cache, Cached, Caches, Operator, OwnWrites, Reconciler, RequestGuard},
    status::ObserveGeneration,
};

/// An operator's handlers: `apply` for live objects, `cleanup` for deleted ones (with a
/// finalizer). The runtime adds the finalizer flow, status errors, backoff and the loop; with an
/// event recorder, every failed reconcile also emits a `Warning` event whose reason is the
/// error's [`reason`](Error::reason) (deduplicated, so a retried error is one Event with a
/// count).
#[async_trait]
pub trait Handler<R: Object>: Send + Sync + 'static {
    /// The context built at start-up (client, repository, events, finalizer).
    fn ctx(&self) -> &Ctx<R>;

    /// Brings the world in line with `object`.
    ///
    /// # Errors
    /// Any error; it is logged, recorded in status and retried according to its class.
    async fn apply(&self, object: Arc<R>) -> Result<Action>;

    /// Cleans up after `object`; only called when a finalizer is configured.
    ///
    /// # Errors
    /// Any error; the finalizer stays and the cleanup is retried.
    async fn cleanup(&self, object: Arc<R>) -> Result<Action> {
        let _ = object;
        Ok(Action::await_change())
    }

    /// Called after a failed reconcile; the macro records the error in status here.
    async fn on_error(&self, object: Arc<R>, error: &Error) {
        let _ = (object, error);
    }

    /// When to retry after `error`; the default honours the error's class.
    fn error_policy(&self, object: &R, error: &Error, failures: u32, backoff: &Backoff) -> Action {
        let _ = object;
        crate::runtime::default_error_policy(error, failures, backoff)
    }
}

/// Everything a handler needs at run time: the client, the repository (finalizer and status
/// writes through cached API handles), the event recorder and the operator's names.
pub struct Ctx<R: Object> {
    client: Client,
    name: String,
    field_manager: String,
    repository: K8sRepository<R, StaticApiProvider<R>>,
    events: Option<EventRecorder>,
    finalizer: Option<&'static str>,
    legacy_finalizers: Vec<&'static str>,
    namespaces: Vec<String>,
    caches: Caches,
    guard: RequestGuard,
    own_writes: OwnWrites,
    /// Whether `emit` without a recorder has warned already (it warns once).
    warned_no_events: std::sync::atomic::AtomicBool,
}

impl<R: Object> Ctx<R>
where
    R::Scope: ApiScope,
{
    /// Starts building a context.
    pub fn builder(client: Client) -> CtxBuilder<R> {
        CtxBuilder {
            client,
            name: None,
            field_manager: None,
            status_writes: StatusWrites::Merge,
            namespaces: Vec::new(),
            caching: None,
            events: None,
            finalizer: None,
            legacy_finalizers: Vec::new(),
            _resource: std::marker::PhantomData,
        }
    }
}

impl<R: Object> Ctx<R> {
    /// The client. Every request through it has a deadline, and its writes are refused once
    /// this replica is past its leader-election renew deadline (see [`RequestGuard`]).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The request guard in front of [`client`](Self::client), shared with the operator.
    pub fn guard(&self) -> &RequestGuard {
        &self.guard
    }

    /// `Ok` while this replica may write: no leader election, or it leads within its renew
    /// deadline. Call it before a side effect that does not go through [`client`](Self::client)
    /// (the framework's own writes — finalizer, status, [`apply_child`](Self::apply_child),
    /// events — are checked already).
    ///
    /// # Errors
    /// [`Error::NotLeader`] past the renew deadline.
    pub fn check_leader(&self) -> Result<()> {
        self.guard.check()
    }

    /// The operator's name: the controller name in logs and metrics, and the default field
    /// manager.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The field manager of every write: child applies, status, finalizers.
    pub fn field_manager(&self) -> &str {
        &self.field_manager
    }

    /// The repository: finalizers and status through cached API handles.
    pub fn repository(&self) -> &K8sRepository<R, StaticApiProvider<R>> {
        &self.repository
    }

    /// The event recorder, when the operator was configured with one.
    pub fn events(&self) -> Option<&EventRecorder> {
        self.events.as_ref()
    }

    /// The finalizer, when the operator has one.
    pub fn finalizer(&self) -> Option<&'static str> {
        self.finalizer
    }

    /// Finalizers of a previous operator that this one replaces (see
    /// [`CtxBuilder::legacy_finalizers`]).
    pub fn legacy_finalizers(&self) -> &[&'static str] {
        &self.legacy_finalizers
    }

    /// The watched namespaces (empty: all, or the cluster scope).
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The shared cache of `K` held by the [`Manager`](crate::runtime::Manager) this handler
    /// runs in: get and list without a request to the API server. The manager must watch `K`
    /// (as some controller's primary, owned or related kind; `PartialObjectMeta<K>` for
    /// metadata-only `owns`); declare the read with [`Operator::reads`] to have that checked at
    /// start-up. The cache lags behind writes, see [`Cache`].
    ///
    /// # Errors
    /// When no watch of the manager holds `K`, or before the manager started.
    pub fn cache<K: Cached>(&self) -> Result<Cache<K>> {
        self.caches.get::<K>()
    }

    /// The cached API handle for `object`'s namespace.
    ///
    /// # Errors
    /// [`Error::NamespaceNotCached`] under `CachingStrategy::Strict`.
    pub fn api_for(&self, object: &R) -> Result<Api<R>> {
        Ok(self
            .repository
            .api_provider()
            .get(object.meta().namespace.as_deref())?
            .into_owned())
    }

    /// Writes `status` (with `observedGeneration` set), see [`Finalize::update_status`].
    ///
    /// # Errors
    /// An API error.
    ///
    /// # Access control
    /// `patch` on the resource's `status` subresource.
    ///
    /// A resource without a status (no `status = "…"` in its `#[kube(...)]`) is one compile
    /// error at the call, saying so ([`WithStatus`]).
    pub fn update_status<'a, S>(
        &'a self,
        object: &'a R,
        status: S,
    ) -> futures::future::BoxFuture<'a, Result<()>>
    where
        R: WithStatus<S>,
        S: ObserveGeneration + Serialize + Send + Sync + 'static,
    {
        // A boxed future, not an `async fn`: its type does not repeat the bound, so a resource
        // without a status is one error (the bound), not one more per use of the future.
        self.repository.update_status(object, status)
    }

    /// Emits an event about `object`. Never fails. Without an event recorder (no `events = …`
    /// key) it writes nothing and logs one warning per `Ctx`, so a forgotten key is noticed.
    ///
    /// # Access control
    /// `create` and `patch` on `events.k8s.io` `events`.
    pub async fn emit(&self, object: &R, data: EventData) {
        match &self.events {
            Some(events) => events.emit(object, data).await,
            None => {
                if !self
                    .warned_no_events
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        operator = %self.name,
                        reason = %data.reason,
                        "`emit` without an event recorder writes nothing: add `events = \"…\"` \
                         to `#[kuberator::operator]` (or `CtxBuilder::events`); warned once"
                    );
                }
            }
        }
    }

    /// Server-side applies `child` as owned by `owner` (a controller owner reference, so the
    /// child is garbage-collected with the owner and its changes re-trigger the owner when
    /// watched with `owns`). A namespaced child without a namespace goes to the owner's.
    ///
    /// # Errors
    /// [`Error::MissingField`] without a name; an API error.
    ///
    /// # Access control
    /// `patch` (and `create`) on the child's resource.
    pub async fn apply_child<C>(&self, owner: &R, mut child: C) -> Result<C>
    where
        C: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
        C::Scope: ApiScope,
    {
        if let Some(reference) = owner.controller_owner_ref(&()) {
            let refs = child
                .meta_mut()
                .owner_references
                .get_or_insert_with(Vec::new);
            refs.retain(|r| r.uid != reference.uid);
            refs.push(reference);
        }
        if <C::Scope as ApiScope>::NAMESPACED && child.meta().namespace.is_none() {
            child.meta_mut().namespace = owner.meta().namespace.clone();
        }
        let name = child
            .meta()
            .name
            .clone()
            .ok_or_else(|| Error::MissingField {
                object: ObjectKey::of(&child),
                field: "metadata.name",
            })?;
        child.meta_mut().managed_fields = None;
        child.meta_mut().resource_version = None;
        let api: Api<C> =
            <C::Scope as ApiScope>::api(self.client.clone(), child.meta().namespace.as_deref());
        let mut value = serde_json::to_value(&child).map_err(|source| Error::Serde {
            action: "serializing",
            object: ObjectKey::of(&child),
            source,
        })?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("apiVersion".into(), C::api_version(&()).into());
            obj.insert("kind".into(), C::kind(&()).into());
        }
        // Its watch event is the echo of this write: recorded so that it does not re-trigger
        // the owner (see `OwnWrites`).
        let write = self.own_writes.begin(&child);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(value),
            )
            .await
            .map_err(|e| Error::kube("applying child", ObjectKey::of(&child), e))?;
        write.answered(applied.meta().resource_version.as_deref());
        Ok(applied)
    }

    /// The record of this operator's own child writes, shared with its [`Operator`].
    pub fn own_writes(&self) -> &OwnWrites {
        &self.own_writes
    }
}

/// A resource whose status is `S`: what [`Ctx::update_status`] needs (implemented for every
/// `HasStatus<Status = S>`, i.e. every `#[derive(CustomResource)]` with `status = "S"`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no status, so `update_status` cannot write one",
    label = "`{Self}` has no status subresource",
    note = "add `status = \"WebsiteStatus\"` (your status struct) to `#[kube(...)]` on the spec \
            struct that derives `CustomResource`"
)]
pub trait WithStatus<S>: HasStatus<Status = S> {}

impl<R: HasStatus<Status = S>, S> WithStatus<S> for R {}

/// The default name of an operator for `R` (its field manager, controller name and RBAC name):
/// `<plural>.<group>-operator`, e.g. `websites.example.com-operator`.
pub fn operator_name<R: Resource<DynamicType = ()>>() -> String {
    let group = R::group(&());
    if group.is_empty() {
        format!("{}-operator", R::plural(&()))
    } else {
        format!("{}.{}-operator", R::plural(&()), group)
    }
}

/// Builds a [`Ctx`]; see [`Ctx::builder`].
pub struct CtxBuilder<R: Object> {
    client: Client,
    name: Option<String>,
    field_manager: Option<String>,
    status_writes: StatusWrites,
    namespaces: Vec<String>,
    caching: Option<CachingStrategy>,
    events: Option<String>,
    finalizer: Option<&'static str>,
    legacy_finalizers: Vec<&'static str>,
    _resource: std::marker::PhantomData<fn() -> R>,
}

impl<R: Object> CtxBuilder<R>
where
    R::Scope: ApiScope,
{
    /// The operator's name: the controller name in logs and metrics, and the field manager
    /// unless [`field_manager`](Self::field_manager) sets one. Default:
    /// `<plural>.<group>-operator`.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The field manager of every write (child applies, status, finalizers), as
    /// `metadata.managedFields` shows it. Default: the [`name`](Self::name).
    #[must_use]
    pub fn field_manager(mut self, field_manager: impl Into<String>) -> Self {
        self.field_manager = Some(field_manager.into());
        self
    }

    /// How status is written: a merge patch ([`StatusWrites::Merge`], the default) or a
    /// server-side apply as the field manager ([`StatusWrites::Apply`]).
    #[must_use]
    pub fn status_writes(mut self, writes: StatusWrites) -> Self {
        self.status_writes = writes;
        self
    }

    /// The namespaces to watch and pre-cache (empty: all namespaces / cluster scope).
    #[must_use]
    pub fn namespaces<I: IntoIterator<Item = S>, S: Into<String>>(mut self, namespaces: I) -> Self {
        self.namespaces = namespaces.into_iter().map(Into::into).collect();
        self
    }

    /// The caching strategy for API handles. Default: `Strict` with namespaces, `Extendable`
    /// without.
    #[must_use]
    pub fn caching(mut self, strategy: CachingStrategy) -> Self {
        self.caching = Some(strategy);
        self
    }

    /// Gives handlers an [`EventRecorder`] reporting as `component`.
    #[must_use]
    pub fn events(mut self, component: impl Into<String>) -> Self {
        self.events = Some(component.into());
        self
    }

    /// The finalizer to add (`None`: none).
    #[must_use]
    pub fn finalizer(mut self, finalizer: Option<&'static str>) -> Self {
        self.finalizer = finalizer;
        self
    }

    /// Finalizers a previous operator added (e.g. before a port to kuberator): on an object that
    /// carries one, this operator adds its own finalizer and removes the legacy ones; on an object
    /// being deleted, a legacy finalizer counts as its own (cleanup runs, then it is removed), so
    /// no object is left stuck in `Terminating`. Only with a finalizer.
    #[must_use]
    pub fn legacy_finalizers<I: IntoIterator<Item = &'static str>>(mut self, legacy: I) -> Self {
        self.legacy_finalizers = legacy.into_iter().collect();
        self
    }

    /// Builds the context, pre-caching the API handles.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for start-up checks.
    pub fn build(self) -> Result<Ctx<R>> {
        let name = self.name.unwrap_or_else(operator_name::<R>);
        let field_manager = self.field_manager.unwrap_or_else(|| name.clone());
        let caching = self.caching.unwrap_or(if self.namespaces.is_empty() {
            CachingStrategy::Extendable
        } else {
            CachingStrategy::Strict
        });
        let namespaces = if <R::Scope as ApiScope>::NAMESPACED {
            self.namespaces
        } else {
            Vec::new()
        };
        let guard = RequestGuard::new();
        let client = guard.client(self.client);
        let provider = StaticApiProvider::new(client.clone(), namespaces.clone(), caching);
        Ok(Ctx {
            warned_no_events: std::sync::atomic::AtomicBool::new(false),
            repository: K8sRepository::new(client.clone(), provider, field_manager.clone())
                .status_writes(self.status_writes),
            events: self
                .events
                .map(|component| EventRecorder::new(client.clone(), component)),
            client,
            name,
            field_manager,
            finalizer: self.finalizer,
            legacy_finalizers: self.legacy_finalizers,
            namespaces,
            caches: Caches::new(),
            guard,
            own_writes: OwnWrites::new(),
        })
    }
}

/// Removes the `legacy` finalizers from `object` and adds `own` (none on an object being deleted),
/// in one patch guarded by the object's resourceVersion (a conflict fails the reconcile, which is
/// retried on the fresh object).
async fn migrate_finalizers<R: Object>(
    api: &Api<R>,
    object: Arc<R>,
    own: Option<&str>,
    legacy: &[&str],
) -> Result<Arc<R>> {
    let mut finalizers: Vec<String> = object
        .finalizers()
        .iter()
        .filter(|f| !legacy.contains(&f.as_str()))
        .cloned()
        .collect();
    if let Some(own) = own
        && !finalizers.iter().any(|f| f == own)
    {
        finalizers.push(own.to_owned());
    }
    let name = object.name_any();
    let patch = Patch::Merge(serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }
    }));
    let updated = api
        .patch(&name, &PatchParams::default(), &patch)
        .await
        .map_err(|e| {
            Error::kube(
                "replacing legacy finalizers on",
                ObjectKey::of(object.as_ref()),
                e,
            )
        })?;
    Ok(Arc::new(updated))
}

struct HandlerReconciler<H>(H);

#[async_trait]
impl<R: Object, H: Handler<R>> Reconciler<R> for HandlerReconciler<H> {
    async fn reconcile(&self, object: Arc<R>) -> Result<Action> {
        let handler = &self.0;
        let ctx = handler.ctx();
        match ctx.finalizer {
            Some(finalizer) => {
                let api = ctx
                    .repository
                    .api_provider()
                    .get(object.namespace().as_deref())?;
                let has_legacy = object
                    .finalizers()
                    .iter()
                    .any(|f| ctx.legacy_finalizers.contains(&f.as_str()));
                let has_own = object.finalizers().iter().any(|f| f == finalizer);
                let object = match (has_legacy, object.meta().deletion_timestamp.is_some()) {
                    (false, _) => object,
                    // Being deleted: no finalizer may be added, the legacy one stands for ours.
                    (true, true) if !has_own => {
                        let action = handler.cleanup(object.clone()).await?;
                        migrate_finalizers(&api, object, None, &ctx.legacy_finalizers).await?;
                        return Ok(action);
                    }
                    (true, true) => {
                        migrate_finalizers(&api, object, None, &ctx.legacy_finalizers).await?
                    }
                    (true, false) => {
                        let own = Some(finalizer);
                        migrate_finalizers(&api, object, own, &ctx.legacy_finalizers).await?
                    }
                };
                with_finalizer(
                    &api,
                    finalizer,
                    object,
                    |o| handler.apply(o),
                    |o| handler.cleanup(o),
                )
                .await
            }
            None if object.meta().deletion_timestamp.is_some() => Ok(Action::await_change()),
            None => handler.apply(object).await,
        }
    }

    async fn on_error(&self, object: Arc<R>, error: &Error) {
        if let Some(events) = &self.0.ctx().events {
            let data = EventData::warning(error.reason(), "Reconcile").note(error.to_string());
            events.emit(object.as_ref(), data).await;
        }
        self.0.on_error(object, error).await;
    }

    fn error_policy(&self, object: &R, error: &Error, failures: u32, backoff: &Backoff) -> Action {
        self.0.error_policy(object, error, failures, backoff)
    }

    async fn shutdown(&self) {
        if let Some(events) = &self.0.ctx().events
            && let Err(error) = events.flush().await
        {
            tracing::warn!(%error, "cannot write pending event counts on shutdown");
        }
    }
}

impl<R: Object> Operator<R>
where
    R::Scope: ApiScope,
{
    /// An operator running `handler` with its context's namespaces and name.
    pub fn new<H: Handler<R>>(handler: H) -> Self {
        let ctx = handler.ctx();
        let (client, namespaces, name, caches, guard, own_writes) = (
            ctx.client.clone(),
            ctx.namespaces.clone(),
            ctx.name.clone(),
            ctx.caches.clone(),
            ctx.guard.clone(),
            ctx.own_writes.clone(),
        );
        let (finalizer, events) = (ctx.finalizer(), ctx.events().cloned());
        Operator::with_reconciler(client, HandlerReconciler(handler))
            .namespaces(namespaces)
            .name(name)
            .share_caches(caches)
            .request_guard(guard)
            .own_writes(own_writes)
            .on_undecodable(finalizer, events)
            .own_finalizer(finalizer)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::ConfigMap;

    use super::*;

    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn emit_without_a_recorder_warns_once() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let ctx = Ctx::<ConfigMap>::builder(Client::new(service, "default"))
            .build()
            .unwrap();
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let object = ConfigMap::default();
        for _ in 0..3 {
            ctx.emit(&object, EventData::normal("Configured", "Reconcile"))
                .await;
        }
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("without an event recorder").count(),
            1,
            "{text}"
        );
        assert!(text.contains("WARN"), "{text}");
    }
}
