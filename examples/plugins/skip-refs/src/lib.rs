//! Skip refs whose names match glob patterns.
//!
//! Config, in hookvault.toml:
//!
//! ```toml
//! [[plugins]]
//! name = "skip-wip"
//! kind = "filter"
//! path = "examples/plugins/skip-refs/target/wasm32-wasip2/release/skip_refs.wasm"
//! config = { skip = ["refs/heads/wip/*", "refs/tags/nightly-*"] }
//! ```
//!
//! A push that only touches matching refs is skipped; a push that touches
//! others too is backed up without the matching ones.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

use globset::{Glob, GlobSet, GlobSetBuilder};

wit_bindgen::generate!({
    path: "../../../wit/plugin@0.1.0",
    world: "filter",
});

use hookvault::plugin::config;
use hookvault::plugin::log::{self, Level};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    skip: Vec<String>,
}

fn patterns() -> Result<GlobSet, String> {
    let settings: Settings = serde_json::from_str(&config::get())
        .map_err(|e| format!("skip-refs: invalid config: {e}"))?;
    let mut builder = GlobSetBuilder::new();
    for pattern in &settings.skip {
        let glob =
            Glob::new(pattern).map_err(|e| format!("skip-refs: bad glob {pattern:?}: {e}"))?;
        builder.add(glob);
    }
    builder.build().map_err(|e| format!("skip-refs: {e}"))
}

struct SkipRefs;

impl Guest for SkipRefs {
    fn filter(event: Event) -> Decision {
        let set = match patterns() {
            Ok(set) => set,
            // A filter that cannot read its config must not silently drop backups.
            Err(message) => {
                log::log(Level::Error, &message);
                return Decision::Keep;
            }
        };
        let (skipped, kept): (Vec<_>, Vec<_>) = event
            .changes
            .iter()
            .map(|c| c.name.clone())
            .partition(|name| set.is_match(name));
        if skipped.is_empty() {
            Decision::Keep
        } else if kept.is_empty() {
            Decision::Skip(format!(
                "every changed ref matches a skip pattern: {}",
                skipped.join(", ")
            ))
        } else {
            log::log(
                Level::Info,
                &format!("not backing up {}", skipped.join(", ")),
            );
            Decision::Refs(kept)
        }
    }
}

export!(SkipRefs);
