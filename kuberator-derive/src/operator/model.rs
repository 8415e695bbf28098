//! The validated model of an operator: all that codegen sees. Each newtype exists only once its
//! check passed (a [`FinalizerName`] is a qualified name, a [`Namespace`] a DNS-1123 label, …).

use darling::Error;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{
    FnArg, Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Pat, Path, ReceiverKind, ReturnType, Type,
};

use super::args::{FinalizerValue, Keyed, OperatorArgs};
use crate::paths::Root;
use crate::util::{did_you_mean, error_at, error_at_span, path_tail, peel, source, unknown};

/// A validated `#[kuberator::operator(...)] impl Handler { ... }`.
pub(crate) struct Operator {
    /// The handler type, e.g. `Websites`; generated names derive from it.
    pub(crate) handler: Ident,
    /// The resource, e.g. `Website`.
    pub(crate) resource: Path,
    /// The runtime crate's path (`crate = …`).
    pub(crate) root: Root,
    /// The controller name (logs, metrics, RBAC names; the default field manager).
    pub(crate) name: Option<OperatorName>,
    pub(crate) field_manager: Option<FieldManager>,
    /// Status written by server-side apply (`status_writes = "apply"`).
    pub(crate) status_apply: bool,
    pub(crate) finalizer: Option<Finalizer>,
    /// Finalizers of a previous operator, removed when this one adds its own.
    pub(crate) legacy_finalizers: Vec<FinalizerName>,
    pub(crate) namespaces: Option<Namespaces>,
    /// As written, or the default (see [`Caching::default_for`]).
    pub(crate) caching: Caching,
    /// The strategy's path when written with a prefix (`CachingStrategy::Strict`), emitted as is.
    pub(crate) caching_path: Option<Path>,
    pub(crate) concurrency: Concurrency,
    /// `skip_observed_on_start = true`: the key, to span the status bound at.
    pub(crate) skip_observed_on_start: Option<Path>,
    /// Each child with the changes that re-trigger its owner (`None`: the default, spec).
    pub(crate) owns: Vec<(Type, Option<ChildOn>)>,
    pub(crate) labels: Option<LabelSelector>,
    pub(crate) events: Option<EventsComponent>,
    /// The Lease name, with leader election.
    pub(crate) leader_election: Option<LeaseName>,
    /// The shard group, with sharding.
    pub(crate) sharding: Option<ShardGroup>,
    /// The address of `/metrics`, `/healthz` and `/readyz`, their paths and extra routes.
    pub(crate) health: Option<Health>,
    /// The Service of the admission webhooks (`webhooks = …`), with the webhook methods.
    pub(crate) webhooks: Option<WebhookService>,
    /// `async fn validate(&self, new: &R, old: Option<&R>) -> Result<(), Denied>`.
    pub(crate) validate: Option<WebhookFn>,
    /// `async fn validate_delete(&self, old: &R) -> Result<(), Denied>`.
    pub(crate) validate_delete: Option<WebhookFn>,
    /// `async fn default(&self, obj: &mut R)`.
    pub(crate) default: Option<WebhookFn>,
    pub(crate) apply: HandlerFn,
    /// Present exactly when a finalizer is.
    pub(crate) cleanup: Option<HandlerFn>,
}

