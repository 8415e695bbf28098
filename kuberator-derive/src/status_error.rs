//! `#[derive(AsStatusError)]`: a user error enum becomes a status error (`AsStatusError`), knows
//! its retry class and reason (`ClassifyError`), and converts into `kuberator::Error` for `?`.

use darling::ast::NestedMeta;
use darling::{Error, FromMeta};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Generics, Ident, LitStr, Meta, Type};

use crate::duration::parse_millis;
use crate::observe_generation::crate_attr;
use crate::paths::Root;
use crate::util::{error_at, one_of, unknown};

/// The attribute on the enum (target type) and on variants (options).
const ATTR: &str = "status_error";
/// Every option a variant accepts.
const OPTIONS: [&str; 4] = ["reason", "retry", "terminal", "requeue_after"];
/// The retry classes, as written in the attribute.
const CLASSES: [&str; 3] = ["retry", "terminal", "requeue_after"];

/// Entry point: the derive's output, or the errors plus dummy impls.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    crate::util::forget_errors();
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Error::accumulator();
    let root = Root::new(errors.handle(crate_attr(&input.attrs)).flatten());
    let target = errors.handle(target_type(&input));
    let model = ErrorEnum::from_input(&input, target.clone(), root.clone(), &mut errors);
    match errors.finish_with(model) {
        Ok(Some(model)) => model.expand(),
        Ok(None) => TokenStream::new(),
        Err(errors) => {
            let mut tokens = crate::util::write_errors(errors);
            // The type even when the attribute around it is wrong: no cascade of unused imports.
            let target = target.or_else(|| lenient_target(&input));
            tokens.extend(dummy(&input, target.as_ref(), &root));
            tokens
        }
    }
}

// ----- receivers: what the attributes say, before validation -----

/// The options of one variant, as written: `#[status_error(reason = "…", terminal)]`.
#[derive(Default)]
struct VariantOptions {
    reason: Option<LitStr>,
    class: Option<ClassOption>,
}

/// A retry class as written.
struct ClassOption {
    name: &'static str,
    /// The duration literal of `requeue_after`.
    after: Option<LitStr>,
}

impl FromMeta for VariantOptions {
    fn from_list(items: &[NestedMeta]) -> darling::Result<Self> {
        let mut options = VariantOptions::default();
        options.merge(items)?;
        Ok(options)
    }
}

impl VariantOptions {
    /// Adds the items of one attribute, collecting every error.
    fn merge(&mut self, items: &[NestedMeta]) -> darling::Result<()> {
        let mut errors = Error::accumulator();
        for item in items {
            let meta = match item {
                NestedMeta::Meta(meta) => meta,
                NestedMeta::Lit(lit) => {
                    errors.push(error_at(
                        lit,
                        format!(
                            "expected an option, found a literal: use {}",
                            one_of(&OPTIONS)
                        ),
                    ));
                    continue;
                }
                NestedMeta::NameValueInvalidExpr(invalid) => {
                    errors.push(error_at(&invalid.value, "expected a string literal"));
                    continue;
                }
            };
            let path = meta.path();
            let name = path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_else(|| crate::util::source(path));
            match (name.as_str(), meta) {
                ("reason", Meta::NameValue(_)) => {
                    if let Some(lit) =
                        errors.handle(string_value(meta, "reason = \"ImageMissing\""))
                    {
                        if self.reason.is_some() {
                            errors.push(error_at(path, "`reason` is given twice: keep one"));
                        }
                        self.reason = Some(lit);
                    }
                }
                ("reason", _) => errors.push(error_at(
                    meta,
                    "`reason` needs a value: `reason = \"ImageMissing\"`",
                )),
                ("requeue_after", Meta::NameValue(_)) => {
                    if let Some(lit) = errors.handle(string_value(meta, "requeue_after = \"30s\""))
                    {
                        errors.handle(self.set_class("requeue_after", path.span(), Some(lit)));
                    }
                }
                ("requeue_after", _) => errors.push(error_at(
                    meta,
                    "`requeue_after` needs a duration: `requeue_after = \"30s\"`",
                )),
                (class @ ("retry" | "terminal"), Meta::Path(_)) => {
                    let class = if class == "retry" {
                        "retry"
                    } else {
                        "terminal"
                    };
                    errors.handle(self.set_class(class, path.span(), None));
                }
                (class @ ("retry" | "terminal"), _) => errors.push(error_at(
                    meta,
                    format!("`{class}` takes no value: write `{class}`"),
                )),
                (other, Meta::Path(_)) => errors.push(error_at(
                    path,
                    unknown(
                        "retry class",
                        other,
                        &CLASSES,
                        "expected `retry` (the default), `terminal` or `requeue_after = \"30s\"`",
                    ),
                )),
                (other, _) => errors.push(error_at(
                    path,
                    unknown(
                        "option",
                        other,
                        &OPTIONS,
                        &format!("expected {}", one_of(&OPTIONS)),
                    ),
                )),
            }
        }
        errors.finish()
    }

