//! `#[derive(ObserveGeneration)]`: `ObserveGeneration` and `RecordError` for a status struct, plus
//! `WithStatusError` when a field is marked `#[status_error]`.

use darling::Error;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Field, Fields, Generics, Ident, Type};

use crate::paths::kuberator;
use crate::util::{error_at, is_named, option_inner, source};

/// The field found by name when none is marked.
const DEFAULT_FIELD: &str = "observed_generation";
/// Marks the observed-generation field explicitly.
const GENERATION_ATTR: &str = "observe_generation";
/// Marks the status-error slot.
const ERROR_ATTR: &str = "status_error";

/// Entry point: the derive's output, or the errors plus dummy impls.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    match Status::from_input(&input) {
        Ok(status) => status.expand(),
        Err(errors) => {
            let mut tokens = errors.write_errors();
            tokens.extend(dummy(&input));
            tokens
        }
    }
}

/// A validated status struct: all codegen sees.
struct Status<'a> {
    ident: &'a Ident,
    generics: &'a Generics,
    generation: GenerationField<'a>,
    error: Option<ErrorField<'a>>,
}

/// The observed-generation field; `optional` for `Option<i64>`, otherwise `i64`.
struct GenerationField<'a> {
    ident: &'a Ident,
    optional: bool,
}

/// The `#[status_error]` field, of type `Option<inner>`.
struct ErrorField<'a> {
    ident: &'a Ident,
    inner: &'a Type,
}

impl<'a> Status<'a> {
    /// Parses and validates, collecting every error.
    fn from_input(input: &'a DeriveInput) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let fields = named_fields(input).map_err(|error| errors.push(error)).ok();
        let fields: Vec<&Field> = fields.into_iter().flatten().collect();

        let mut marked: Vec<&Field> = Vec::new();
        let mut error_fields: Vec<&Field> = Vec::new();
        for field in &fields {
            for attr in &field.attrs {
                if attr.path().is_ident(GENERATION_ATTR) {
                    errors.handle(flag(attr, GENERATION_ATTR));
                    if !marked.is_empty() {
                        errors.push(error_at(
                            attr.path(),
                            "`#[observe_generation]` is on more than one field: keep it on the one \
                             that records `metadata.generation`",
                        ));
                    }
                    marked.push(field);
                } else if attr.path().is_ident(ERROR_ATTR) {
                    errors.handle(flag(attr, ERROR_ATTR));
                    if !error_fields.is_empty() {
                        errors.push(error_at(
                            attr.path(),
                            "`#[status_error]` is on more than one field: a status has one error \
                             slot, keep it on one field",
                        ));
                    }
                    error_fields.push(field);
                }
            }
        }

        let chosen = marked.first().copied().or_else(|| {
            fields
                .iter()
                .copied()
                .find(|field| field.ident.as_ref().is_some_and(|i| i == DEFAULT_FIELD))
        });
        let generation = match chosen {
            Some(field) => errors.handle(GenerationField::new(field)),
            None => {
                if matches!(&input.data, Data::Struct(s) if matches!(s.fields, Fields::Named(_))) {
                    errors.push(error_at(
                        &input.ident,
                        format!(
                            "`{}` has no observed-generation field: add `observed_generation: \
                             Option<i64>` or mark a field with `#[observe_generation]`",
                            input.ident
                        ),
                    ));
                }
                None
            }
        };
        let error = error_fields
            .first()
            .and_then(|field| errors.handle(ErrorField::new(field)));

        let generation = errors.finish_with(generation)?;
        // `finish_with` returned Ok, so nothing failed and the field was found.
        let generation = generation.ok_or_else(|| Error::custom("no observed-generation field"))?;
        Ok(Status {
            ident: &input.ident,
            generics: &input.generics,
            generation,
            error,
        })
    }

