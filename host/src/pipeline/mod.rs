//! The pipeline between intake and the vault: the durable delivery queue,
//! the worker that runs plugins for each delivery, and the reconciler that
//! queues what webhooks missed.

pub mod journal;
pub mod lag;
pub mod queue;
pub mod reconcile;
pub mod worker;
