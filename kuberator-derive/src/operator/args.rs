//! The receiver: `#[kuberator::operator(...)]` as written, each value with the token to point at.
//!
//! Only the shape of each key is checked here (`key = value` or `key(list)`, the value's kind);
//! what the values mean is validated in [`super::model`].

use darling::ast::NestedMeta;
use darling::{Error, FromMeta};
use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Ident, Lit, LitBool, LitInt, LitStr, Meta, Path, Token, Type};

use crate::paths::crate_path;
use crate::util::{error_at, error_at_span, source, unknown};

/// Every key, in the order the docs list them.
pub(crate) const KEYS: [&str; 18] = [
    "resource",
    "name",
    "field_manager",
    "status_writes",
    "finalizer",
    "legacy_finalizers",
    "namespaces",
    "caching",
    "concurrency",
    "skip_observed_on_start",
    "owns",
    "labels",
    "events",
    "leader_election",
    "sharding",
    "health",
    "webhooks",
    "crate",
];

/// A value together with the key it was given under (for errors that concern the key).
pub(crate) struct Keyed<T> {
    pub(crate) key: Path,
    pub(crate) value: T,
}

/// The attribute's arguments, unvalidated. A key whose value is malformed is left `None` but
/// listed in `given`, so that validation does not also report it as missing.
#[derive(Default)]
pub(crate) struct OperatorArgs {
    pub(crate) given: Vec<String>,
    pub(crate) resource: Option<Keyed<Path>>,
    pub(crate) name: Option<Keyed<LitStr>>,
    pub(crate) field_manager: Option<Keyed<LitStr>>,
    pub(crate) status_writes: Option<Keyed<LitStr>>,
    pub(crate) finalizer: Option<Keyed<FinalizerValue>>,
    pub(crate) legacy_finalizers: Option<Keyed<Vec<LitStr>>>,
    pub(crate) namespaces: Option<Keyed<Vec<LitStr>>>,
    pub(crate) caching: Option<Keyed<Path>>,
    pub(crate) concurrency: Option<Keyed<LitInt>>,
    pub(crate) skip_observed_on_start: Option<Keyed<LitBool>>,
    pub(crate) owns: Option<Keyed<Vec<OwnedChild>>>,
    pub(crate) labels: Option<Keyed<LitStr>>,
    pub(crate) events: Option<Keyed<LitStr>>,
    pub(crate) leader_election: Option<Keyed<LitStr>>,
    pub(crate) sharding: Option<Keyed<LitStr>>,
    pub(crate) health: Option<Keyed<HealthValue>>,
    pub(crate) webhooks: Option<Keyed<LitStr>>,
    pub(crate) krate: Option<Keyed<Path>>,
}

/// `finalizer = "example.com/cleanup"`, or a path to a `&str` const (checked at compile time by
/// a const assertion, since a macro cannot read a const's value).
pub(crate) enum FinalizerValue {
    Literal(LitStr),
    Const(Path),
}

/// `health = "0.0.0.0:8080"`, or `health(addr = "0.0.0.0:8080", liveness = "/health",
/// readiness = "/ready", metrics = "/metrics", route("/", index))`.
#[derive(Default)]
pub(crate) struct HealthValue {
    /// The address; `None` only in the list form without `addr` (reported by the model, at
    /// `list`).
    pub(crate) addr: Option<LitStr>,
    pub(crate) liveness: Option<LitStr>,
    pub(crate) readiness: Option<LitStr>,
    pub(crate) metrics: Option<LitStr>,
    /// Each extra route: its path and the handler's path.
    pub(crate) routes: Vec<(LitStr, Path)>,
    /// The `health(...)` list, to point at when `addr` is missing.
    pub(crate) list: Option<Meta>,
}

/// One child of `owns(...)`: its type and the `on = "…"` written right after it.
pub(crate) struct OwnedChild {
    pub(crate) ty: Type,
    pub(crate) on: Option<LitStr>,
}

