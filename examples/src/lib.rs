//! Runnable kuberator operators, each a story, and the demo behind `make demo`.

pub mod bench;
pub mod caching;
pub mod cluster_scoped;
pub mod crd_yaml;
pub mod custom_repository;
pub mod demo;
pub mod errors;
pub mod events;
pub mod quickstart_macro;
pub mod quickstart_manual;
pub mod shards;
pub mod site_backup;
pub mod static_site;
pub mod status;
pub mod story;
pub mod webhooks;
