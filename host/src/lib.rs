//! hookvault: continuous, immutable, deduplicated backups of Bitbucket
//! repositories. Data flows one way: receive → queue → plugins → store →
//! restore. See ARCHITECTURE.md.

pub mod config;
pub mod event;
pub mod git;
pub mod ids;
pub mod queue;
pub mod receive;
pub mod store;
