//! `#[derive(ObserveGeneration)]`: `ObserveGeneration` and `RecordError` for a status struct, plus
//! `WithStatusError` when a field is marked `#[status_error]`.

use darling::Error;
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Field, Fields, Generics, Ident, Type};

use crate::paths::{Root, crate_path};
use crate::util::{error_at, error_at_span, is_named, option_inner, path_tail, source};

/// The field found by name when none is marked.
const DEFAULT_FIELD: &str = "observed_generation";
/// Marks the observed-generation field explicitly.
const GENERATION_ATTR: &str = "observe_generation";
/// Marks the status-error slot.
const ERROR_ATTR: &str = "status_error";
/// `#[kuberator(crate = kr)]`: the runtime crate's path when the dependency is renamed.
pub(crate) const CRATE_ATTR: &str = "kuberator";
/// The name Kubernetes tools (`kubectl wait`, kstatus) read the observed generation under.
const SERIALIZED_NAME: &str = "observedGeneration";

/// Entry point: the derive's output, or the errors plus dummy impls.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    crate::util::forget_errors();
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.into_compile_error(),
    };
    let mut errors = Error::accumulator();
    let root = Root::new(errors.handle(crate_attr(&input.attrs)).flatten());
    let status = Status::from_input(&input, root.clone());
    match errors.finish_with(()).and(status) {
        Ok(status) => status.expand(),
        Err(errors) => {
            let mut tokens = crate::util::write_errors(errors);
            tokens.extend(dummy(&input, &root));
            tokens
        }
    }
}

/// `#[kuberator(crate = kr)]` on the item, shared by both derives.
pub(crate) fn crate_attr(attrs: &[Attribute]) -> darling::Result<Option<syn::Path>> {
    let mut errors = Error::accumulator();
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident(CRATE_ATTR)) {
        let parsed = attr.parse_args_with(|input: syn::parse::ParseStream| {
            let key: syn::Path = input.call(syn::Path::parse_mod_style)?;
            if !key.is_ident("crate") {
                return Err(syn::Error::new_spanned(
                    &key,
                    format!(
                        "unknown key `{}` in `#[kuberator(...)]`: expected `crate = path`",
                        source(&key)
                    ),
                ));
            }
            input.parse::<syn::Token![=]>()?;
            let value: syn::Expr = input.parse()?;
            if !input.is_empty() {
                return Err(input.error("expected only `crate = path`"));
            }
            Ok(value)
        });
        match parsed {
            Ok(value) => {
                if let Some(path) = errors.handle(crate_path(&value)) {
                    if found.is_some() {
                        errors.push(error_at(attr, "`crate = …` is given twice: keep one"));
                    }
                    found = Some(path);
                }
            }
            Err(error) => errors.push(error.into()),
        }
    }
    errors.finish_with(found)
}

/// A validated status struct: all codegen sees.
struct Status<'a> {
    root: Root,
    ident: &'a Ident,
    generics: &'a Generics,
    generation: GenerationField<'a>,
    error: Option<ErrorField<'a>>,
    conditions: Option<ConditionsField<'a>>,
}

/// A field `conditions: Vec<Condition>` (or `Option<Vec<Condition>>`): the kstatus conditions the
/// runtime sets with a recorded error.
struct ConditionsField<'a> {
    ident: &'a Ident,
    ty: &'a Type,
    optional: bool,
}

