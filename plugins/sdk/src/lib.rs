//! Write [hookvault](../../docs/plugins.md) plugins in Rust.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2`. This
//! crate embeds the published WIT worlds and gives each one a trait, so a
//! filter is its decision and nothing else:
//!
//! ```ignore
//! use hookvault_plugin::filter::{Decision, Filter};
//! use hookvault_plugin::{Event, Patterns};
//!
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     skip: Vec<String>,
//! }
//!
//! struct SkipRefs;
//!
//! impl Filter for SkipRefs {
//!     type Config = Config;
//!
//!     fn filter(event: &Event, config: &Config) -> Result<Decision, String> {
//!         let skip = Patterns::new(&config.skip)?;
//!         Ok(event.keep_refs(|change| !skip.is_match(&change.name)))
//!     }
//! }
//!
//! hookvault_plugin::export_filter!(SkipRefs);
//! ```
//!
//! * [`filter`], [`backup`] and [`metadata`]: one module per world, each
//!   with its trait and its `export_…!` macro.
//! * [`config`]: the plugin's `config = { … }` table from `hookvault.toml`,
//!   parsed into the plugin's own type; an error names the bad key.
//! * [`Patterns`]: glob patterns over ref names (or actors).
//! * [`log`]: lines in the host's log, tagged with the delivery id.
//! * [`alerts`]: alerts for people, which the host logs and sends to the
//!   operator's alert webhooks.
//! * [`Event`] and [`RefChange`]: the delivery, with accessors.
//!
//! The code a plugin's logic calls is plain Rust, so its unit tests run
//! natively with `cargo test` ([`Event::test_push`] builds events). In a
//! native build [`log`] and [`alerts`] write to stderr and [`config::raw`] reads
//! `$HOOKVAULT_PLUGIN_CONFIG`; the git and store calls need the host (a
//! native test that makes one panics).

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

extern crate self as hookvault_plugin;

pub mod alerts;
pub mod backup;
pub mod config;
mod event;
pub mod filter;
pub mod log;
pub mod metadata;
mod patterns;

pub use event::{Event, RefChange, RefKind};
pub use patterns::Patterns;

/// The published WIT version the worlds are built against. A plugin
/// imports 0.3.0 only when it raises alerts; otherwise its component is
/// that of 0.1.0 (`filter`, `backup`) or 0.2.0 (`metadata-backup`).
pub const WIT_VERSION: &str = "0.3.0";
