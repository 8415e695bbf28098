//! `#[kuberator::operator(...)]`: parse the arguments ([`args`]), validate them against the impl
//! block ([`model`]), generate the operator ([`expand`]).

mod args;
mod expand;
mod model;

use darling::Error;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{ImplItem, ItemImpl, Type};

use args::OperatorArgs;
use model::Operator;

use crate::paths::Root;
use crate::util::path_tail;

/// Entry point: the user's impl block unchanged, plus the generated operator, or plus the errors
/// and dummy items (so that one mistake is one message).
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    crate::util::forget_errors();
    let item_impl: ItemImpl = match syn::parse2(item.clone()) {
        Ok(item_impl) => item_impl,
        Err(_) => {
            let error = Error::custom(
                "`#[kuberator::operator]` goes on the handler's impl block, like \
                 `#[kuberator::operator(resource = Website)] impl Websites { async fn apply(...) }`",
            )
            .with_span(&Span::call_site());
            let mut tokens = crate::util::write_errors(error);
            tokens.extend(item);
            return tokens;
        }
    };
    let mut errors = Error::accumulator();
    let args = OperatorArgs::parse(attr, &mut errors);
    let root = Root::new(args.krate.as_ref().map(|keyed| keyed.value.clone()));
    let operator = Operator::new(args, &item_impl, &mut errors);

    let mut tokens = TokenStream::new();
    match errors.finish_with(operator) {
        Ok(Some(operator)) => {
            // The handlers move into a trait only the generated code can name, so a
            // second operator block on the same type is one error (two `IntoOperator` impls),
            // not also duplicate and ambiguous methods.
            let (rest, handlers) = split_handlers(quiet_handlers(&item_impl));
            if !rest.items.is_empty() {
                tokens.extend(rest.to_token_stream());
            }
            tokens.extend(expand::operator(&operator, &handlers));
        }
        Ok(None) => tokens.extend(quiet_handlers(&item_impl).to_token_stream()),
        Err(errors) => {
            tokens.extend(quiet_handlers(&item_impl).to_token_stream());
            tokens.extend(crate::util::write_errors(errors));
            tokens.extend(expand::dummy(
                &item_impl,
                handler_resource(&item_impl),
                &root,
            ));
        }
    }
    tokens
}

/// The methods the generated operator calls: the reconcile handlers and the admission webhooks.
const HANDLERS: [&str; 5] = ["apply", "cleanup", "validate", "validate_delete", "default"];

fn is_handler(function: &syn::ImplItemFn) -> bool {
    HANDLERS.iter().any(|name| function.sig.ident == name)
}