/// `owns(ConfigMap, Deployment, on = "status")`: types, each optionally followed by `on = "…"`.
fn owned_children(tokens: TokenStream) -> darling::Result<Vec<OwnedChild>> {
    let parse = |input: syn::parse::ParseStream<'_>| {
        let mut children: Vec<OwnedChild> = Vec::new();
        while !input.is_empty() {
            if input.peek(Ident) && input.peek2(Token![=]) {
                let key: Ident = input.parse()?;
                input.parse::<Token![=]>()?;
                if key != "on" {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown key `{key}` in `owns(...)`: write `on = \"status\"` after a \
                             child, like `owns(Deployment, on = \"status\")`"
                        ),
                    ));
                }
                let value: LitStr = input.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "expected a string, like `owns(Deployment, on = \"status\")`",
                    )
                })?;
                match children.last_mut() {
                    Some(child) if child.on.is_none() => child.on = Some(value),
                    Some(_) => {
                        return Err(syn::Error::new(
                            key.span(),
                            "`on` is given twice for one child: keep one",
                        ));
                    }
                    None => {
                        return Err(syn::Error::new(
                            key.span(),
                            "`on = ...` follows the child it applies to, like \
                             `owns(Deployment, on = \"status\")`",
                        ));
                    }
                }
            } else {
                let ty: Type = input.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "expected child types, like `owns(ConfigMap, Service)`",
                    )
                })?;
                children.push(OwnedChild { ty, on: None });
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(children)
    };
    parse.parse2(tokens).map_err(|e| {
        let message = e.to_string();
        error_at_span(e.span(), message)
    })
}

/// The keys inside `health(...)`.
const HEALTH_KEYS: [&str; 5] = ["addr", "liveness", "readiness", "metrics", "route"];

fn health_value(meta: &Meta) -> darling::Result<HealthValue> {
    let tokens = match meta {
        Meta::NameValue(nv) => {
            return string(&nv.value, "health").map(|addr| HealthValue {
                addr: Some(addr),
                ..HealthValue::default()
            });
        }
        Meta::List(list) => list.tokens.clone(),
        Meta::Path(_) => return Err(wrong_form(meta)),
    };
    let items = NestedMeta::parse_meta_list(tokens)?;
    let mut errors = Error::accumulator();
    let mut value = HealthValue {
        list: Some(meta.clone()),
        ..HealthValue::default()
    };
    let expected = {
        let keys: Vec<String> = HEALTH_KEYS.iter().map(|key| format!("`{key}`")).collect();
        format!("expected one of {} in `health(...)`", keys.join(", "))
    };
    for item in &items {
        let NestedMeta::Meta(inner) = item else {
            errors.push(error_at(
                item,
                format!("expected `key = value`: {expected}"),
            ));
            continue;
        };
        let key = source(inner.path());
        let slot = match key.as_str() {
            "addr" => &mut value.addr,
            "liveness" => &mut value.liveness,
            "readiness" => &mut value.readiness,
            "metrics" => &mut value.metrics,
            "route" => {
                let route = list(inner).and_then(|tokens| {
                    syn::parse::Parser::parse2(
                        |input: syn::parse::ParseStream<'_>| {
                            let path: LitStr = input.parse()?;
                            input.parse::<Token![,]>()?;
                            let handler: Path = input.parse()?;
                            input.parse::<Option<Token![,]>>()?;
                            Ok((path, handler))
                        },
                        tokens,
                    )
                    .map_err(|e| {
                        error_at_span(
                            e.span(),
                            "expected a path and a handler function, like `route(\"/\", index)`",
                        )
                    })
                });
                if let Some(route) = errors.handle(route) {
                    value.routes.push(route);
                }
                continue;
            }
            other => {
                errors.push(error_at(
                    inner.path(),
                    unknown("key", other, &HEALTH_KEYS, &expected),
                ));
                continue;
            }
        };
        let lit = match inner {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(ExprLit {
                    lit: Lit::Str(lit), ..
                }) => Ok(lit.clone()),
                other => Err(error_at(
                    other,
                    format!("expected a string, like `{key} = {}`", health_example(&key)),
                )),
            },
            _ => Err(error_at(
                inner,
                format!("expected `{key} = {}`", health_example(&key)),
            )),
        };
        if let Some(lit) = errors.handle(lit) {
            if slot.is_some() {
                errors.push(error_at(
                    inner.path(),
                    format!("`{key}` is given twice in `health(...)`: keep one"),
                ));
            } else {
                *slot = Some(lit);
            }
        }
    }
    errors.finish_with(value)
}

