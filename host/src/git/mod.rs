//! git plumbing on gix: the mirror cache and fetch over smart HTTP, the
//! object walk, and object id/kind conversions.

pub mod mirror;

pub use mirror::*;