impl Operator {
    /// Validates the arguments against the impl block; `None` when anything is wrong (every
    /// error is in `errors`).
    pub(crate) fn new(
        args: OperatorArgs,
        item: &ItemImpl,
        errors: &mut darling::error::Accumulator,
    ) -> Option<Self> {
        let finalizer_given = args.was_given("finalizer");
        let webhooks_given = args.was_given("webhooks");
        let handler = errors.handle(handler_ident(item));
        let root = Root::new(args.krate.as_ref().map(|keyed| keyed.value.clone()));
        let resource = match args.resource {
            Some(resource) if is_dynamic(&resource.value) => {
                errors.push(error_at(
                    &resource.value,
                    format!(
                        "dynamic objects are not supported: `{}` has no compile-time kind; name a \
                         typed resource, like a `#[derive(CustomResource)]` kind or a \
                         `k8s_openapi` type",
                        source(&resource.value)
                    ),
                ));
                None
            }
            Some(resource) => Some(resource.value),
            None if args.was_given("resource") => None,
            None => {
                errors.push(
                    Error::custom(
                        "missing `resource = Type`: name the resource this operator reconciles, \
                         like `#[kuberator::operator(resource = Website)]`",
                    )
                    .with_span(&Span::call_site()),
                );
                None
            }
        };
        let finalizer = args.finalizer.and_then(|keyed| match keyed.value {
            FinalizerValue::Literal(lit) => {
                errors.handle(FinalizerName::new(&lit)).map(Finalizer::Name)
            }
            FinalizerValue::Const(path) => Some(Finalizer::Const(path)),
        });
        let legacy_finalizers = match args.legacy_finalizers {
            Some(keyed) if keyed.value.is_empty() => {
                errors.push(error_at(
                    &keyed.key,
                    "`legacy_finalizers()` is empty: list the finalizers a previous operator \
                     added, like `legacy_finalizers(\"old.example.com/cleanup\")`, or remove it",
                ));
                Vec::new()
            }
            Some(keyed) => {
                if !finalizer_given {
                    errors.push(error_at(
                        &keyed.key,
                        "`legacy_finalizers(...)` are replaced by this operator's own finalizer: \
                         add `finalizer = \"example.com/cleanup\"`",
                    ));
                }
                keyed
                    .value
                    .iter()
                    .filter_map(|lit| errors.handle(FinalizerName::new(lit)))
                    .collect()
            }
            None => Vec::new(),
        };
        let namespaces = args
            .namespaces
            .and_then(|keyed| errors.handle(Namespaces::new(keyed)));
        let caching_path = args
            .caching
            .as_ref()
            .filter(|keyed| keyed.value.segments.len() > 1)
            .map(|keyed| keyed.value.clone());
        let caching = match args.caching {
            Some(keyed) => errors.handle(Caching::new(&keyed.value)),
            None => Some(Caching::default_for(namespaces.is_some())),
        };
        let concurrency = match args.concurrency {
            Some(keyed) => errors.handle(Concurrency::new(&keyed.value)),
            None => Some(Concurrency(1)),
        };
        let skip_observed_on_start = args
            .skip_observed_on_start
            .filter(|keyed| keyed.value.value)
            .map(|keyed| keyed.key);
        let owns = match args.owns {
            Some(keyed) if keyed.value.is_empty() => {
                errors.push(error_at(
                    &keyed.key,
                    "`owns()` is empty: list the child types, like `owns(ConfigMap, Service)`, or \
                     remove it",
                ));
                Vec::new()
            }
            Some(keyed) => keyed
                .value
                .into_iter()
                .map(|child| {
                    let on = child.on.and_then(|on| errors.handle(ChildOn::new(&on)));
                    (child.ty, on)
                })
                .collect(),
            None => Vec::new(),
        };
        let name = args
            .name
            .and_then(|keyed| errors.handle(OperatorName::new(&keyed.value)));
        let field_manager = args
            .field_manager
            .and_then(|keyed| errors.handle(FieldManager::new(&keyed.value)));
        let status_apply = args
            .status_writes
            .and_then(|keyed| errors.handle(status_apply(&keyed.value)))
            .unwrap_or(false);
        let labels = args
            .labels
            .and_then(|keyed| errors.handle(LabelSelector::new(&keyed.value)));
        let events = args
            .events
            .and_then(|keyed| errors.handle(EventsComponent::new(&keyed.value)));
        let leader_election = args
            .leader_election
            .and_then(|keyed| errors.handle(LeaseName::new(&keyed.value)));
        let sharding = args
            .sharding
            .and_then(|keyed| errors.handle(ShardGroup::new(&keyed.value)));
        let health = args
            .health
            .and_then(|keyed| errors.handle(Health::new(&keyed.value)));

        // The handlers, checked against the resource's name.
        let resource_name = resource
            .as_ref()
            .and_then(|path| path.segments.last())
            .map(|segment| segment.ident.clone());
        let expected = Expected {
            resource: resource_name,
            key: resource.clone(),
        };
        let find = |name: &str| {
            item.items.iter().find_map(|item| match item {
                ImplItem::Fn(function) if function.sig.ident == name => Some(function),
                _ => None,
            })
        };
        // A trait impl is reported once, not also for its (then irrelevant) methods.
        let inherent = item.trait_.is_none();
        let apply = match find("apply") {
            Some(function) => errors.handle(HandlerFn::new(function, &expected)),
            None if !inherent => None,
            None if find_near(
                item,
                &["reconcile", "reconcile_apply", "update", "handle", "sync"],
                "apply",
            )
            .is_some() =>
            {
                if let Some(function) = find_near(
                    item,
                    &["reconcile", "reconcile_apply", "update", "handle", "sync"],
                    "apply",
                ) {
                    errors.push(error_at(
                        &function.sig.ident,
                        format!(
                            "rename `{}` to `apply`: the operator calls `apply` for every change",
                            function.sig.ident
                        ),
                    ));
                }
                None
            }
            None => {
                errors.push(error_at(
                    &item.self_ty,
                    format!(
                        "missing `async fn apply(&self, object: Arc<{}>) -> Result<Action>` in \
                         `impl {}`: the operator calls it for every change",
                        expected.resource(),
                        source(&item.self_ty)
                    ),
                ));
                None
            }
        };
        let cleanup = match (find("cleanup"), &finalizer) {
            (Some(function), _) if finalizer_given => {
                errors.handle(HandlerFn::new(function, &expected))
            }
            (Some(function), _) => {
                errors.push(error_at(
                    &function.sig.ident,
                    "`cleanup` runs only with a finalizer: add `finalizer = \"example.com/cleanup\"` \
                     to `#[kuberator::operator(...)]`, or rename this method if it is a helper",
                ));
                None
            }
            (None, Some(_))
                if inherent && find_near(item, &CLEANUP_NEAR_MISSES, "cleanup").is_some() =>
            {
                if let Some(function) = find_near(item, &CLEANUP_NEAR_MISSES, "cleanup") {
                    errors.push(error_at(
                        &function.sig.ident,
                        format!(
                            "rename `{}` to `cleanup`: with a finalizer the operator calls \
                             `cleanup` when the object is being deleted",
                            function.sig.ident
                        ),
                    ));
                }
                None
            }
            (None, Some(finalizer)) if inherent => {
                errors.push(error_at(
                    &finalizer.node(),
                    format!(
                        "finalizer {} needs a cleanup handler: add `async fn cleanup(&self, \
                         object: Arc<{}>) -> Result<Action>`",
                        finalizer.describe(),
                        expected.resource()
                    ),
                ));
                None
            }
            (None, _) => None,
        };

        // The admission webhooks: their signatures, and the server they need.
        let mut webhook_methods = Vec::new();
        let mut webhook_fn = |kind: WebhookKind| {
            let function = find(kind.name())?;
            webhook_methods.push(function);
            errors.handle(WebhookFn::new(function, kind, &expected))
        };
        let validate = webhook_fn(WebhookKind::Validate);
        let validate_delete = webhook_fn(WebhookKind::ValidateDelete);
        let default = webhook_fn(WebhookKind::Default);
        let webhooks = args
            .webhooks
            .and_then(|keyed| match webhook_methods.is_empty() {
                true => {
                    errors.push(error_at(
                        &keyed.key,
                        format!(
                            "`webhooks = …` serves the admission webhooks of this block, but it \
                             has none: add `async fn validate(&self, new: &{r}, old: \
                             Option<&{r}>) -> Result<(), Denied>` or `async fn default(&self, \
                             obj: &mut {r})`, or remove the key",
                            r = expected.resource()
                        ),
                    ));
                    None
                }
                false => errors.handle(WebhookService::new(&keyed.value)),
            });
        if !webhooks_given && let Some(first) = webhook_methods.first() {
            errors.push(error_at(
                &first.sig.ident,
                format!(
                    "`{}` is an admission webhook and needs the webhook server: add `webhooks = \
                     \"{}-webhooks\"` to `#[kuberator::operator(...)]` (the Service in the \
                     operator's namespace that the API server calls)",
                    first.sig.ident,
                    expected.resource().to_lowercase()
                ),
            ));
        }

        // `ctx.emit(...)` without `events = …` would do nothing: say so where it is called.
        if events.is_none() && !args_events_given(&args.given) {
            for function in [apply.as_ref(), cleanup.as_ref()].into_iter().flatten() {
                if let Some(ctx) = &function.ctx_ident
                    && let Some(body) = find(&function.ident.to_string()).map(|f| &f.block)
                    && let Some(emit) = find_method_call(body.to_token_stream(), ctx, "emit")
                {
                    errors.push(error_at(
                        &emit,
                        "`emit` does nothing without an event recorder: add \
                         `events = \"website-operator\"` (the reporting component) to \
                         `#[kuberator::operator(...)]`",
                    ));
                }
            }
        }

        // Every `None` here comes with an error in `errors`.
        match (handler, resource, caching, concurrency, apply) {
            (Some(handler), Some(resource), Some(caching), Some(concurrency), Some(apply)) => {
                Some(Operator {
                    handler,
                    resource,
                    root,
                    name,
                    field_manager,
                    status_apply,
                    finalizer,
                    legacy_finalizers,
                    namespaces,
                    caching,
                    caching_path,
                    concurrency,
                    skip_observed_on_start,
                    owns,
                    labels,
                    events,
                    leader_election,
                    sharding,
                    health,
                    webhooks,
                    validate,
                    validate_delete,
                    default,
                    apply,
                    cleanup,
                })
            }
            _ => None,
        }
    }
}

