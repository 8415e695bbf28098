//! Runnable kuberator operators, each a story, and the demo behind `make demo`.

pub mod demo;
pub mod static_site;
pub mod story;
pub mod quickstart_macro;
pub mod quickstart_manual;
pub mod status;
pub mod errors;
pub mod events;
pub mod caching;
pub mod cluster_scoped;
pub mod bench;
pub mod custom_repository;
pub mod crd_yaml;
