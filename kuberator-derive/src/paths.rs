//! The one place that spells the runtime crate's paths: generated code says `::kuberator::…`, or
//! the path given with `crate = …` when the dependency is renamed.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote_spanned};
use syn::{Expr, Lit, Path};

use crate::util::error_at;

/// The runtime crate's root: `::kuberator`, or the user's `crate = path`.
#[derive(Clone, Default)]
pub(crate) struct Root(Option<Path>);

impl Root {
    /// The root as given with `crate = kr` / `crate = "kr"` (for a renamed dependency).
    pub(crate) fn new(path: Option<Path>) -> Self {
        Root(path)
    }

    /// The root carrying `span`: every path in generated code starts here, `#root::Ctx`,
    /// `#root::__private::kube`. Inside the runtime crate itself `extern crate self as kuberator;`
    /// makes `::kuberator` resolve too. The span matters only for trait-bound assertions, where
    /// rustc's message should land on the user's token.
    pub(crate) fn at(&self, span: Span) -> TokenStream {
        match &self.0 {
            Some(path) => {
                let mut path = path.clone();
                for segment in &mut path.segments {
                    segment
                        .ident
                        .set_span(segment.ident.span().resolved_at(span));
                }
                path.to_token_stream()
            }
            None => quote_spanned!(span=> ::kuberator),
        }
    }

    /// The root with the macro's own span.
    pub(crate) fn call_site(&self) -> TokenStream {
        self.at(Span::call_site())
    }
}

/// The value of `crate = …`: a path (`kr`, `::kr`) or a string holding one (`"kr"`, as serde
/// writes it).
pub(crate) fn crate_path(value: &Expr) -> darling::Result<Path> {
    match value {
        Expr::Path(path) if path.qself.is_none() => Ok(path.path.clone()),
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(text) => text.parse::<Path>().map_err(|_| {
                error_at(
                    text,
                    "expected the path the runtime crate is imported as, like `crate = kr`",
                )
            }),
            _ => Err(crate_error(value)),
        },
        _ => Err(crate_error(value)),
    }
}

fn crate_error(value: &Expr) -> darling::Error {
    error_at(
        value,
        "expected the path the runtime crate is imported as, like `crate = kr` for \
         `kr = { package = \"kuberator\" }` in Cargo.toml",
    )
}