/// Names users reach for instead of `cleanup`.
const CLEANUP_NEAR_MISSES: [&str; 6] = [
    "finalize",
    "clean_up",
    "delete",
    "on_delete",
    "cleanup_apply",
    "finalise",
];

/// Whether `events = …` was written (well-formed or not).
fn args_events_given(given: &[String]) -> bool {
    given.iter().any(|key| key == "events")
}

/// A method of the block named like `target` (one of `names`, or a near spelling of `target`).
fn find_near<'a>(item: &'a ItemImpl, names: &[&str], target: &str) -> Option<&'a ImplItemFn> {
    item.items.iter().find_map(|item| match item {
        ImplItem::Fn(function) => {
            let name = function.sig.ident.to_string();
            let near = names.contains(&name.as_str())
                || (name != target && did_you_mean(&name, &[target]).is_some());
            near.then_some(function)
        }
        _ => None,
    })
}

/// The `method` token of the first `receiver.method(` in `tokens`.
fn find_method_call(tokens: TokenStream, receiver: &Ident, method: &str) -> Option<Ident> {
    let trees: Vec<TokenTree> = tokens.into_iter().collect();
    for (i, tree) in trees.iter().enumerate() {
        match tree {
            TokenTree::Group(group) => {
                if let Some(found) = find_method_call(group.stream(), receiver, method) {
                    return Some(found);
                }
            }
            TokenTree::Ident(ident) if ident == receiver => {
                if let (Some(TokenTree::Punct(dot)), Some(TokenTree::Ident(name))) =
                    (trees.get(i + 1), trees.get(i + 2))
                    && dot.as_char() == '.'
                    && name == method
                {
                    return Some(name.clone());
                }
            }
            _ => {}
        }
    }
    None
}

/// `DynamicObject` (kube's untyped object), by its last path segment.
fn is_dynamic(path: &Path) -> bool {
    path.segments
        .last()
        .is_some_and(|segment| segment.ident == "DynamicObject")
}

/// The handler type's name, from `impl Websites { … }`.
fn handler_ident(item: &ItemImpl) -> darling::Result<Ident> {
    let mut errors = Error::accumulator();
    if let Some((path, _)) = &item.trait_ {
        errors.push(error_at(
            path,
            "`#[kuberator::operator]` goes on an inherent impl block, like `impl Websites { ... }`, \
             not on a trait impl",
        ));
    }
    if !item.generics.params.is_empty() {
        errors.push(error_at(
            &item.generics,
            "`#[kuberator::operator]` does not support generic impl blocks: the generated \
             operator type names the handler type",
        ));
    }
    let ident = match path_tail(&item.self_ty) {
        Some((ident, args)) if args.is_empty() => Some(ident.clone()),
        _ => {
            errors.push(error_at(
                &item.self_ty,
                format!(
                    "`#[kuberator::operator]` needs a named handler type without generics, like \
                     `impl Websites`, found `{}`",
                    source(&item.self_ty)
                ),
            ));
            None
        }
    };
    errors.finish()?;
    ident.ok_or_else(|| Error::custom("no handler type"))
}

// ----- handlers -----

/// What the handler signatures must mention.
struct Expected {
    resource: Option<Ident>,
    /// The `resource = …` value, where a disagreement with a handler is reported.
    key: Option<Path>,
}

impl Expected {
    /// The resource's name for messages (`R` when it is unknown).
    fn resource(&self) -> String {
        self.resource
            .as_ref()
            .map_or_else(|| "R".to_owned(), ToString::to_string)
    }

    /// Whether `ty` names the resource (by its last path segment, as the attribute does).
    fn is_resource(&self, ty: &Type) -> bool {
        match (&self.resource, path_tail(ty)) {
            (Some(resource), Some((ident, args))) => ident == resource && args.is_empty(),
            // Without a valid `resource` key there is nothing to compare with.
            (None, _) => true,
            _ => false,
        }
    }
}

/// A validated `async fn apply/cleanup(&self, object: Arc<R>[, ctx: &Ctx<R>]) -> Result<Action>`.
pub(crate) struct HandlerFn {
    pub(crate) ident: Ident,
    /// Whether it takes `ctx: &Ctx<R>` as a second argument.
    pub(crate) takes_ctx: bool,
    /// The object argument's type, `Arc<R>` as written (for spanned forwarding).
    pub(crate) object_ty: Type,
    /// The return type, `Result<Action>` as written.
    pub(crate) output: Type,
    /// The context argument's name, when it is a plain binding (`ctx`).
    pub(crate) ctx_ident: Option<Ident>,
}

impl HandlerFn {
    fn new(function: &ImplItemFn, expected: &Expected) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let sig = &function.sig;
        let name = sig.ident.to_string();
        let resource = expected.resource();
        let shape = format!(
            "`async fn {name}(&self, object: Arc<{resource}>) -> Result<Action>` (optionally with \
             `ctx: &Ctx<{resource}>` after the object)"
        );

        let mut inputs = check_head(sig, &name, &shape, "objects are reconciled", &mut errors);

