//! Helpers shared by the macros: error construction, "did you mean", type shapes.

use std::cell::RefCell;

use darling::Error;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::{GenericArgument, PathArguments, Type};

thread_local! {
    /// The whole-node rendering of each [`error_at`] error, by message: darling keeps one span per
    /// error (the node's first token), `syn::Error::new_spanned` keeps its first and last.
    static SPANNED: RefCell<Vec<(String, TokenStream)>> = const { RefCell::new(Vec::new()) };
}

/// An error spanned over all of `node` (`&Website`, `impl<C> …`, `std::result::Result<…>`
/// underlined whole, not only their first token, once written with [`write_errors`]), in rustc's
/// voice (the caller writes the message).
pub(crate) fn error_at(node: &impl ToTokens, message: impl std::fmt::Display) -> Error {
    let message = message.to_string();
    let whole = syn::Error::new_spanned(node, &message).to_compile_error();
    SPANNED.with(|spanned| spanned.borrow_mut().push((message.clone(), whole)));
    Error::custom(message).with_span(&node.to_token_stream())
}

/// The errors as `compile_error!`s, each [`error_at`] one over its whole node.
pub(crate) fn write_errors(errors: Error) -> TokenStream {
    let mut tokens = TokenStream::new();
    for error in errors.flatten() {
        let message = error.to_string();
        let whole = SPANNED.with(|spanned| {
            let mut spanned = spanned.borrow_mut();
            let index = spanned.iter().position(|(text, _)| *text == message)?;
            Some(spanned.remove(index).1)
        });
        tokens.extend(whole.unwrap_or_else(|| error.write_errors()));
    }
    forget_errors();
    tokens
}

/// Drops what [`error_at`] recorded (at the start and end of each expansion).
pub(crate) fn forget_errors() {
    SPANNED.with(|spanned| spanned.borrow_mut().clear());
}

/// An error at one span (a delimiter, a position), for what is not a syntax node.
pub(crate) fn error_at_span(span: Span, message: impl std::fmt::Display) -> Error {
    Error::custom(message).with_span(&span)
}

/// The closest of `candidates` to `word`, if it is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    candidates
        .iter()
        .map(|candidate| {
            (
                edit_distance(&word_lower, &candidate.to_ascii_lowercase()),
                *candidate,
            )
        })
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(3) / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// "unknown key `finaliser`, did you mean `finalizer`? expected …" (or without the suggestion,
/// "unknown key `foo`: expected …").
pub(crate) fn unknown(what: &str, word: &str, candidates: &[&str], expected: &str) -> String {
    match did_you_mean(word, candidates) {
        Some(found) => format!("unknown {what} `{word}`, did you mean `{found}`? {expected}"),
        None => format!("unknown {what} `{word}`: {expected}"),
    }
}

/// `` `a`, `b` or `c` ``.
pub(crate) fn one_of(candidates: &[&str]) -> String {
    match candidates {
        [] => String::new(),
        [only] => format!("`{only}`"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(|c| format!("`{c}`")).collect();
            format!("{} or `{last}`", init.join(", "))
        }
    }
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Looks through invisible groups and parentheses (`$ty` from `macro_rules!`, `(T)`).
pub(crate) fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => peel(&group.elem),
        Type::Paren(paren) => peel(&paren.elem),
        other => other,
    }
}

/// The last segment's name and its generic type arguments, for a plain path type.
pub(crate) fn path_tail(ty: &Type) -> Option<(&syn::Ident, Vec<&Type>)> {
    let Type::Path(path) = peel(ty) else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    let args = match &last.arguments {
        PathArguments::None => Vec::new(),
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        PathArguments::Parenthesized(_) => return None,
    };
    Some((&last.ident, args))
}

/// `Some(T)` if `ty` is `Option<T>` (any path ending in `Option`).
pub(crate) fn option_inner(ty: &Type) -> Option<&Type> {
    match path_tail(ty) {
        Some((ident, args)) if ident == "Option" && args.len() == 1 => Some(args[0]),
        _ => None,
    }
}

/// Whether `ty` is the plain type named `name` (no generics), e.g. `i64`.
pub(crate) fn is_named(ty: &Type, name: &str) -> bool {
    matches!(path_tail(ty), Some((ident, args)) if ident == name && args.is_empty())
}

/// The source text of a syntax node, as rustc would print it in a message.
pub(crate) fn source(node: &impl quote::ToTokens) -> String {
    let text = node.to_token_stream().to_string();
    // `TokenStream::to_string` spaces every token; close the usual gaps for readability.
    text.replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace("& ", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let keys = [
            "resource",
            "finalizer",
            "namespaces",
            "caching",
            "concurrency",
        ];
        assert_eq!(did_you_mean("finaliser", &keys), Some("finalizer"));
        assert_eq!(did_you_mean("namespace", &keys), Some("namespaces"));
        assert_eq!(did_you_mean("Caching", &keys), Some("caching"));
        assert_eq!(did_you_mean("image", &keys), None);
    }

    #[test]
    fn lists_read_like_prose() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b", "c"]), "`a`, `b` or `c`");
    }

    #[test]
    fn type_shapes() {
        let ty: Type = syn::parse_quote!(::core::option::Option<i64>);
        assert!(is_named(option_inner(&ty).unwrap(), "i64"));
        let ty: Type = syn::parse_quote!(Option<String>);
        assert_eq!(source(&ty), "Option<String>");
    }
}
