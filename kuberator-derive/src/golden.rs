//! Golden expansion tests: expand, pretty-print with prettyplease, compare with
//! `tests/golden/<name>.rs`. Regenerate with `GOLDEN=overwrite cargo test -p kuberator-derive`.

use std::path::PathBuf;

use proc_macro2::TokenStream;

/// The expansion as rustfmt-like source.
pub(crate) fn pretty(tokens: &TokenStream) -> String {
    let file: syn::File = syn::parse2(tokens.clone())
        .unwrap_or_else(|error| panic!("expansion is not a valid file: {error}\n{tokens}"));
    prettyplease::unparse(&file)
}

/// Compares the pretty expansion with the golden file `name`.
pub(crate) fn assert_golden(name: &str, tokens: &TokenStream) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.rs"));
    let actual = pretty(tokens);
    if std::env::var_os("GOLDEN").is_some_and(|value| value == "overwrite") {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        expected == actual,
        "expansion differs from {}: regenerate with `GOLDEN=overwrite cargo test -p \
         kuberator-derive` and review the diff\n--- actual ---\n{actual}",
        path.display()
    );
}