        let object_ty = match inputs.next() {
            Some(FnArg::Typed(arg)) => errors.handle(object_type(&arg.ty, expected, &name)),
            Some(FnArg::Receiver(_)) => None,
            None => {
                errors.push(error_at_span(
                    sig.paren_token.span.join(),
                    format!("`{name}` must take the object: write {shape}"),
                ));
                None
            }
        };
        let mut ctx_ident = None;
        let takes_ctx = match inputs.next() {
            Some(FnArg::Typed(arg)) => {
                errors.handle(ctx_type(&arg.ty, expected, &name));
                if let Pat::Ident(binding) = &*arg.pat {
                    ctx_ident = Some(binding.ident.clone());
                }
                true
            }
            Some(FnArg::Receiver(_)) | None => false,
        };
        for extra in inputs {
            errors.push(error_at(
                extra,
                format!(
                    "`{name}` takes the object and optionally `ctx: &Ctx<{resource}>`, nothing \
                     more: remove this argument"
                ),
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(error_at(variadic, "remove this argument"));
        }

        let output = match &sig.output {
            ReturnType::Type(_, ty) => errors.handle(return_type(ty, &name)),
            ReturnType::Default => {
                errors.push(error_at_span(
                    sig.paren_token.span.close(),
                    format!("`{name}` must return `Result<Action>`: add `-> Result<Action>`"),
                ));
                None
            }
        };

        let (object_ty, output) = errors.finish_with((object_ty, output))?;
        match (object_ty, output) {
            (Some(object_ty), Some(output)) => Ok(HandlerFn {
                ident: sig.ident.clone(),
                takes_ctx,
                object_ty,
                output,
                ctx_ident,
            }),
            _ => Err(Error::custom("invalid handler").with_span(&sig.ident)),
        }
    }
}

/// The admission methods the block may have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WebhookKind {
    Validate,
    ValidateDelete,
    Default,
}

/// How an admission method takes the object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Borrow {
    /// `&R`
    Shared,
    /// `Option<&R>`
    Optional,
    /// `&mut R`
    Mutable,
}

impl WebhookKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WebhookKind::Validate => "validate",
            WebhookKind::ValidateDelete => "validate_delete",
            WebhookKind::Default => "default",
        }
    }

    /// The arguments after `&self`: (name, how it is taken, what it is).
    fn arguments(self) -> &'static [(&'static str, Borrow, &'static str)] {
        match self {
            WebhookKind::Validate => &[
                ("new", Borrow::Shared, "the object to admit"),
                (
                    "old",
                    Borrow::Optional,
                    "the stored object, `None` on create",
                ),
            ],
            WebhookKind::ValidateDelete => &[("old", Borrow::Shared, "the object to delete")],
            WebhookKind::Default => &[("obj", Borrow::Mutable, "the object to default")],
        }
    }

    /// `async fn validate(&self, new: &Website, old: Option<&Website>) -> Result<(), Denied>`.
    fn shape(self, resource: &str) -> String {
        let arguments: Vec<String> = self
            .arguments()
            .iter()
            .map(|(name, borrow, _)| format!("{name}: {}", borrow.write(resource)))
            .collect();
        let output = match self {
            WebhookKind::Default => "",
            _ => " -> Result<(), Denied>",
        };
        format!(
            "`async fn {}(&self, {}){output}`",
            self.name(),
            arguments.join(", ")
        )
    }
}

impl Borrow {
    fn write(self, resource: &str) -> String {
        match self {
            Borrow::Shared => format!("&{resource}"),
            Borrow::Optional => format!("Option<&{resource}>"),
            Borrow::Mutable => format!("&mut {resource}"),
        }
    }
}

/// A validated admission method: `validate`, `validate_delete` or `default`.
pub(crate) struct WebhookFn {
    pub(crate) ident: Ident,
}

impl WebhookFn {
    fn new(function: &ImplItemFn, kind: WebhookKind, expected: &Expected) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let sig = &function.sig;
        let name = kind.name();
        let resource = expected.resource();
        let shape = kind.shape(&resource);

        let mut inputs = check_head(
            sig,
            name,
            &shape,
            "admission requests are served",
            &mut errors,
        );
        for (argument, borrow, what) in kind.arguments() {
            match inputs.next() {
                Some(FnArg::Typed(arg)) => {
                    errors.handle(webhook_argument(&arg.ty, *borrow, argument, name, expected));
                }
                Some(FnArg::Receiver(_)) => {}
                None => {
                    errors.push(error_at_span(
                        sig.paren_token.span.close(),
                        format!(
                            "`{name}` must also take `{argument}: {}`, {what}: write {shape}",
                            borrow.write(&resource)
                        ),
                    ));
                    break;
                }
            }
        }
        for extra in inputs {
            errors.push(error_at(
                extra,
                format!("`{name}` takes nothing more than {shape}: remove this argument"),
            ));
        }
        if let Some(variadic) = &sig.variadic {
            errors.push(error_at(variadic, "remove this argument"));
        }
        match (kind, &sig.output) {
            (WebhookKind::Default, ReturnType::Default) => {}
            (WebhookKind::Default, output @ ReturnType::Type(_, ty)) => errors.push(error_at(
                output,
                format!(
                    "`default` changes the object in place and returns nothing: remove `-> {}` \
                     (the framework sends the changes as a JSON patch)",
                    source(ty)
                ),
            )),
            (_, ReturnType::Default) => errors.push(error_at_span(
                sig.paren_token.span.close(),
                format!(
                    "`{name}` must return `Result<(), Denied>`: add `-> Result<(), Denied>` \
                     (`Err(Denied::new(\"…\"))` refuses the request with that message)"
                ),
            )),
            (_, ReturnType::Type(_, ty)) => {
                if !is_denial_result(ty) {
                    errors.push(error_at(
                        ty,
                        format!(
                            "`{name}` must return `Result<(), Denied>`, found `{}`: `Ok(())` \
                             admits the object, `Err(Denied::new(\"…\"))` refuses it with that \
                             message",
                            source(ty)
                        ),
                    ));
                }
            }
        }
        errors.finish_with(WebhookFn {
            ident: sig.ident.clone(),
        })
    }
}

