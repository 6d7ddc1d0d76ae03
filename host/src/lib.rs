//! hookvault: continuous, immutable, deduplicated backups of Bitbucket
//! repositories. Data flows one way: receive → queue → plugins → vault →
//! restore. See ARCHITECTURE.md.

pub mod admin;
pub mod alerts;
pub mod bitbucket;
pub mod browse;
pub mod config;
pub mod event;
pub mod export;
pub mod failure;
pub mod git;
pub mod ids;
pub mod maintenance;
pub mod metrics;
pub mod pipeline;
pub mod plugins;
pub mod progress;
#[cfg(test)]
mod properties;
pub mod prune;
pub mod receive;
pub mod repair;
pub mod restore;
pub mod retention;
pub mod serve;
#[cfg(test)]
mod sled_damage;
pub mod terminal;
pub mod vault;
pub mod verify;