    fn set_class(
        &mut self,
        name: &'static str,
        span: Span,
        after: Option<LitStr>,
    ) -> darling::Result<()> {
        if let Some(previous) = &self.class {
            let message = if previous.name == name {
                format!("`{name}` is given twice: keep one")
            } else {
                format!(
                    "conflicting retry classes `{}` and `{name}`: a variant has one retry class, \
                     keep one of them",
                    previous.name
                )
            };
            return Err(Error::custom(message).with_span(&span));
        }
        self.class = Some(ClassOption { name, after });
        Ok(())
    }
}

/// The string literal of `key = "…"`.
fn string_value(meta: &Meta, example: &str) -> darling::Result<LitStr> {
    if let Meta::NameValue(nv) = meta {
        if let syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(lit),
            ..
        }) = &nv.value
        {
            return Ok(lit.clone());
        }
        return Err(error_at(
            &nv.value,
            format!("expected a string literal, like `{example}`"),
        ));
    }
    Err(error_at(meta, format!("expected `{example}`")))
}

/// The type at the start of the enum's `#[status_error(Type, …)]`, whatever follows it.
fn lenient_target(input: &DeriveInput) -> Option<Type> {
    input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(ATTR))
        .find_map(|attr| {
            attr.parse_args_with(|stream: syn::parse::ParseStream| {
                let ty: Type = stream.parse()?;
                let _: TokenStream = stream.parse()?;
                Ok(ty)
            })
            .ok()
        })
}

/// The target type from `#[status_error(Type)]` on the enum.
fn target_type(input: &DeriveInput) -> darling::Result<Type> {
    let mut errors = Error::accumulator();
    let mut found: Option<Type> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
        let parsed = match &attr.meta {
            Meta::List(list) => list.parse_args::<Type>().map_err(|_| {
                // `#[status_error(StatusError, terminal)]`: a retry class on the enum.
                let parts = list.parse_args_with(
                    syn::punctuated::Punctuated::<NestedMeta, syn::Token![,]>::parse_terminated,
                );
                let misplaced = parts.ok().and_then(|parts| {
                    parts.into_iter().skip(1).find(|part| match part {
                        NestedMeta::Meta(meta) => {
                            OPTIONS.iter().any(|option| meta.path().is_ident(option))
                        }
                        _ => false,
                    })
                });
                match misplaced {
                    Some(option) => error_at(
                        &option,
                        format!(
                            "retry classes and reasons go on the variants: write \
                             `#[status_error({})]` on each variant it applies to, and only the \
                             type here, like `#[status_error(StatusError)]`",
                            crate::util::source(&option)
                        ),
                    ),
                    None => error_at(
                        &list.tokens,
                        "expected the status-error type, like `#[status_error(StatusError)]`",
                    ),
                }
            }),
            _ => Err(error_at(
                attr.path(),
                "`#[status_error]` needs the status-error type, like `#[status_error(StatusError)]`",
            )),
        };
        // A misplaced option: report it, and keep the type so the rest is checked as usual.
        let parsed = match parsed {
            Err(error) if error.to_string().starts_with("retry classes and reasons") => {
                errors.push(error);
                match &attr.meta {
                    Meta::List(list) => list
                        .parse_args_with(|input: syn::parse::ParseStream| {
                            let ty: Type = input.parse()?;
                            let _: TokenStream = input.parse()?;
                            Ok(ty)
                        })
                        .map_err(Error::from),
                    _ => continue,
                }
            }
            other => other,
        };
        if let Some(ty) = errors.handle(parsed) {
            if found.is_some() {
                errors.push(error_at(
                    attr.path(),
                    "`#[status_error(...)]` is given twice on the enum: keep one",
                ));
            } else {
                found = Some(ty);
            }
        }
    }
    match found {
        Some(ty) => errors.finish_with(ty),
        None => {
            let had_attribute = input.attrs.iter().any(|a| a.path().is_ident(ATTR));
            if !had_attribute {
                errors.push(error_at(
                    &input.ident,
                    format!(
                        "missing `#[status_error(Type)]` on `{}`: name the status-error type its \
                         variants become, like `#[status_error(StatusError)]`",
                        input.ident
                    ),
                ));
            }
            Err(Error::multiple(errors.into_inner()))
        }
    }
}

// ----- model: validated, all codegen sees -----

/// A validated error enum.
struct ErrorEnum<'a> {
    root: Root,
    ident: &'a Ident,
    generics: &'a Generics,
    target: Type,
    variants: Vec<ErrorVariant<'a>>,
}

/// One variant: its reason and retry class.
struct ErrorVariant<'a> {
    ident: &'a Ident,
    reason: String,
    policy: Policy,
}

