//! Runnable kuberator operators, each a story, and the demo behind `make demo`.

pub mod demo;
pub mod static_site;
