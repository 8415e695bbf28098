//! Derive and attribute macros for kuberator (docs: TODO).

mod duration;
#[cfg(test)]
mod golden;
mod observe_generation;
mod paths;
mod status_error;
mod util;

use proc_macro::TokenStream;

/// Implements `ObserveGeneration`, `RecordError` and (with `#[status_error]`) `WithStatusError`.
#[proc_macro_derive(ObserveGeneration, attributes(observe_generation, status_error))]
pub fn derive_observe_generation(input: TokenStream) -> TokenStream {
    observe_generation::expand(input.into()).into()
}

/// Implements `AsStatusError`, `ClassifyError` and `From<E> for kuberator::Error`.
#[proc_macro_derive(AsStatusError, attributes(status_error))]
pub fn derive_as_status_error(input: TokenStream) -> TokenStream {
    status_error::expand(input.into()).into()
}