impl<'a> ConditionsField<'a> {
    /// The field named `conditions` whose type is `Vec<…Condition>`, or `Option` of that.
    fn find(fields: &[&'a Field]) -> Option<Self> {
        let field = fields
            .iter()
            .find(|field| field.ident.as_ref().is_some_and(|i| i == "conditions"))?;
        let is_conditions = |ty: &Type| match path_tail(ty) {
            Some((vec, args)) if vec == "Vec" && args.len() == 1 => {
                path_tail(args[0]).is_some_and(|(inner, _)| inner == "Condition")
            }
            _ => false,
        };
        let optional = match path_tail(&field.ty) {
            Some((option, args)) if option == "Option" && args.len() == 1 => {
                if !is_conditions(args[0]) {
                    return None;
                }
                true
            }
            _ if is_conditions(&field.ty) => false,
            _ => return None,
        };
        Some(ConditionsField {
            ident: field.ident.as_ref()?,
            ty: &field.ty,
            optional,
        })
    }

    /// `RecordError::conditions`, spanned on the field's type (another `Condition` type is one
    /// error there).
    fn method(&self, root: &Root) -> TokenStream {
        let span = self.ty.span();
        let root = root.at(span);
        let field = self.ident;
        let value = if self.optional {
            quote_spanned!(span=> ::core::option::Option::get_or_insert_with(
                &mut self.#field,
                ::std::vec::Vec::new,
            ))
        } else {
            quote_spanned!(span=> &mut self.#field)
        };
        quote_spanned! {span=>
            fn conditions(
                &mut self,
            ) -> ::core::option::Option<&mut ::std::vec::Vec<#root::conditions::Condition>> {
                ::core::option::Option::Some(#value)
            }
        }
    }
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
    fn from_input(input: &'a DeriveInput, root: Root) -> darling::Result<Self> {
        // On the spec (a `#[kube(...)]` struct): that one mistake, not every field's.
        if let Some(kube) = input.attrs.iter().find(|a| a.path().is_ident("kube")) {
            return Err(error_at(
                kube.path(),
                format!(
                    "`ObserveGeneration` goes on the status, not on the spec `{}`: derive it on \
                     the struct named in `#[kube(status = \"...\")]`",
                    input.ident
                ),
            ));
        }
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
        let rename_all = errors.handle(rename_all(&input.attrs)).flatten();
        let near_miss = fields.iter().copied().find(|field| {
            field.ident.as_ref().is_some_and(|ident| {
                ident
                    .to_string()
                    .replace('_', "")
                    .eq_ignore_ascii_case("observedgeneration")
            })
        });
        let generation = match (chosen, near_miss) {
            (Some(field), _) => errors.handle(GenerationField::new(field)).inspect(|_| {
                errors.handle(check_serialized_name(input, field, rename_all.as_deref()));
            }),
            (None, Some(field)) => {
                let name = field
                    .ident
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                errors.push(error_at(
                    &field.ident,
                    format!(
                        "`{name}` is not found by name: rename it `observed_generation` (with \
                         `#[serde(rename_all = \"camelCase\")]` on `{}`), or mark it \
                         `#[observe_generation]`",
                        input.ident
                    ),
                ));
                None
            }
            (None, None) => {
                if input.ident.to_string().ends_with("Spec") {
                    errors.push(error_at(
                        &input.ident,
                        format!(
                            "`ObserveGeneration` goes on the status, not on the spec `{}`: derive \
                             it on the struct named in `#[kube(status = \"...\")]`",
                            input.ident
                        ),
                    ));
                } else if matches!(&input.data, Data::Struct(s) if matches!(s.fields, Fields::Named(_)))
                {
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

        let conditions = ConditionsField::find(&fields);
        let generation = errors.finish_with(generation)?;
        // `finish_with` returned Ok, so nothing failed and the field was found.
        let generation = generation.ok_or_else(|| Error::custom("no observed-generation field"))?;
        Ok(Status {
            root,
            ident: &input.ident,
            generics: &input.generics,
            generation,
            error,
            conditions,
        })
    }

    fn expand(&self) -> TokenStream {
        let root = self.root.call_site();
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

        let conditions = self
            .conditions
            .as_ref()
            .map(|conditions| conditions.method(&self.root));
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
                    #conditions
                }
            }),
            Some(ErrorField { ident: slot, inner }) => {
                // Spanned on the user's type: a missing `FromStatusError` impl is reported there.
                let spanned_root = self.root.at(inner.span());
                // Without `Default` an error on an object that has no status yet could not be
                // recorded (the runtime starts from `Default::default()`): refuse at compile time
                // rather than record nothing at run time. One bound, on the struct's name.
                let default_root = self.root.at(ident.span());
                let needs_default = quote_spanned! {ident.span()=>
                    #ident #ty_generics: #default_root::__private::DefaultStatus
                };
                let record_where = match where_clause {
                    Some(clause) => quote!(#clause, #needs_default),
                    None => quote!(where #needs_default),
                };
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
                    impl #impl_generics #root::RecordError for #ident #ty_generics #record_where {
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
                        #conditions
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

/// `#[serde(rename_all = "…")]` (or its `serialize = "…"` form) on the struct, if any.
fn rename_all(attrs: &[Attribute]) -> darling::Result<Option<String>> {
    serde_value(attrs, "rename_all")
}

/// The serialize-side value of `#[serde(key = "…")]` / `#[serde(key(serialize = "…"))]`; other
/// serde keys are left to serde.
fn serde_value(attrs: &[Attribute], key: &str) -> darling::Result<Option<String>> {
    let mut found = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        // Serde reports malformed serde attributes itself; read what parses.
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(key) {
                if meta.input.peek(syn::Token![=]) {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    found = Some(lit.value());
                } else {
                    meta.parse_nested_meta(|inner| {
                        let lit: syn::LitStr = inner.value()?.parse()?;
                        if inner.path.is_ident("serialize") {
                            found = Some(lit.value());
                        }
                        Ok(())
                    })?;
                }
            } else if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            } else if meta.input.peek(syn::token::Paren) {
                meta.parse_nested_meta(|inner| {
                    if inner.input.peek(syn::Token![=]) {
                        let _: syn::Expr = inner.value()?.parse()?;
                    }
                    Ok(())
                })?;
            }
            Ok(())
        });
    }
    Ok(found)
}

/// The observed generation must serialise as `observedGeneration`: that is where `kubectl wait`,
/// kstatus and every Kubernetes tool read it.
fn check_serialized_name(
    input: &DeriveInput,
    field: &Field,
    rename_all: Option<&str>,
) -> darling::Result<()> {
    let Some(ident) = &field.ident else {
        return Ok(());
    };
    let rust_name = ident.to_string();
    let rust_name = rust_name.strip_prefix("r#").unwrap_or(&rust_name);
    let renamed = serde_value(&field.attrs, "rename")?;
    let serialized = match (&renamed, rename_all) {
        (Some(name), _) => name.clone(),
        (None, Some(rule)) => apply_rename_rule(rust_name, rule),
        (None, None) => rust_name.to_owned(),
    };
    if serialized == SERIALIZED_NAME {
        return Ok(());
    }
    let fix = if renamed.is_some() {
        format!("write `#[serde(rename = \"{SERIALIZED_NAME}\")]`")
    } else if rust_name == DEFAULT_FIELD {
        format!(
            "add `#[serde(rename_all = \"camelCase\")]` to `{}` (or `#[serde(rename = \
             \"{SERIALIZED_NAME}\")]` to the field)",
            input.ident
        )
    } else {
        format!("add `#[serde(rename = \"{SERIALIZED_NAME}\")]` to the field")
    };
    Err(error_at(
        ident,
        format!(
            "the observed generation is stored as `status.{serialized}`, but `kubectl wait` and \
             kstatus read `status.{SERIALIZED_NAME}`: {fix}"
        ),
    ))
}

/// Serde's `rename_all` rules, for one snake_case field name.
fn apply_rename_rule(name: &str, rule: &str) -> String {
    let words: Vec<&str> = name.split('_').filter(|w| !w.is_empty()).collect();
    let capitalized = |w: &str| {
        let mut chars = w.chars();
        chars.next().map_or_else(String::new, |first| {
            first.to_ascii_uppercase().to_string() + chars.as_str()
        })
    };
    match rule {
        "camelCase" => words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    (*w).to_owned()
                } else {
                    capitalized(w)
                }
            })
            .collect(),
        "PascalCase" => words.iter().map(|w| capitalized(w)).collect(),
        "lowercase" => name.to_ascii_lowercase(),
        "UPPERCASE" => name.to_ascii_uppercase(),
        "SCREAMING_SNAKE_CASE" => name.to_ascii_uppercase(),
        "kebab-case" => name.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => name.replace('_', "-").to_ascii_uppercase(),
        _ => name.to_owned(),
    }
}