/// A validated retry class.
enum Policy {
    Backoff,
    Terminal,
    AfterMillis(u64),
}

impl<'a> ErrorEnum<'a> {
    /// Validates the variants; `None` when something failed (errors are in `errors`).
    fn from_input(
        input: &'a DeriveInput,
        target: Option<Type>,
        root: Root,
        errors: &mut darling::error::Accumulator,
    ) -> Option<Self> {
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(data) => {
                errors.push(error_at(&data.struct_token, NOT_ENUM));
                return None;
            }
            Data::Union(data) => {
                errors.push(error_at(&data.union_token, NOT_ENUM));
                return None;
            }
        };
        let variants: Vec<Option<ErrorVariant>> = data
            .variants
            .iter()
            .map(|variant| errors.handle(ErrorVariant::new(&variant.ident, &variant.attrs)))
            .collect();
        Some(ErrorEnum {
            root,
            ident: &input.ident,
            generics: &input.generics,
            target: target?,
            variants: variants.into_iter().collect::<Option<_>>()?,
        })
    }

    fn expand(&self) -> TokenStream {
        let root = self.root.call_site();
        let ErrorEnum { ident, target, .. } = self;
        let (impl_generics, ty_generics, _) = self.generics.split_for_impl();
        // One bound on every impl: without `std::error::Error` (e.g. no `thiserror::Error`) the
        // bodies add no error of their own. Higher-ranked, so that rustc does not report it as a
        // trivially false bound (in its own wording) on each impl; the one error is the assertion
        // below, on the enum's name, with `UserError`'s message.
        let error_root = self.root.at(ident.span());
        let user_error = quote_spanned! {ident.span()=>
            for<'__kuberator> #ident #ty_generics: #error_root::__private::UserError
        };
        let assertion = self.generics.params.is_empty().then(|| {
            quote_spanned! {ident.span()=>
                const _: fn() = || {
                    fn user_error<T: #error_root::__private::UserError>() {}
                    user_error::<#ident>();
                };
            }
        });
        let where_clause = match &self.generics.where_clause {
            Some(clause) => quote!(#clause, #user_error),
            None => quote!(where #user_error),
        };
        let target_root = self.root.at(target.span());
        let build = quote_spanned! {target.span()=>
            <#target as #target_root::FromStatusError>::from_status_error
        };
        let (policies, reasons): (Vec<TokenStream>, Vec<TokenStream>) = self
            .variants
            .iter()
            .map(|variant| {
                let name = variant.ident;
                let reason = &variant.reason;
                let policy = match variant.policy {
                    Policy::Backoff => quote!(#root::RetryPolicy::Backoff),
                    Policy::Terminal => quote!(#root::RetryPolicy::Terminal),
                    Policy::AfterMillis(millis) => {
                        let millis = proc_macro2::Literal::u64_unsuffixed(millis);
                        quote!(#root::RetryPolicy::After(
                            ::core::time::Duration::from_millis(#millis)
                        ))
                    }
                };
                (
                    quote!(Self::#name { .. } => #policy,),
                    quote!(Self::#name { .. } => #reason,),
                )
            })
            .unzip();
        // An enum without variants has no values: `match *self {}` is exhaustive.
        let (retry_policy, reason) = if self.variants.is_empty() {
            (quote!(match *self {}), quote!(match *self {}))
        } else {
            (
                quote!(match self { #(#policies)* }),
                quote!(::std::borrow::Cow::Borrowed(match self { #(#reasons)* })),
            )
        };
        quote! {
            #assertion

            #[automatically_derived]
            impl #impl_generics #root::AsStatusError<#target> for #ident #ty_generics #where_clause {
                fn as_status_error(&self) -> #target {
                    #build(
                        &#root::ClassifyError::reason(self),
                        ::std::string::ToString::to_string(self),
                    )
                }
            }

            #[automatically_derived]
            impl #impl_generics #root::ClassifyError for #ident #ty_generics #where_clause {
                fn retry_policy(&self) -> #root::RetryPolicy {
                    #retry_policy
                }
                fn reason(&self) -> ::std::borrow::Cow<'static, str> {
                    #reason
                }
            }

            #[automatically_derived]
            impl #impl_generics ::core::convert::From<#ident #ty_generics> for #root::Error
                #where_clause
            {
                fn from(error: #ident #ty_generics) -> Self {
                    #root::Error::handler(error)
                }
            }
        }
    }
}

const NOT_ENUM: &str = "`AsStatusError` can only be derived for enums: each variant is one \
                        reason, like `enum WebsiteError { EmptyImage }`";

impl<'a> ErrorVariant<'a> {
    fn new(ident: &'a Ident, attrs: &[Attribute]) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let mut options = VariantOptions::default();
        for attr in attrs.iter().filter(|a| a.path().is_ident(ATTR)) {
            let items = match &attr.meta {
                Meta::List(list) => errors
                    .handle(NestedMeta::parse_meta_list(list.tokens.clone()).map_err(Error::from)),
                _ => {
                    errors.push(error_at(
                        attr.path(),
                        "`#[status_error]` on a variant needs options, like \
                         `#[status_error(terminal)]` or `#[status_error(reason = \"ImageMissing\")]`",
                    ));
                    None
                }
            };
            if let Some(items) = items {
                errors.handle(options.merge(&items));
            }
        }

        let reason = match &options.reason {
            Some(lit) => errors.handle(validate_reason(lit)),
            None => Some(ident.to_string()),
        };
        let policy = match &options.class {
            None => Some(Policy::Backoff),
            Some(class) => match (class.name, &class.after) {
                ("terminal", _) => Some(Policy::Terminal),
                ("requeue_after", Some(lit)) => errors.handle(validate_after(lit)),
                _ => Some(Policy::Backoff),
            },
        };
        let (reason, policy) = errors.finish_with((reason, policy))?;
        Ok(ErrorVariant {
            ident,
            reason: reason.unwrap_or_default(),
            policy: policy.unwrap_or(Policy::Backoff),
        })
    }
}

/// A reason is what Kubernetes accepts in a condition's `reason`: CamelCase, starting with a
/// letter, then letters, digits, `_`, `,` or `:` (not ending in `,` or `:`), at most 1024 chars.
fn validate_reason(lit: &LitStr) -> darling::Result<String> {
    let reason = lit.value();
    let mut chars = reason.chars();
    let starts_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let body_ok = reason
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ',' | ':'));
    let ends_ok = !reason.ends_with([',', ':']);
    if starts_ok && body_ok && ends_ok && reason.len() <= 1024 {
        Ok(reason)
    } else {
        Err(error_at(
            lit,
            format!(
                "reason `{reason}` must be CamelCase like `ImageMissing`: a letter, then letters, \
                 digits or `_`"
            ),
        ))
    }
}

/// `requeue_after = "…"`: a positive duration.
fn validate_after(lit: &LitStr) -> darling::Result<Policy> {
    match parse_millis(&lit.value()) {
        Ok(0) => Err(error_at(
            lit,
            "`requeue_after` must be longer than zero: use `retry` for an immediate retry with \
             backoff",
        )),
        Ok(millis) => Ok(Policy::AfterMillis(millis)),
        Err(message) => Err(error_at(lit, message)),
    }
}

/// Impls that keep the rest of the crate compiling while the errors are shown.
fn dummy(input: &DeriveInput, target: Option<&Type>, root: &Root) -> TokenStream {
    let root = root.call_site();
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let as_status_error = target.map(|target| {
        quote! {
            impl #impl_generics #root::AsStatusError<#target> for #ident #ty_generics #where_clause {
                fn as_status_error(&self) -> #target {
                    ::core::unreachable!()
                }
            }
        }
    });
    quote! {
        #as_status_error
        impl #impl_generics #root::ClassifyError for #ident #ty_generics #where_clause {}
        impl #impl_generics ::core::convert::From<#ident #ty_generics> for #root::Error
            #where_clause
        {
            fn from(_error: #ident #ty_generics) -> Self {
                ::core::unreachable!()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::{assert_golden, pretty};

    #[test]
    fn golden_every_retry_class() {
        let input = quote! {
            #[derive(Debug, thiserror::Error, AsStatusError)]
            #[status_error(StatusError)]
            pub enum WebsiteError {
                #[error("image is empty")]
                #[status_error(terminal)]
                EmptyImage,
                #[error("the registry is down")]
                Registry(String),
                #[error("waiting for {name}")]
                #[status_error(reason = "Waiting", requeue_after = "1m30s")]
                Dependency { name: String },
            }
        };
        assert_golden("as_status_error", &expand(input));
    }

    #[test]
    fn empty_enum_matches_nothing() {
        let out = pretty(&expand(quote! {
            #[status_error(String)]
            enum Never {}
        }));
        assert!(out.contains("match *self {}"), "{out}");
    }

    #[test]
    fn reports_every_variant_mistake() {
        let out = expand(quote! {
            #[status_error(StatusError)]
            enum E {
                #[status_error(terminal, retry)] A,
                #[status_error(requeue_after = "soon")] B,
                #[status_error(fatal)] C,
                #[status_error(reason = "not camel")] D,
            }
        })
        .to_string();
        assert_eq!(out.matches("compile_error").count(), 4, "{out}");
        assert!(out.contains("conflicting retry classes"), "{out}");
        assert!(out.contains("unknown retry class `fatal`"), "{out}");
        assert!(out.contains("ClassifyError for E"), "{out}");
    }
}
