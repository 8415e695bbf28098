//! trybuild harness.