/// `Result<(), Denied>` (any path ending in `Result` and `Denied`).
fn is_denial_result(ty: &Type) -> bool {
    match path_tail(ty) {
        Some((ident, args)) if ident == "Result" && args.len() == 2 => {
            matches!(peel(args[0]), Type::Tuple(unit) if unit.elems.is_empty())
                && matches!(path_tail(args[1]), Some((denied, rest)) if denied == "Denied" && rest.is_empty())
        }
        _ => false,
    }
}

/// One object argument of an admission method, as `borrow` says.
fn webhook_argument(
    ty: &Type,
    borrow: Borrow,
    argument: &str,
    name: &str,
    expected: &Expected,
) -> darling::Result<()> {
    let resource = expected.resource();
    let want = borrow.write(&resource);
    let found = source(ty);
    let why = match borrow {
        Borrow::Shared if name == "validate" => {
            "`validate` borrows the object it admits (defaults are set in `default`)"
        }
        Borrow::Shared => "`validate_delete` looks at the object being deleted",
        Borrow::Optional => "`old` is the stored object, `None` on create",
        Borrow::Mutable => "`default` changes the object in place",
    };
    let wrong = || {
        error_at(
            ty,
            format!("expected `{argument}: {want}`, found `{found}`: {why}"),
        )
    };
    let reference = match borrow {
        Borrow::Optional => match crate::util::option_inner(ty) {
            Some(inner) => inner,
            None => return Err(wrong()),
        },
        Borrow::Shared | Borrow::Mutable => ty,
    };
    let Type::Reference(reference) = peel(reference) else {
        return Err(wrong());
    };
    if reference.mutability.is_some() != (borrow == Borrow::Mutable) {
        return Err(wrong());
    }
    if expected.is_resource(&reference.elem) {
        Ok(())
    } else {
        Err(error_at(
            &reference.elem,
            format!(
                "expected `{argument}: {want}`, found `{found}`: the webhook admits the resource \
                 named in `resource = {resource}`"
            ),
        ))
    }
}

/// `Arc<R>`, R the resource.
fn object_type(ty: &Type, expected: &Expected, name: &str) -> darling::Result<Type> {
    let resource = expected.resource();
    match path_tail(ty) {
        Some((ident, args)) if ident == "Arc" && args.len() == 1 => {
            if expected.is_resource(args[0]) {
                Ok(ty.clone())
            } else {
                // The attribute and the handler disagree: report it once, at the attribute.
                let found = source(args[0]);
                let message = format!(
                    "`resource = {resource}` but `{name}` takes `Arc<{found}>`: name the same \
                     type in both, `resource = {found}` or `Arc<{resource}>`"
                );
                Err(match &expected.key {
                    Some(key) => error_at(key, message),
                    None => error_at(args[0], message),
                })
            }
        }
        _ => Err(error_at(
            ty,
            format!(
                "expected `Arc<{resource}>`, found `{}`: `{name}` gets the object as \
                 `Arc<{resource}>`",
                source(ty)
            ),
        )),
    }
}

/// `&Ctx<R>` (any path ending in `Ctx`), R the resource.
fn ctx_type(ty: &Type, expected: &Expected, name: &str) -> darling::Result<()> {
    let resource = expected.resource();
    let mismatch = || {
        error_at(
            ty,
            format!(
                "expected `&Ctx<{resource}>`, found `{}`: the optional second argument of \
                 `{name}` is the context, `ctx: &Ctx<{resource}>`",
                source(ty)
            ),
        )
    };
    let Type::Reference(reference) = peel(ty) else {
        return Err(mismatch());
    };
    if reference.mutability.is_some() {
        return Err(mismatch());
    }
    match path_tail(&reference.elem) {
        Some((ident, args)) if ident == "Ctx" && args.len() == 1 => {
            if expected.is_resource(args[0]) {
                Ok(())
            } else {
                Err(error_at(
                    args[0],
                    format!(
                        "expected `&Ctx<{resource}>`, found `{}`: the context is for the resource \
                         named in `resource = {resource}`",
                        source(ty)
                    ),
                ))
            }
        }
        _ => Err(mismatch()),
    }
}

/// `Result<Action>` or `Result<Action, E>` with `E: Into<kuberator::Error>`.
fn return_type(ty: &Type, name: &str) -> darling::Result<Type> {
    let wrong = |at: &Type| {
        error_at(
            at,
            format!(
                "`{name}` must return `Result<Action>`, found `{}`: `Action` says when to look at \
                 the object again, like `Ok(Action::requeue(Duration::from_secs(300)))`",
                source(ty)
            ),
        )
    };
    match path_tail(ty) {
        Some((ident, args)) if ident == "Result" && matches!(args.len(), 1 | 2) => {
            match path_tail(args[0]) {
                Some((action, action_args)) if action == "Action" && action_args.is_empty() => {
                    Ok(ty.clone())
                }
                _ => Err(wrong(args[0])),
            }
        }
        _ => Err(wrong(ty)),
    }
}

// ----- keys -----

/// A Kubernetes qualified name with a DNS subdomain prefix, e.g. `example.com/cleanup`.
pub(crate) struct FinalizerName {
    name: String,
    span: Span,
}

impl FinalizerName {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let name = lit.value();
        let fail = |detail: String| {
            error_at(
                lit,
                format!(
                    "finalizer `{name}` must be a qualified name like `example.com/cleanup`: \
                     {detail}"
                ),
            )
        };
        // Kubernetes accepts any qualified name (it only recommends a domain prefix you own).
        let Some((prefix, rest)) = name.split_once('/') else {
            if is_qualified_name_part(&name) {
                return Ok(FinalizerName {
                    name,
                    span: lit.span(),
                });
            }
            return Err(fail(
                "at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or \
                 digit, optionally after a DNS subdomain prefix and `/` (recommended: a domain \
                 you own)"
                    .to_owned(),
            ));
        };
        if rest.contains('/') {
            return Err(fail(
                "use one `/` between the domain prefix and the name".to_owned(),
            ));
        }
        if !is_dns_subdomain(prefix) {
            return Err(fail(format!(
                "the prefix `{prefix}` must be a DNS subdomain (lowercase letters, digits, `-` and \
                 `.`, at most 253 characters)"
            )));
        }
        if !is_qualified_name_part(rest) {
            return Err(fail(format!(
                "the name `{rest}` must be at most 63 letters, digits, `-`, `_` or `.`, starting \
                 and ending with a letter or digit"
            )));
        }
        Ok(FinalizerName {
            name,
            span: lit.span(),
        })
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }
}

