//! Integration tests: every module here runs against a real etcd + kube-apiserver (`TestEnv`).
// Fixtures are shared between modules of this one binary; `pub` is how they reach each other.
#![allow(unreachable_pub, missing_docs)]
mod control_plane;
mod runtime;
mod support;
mod events;
mod caching;