/// The user's block as written, with `clippy::unused_async` allowed on the handlers: they must
/// be `async` (the operator awaits them) even when they do not await anything.
fn quiet_handlers(item: &ItemImpl) -> ItemImpl {
    let mut item = item.clone();
    for member in &mut item.items {
        if let ImplItem::Fn(function) = member
            && is_handler(function)
        {
            function
                .attrs
                .push(syn::parse_quote!(#[allow(clippy::unused_async)]));
        }
    }
    item
}

/// The block without the handlers ([`HANDLERS`]), and those.
fn split_handlers(mut item: ItemImpl) -> (ItemImpl, Vec<syn::ImplItemFn>) {
    let mut handlers = Vec::new();
    item.items.retain(|member| match member {
        ImplItem::Fn(function) if is_handler(function) => {
            let mut function = function.clone();
            // A trait impl's methods have no visibility of their own.
            function.vis = syn::Visibility::Inherited;
            handlers.push(function);
            false
        }
        _ => true,
    });
    (item, handlers)
}

/// `R` of `apply(&self, object: Arc<R>)` as the user wrote it, for the dummy items.
fn handler_resource(item: &ItemImpl) -> Option<&Type> {
    item.items.iter().find_map(|member| match member {
        ImplItem::Fn(function) if function.sig.ident == "apply" => {
            function.sig.inputs.iter().nth(1).and_then(|arg| match arg {
                syn::FnArg::Typed(arg) => match path_tail(&arg.ty) {
                    // Not `DynamicObject`: that is refused, not stood in for.
                    Some((ident, args)) if ident == "Arc" && args.len() == 1 => {
                        match path_tail(args[0]) {
                            Some((inner, _)) if inner == "DynamicObject" => None,
                            _ => Some(args[0]),
                        }
                    }
                    _ => None,
                },
                syn::FnArg::Receiver(_) => None,
            })
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::expand;
    use crate::golden::{assert_golden, pretty};

    #[test]
    fn golden_all_keys() {
        let attr = quote! {
            resource = Website,
            finalizer = "websites.example.com/cleanup",
            namespaces("default", "shop"),
            caching = Strict,
            concurrency = 8,
            owns(ConfigMap, Service),
            labels = "app=web",
            events = "website-operator",
        };
        let item = quote! {
            impl Websites {
                async fn apply(&self, site: Arc<Website>) -> Result<Action> {
                    Ok(Action::await_change())
                }
                async fn cleanup(&self, site: Arc<Website>, ctx: &Ctx<Website>) -> Result<Action> {
                    Ok(Action::await_change())
                }
            }
        };
        assert_golden("operator", &expand(attr, item));
    }

    #[test]
    fn golden_webhooks() {
        let attr = quote! {
            resource = Website,
            webhooks = "website-webhooks",
        };
        let item = quote! {
            impl Websites {
                async fn apply(&self, site: Arc<Website>) -> Result<Action> {
                    Ok(Action::await_change())
                }
                async fn validate(&self, new: &Website, old: Option<&Website>) -> Result<(), Denied> {
                    Ok(())
                }
                async fn default(&self, obj: &mut Website) {}
            }
        };
        assert_golden("operator_webhooks", &expand(attr, item));
    }

    #[test]
    fn webhook_signature_errors_come_all_at_once() {
        let out = expand(
            quote!(resource = Website),
            quote! {
                impl Websites {
                    async fn apply(&self, site: Arc<Website>) -> Result<Action> { todo!() }
                    fn validate(&mut self, new: Website) {}
                    async fn default(&self, obj: &Website) -> Website { todo!() }
                }
            },
        )
        .to_string();
        // validate: not async, `&mut self`, `new` by value, no `old`, no return type;
        // default: `&Website`, a return type; no `webhooks = …`.
        assert_eq!(out.matches("compile_error").count(), 8, "{out}");
    }

    #[test]
    fn defaults_without_optional_keys() {
        let out = pretty(&expand(
            quote!(resource = Website),
            quote! {
                impl Websites {
                    async fn apply(&self, site: Arc<Website>) -> Result<Action> { todo!() }
                    fn helper(&self) {}
                }
            },
        ));
        assert!(
            out.contains(".caching(::kuberator::CachingStrategy::Extendable)"),
            "{out}"
        );
        assert!(
            out.contains(".finalizer(::core::option::Option::None)"),
            "{out}"
        );
        assert!(out.contains(".concurrency(1)"), "{out}");
        assert!(!out.contains("async fn cleanup"), "{out}");
        assert!(!out.contains("NamespacedScope"), "{out}");
    }

    #[test]
    fn sharding_joins_a_group_in_the_operator_namespace_and_marks_the_rbac() {
        let out = pretty(&expand(
            quote!(resource = Website, sharding = "website-operator"),
            quote! {
                impl Websites {
                    async fn apply(&self, site: Arc<Website>) -> Result<Action> { todo!() }
                }
            },
        ));
        let compact: String = out.split_whitespace().collect();
        assert!(
            compact.contains(
                ".sharding(::kuberator::runtime::Sharding::in_operator_namespace(&client,\"website-operator\",),)"
            ),
            "{out}"
        );
        assert!(compact.contains(".sharded(true)"), "{out}");
        assert!(compact.contains("options.sharding("), "{out}");
        let wrong = expand(
            quote!(resource = Website, sharding = "Web_Site"),
            quote!(impl Websites { async fn apply(&self, o: Arc<Website>) -> Result<Action> {} }),
        )
        .to_string();
        assert!(
            wrong.contains("shard group `Web_Site` must be a DNS label"),
            "{wrong}"
        );
    }

    #[test]
    fn unparseable_arguments_are_one_error() {
        let out = expand(
            quote!(resource = ),
            quote!(impl Websites { async fn apply(&self, o: Arc<Website>) -> Result<Action> {} }),
        )
        .to_string();
        assert_eq!(out.matches("compile_error").count(), 1, "{out}");
        let out = expand(quote!(resource = Website,, ), quote!(impl Websites {})).to_string();
        assert!(out.contains("compile_error"), "{out}");
        assert!(!out.contains("missing `resource"), "{out}");
    }

    #[test]
    fn every_error_at_once_keeps_the_item_and_adds_dummies() {
        let out = expand(
            quote!(
                resource = Website,
                finaliser = "x",
                concurrency = 0,
                namespaces()
            ),
            quote! {
                impl Websites {
                    fn apply(&mut self, site: Website) -> Action { todo!() }
                }
            },
        )
        .to_string();
        // unknown key, concurrency, empty namespaces, not async, `&mut self`, argument, return.
        assert_eq!(out.matches("compile_error").count(), 7, "{out}");
        assert!(
            out.contains("fn apply (& mut self , site : Website) -> Action"),
            "{out}"
        );
    }
}