fn health_example(key: &str) -> &'static str {
    match key {
        "addr" => "\"0.0.0.0:8080\"",
        "liveness" => "\"/health\"",
        "readiness" => "\"/ready\"",
        _ => "\"/metrics\"",
    }
}

impl OperatorArgs {
    /// Parses the attribute's tokens, keeping what is well-formed and collecting the rest.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut darling::error::Accumulator) -> Self {
        match NestedMeta::parse_meta_list(tokens) {
            Ok(items) => Self::collect(&items, errors),
            Err(error) => {
                errors.push(error.into());
                // Unparseable: report that alone, not every key as missing too.
                OperatorArgs {
                    given: KEYS.iter().map(|key| (*key).to_owned()).collect(),
                    ..Self::default()
                }
            }
        }
    }

    /// Whether `key` was written, well-formed or not.
    pub(crate) fn was_given(&self, key: &str) -> bool {
        self.given.iter().any(|given| given == key)
    }

    fn collect(items: &[NestedMeta], errors: &mut darling::error::Accumulator) -> Self {
        let mut args = OperatorArgs::default();
        for item in items {
            let meta = match item {
                NestedMeta::Meta(meta) => meta,
                NestedMeta::Lit(lit) => {
                    errors.push(error_at(
                        lit,
                        format!("expected `key = value`, found a literal: {}", keys()),
                    ));
                    continue;
                }
                NestedMeta::NameValueInvalidExpr(invalid) => {
                    let key = source(&invalid.path);
                    args.given.push(key.clone());
                    errors.push(error_at(
                        &invalid.value,
                        match example(&key) {
                            Some(example) => format!("expected `{example}`"),
                            None => unknown("key", &key, &KEYS, &keys()),
                        },
                    ));
                    continue;
                }
            };
            let path = meta.path();
            let key = path
                .get_ident()
                .map(Ident::to_string)
                .unwrap_or_else(|| source(path));
            args.given.push(key.clone());
            match key.as_str() {
                "resource" => {
                    let value = name_value(meta).and_then(|value| match value {
                        Expr::Path(p) if p.qself.is_none() => Ok(p.path.clone()),
                        // `resource = "Website"`, as kube-derive writes its types.
                        Expr::Lit(ExprLit {
                            lit: Lit::Str(lit), ..
                        }) => lit.parse::<Path>().map_err(|_| {
                            error_at(lit, "expected the resource type, like `resource = Website`")
                        }),
                        other => Err(error_at(
                            other,
                            "expected the resource type, like `resource = Website`",
                        )),
                    });
                    set(errors, &mut args.resource, path, value);
                }
                "finalizer" => {
                    let value = name_value(meta).and_then(|value| match value {
                        Expr::Lit(ExprLit {
                            lit: Lit::Str(lit), ..
                        }) => Ok(FinalizerValue::Literal(lit.clone())),
                        Expr::Path(p) if p.qself.is_none() => {
                            Ok(FinalizerValue::Const(p.path.clone()))
                        }
                        other => Err(error_at(
                            other,
                            "expected a string, like `finalizer = \"example.com/cleanup\"`, or \
                             the path of a `&str` const",
                        )),
                    });
                    set(errors, &mut args.finalizer, path, value);
                }
                "legacy_finalizers" => {
                    let value = list(meta).and_then(|tokens| {
                        Punctuated::<LitStr, Token![,]>::parse_terminated
                            .parse2(tokens)
                            .map(|list| list.into_iter().collect())
                            .map_err(|e| {
                                error_at_span(
                                    e.span(),
                                    "expected finalizer names as strings, like \
                                     `legacy_finalizers(\"old.example.com/cleanup\")`",
                                )
                            })
                    });
                    set(errors, &mut args.legacy_finalizers, path, value);
                }
                "crate" => {
                    let value = name_value(meta).and_then(crate_path);
                    set(errors, &mut args.krate, path, value);
                }
                "namespace" => {
                    errors.push(error_at(
                        meta,
                        "unknown key `namespace`: write `namespaces(\"shop\")` to watch only some \
                         namespaces (a list, even for one)",
                    ));
                    continue;
                }
                "namespaced" | "cluster_scoped" | "scope" => {
                    errors.push(error_at(
                        meta,
                        format!(
                            "unknown key `{key}`: the scope comes from the resource \
                             (`#[kube(namespaced)]` on its spec), the operator follows it; \
                             `namespaces(\"shop\")` limits the namespaces watched"
                        ),
                    ));
                    continue;
                }
                "namespaces" => {
                    let value = list(meta).and_then(|tokens| {
                        Punctuated::<LitStr, Token![,]>::parse_terminated
                            .parse2(tokens)
                            .map(|list| list.into_iter().collect())
                            .map_err(|e| {
                                error_at_span(
                                    e.span(),
                                    "expected namespace names as strings, like \
                                                      `namespaces(\"default\", \"shop\")`",
                                )
                            })
                    });
                    set(errors, &mut args.namespaces, path, value);
                }
                "caching" => {
                    let value = name_value(meta).and_then(|value| match value {
                        Expr::Path(p) if p.qself.is_none() => Ok(p.path.clone()),
                        other => Err(error_at(
                            other,
                            "expected a caching strategy: `Strict`, `Adhoc` or `Extendable`",
                        )),
                    });
                    set(errors, &mut args.caching, path, value);
                }
                "concurrency" => {
                    let value = name_value(meta).and_then(|value| match value {
                        Expr::Lit(ExprLit {
                            lit: Lit::Int(int), ..
                        }) => Ok(int.clone()),
                        other => Err(error_at(
                            other,
                            "expected a positive integer, like `concurrency = 8`",
                        )),
                    });
                    set(errors, &mut args.concurrency, path, value);
                }
                "skip_observed_on_start" => {
                    let value = name_value(meta).and_then(|value| match value {
                        Expr::Lit(ExprLit {
                            lit: Lit::Bool(flag),
                            ..
                        }) => Ok(flag.clone()),
                        other => Err(error_at(
                            other,
                            "expected `true` or `false`, like `skip_observed_on_start = true`",
                        )),
                    });
                    set(errors, &mut args.skip_observed_on_start, path, value);
                }
                "owns" => {
                    let value = list(meta).and_then(owned_children);
                    set(errors, &mut args.owns, path, value);
                }
                "name" => {
                    let value = name_value(meta).and_then(|v| string(v, "name"));
                    set(errors, &mut args.name, path, value);
                }
                "field_manager" => {
                    let value = name_value(meta).and_then(|v| string(v, "field_manager"));
                    set(errors, &mut args.field_manager, path, value);
                }
                "status_writes" => {
                    let value = name_value(meta).and_then(|v| string(v, "status_writes"));
                    set(errors, &mut args.status_writes, path, value);
                }
                "labels" => {
                    let value = name_value(meta).and_then(|v| string(v, "labels"));
                    set(errors, &mut args.labels, path, value);
                }
                "events" => {
                    let value = name_value(meta).and_then(|v| string(v, "events"));
                    set(errors, &mut args.events, path, value);
                }
                "leader_election" => {
                    let value = name_value(meta).and_then(|v| string(v, "leader_election"));
                    set(errors, &mut args.leader_election, path, value);
                }
                "sharding" => {
                    let value = name_value(meta).and_then(|v| string(v, "sharding"));
                    set(errors, &mut args.sharding, path, value);
                }
                "health" => {
                    let value = health_value(meta);
                    set(errors, &mut args.health, path, value);
                }
                "webhooks" => {
                    let value = name_value(meta).and_then(|v| string(v, "webhooks"));
                    set(errors, &mut args.webhooks, path, value);
                }
                other => {
                    errors.push(error_at(path, unknown("key", other, &KEYS, &keys())));
                    continue;
                }
            }
        }
        args
    }
}