/// The operator's finalizer: a checked name, or a const the generated code asserts at compile
/// time.
pub(crate) enum Finalizer {
    Name(FinalizerName),
    Const(Path),
}

impl Finalizer {
    /// "`example.com/cleanup`" or "`FINALIZER`", for messages.
    fn describe(&self) -> String {
        match self {
            Finalizer::Name(name) => format!("`{}`", name.as_str()),
            Finalizer::Const(path) => format!("`{}`", source(path)),
        }
    }

    /// The tokens to point at.
    fn node(&self) -> TokenStream {
        match self {
            Finalizer::Name(name) => {
                let lit = LitStr::new(&name.name, name.span);
                lit.to_token_stream()
            }
            Finalizer::Const(path) => path.to_token_stream(),
        }
    }
}

/// A non-empty list of distinct namespaces, with the `namespaces` key for spanned assertions.
pub(crate) struct Namespaces {
    pub(crate) key: Path,
    pub(crate) names: Vec<Namespace>,
}

impl Namespaces {
    fn new(keyed: Keyed<Vec<LitStr>>) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        if keyed.value.is_empty() {
            errors.push(error_at(
                &keyed.key,
                "`namespaces()` is empty: list at least one namespace, like \
                 `namespaces(\"default\")`, or remove it to watch all namespaces",
            ));
        }
        let mut names: Vec<Namespace> = Vec::new();
        for lit in &keyed.value {
            if let Some(namespace) = errors.handle(Namespace::new(lit)) {
                if names.iter().any(|seen| seen.0 == namespace.0) {
                    errors.push(error_at(
                        lit,
                        format!("namespace `{}` is listed twice: remove one", namespace.0),
                    ));
                } else {
                    names.push(namespace);
                }
            }
        }
        errors.finish_with(Namespaces {
            key: keyed.key,
            names,
        })
    }
}

/// A DNS-1123 label: a namespace name.
pub(crate) struct Namespace(String);

