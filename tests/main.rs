//! Integration tests: every module here runs against a real etcd + kube-apiserver (`TestEnv`).
// Fixtures are shared between modules of this one binary; `pub` is how they reach each other.
#![allow(unreachable_pub, missing_docs)]
// Test helpers may panic: a failed expectation is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod bundle;
mod caching;
mod control_plane;
mod demo;
mod events;
mod examples;
mod faults;
mod fresh_crate;
mod legacy_finalizers;
mod manager;
mod missing_crd;
mod observability;
mod operations;
mod owned_children;
mod production;
mod runtime;
mod scale_out;
mod status_errors;
mod support;
mod webhooks;