    fn expand(&self) -> TokenStream {
        let root = kuberator(Span::call_site());
        let Status { ident, .. } = self;
        let (impl_generics, ty_generics, where_clause) = self.generics.split_for_impl();
        let field = self.generation.ident;
        let (set, get) = if self.generation.optional {
            (
                quote!(::core::option::Option::Some(generation)),
                quote!(self.#field),
            )
        } else {
            (
                quote!(generation),
                quote!(::core::option::Option::Some(self.#field)),
            )
        };

        let mut tokens = quote! {
            #[automatically_derived]
            impl #impl_generics #root::ObserveGeneration for #ident #ty_generics #where_clause {
                fn set_observed_generation(&mut self, generation: i64) {
                    self.#field = #set;
                }
                fn observed_generation(&self) -> ::core::option::Option<i64> {
                    #get
                }
            }
        };

        match &self.error {
            None => tokens.extend(quote! {
                #[automatically_derived]
                impl #impl_generics #root::RecordError for #ident #ty_generics #where_clause {
                    fn record_error(
                        &mut self,
                        _error: ::core::option::Option<&#root::Error>,
                    ) -> bool {
                        false
                    }
                }
            }),
            Some(ErrorField { ident: slot, inner }) => {
                // Spanned on the user's type: a missing `FromStatusError` impl is reported there.
                let spanned_root = kuberator(inner.span());
                let build = quote_spanned! {inner.span()=>
                    <#inner as #spanned_root::FromStatusError>::from_status_error(
                        &#root::Error::reason(error),
                        ::std::string::ToString::to_string(error),
                    )
                };
                let mut with_generics = self.generics.clone();
                with_generics
                    .params
                    .push(syn::parse_quote!(__E: #root::AsStatusError<#inner>));
                let (with_impl_generics, _, _) = with_generics.split_for_impl();
                tokens.extend(quote! {
                    #[automatically_derived]
                    impl #impl_generics #root::RecordError for #ident #ty_generics #where_clause {
                        fn record_error(
                            &mut self,
                            error: ::core::option::Option<&#root::Error>,
                        ) -> bool {
                            match error {
                                ::core::option::Option::Some(error) => {
                                    self.#slot = ::core::option::Option::Some(#build);
                                    true
                                }
                                ::core::option::Option::None => {
                                    ::core::option::Option::take(&mut self.#slot).is_some()
                                }
                            }
                        }
                    }

                    #[automatically_derived]
                    impl #with_impl_generics #root::WithStatusError<__E, #inner>
                        for #ident #ty_generics #where_clause
                    {
                        fn set_status_error(&mut self, error: ::core::option::Option<#inner>) {
                            self.#slot = error;
                        }
                    }
                });
            }
        }
        tokens
    }
}

impl<'a> GenerationField<'a> {
    fn new(field: &'a Field) -> darling::Result<Self> {
        let ident = field
            .ident
            .as_ref()
            .ok_or_else(|| error_at(field, "expected a named field"))?;
        if is_named(&field.ty, "i64") {
            return Ok(Self {
                ident,
                optional: false,
            });
        }
        match option_inner(&field.ty) {
            Some(inner) if is_named(inner, "i64") => Ok(Self {
                ident,
                optional: true,
            }),
            // Point at what is wrong: the `T` of `Option<T>`, or the whole type.
            Some(inner) => Err(error_at(
                inner,
                format!(
                    "the observed generation must be `Option<i64>` or `i64`, found `{}`: \
                     `metadata.generation` is an `i64`",
                    source(&field.ty)
                ),
            )),
            None => Err(error_at(
                &field.ty,
                format!(
                    "the observed generation must be `Option<i64>` or `i64`, found `{}`: \
                     `metadata.generation` is an `i64`",
                    source(&field.ty)
                ),
            )),
        }
    }
}

impl<'a> ErrorField<'a> {
    fn new(field: &'a Field) -> darling::Result<Self> {
        let ident = field
            .ident
            .as_ref()
            .ok_or_else(|| error_at(field, "expected a named field"))?;
        match option_inner(&field.ty) {
            Some(inner) => Ok(Self { ident, inner }),
            None => Err(error_at(
                &field.ty,
                format!(
                    "the `#[status_error]` field must be an `Option<_>` so that it can be \
                     cleared, found `{}`: use `Option<{}>`",
                    source(&field.ty),
                    source(&field.ty)
                ),
            )),
        }
    }
}

/// The named fields, or the error for any other shape.
fn named_fields(input: &DeriveInput) -> darling::Result<impl Iterator<Item = &Field>> {
    const SHAPE: &str = "`ObserveGeneration` can only be derived for structs with named fields, \
                         like `struct Status { observed_generation: Option<i64> }`";
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => Ok(named.named.iter()),
            Fields::Unnamed(unnamed) => Err(error_at(unnamed, SHAPE)),
            Fields::Unit => Err(error_at(&input.ident, SHAPE)),
        },
        Data::Enum(data) => Err(error_at(&data.enum_token, SHAPE)),
        Data::Union(data) => Err(error_at(&data.union_token, SHAPE)),
    }
}

