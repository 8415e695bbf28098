//! Code generation from the validated [`Operator`] model.
//!
//! Everything generated sits in one anonymous `const _: () = { … };` block, so nothing it names
//! can clash with the user's items, and names the resource only through a local trait,
//! `Reconciled`, whose one bound (`Website: Reconciled`, spanned on the `resource = …` token) is
//! the where clause of every generated item. A type that is not a resource kuberator can reconcile
//! is then one error, there, with a message written for it; the bodies are checked under that
//! bound and add nothing. The same goes for the handler's `Send + Sync + 'static`.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItemFn, ItemImpl, Path, Type};

use super::model::{Finalizer, HandlerFn, Operator};
use crate::paths::Root;
use crate::util::path_tail;

/// A span at the user's token that resolves like the macro's own code: errors land on the token,
/// lints (`clippy::absolute_paths`, …) see generated code (an expansion) and stay quiet, and
/// generated locals (`object`, `result`) still resolve.
fn at(span: Span) -> Span {
    span.resolved_at(Span::call_site())
}

/// Everything generated next to the user's impl block.
pub(crate) fn operator(op: &Operator, handlers: &[ImplItemFn]) -> TokenStream {
    let root = op.root.call_site();
    let private = quote!(#root::__private);
    let handler = &op.handler;
    let resource = &op.resource;
    let resource_span = at(resource.span());
    // The resource as generated code names it: `<Website as Reconciled>::Object`.
    let object = quote_spanned!(resource_span=> <#resource as Reconciled>::Object);
    let reconciled = reconciled_trait(op, resource_span);
    // The bounds every generated item carries, spanned so that their errors are one each.
    let handler_span = at(handler.span());
    let resource_bound = quote_spanned!(resource_span=> #resource: Reconciled);
    let handler_bound = quote_spanned! {handler_span=>
        #handler: ::core::marker::Send + ::core::marker::Sync + 'static
    };
    let bounds = quote!(where #resource_bound, #handler_bound,);

    let apply = forward(op, &op.apply, "apply", &object);
    let cleanup = op
        .cleanup
        .as_ref()
        .map(|cleanup| forward(op, cleanup, "cleanup", &object));

    // The context: namespaces, caching, events, finalizer.
    let namespaces = op.namespaces.as_ref().map(|namespaces| {
        let names = namespaces.names.iter().map(|namespace| namespace.as_str());
        quote!(.namespaces([#(#names),*]))
    });
    let caching = match &op.caching_path {
        // As written (`CachingStrategy::Strict`): the user's import counts, a wrong path is
        // rustc's error at it.
        Some(path) => quote_spanned!(path.span()=> #path),
        None => {
            let variant = format_ident!("{}", op.caching.variant());
            quote!(#root::CachingStrategy::#variant)
        }
    };
    let name = op.name.as_ref().map(|name| {
        let name = name.as_str();
        quote!(.name(#name))
    });
    let field_manager = op.field_manager.as_ref().map(|manager| {
        let manager = manager.as_str();
        quote!(.field_manager(#manager))
    });
    let status_writes = op
        .status_apply
        .then(|| quote!(.status_writes(#root::StatusWrites::Apply)));
    let rbac_name = match &op.name {
        Some(name) => {
            let name = name.as_str();
            quote!(#name)
        }
        None => quote!(#root::handler::operator_name::<#object>()),
    };
    let events = op.events.as_ref().map(|events| {
        let component = events.as_str();
        quote!(.events(#component))
    });
    let (finalizer, finalizer_check) = match &op.finalizer {
        Some(Finalizer::Name(name)) => {
            let name = name.as_str();
            (quote!(::core::option::Option::Some(#name)), None)
        }
        Some(Finalizer::Const(path)) => {
            // A macro cannot read a const: check its value at compile time instead.
            let span = at(path.span());
            let check_root = op.root.at(span);
            (
                quote!(::core::option::Option::Some(#path)),
                Some(quote_spanned! {span=>
                    const _: () = #check_root::__private::check_finalizer(#path);
                }),
            )
        }
        None => (quote!(::core::option::Option::None), None),
    };
    let legacy = (!op.legacy_finalizers.is_empty()).then(|| {
        let names = op.legacy_finalizers.iter().map(|name| name.as_str());
        quote!(.legacy_finalizers([#(#names),*]))
    });

    // The runner: concurrency, label selector, owned kinds (spanned: bounds land on the child).
    let concurrency = proc_macro2::Literal::u16_unsuffixed(op.concurrency.0);
    // Spanned at the key: a resource without an `ObserveGeneration` status is reported there.
    let skip_observed = op
        .skip_observed_on_start
        .as_ref()
        .map(|key| quote_spanned!(at(key.span())=> .skip_observed_on_start(true)));
    let labels = op.labels.as_ref().map(|labels| {
        let selector = labels.as_str();
        quote!(.label_selector(#selector))
    });
    let owns: Vec<TokenStream> = op
        .owns
        .iter()
        .map(|(child, _)| quote_spanned!(at(child.span())=> .owns::<#child>()))
        .collect();
    let owns_on: Vec<TokenStream> = op
        .owns
        .iter()
        .map(|(child, on)| match on {
            Some(on) => {
                let variant = format_ident!("{}", on.variant());
                quote_spanned!(at(child.span())=>
                    .owns_with::<#child>(#root::runtime::ChildChanges::#variant))
            }
            None => quote_spanned!(at(child.span())=> .owns::<#child>()),
        })
        .collect();

    // Production: leader election, the health endpoint, and the RBAC the keys imply.
    let leader_election = op.leader_election.as_ref().map(|lease| {
        let lease = lease.as_str();
        quote! {
            .leader_election(#root::runtime::LeaderElection::in_operator_namespace(
                ::core::clone::Clone::clone(&client),
                #lease,
            ))
        }
    });
    // Sharding: membership Leases in the operator's namespace, like leader election's.
    let sharding = op.sharding.as_ref().map(|group| {
        let group = group.as_str();
        quote! {
            .sharding(#root::runtime::Sharding::in_operator_namespace(&client, #group))
        }
    });
    let rbac_shard_marker = op.sharding.as_ref().map(|_| quote!(.sharded(true)));
    let rbac_shards = op.sharding.as_ref().map(|group| {
        let group = group.as_str();
        quote! {
            let options = options.sharding(
                #root::runtime::Sharding::in_operator_namespace(&client, #group).namespace(),
            );
        }
    });
    // The bundle's probes follow moved health paths (`Bundle::for_operator`).
    let probe_paths = op.health.as_ref().map(|health| {
        let liveness = health.liveness.as_ref().map(|path| {
            let path = path.as_str();
            quote!(.liveness_path(#path))
        });
        let readiness = health.readiness.as_ref().map(|path| {
            let path = path.as_str();
            quote!(.readiness_path(#path))
        });
        quote!(#liveness #readiness)
    });
    let health = op.health.as_ref().map(|health| {
        let addr = health.addr.as_str();
        let mut paths = Vec::new();
        for (method, path) in [
            ("liveness", &health.liveness),
            ("readiness", &health.readiness),
            ("metrics", &health.metrics),
        ] {
            if let Some(path) = path {
                let method = format_ident!("{method}");
                let path = path.as_str();
                paths.push(quote!(.#method(#path)));
            }
        }
        for (path, handler) in &health.routes {
            let path = path.as_str();
            paths.push(quote_spanned!(at(handler.span())=> .route(#path, #handler)));
        }
        let routes = (!paths.is_empty())
            .then(|| quote!(.health_routes(#root::runtime::HealthRoutes::new() #(#paths)*)));
        quote! {
            .health(match #addr.parse() {
                ::core::result::Result::Ok(addr) => addr,
                ::core::result::Result::Err(_) => ::core::unreachable!("checked at compile time"),
            })
            #routes
        }
    });
    let rbac_finalizer = op.finalizer.is_some();
    let rbac_events = op.events.is_some();
    let rbac_lease = op.leader_election.as_ref().map(|lease| {
        let lease = lease.as_str();
        quote! {
            let options = options.leader_election(
                #root::runtime::LeaderElection::in_operator_namespace(
                    ::core::clone::Clone::clone(&client),
                    #lease,
                )
                .namespace(),
            );
        }
    });
    let namespaced = namespaced_assertion(op);

    // The admission webhooks: the handler shared with an adapter, the server at `webhooks = …`.
    let webhook = webhooks(op, &object, &bounds);
    let (webhook_items, add_webhook, webhook_rbac) = match &webhook {
        Some(webhook) => (
            Some(&webhook.items),
            Some(&webhook.add),
            Some(quote! {
                #private::merge_webhook_rbac(&operator, &mut rbac, #rbac_name);
            }),
        ),
        None => (None, None, None),
    };
    let webhook_setup = webhook.as_ref().map(|webhook| &webhook.setup);
    // The bundle's webhook Service and configurations (`Bundle::for_operator`).
    let webhook_options = op.webhooks.as_ref().map(|service| {
        let service = match &service.namespace {
            Some(namespace) => format!("{namespace}/{}", service.name),
            None => service.name.clone(),
        };
        let (validates, deletes, defaults) = (
            op.validate.is_some(),
            op.validate_delete.is_some(),
            op.default.is_some(),
        );
        quote! {
            .webhooks(#service)
            .validates(#validates)
            .validates_deletes(#deletes)
            .defaults(#defaults)
        }
    });
    let rbac_mut = webhook.as_ref().map(|_| quote!(mut));

    let user_handlers = user_handlers(handler, handlers);

    quote! {
        const _: () = {
        #user_handlers

        #[allow(unused_qualifications, clippy::all, clippy::pedantic, clippy::nursery)]
        const _: () = {
            #reconciled

            /// The operator generated by `#[kuberator::operator]`: the handler and its context.
            struct HandlerOperator #bounds {
                handler: ::std::sync::Arc<#handler>,
                ctx: #root::Ctx<#object>,
            }

            #webhook_items

            #[automatically_derived]
            impl #root::Handler<#object> for HandlerOperator #bounds {
                fn ctx(&self) -> &#root::Ctx<#object> {
                    &self.ctx
                }

                #apply

                #cleanup

                fn on_error<'life0, 'life1, 'async_trait>(
                    &'life0 self,
                    object: ::std::sync::Arc<#object>,
                    error: &'life1 #root::Error,
                ) -> ::core::pin::Pin<::std::boxed::Box<
                    dyn ::core::future::Future<Output = ()> + ::core::marker::Send + 'async_trait,
                >>
                where
                    'life0: 'async_trait,
                    'life1: 'async_trait,
                    Self: 'async_trait,
                {
                    ::std::boxed::Box::pin(async move {
                        // Records the error in status when the status supports it
                        // (`RecordError`; `#[derive(ObserveGeneration)]` with an error slot
                        // requires `Default`, so this cannot fall through silently).
                        #[allow(unused_imports)]
                        use #private::{RecordNothing as _, RecordViaStatus as _};
                        (&#private::StatusProbe::<#object>::new())
                            .record(&self.ctx, &object, error)
                            .await;
                    })
                }
            }

            #[automatically_derived]
            impl #root::IntoOperator for #handler #bounds {
                type Resource = #object;

                fn operator(
                    self,
                    client: #private::kube::Client,
                ) -> #root::Result<#root::Operator<#object>> {
                    let ctx = #root::Ctx::<#object>::builder(::core::clone::Clone::clone(&client))
                        #name
                        #field_manager
                        #status_writes
                        #namespaces
                        .caching(#caching)
                        #events
                        .finalizer(#finalizer)
                        #legacy
                        .build()?;
                    let handler = ::std::sync::Arc::new(self);
                    #webhook_setup
                    ::core::result::Result::Ok(
                        #root::Operator::new(HandlerOperator { handler, ctx })
                            .concurrency(#concurrency)
                            #skip_observed
                            #labels
                            #(#owns_on)*
                            #leader_election
                            #sharding
                            #health
                            #add_webhook
                    )
                }

                fn rbac_options() -> #root::manifests::RbacOptions {
                    #root::manifests::RbacOptions::new(#rbac_name)
                        #namespaces
                        .finalizer(#rbac_finalizer)
                        .events(#rbac_events)
                        #(#owns)*
                        #rbac_shard_marker
                        #probe_paths
                        #webhook_options
                }

                async fn run(self, client: #private::kube::Client) -> #root::Result<()> {
                    let options = <Self as #root::IntoOperator>::rbac_options();
                    #rbac_lease
                    #rbac_shards
                    let #rbac_mut rbac = #root::manifests::rbac_rules_for::<#object>(&options);
                    let operator = <Self as #root::IntoOperator>::operator(self, client)?;
                    #webhook_rbac
                    operator
                        .check_permissions(rbac)
                        .shutdown_on_signal()
                        .run()
                        .await
                }
            }

            #namespaced
            #finalizer_check
        };
        };
    }
}

/// The user's `apply` and `cleanup` as written, as the impl of `UserHandlers`, a trait local to
/// this expansion (so two operator blocks on one type do not clash by method name); the trait
/// declares their signatures with plain argument names.
fn user_handlers(handler: &syn::Ident, handlers: &[ImplItemFn]) -> TokenStream {
    let declarations = handlers.iter().map(|function| {
        let mut sig = function.sig.clone();
        for (index, input) in sig.inputs.iter_mut().enumerate() {
            if let syn::FnArg::Typed(arg) = input {
                let name = format_ident!("arg{}", index);
                *arg.pat = syn::parse_quote!(#name);
            }
        }
        quote!(#sig;)
    });
    quote! {
        /// `apply` and `cleanup` as the handler's block writes them.
        trait UserHandlers {
            #(#declarations)*
        }

        impl UserHandlers for #handler {
            #(#handlers)*
        }
    }
}

/// The local trait every generated item names the resource through; its `on_unimplemented`
/// message is the one error for a type that is not a resource kuberator can reconcile.
fn reconciled_trait(op: &Operator, span: Span) -> TokenStream {
    let root = op.root.call_site();
    let private = quote!(#root::__private);
    let name = op
        .resource
        .segments
        .last()
        .map(|segment| segment.ident.to_string())
        .unwrap_or_default();
    let message = format!("`{name}` is not a resource kuberator can reconcile");
    let label = match name.strip_suffix("Spec") {
        Some(kind) if !kind.is_empty() => format!(
            "`#[derive(CustomResource)]` on `{name}` generates `{kind}`: write `resource = {kind}`"
        ),
        _ => format!("`{name}` is not a Kubernetes resource"),
    };
    let note = "`resource = …` names a typed Kubernetes object: the kind a \
                `#[derive(CustomResource)]` generates (not its spec), or a `k8s_openapi` type; it \
                must be `Clone + Debug + Serialize + DeserializeOwned` with `DynamicType = ()`";
    quote_spanned! {span=>
        // `pub` only because `IntoOperator::Resource` names it; unnameable in this `const _`.
        #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
        #[allow(unreachable_pub)]
        pub trait Reconciled {
            type Object: #root::finalize::Object
                + #private::kube::Resource<Scope: #root::cache::ApiScope>;
            fn object(object: ::std::sync::Arc<Self::Object>) -> ::std::sync::Arc<Self>;
            fn object_ref(object: &Self::Object) -> &Self;
            fn object_mut(object: &mut Self::Object) -> &mut Self;
            fn ctx(ctx: &#root::Ctx<Self::Object>) -> &#root::Ctx<Self>
            where
                Self: #root::finalize::Object;
        }

        impl<T> Reconciled for T
        where
            T: #root::finalize::Object,
            <T as #private::kube::Resource>::Scope: #root::cache::ApiScope,
        {
            type Object = T;
            fn object(object: ::std::sync::Arc<T>) -> ::std::sync::Arc<T> {
                object
            }
            fn object_ref(object: &T) -> &T {
                object
            }
            fn object_mut(object: &mut T) -> &mut T {
                object
            }
            fn ctx(ctx: &#root::Ctx<T>) -> &#root::Ctx<T> {
                ctx
            }
        }
    }
}

/// `apply` / `cleanup` of the `Handler` impl (as `async_trait` declares them, with every path
/// absolute), forwarding to the user's method.
fn forward(op: &Operator, function: &HandlerFn, name: &str, object: &TokenStream) -> TokenStream {
    let root = op.root.call_site();
    let resource = &op.resource;
    let handler = &op.handler;
    let method = format_ident!("{}", name);
    let user_method = &function.ident;
    let argument = quote_spanned!(at(function.object_ty.span())=>
        <#resource as Reconciled>::object(object)
    );
    let ctx = function
        .takes_ctx
        .then(|| quote!(, <#resource as Reconciled>::ctx(&self.ctx)));
    let output = &function.output;
    // Spanned on the user's return type: an error type without `Into<kuberator::Error>` is
    // reported there.
    let convert_root = op.root.at(at(output.span()));
    let convert = quote_spanned! {at(output.span())=>
        #convert_root::__private::into_result(result)
    };
    quote! {
        fn #method<'life0, 'async_trait>(
            &'life0 self,
            object: ::std::sync::Arc<#object>,
        ) -> ::core::pin::Pin<::std::boxed::Box<
            dyn ::core::future::Future<Output = #root::Result<#root::Action>>
                + ::core::marker::Send
                + 'async_trait,
        >>
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            ::std::boxed::Box::pin(async move {
                let result: #output =
                    <#handler as UserHandlers>::#user_method(&self.handler, #argument #ctx).await;
                #convert
            })
        }
    }
}

/// The generated admission webhook of an operator with `validate`, `validate_delete` or
/// `default`.
struct Webhooks {
    /// `HandlerWebhook` and its `Validator` / `Defaulter` impls.
    items: TokenStream,
    /// `let webhook = …;` in `IntoOperator::operator`.
    setup: TokenStream,
    /// `.webhook(webhook).webhook_server(…)` on the operator.
    add: TokenStream,
}

fn webhooks(op: &Operator, object: &TokenStream, bounds: &TokenStream) -> Option<Webhooks> {
    let service = op.webhooks.as_ref()?;
    let root = op.root.call_site();
    let handler = &op.handler;
    let resource = &op.resource;
    let pinned = |output: TokenStream| {
        quote! {
            ::core::pin::Pin<::std::boxed::Box<
                dyn ::core::future::Future<Output = #output> + ::core::marker::Send + 'async_trait,
            >>
        }
    };
    let denial = pinned(quote!(::core::result::Result<(), #root::webhook::Denied>));
    let validate = op.validate.as_ref().map(|function| {
        let user = &function.ident;
        quote! {
            <#handler as UserHandlers>::#user(
                &self.handler,
                <#resource as Reconciled>::object_ref(new),
                old.map(<#resource as Reconciled>::object_ref),
            )
            .await
        }
    });
    // `validate_delete` alone: creates and updates pass.
    let validate = validate.unwrap_or_else(|| quote!(::core::result::Result::Ok(())));
    let validate_delete = op.validate_delete.as_ref().map(|function| {
        let user = &function.ident;
        quote! {
            fn validate_delete<'life0, 'life1, 'async_trait>(
                &'life0 self,
                old: &'life1 #object,
            ) -> #denial
            where
                'life0: 'async_trait,
                'life1: 'async_trait,
                Self: 'async_trait,
            {
                ::std::boxed::Box::pin(async move {
                    <#handler as UserHandlers>::#user(
                        &self.handler,
                        <#resource as Reconciled>::object_ref(old),
                    )
                    .await
                })
            }
        }
    });
    let validator = (op.validate.is_some() || op.validate_delete.is_some()).then(|| {
        quote! {
            #[automatically_derived]
            impl #root::webhook::Validator<#object> for HandlerWebhook #bounds {
                fn validate<'life0, 'life1, 'life2, 'async_trait>(
                    &'life0 self,
                    new: &'life1 #object,
                    old: ::core::option::Option<&'life2 #object>,
                ) -> #denial
                where
                    'life0: 'async_trait,
                    'life1: 'async_trait,
                    'life2: 'async_trait,
                    Self: 'async_trait,
                {
                    ::std::boxed::Box::pin(async move { #validate })
                }

                #validate_delete
            }
        }
    });
    let nothing = pinned(quote!(()));
    let defaulter = op.default.as_ref().map(|function| {
        let user = &function.ident;
        quote! {
            #[automatically_derived]
            impl #root::webhook::Defaulter<#object> for HandlerWebhook #bounds {
                fn default<'life0, 'life1, 'async_trait>(
                    &'life0 self,
                    obj: &'life1 mut #object,
                ) -> #nothing
                where
                    'life0: 'async_trait,
                    'life1: 'async_trait,
                    Self: 'async_trait,
                {
                    ::std::boxed::Box::pin(async move {
                        <#handler as UserHandlers>::#user(
                            &self.handler,
                            <#resource as Reconciled>::object_mut(obj),
                        )
                        .await;
                    })
                }
            }
        }
    });
    let items = quote! {
        /// The handler's admission methods as the webhook server calls them.
        struct HandlerWebhook #bounds {
            handler: ::std::sync::Arc<#handler>,
        }

        #validator
        #defaulter
    };

    let with_validator = validator.as_ref().map(
        |_| quote!(.validator(HandlerWebhook { handler: ::core::clone::Clone::clone(&handler) })),
    );
    let deletes = op
        .validate_delete
        .as_ref()
        .map(|_| quote!(.validate_deletes(true)));
    let with_defaulter = defaulter.as_ref().map(
        |_| quote!(.defaulter(HandlerWebhook { handler: ::core::clone::Clone::clone(&handler) })),
    );
    let setup = quote! {
        let webhook = #root::webhook::Webhook::<#object>::new()
            #with_validator
            #deletes
            #with_defaulter;
    };
    let name = &service.name;
    let server = match &service.namespace {
        Some(namespace) => quote!(#root::webhook::WebhookServer::in_cluster(#namespace, #name)),
        None => quote!(#root::webhook::WebhookServer::in_operator_namespace(&client, #name)),
    };
    let add = quote!(.webhook(webhook).webhook_server(#server));
    Some(Webhooks { items, setup, add })
}

/// With `namespaces(...)`: the resource must be namespaced, asserted on the key.
fn namespaced_assertion(op: &Operator) -> Option<TokenStream> {
    let resource = &op.resource;
    let resource_name = resource_name(resource);
    op.namespaces.as_ref().map(|namespaces| {
        let span = at(namespaces.key.span());
        let root = op.root.at(span);
        let message = format!(
            "`namespaces(...)` needs a namespaced resource, but `{resource_name}` is cluster-scoped"
        );
        let label = format!("`{resource_name}` is cluster-scoped");
        quote_spanned! {span=>
            const _: fn() = || {
                #[diagnostic::on_unimplemented(
                    message = #message,
                    label = #label,
                    note = "remove `namespaces(...)`: a cluster-scoped operator watches the whole cluster"
                )]
                trait NamespacedScope {}
                impl NamespacedScope for #root::__private::k8s_openapi::NamespaceResourceScope {}
                fn namespaced<S: NamespacedScope>() {}
                namespaced::<<<#resource as Reconciled>::Object as #root::__private::kube::Resource>::Scope>();
            };
        }
    })
}

/// `Website` for `crate::api::Website`.
fn resource_name(resource: &Path) -> String {
    resource
        .segments
        .last()
        .map(|segment| segment.ident.to_string())
        .unwrap_or_default()
}

/// Items that keep the rest of the crate compiling while the errors are shown: `IntoOperator`
/// with unreachable bodies, for the resource the handler names (so that a wrong `resource = …`
/// is not reported again here).
pub(crate) fn dummy(item: &ItemImpl, resource: Option<&Type>, root: &Root) -> TokenStream {
    let root = root.call_site();
    let private = quote!(#root::__private);
    let Some((handler, args)) = path_tail(&item.self_ty) else {
        return TokenStream::new();
    };
    if !args.is_empty() || item.trait_.is_some() || !item.generics.params.is_empty() {
        return TokenStream::new();
    }
    let Some(resource) = resource else {
        return TokenStream::new();
    };
    quote! {
        #[allow(dead_code, unreachable_pub)]
        const _: () = {
            impl #root::IntoOperator for #handler {
                type Resource = #resource;
                fn operator(
                    self,
                    _client: #private::kube::Client,
                ) -> #root::Result<#root::Operator<#resource>> {
                    ::core::unreachable!()
                }
                fn rbac_options() -> #root::manifests::RbacOptions {
                    ::core::unreachable!()
                }
                async fn run(self, _client: #private::kube::Client) -> #root::Result<()> {
                    ::core::unreachable!()
                }
            }
        };
    }
}
