//! git plumbing on gix: the mirror cache and fetch over smart HTTP, the
//! object walk, object id/kind conversions, and the pack writer restore
//! uses.

pub mod mirror;
pub mod pack_writer;

pub use mirror::*;