/// A marker attribute takes no arguments.
fn flag(attr: &Attribute, name: &str) -> darling::Result<()> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(()),
        syn::Meta::List(list) => Err(error_at(
            &list.delimiter.span().join(),
            format!("`#[{name}]` takes no arguments: write `#[{name}]`"),
        )),
        syn::Meta::NameValue(nv) => Err(error_at(
            &nv.eq_token,
            format!("`#[{name}]` takes no value: write `#[{name}]`"),
        )),
    }
}

/// Impls that keep the rest of the crate compiling while the errors are shown, so one mistake is
/// one message.
fn dummy(input: &DeriveInput) -> TokenStream {
    let root = kuberator(Span::call_site());
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let mut tokens = quote! {
        impl #impl_generics #root::ObserveGeneration for #ident #ty_generics #where_clause {
            fn set_observed_generation(&mut self, _generation: i64) {
                ::core::unreachable!()
            }
            fn observed_generation(&self) -> ::core::option::Option<i64> {
                ::core::unreachable!()
            }
        }
        impl #impl_generics #root::RecordError for #ident #ty_generics #where_clause {
            fn record_error(&mut self, _error: ::core::option::Option<&#root::Error>) -> bool {
                ::core::unreachable!()
            }
        }
    };
    let slot = match &input.data {
        Data::Struct(data) => data.fields.iter().find_map(|field| {
            let marked = field.attrs.iter().any(|a| a.path().is_ident(ERROR_ATTR));
            marked.then(|| option_inner(&field.ty)).flatten()
        }),
        _ => None,
    };
    if let Some(inner) = slot {
        let mut with_generics = input.generics.clone();
        with_generics
            .params
            .push(syn::parse_quote!(__E: #root::AsStatusError<#inner>));
        let (with_impl_generics, _, _) = with_generics.split_for_impl();
        tokens.extend(quote! {
            impl #with_impl_generics #root::WithStatusError<__E, #inner>
                for #ident #ty_generics #where_clause
            {
                fn set_status_error(&mut self, _error: ::core::option::Option<#inner>) {
                    ::core::unreachable!()
                }
            }
        });
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::assert_golden;

    #[test]
    fn golden_status_with_error_slot() {
        let input = quote! {
            pub struct WebsiteStatus {
                pub observed_generation: Option<i64>,
                #[status_error]
                pub error: Option<WebsiteStatusError>,
                pub phase: String,
            }
        };
        assert_golden("observe_generation", &expand(input));
    }

    #[test]
    fn marked_plain_field_without_error_slot() {
        let input = quote! {
            struct Status<T> { #[observe_generation] seen: i64, other: T }
        };
        let out = crate::golden::pretty(&expand(input));
        assert!(out.contains("self.seen = generation;"), "{out}");
        assert!(out.contains("Some(self.seen)"), "{out}");
        assert!(
            out.contains("impl<T> ::kuberator::RecordError for Status<T>"),
            "{out}"
        );
        assert!(!out.contains("WithStatusError"), "{out}");
    }

    #[test]
    fn all_errors_at_once_with_dummies() {
        let input = quote! {
            struct Status {
                #[observe_generation] a: Option<String>,
                #[observe_generation] b: i64,
                #[status_error] e: String,
            }
        };
        let out = expand(input).to_string();
        assert_eq!(out.matches("compile_error").count(), 3, "{out}");
        assert!(out.contains("ObserveGeneration for Status"), "{out}");
    }
}
