//! hookvault: continuous, immutable, deduplicated backups of Bitbucket
//! repositories. Data flows one way: receive → queue → plugins → store →
//! restore. See ARCHITECTURE.md.

pub mod bitbucket_api;
pub mod config;
pub mod event;
pub mod export;
pub mod git;
pub mod hook_secrets;
pub mod hooks;
pub mod ids;
pub mod plugins;
pub mod queue;
pub mod receive;
pub mod reconcile;
pub mod restore;
pub mod serve;
pub mod store;
pub mod worker;
