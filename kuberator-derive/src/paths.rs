//! The one place that spells the runtime crate's paths: generated code says `::kuberator::…`.

use proc_macro2::{Span, TokenStream};
use quote::quote_spanned;

/// The runtime crate's root, `::kuberator`, carrying `span`.
///
/// Every path in generated code starts here: `#root::ObserveGeneration`, `#root::__private::kube`.
/// Inside the runtime crate itself `extern crate self as kuberator;` makes it resolve too. The span
/// matters only for trait-bound assertions, where rustc's message should land on the user's token.
pub(crate) fn kuberator(span: Span) -> TokenStream {
    quote_spanned!(span=> ::kuberator)
}