impl FromMeta for OperatorArgs {
    fn from_list(items: &[NestedMeta]) -> darling::Result<Self> {
        let mut errors = Error::accumulator();
        let args = Self::collect(items, &mut errors);
        errors.finish_with(args)
    }
}

/// Stores a key's value, or reports a repeated key at its second occurrence.
fn set<T>(
    errors: &mut darling::error::Accumulator,
    slot: &mut Option<Keyed<T>>,
    key: &Path,
    value: darling::Result<T>,
) {
    let name = source(key);
    if slot.is_some() {
        errors.push(error_at(key, format!("`{name}` is given twice: keep one")));
        return;
    }
    if let Some(value) = errors.handle(value) {
        *slot = Some(Keyed {
            key: key.clone(),
            value,
        });
    }
}

/// The value of `key = value`, or the expected form.
fn name_value(meta: &Meta) -> darling::Result<&Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        _ => Err(wrong_form(meta)),
    }
}

/// The tokens inside `key(...)`, or the expected form.
fn list(meta: &Meta) -> darling::Result<TokenStream> {
    match meta {
        Meta::List(list) => Ok(list.tokens.clone()),
        _ => Err(wrong_form(meta)),
    }
}

/// A string literal value.
fn string(value: &Expr, key: &str) -> darling::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        other => Err(error_at(
            other,
            format!(
                "expected a string, like `{}`",
                example(key).unwrap_or_default()
            ),
        )),
    }
}