/// A marker attribute takes no arguments.
fn flag(attr: &Attribute, name: &str) -> darling::Result<()> {
    match &attr.meta {
        syn::Meta::Path(_) => Ok(()),
        syn::Meta::List(list) => Err(error_at_span(
            list.delimiter.span().join(),
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
fn dummy(input: &DeriveInput, root: &Root) -> TokenStream {
    let root = root.call_site();
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
            #[serde(rename_all = "camelCase")]
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
            struct Status<T> {
                #[observe_generation]
                #[serde(rename = "observedGeneration")]
                seen: i64,
                other: T,
            }
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
    fn generation_must_serialize_as_observed_generation() {
        let out = expand(quote! {
            struct Status { observed_generation: Option<i64> }
        })
        .to_string();
        assert!(out.contains("rename_all"), "{out}");
        for ok in [
            quote!(
                #[serde(rename_all = "camelCase")]
                struct S {
                    observed_generation: i64,
                }
            ),
            quote!(
                struct S {
                    #[serde(rename = "observedGeneration")]
                    observed_generation: i64,
                }
            ),
            quote!(
                #[serde(rename_all(serialize = "camelCase"))]
                struct S {
                    observed_generation: i64,
                }
            ),
        ] {
            let out = expand(ok).to_string();
            assert!(!out.contains("compile_error"), "{out}");
        }
        assert_eq!(
            apply_rename_rule("observed_generation", "PascalCase"),
            "ObservedGeneration"
        );
    }

    #[test]
    fn error_slot_requires_default() {
        let out = expand(quote! {
            #[serde(rename_all = "camelCase")]
            struct Status { observed_generation: i64, #[status_error] error: Option<String> }
        })
        .to_string();
        assert!(out.contains("DefaultStatus"), "{out}");
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