impl Namespace {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let name = lit.value();
        if is_dns_label(&name) {
            Ok(Namespace(name))
        } else {
            Err(error_at(
                lit,
                format!(
                    "namespace `{name}` must be a DNS-1123 label: at most 63 lowercase letters, \
                     digits or `-`, starting and ending with a letter or digit"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `kuberator::CachingStrategy`'s variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Caching {
    Strict,
    Adhoc,
    Extendable,
}

impl Caching {
    const NAMES: [&'static str; 3] = ["Strict", "Adhoc", "Extendable"];

    fn new(path: &Path) -> darling::Result<Self> {
        let name = path
            .segments
            .last()
            .map(|segment| segment.ident.to_string())
            .unwrap_or_default();
        match name.as_str() {
            "Strict" => Ok(Caching::Strict),
            "Adhoc" => Ok(Caching::Adhoc),
            "Extendable" => Ok(Caching::Extendable),
            other => Err(error_at(
                path,
                unknown(
                    "caching strategy",
                    other,
                    &Self::NAMES,
                    "expected `Strict`, `Adhoc` or `Extendable`",
                ),
            )),
        }
    }

    /// `Strict` when the namespaces are known up front, `Extendable` when watching all of them.
    pub(crate) fn default_for(has_namespaces: bool) -> Self {
        if has_namespaces {
            Caching::Strict
        } else {
            Caching::Extendable
        }
    }

    pub(crate) fn variant(self) -> &'static str {
        match self {
            Caching::Strict => "Strict",
            Caching::Adhoc => "Adhoc",
            Caching::Extendable => "Extendable",
        }
    }
}

/// How many objects are reconciled at once, at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Concurrency(pub(crate) u16);

impl Concurrency {
    fn new(lit: &syn::LitInt) -> darling::Result<Self> {
        match lit.base10_parse::<u64>() {
            Ok(0) => Err(error_at(
                lit,
                "`concurrency` must be at least 1: `concurrency = 1` (the default) reconciles one \
                 object at a time",
            )),
            Ok(n) => u16::try_from(n).map(Concurrency).map_err(|_| {
                error_at(
                    lit,
                    format!("`concurrency` must be at most {}, found {n}", u16::MAX),
                )
            }),
            Err(_) => Err(error_at(
                lit,
                "expected a positive integer, like `concurrency = 8`",
            )),
        }
    }
}

/// A syntactically valid label selector, e.g. `app=web,tier in (frontend, backend)`.
pub(crate) struct LabelSelector(String);

impl LabelSelector {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let selector = lit.value();
        match check_selector(&selector) {
            Ok(()) => Ok(LabelSelector(selector)),
            Err(detail) => Err(error_at(
                lit,
                format!(
                    "label selector `{selector}` is invalid: {detail}; write requirements like \
                     `app=web`, `tier!=cache`, `env in (prod, staging)` or `!canary`, separated \
                     by commas"
                ),
            )),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The events' reporting component (`reportingController`): a qualified name, e.g.
/// `website-operator` or `websites.example.com/operator`.
pub(crate) struct EventsComponent(String);

impl EventsComponent {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let component = lit.value();
        if is_qualified_name(&component) {
            Ok(EventsComponent(component))
        } else {
            Err(error_at(
                lit,
                format!(
                    "events component `{component}` must be a qualified name like \
                     `website-operator` or `websites.example.com/operator`: it becomes the \
                     events' `reportingController`"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `name = "…"`: a DNS subdomain (it names the RBAC objects too).
pub(crate) struct OperatorName(String);

impl OperatorName {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let name = lit.value();
        if is_dns_subdomain(&name) {
            Ok(OperatorName(name))
        } else {
            Err(error_at(
                lit,
                format!(
                    "operator name `{name}` must be a DNS subdomain like `website-operator`: \
                     lowercase letters, digits, `-` and `.` (it names the controller in logs and \
                     metrics, the field manager and the RBAC objects)"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `field_manager = "…"`: what the API server accepts, 1 to 128 printable ASCII characters.
pub(crate) struct FieldManager(String);

impl FieldManager {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let manager = lit.value();
        if !manager.is_empty()
            && manager.len() <= 128
            && manager.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        {
            Ok(FieldManager(manager))
        } else {
            Err(error_at(
                lit,
                format!(
                    "field manager `{manager}` must be 1 to 128 printable ASCII characters, like \
                     `website-operator` (the API server refuses other names)"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `status_writes = "apply"` (server-side apply) or `"merge"` (the default).
fn status_apply(lit: &LitStr) -> darling::Result<bool> {
    match lit.value().as_str() {
        "apply" => Ok(true),
        "merge" => Ok(false),
        other => Err(error_at(
            lit,
            format!(
                "unknown status writes `{other}`: expected `\"merge\"` (a merge patch, the \
                 default) or `\"apply\"` (server-side apply as the field manager)"
            ),
        )),
    }
}

/// The Lease of leader election: a DNS subdomain name.
pub(crate) struct LeaseName(String);

impl LeaseName {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let name = lit.value();
        if is_dns_subdomain(&name) {
            Ok(LeaseName(name))
        } else {
            Err(error_at(
                lit,
                format!(
                    "lease name `{name}` must be a DNS subdomain like `website-operator`: \
                     lowercase letters, digits, `-` and `.`"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `sharding = "website-operator"`: the shard group, a DNS label of at most 57 characters (its
/// membership Leases are named `<group>-<identity>`, its owner label
/// `kuberator.dev/shard-<group>`).
pub(crate) struct ShardGroup(String);

impl ShardGroup {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let group = lit.value();
        if is_dns_label(&group) && group.len() <= 57 {
            Ok(ShardGroup(group))
        } else {
            Err(error_at(
                lit,
                format!(
                    "shard group `{group}` must be a DNS label of at most 57 characters like \
                     `website-operator`: lowercase letters, digits and `-`"
                ),
            ))
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// `webhooks = "website-webhooks"` (a Service in the operator's namespace) or
/// `webhooks = "shop/website-webhooks"`: where the API server calls the admission webhooks.
pub(crate) struct WebhookService {
    pub(crate) namespace: Option<String>,
    pub(crate) name: String,
}

impl WebhookService {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let value = lit.value();
        let (namespace, name) = match value.split_once('/') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, value.as_str()),
        };
        // A Service name is a DNS-1035 label: it starts with a letter.
        let service_ok = is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase());
        if service_ok && namespace.is_none_or(is_dns_label) {
            Ok(WebhookService {
                namespace: namespace.map(str::to_owned),
                name: name.to_owned(),
            })
        } else {
            Err(error_at(
                lit,
                format!(
                    "webhook Service `{value}` must be a Service name like `website-webhooks` \
                     (in the operator's namespace) or `namespace/name`: lowercase letters, \
                     digits and `-`, starting with a letter"
                ),
            ))
        }
    }
}

/// `owns(Deployment, on = "…")`: which changes of the child re-trigger its owner.
#[derive(Clone, Copy)]
pub(crate) enum ChildOn {
    Spec,
    Status,
}

impl ChildOn {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        match lit.value().as_str() {
            "spec" => Ok(ChildOn::Spec),
            "status" => Ok(ChildOn::Status),
            other => Err(error_at(
                lit,
                format!(
                    "`on = \"{other}\"` is not a choice: write `on = \"status\"` to re-trigger on \
                     every change of the child, status included, or `on = \"spec\"` (the \
                     default: spec changes and deletion)"
                ),
            )),
        }
    }

    pub(crate) fn variant(self) -> &'static str {
        match self {
            ChildOn::Spec => "Spec",
            ChildOn::Status => "Status",
        }
    }
}

/// The health server: its address, paths and extra routes, each checked at compile time.
pub(crate) struct Health {
    pub(crate) addr: HealthAddr,
    pub(crate) liveness: Option<HealthPath>,
    pub(crate) readiness: Option<HealthPath>,
    pub(crate) metrics: Option<HealthPath>,
    pub(crate) routes: Vec<(HealthPath, Path)>,
}

impl Health {
    fn new(value: &super::args::HealthValue) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let addr = match (&value.addr, &value.list) {
            (Some(addr), _) => errors.handle(HealthAddr::new(addr)),
            (None, list) => {
                errors.push(match list {
                    Some(list) => error_at(
                        list,
                        "`health(...)` needs the address: add `addr = \"0.0.0.0:8080\"`",
                    ),
                    None => Error::custom("`health` needs an address"),
                });
                None
            }
        };
        let defaults = ["/healthz", "/readyz", "/metrics"];
        let fixed = [&value.liveness, &value.readiness, &value.metrics];
        // The defaults of the paths not moved are taken too.
        let mut seen: Vec<String> = fixed
            .iter()
            .zip(defaults)
            .filter(|(lit, _)| lit.is_none())
            .map(|(_, default)| default.to_owned())
            .collect();
        let mut path = |lit: &LitStr, errors: &mut darling::error::Accumulator| {
            let checked = errors.handle(HealthPath::new(lit))?;
            if seen.contains(&checked.0) {
                errors.push(error_at(
                    lit,
                    format!(
                        "health path `{}` is used twice: give each endpoint its own path",
                        checked.0
                    ),
                ));
                return None;
            }
            seen.push(checked.0.clone());
            Some(checked)
        };
        let mut checked_fixed = Vec::new();
        for lit in fixed {
            checked_fixed.push(lit.as_ref().and_then(|lit| path(lit, &mut errors)));
        }
        let routes: Vec<(HealthPath, Path)> = value
            .routes
            .iter()
            .filter_map(|(lit, handler)| Some((path(lit, &mut errors)?, handler.clone())))
            .collect();
        let mut fixed = checked_fixed.into_iter();
        let (liveness, readiness, metrics) = (
            fixed.next().flatten(),
            fixed.next().flatten(),
            fixed.next().flatten(),
        );
        errors.finish()?;
        match addr {
            Some(addr) => Ok(Health {
                addr,
                liveness,
                readiness,
                metrics,
                routes,
            }),
            None => Err(Error::custom("`health` needs an address")),
        }
    }
}

/// A path of the health server: starts with `/`, no query, fragment or whitespace (the rule of
/// `HealthRoutes::check` in the runtime).
pub(crate) struct HealthPath(String);

impl HealthPath {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let path = lit.value();
        if !path.starts_with('/') {
            let suggestion = format!("/{}", path.trim());
            return Err(error_at(
                lit,
                format!("health path `{path}` must start with `/`, like `{suggestion}`"),
            ));
        }
        if path.contains(['?', '#']) || path.chars().any(char::is_whitespace) {
            return Err(error_at(
                lit,
                format!(
                    "health path `{path}` must be a plain path without query, fragment or \
                     spaces, like `/health`"
                ),
            ));
        }
        Ok(HealthPath(path))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The health endpoint's address, parsed at compile time.
pub(crate) struct HealthAddr(String);

impl HealthAddr {
    fn new(lit: &LitStr) -> darling::Result<Self> {
        let addr = lit.value();
        match addr.parse::<std::net::SocketAddr>() {
            Ok(_) => Ok(HealthAddr(addr)),
            Err(_) => Err(error_at(
                lit,
                format!(
                    "health address `{addr}` must be an IP address and port like \
                     `0.0.0.0:8080`"
                ),
            )),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

// ----- name rules (k8s.io/apimachinery/pkg/util/validation) -----

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_label_like(s)
}

/// Dot-separated labels, at most 253 characters.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_like)
}

fn is_label_like(s: &str) -> bool {
    let bytes = s.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    matches!((bytes.first(), bytes.last()), (Some(first), Some(last)) if alnum(first) && alnum(last))
        && bytes.iter().all(|b| alnum(b) || *b == b'-')
}

/// The name part of a qualified name: `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63.
pub(crate) fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    s.len() <= 63
        && matches!(
            (bytes.first(), bytes.last()),
            (Some(first), Some(last)) if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
        )
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A qualified name: `[prefix/]name`, prefix a DNS subdomain (also what a label key is).
fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_name_part(name),
        None => is_qualified_name_part(s),
    }
}

/// A label value: empty or a qualified-name part.
fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_name_part(s)
}

/// Checks a label selector's syntax, as `kubectl get -l` accepts it.
pub(crate) fn check_selector(selector: &str) -> Result<(), String> {
    if selector.trim().is_empty() {
        return Err("it is empty".to_owned());
    }
    // Split on commas outside parentheses.
    let mut requirements = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced `)`")?,
            ',' if depth == 0 => {
                requirements.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".to_owned());
    }
    requirements.push(&selector[start..]);

    for requirement in requirements {
        let requirement = requirement.trim();
        let key_ok = |key: &str| {
            if is_qualified_name(key) {
                Ok(())
            } else {
                Err(format!("`{key}` is not a valid label key"))
            }
        };
        let value_ok = |value: &str| {
            if is_label_value(value) {
                Ok(())
            } else {
                Err(format!("`{value}` is not a valid label value"))
            }
        };
        if requirement.is_empty() {
            return Err("it has an empty requirement".to_owned());
        }
        if let Some(key) = requirement.strip_prefix('!') {
            key_ok(key.trim())?;
        } else if let Some(open) = requirement.find('(') {
            let (head, values) = requirement.split_at(open);
            let mut words = head.split_whitespace();
            let (Some(key), Some(op), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("`{requirement}` is not `key in (values)`"));
            };
            if op != "in" && op != "notin" {
                return Err(format!("`{op}` is not `in` or `notin`"));
            }
            key_ok(key)?;
            let values = values
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .ok_or_else(|| format!("`{requirement}` is not `key {op} (values)`"))?;
            for value in values.split(',') {
                value_ok(value.trim())?;
            }
        } else if let Some((key, value)) = ["!=", "==", "="]
            .iter()
            .find_map(|op| requirement.split_once(op))
        {
            key_ok(key.trim())?;
            value_ok(value.trim())?;
        } else {
            key_ok(requirement)?;
        }
    }
    Ok(())
}

/// The checks every handler method shares: an `async fn`, not generic, taking `&self` first
/// (`concurrently` says what runs at once, for the `&mut self` error). Returns the arguments
/// after the receiver.
fn check_head<'a>(
    sig: &'a syn::Signature,
    name: &str,
    shape: &str,
    concurrently: &str,
    errors: &mut darling::error::Accumulator,
) -> syn::punctuated::Iter<'a, FnArg> {
    if sig.asyncness.is_none() {
        errors.push(error_at(
            &sig.fn_token,
            format!("`{name}` must be an `async fn`: write {shape}"),
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(error_at(
            &sig.generics,
            format!("`{name}` cannot be generic: write {shape}"),
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) => match &receiver.kind {
            ReceiverKind::Reference(_, _, None) => {}
            ReceiverKind::Reference(_, _, Some(mutability)) => errors.push(error_at(
                mutability,
                format!(
                    "`{name}` must take `&self`, not `&mut self`: {concurrently} \
                     concurrently, keep mutable state behind a lock"
                ),
            )),
            _ => errors.push(error_at(
                receiver,
                format!("`{name}` must take `&self`: write {shape}"),
            )),
        },
        _ => errors.push(error_at(
            &sig.ident,
            format!("`{name}` must take `&self` first: write {shape}"),
        )),
    }
    inputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_follow_kubernetes() {
        assert!(is_dns_label("shop"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("Shop"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("websites.example.com"));
        assert!(!is_dns_subdomain("example..com"));
        assert!(!is_dns_subdomain("Example.com"));
        assert!(is_qualified_name_part("cleanup"));
        assert!(is_qualified_name_part("Clean_up.v2"));
        assert!(!is_qualified_name_part("clean up"));
        assert!(!is_qualified_name_part("_cleanup"));
    }

    #[test]
    fn finalizer_names_must_be_qualified() {
        let ok: LitStr = syn::parse_quote!("websites.example.com/cleanup");
        assert_eq!(
            FinalizerName::new(&ok).unwrap().as_str(),
            "websites.example.com/cleanup"
        );
        let unprefixed: LitStr = syn::parse_quote!("documents.kube.rs");
        assert!(FinalizerName::new(&unprefixed).is_ok());
        for bad in [
            "clean up",
            "a/b/c",
            "Example.com/cleanup",
            "example.com/",
            "/cleanup",
        ] {
            let lit = LitStr::new(bad, Span::call_site());
            assert!(FinalizerName::new(&lit).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selectors() {
        for good in [
            "app=web",
            "app==web,tier!=cache",
            "env in (prod, staging),!canary",
            "example.com/team notin (a,b)",
            "app",
            "app=",
        ] {
            assert_eq!(check_selector(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "app=web,",
            "app=we b",
            "env in prod",
            "env (a)",
            "(",
            "App Name=x",
        ] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }
}