fn wrong_form(meta: &Meta) -> Error {
    let key = source(meta.path());
    error_at(
        meta,
        format!("expected `{}`", example(&key).unwrap_or_default()),
    )
}

/// How each key is written.
pub(crate) fn example(key: &str) -> Option<&'static str> {
    Some(match key {
        "resource" => "resource = Website",
        "name" => "name = \"website-operator\"",
        "field_manager" => "field_manager = \"website-operator\"",
        "status_writes" => "status_writes = \"apply\"",
        "finalizer" => "finalizer = \"example.com/cleanup\"",
        "legacy_finalizers" => "legacy_finalizers(\"old.example.com/cleanup\")",
        "crate" => "crate = kr",
        "namespaces" => "namespaces(\"default\", \"shop\")",
        "caching" => "caching = Strict",
        "concurrency" => "concurrency = 8",
        "skip_observed_on_start" => "skip_observed_on_start = true",
        "owns" => "owns(ConfigMap, Deployment, on = \"status\")",
        "labels" => "labels = \"app=web\"",
        "events" => "events = \"website-operator\"",
        "leader_election" => "leader_election = \"website-operator\"",
        "sharding" => "sharding = \"website-operator\"",
        "health" => {
            "health = \"0.0.0.0:8080\"` or `health(addr = \"0.0.0.0:8080\", liveness = \"/health\")"
        }
        "webhooks" => "webhooks = \"website-webhooks\"",
        _ => return None,
    })
}

/// "expected one of `resource`, `finalizer`, …, `events`".
fn keys() -> String {
    let keys: Vec<String> = KEYS.iter().map(|key| format!("`{key}`")).collect();
    format!("expected one of {}", keys.join(", "))
}
