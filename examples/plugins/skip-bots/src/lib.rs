//! Skip pushes made by bots: when the actor (Bitbucket's display name, as
//! the event carries it) matches one of the glob patterns, the push is not
//! backed up; every other push is.
//!
//! Config, in hookvault.toml:
//!
//! ```toml
//! [[plugins]]
//! name = "skip-bots"
//! kind = "filter"
//! path = "examples/plugins/skip-bots/target/wasm32-wasip2/release/skip_bots.wasm"
//! config = { actors = ["*[bot]", "Renovate*", "Release Pipeline"] }
//! ```
//!
//! Patterns match the whole name, case-insensitively. A push with no
//! known actor is backed up.

// The generated guest glue takes every field of a record as an argument.
#![allow(clippy::too_many_arguments)]

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

wit_bindgen::generate!({
    path: "../../../wit/plugin@0.1.0",
    world: "filter",
});

use hookvault::plugin::config;
use hookvault::plugin::log::{self, Level};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    actors: Vec<String>,
}

fn patterns() -> Result<GlobSet, String> {
    let settings: Settings = serde_json::from_str(&config::get())
        .map_err(|e| format!("skip-bots: invalid config: {e}"))?;
    let mut builder = GlobSetBuilder::new();
    for pattern in &settings.actors {
        let glob = GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("skip-bots: bad pattern {pattern:?}: {e}"))?;
        builder.add(glob);
    }
    builder.build().map_err(|e| format!("skip-bots: {e}"))
}

struct SkipBots;

impl Guest for SkipBots {
    fn filter(event: Event) -> Decision {
        let set = match patterns() {
            Ok(set) => set,
            // A filter that cannot read its config must not silently drop backups.
            Err(message) => {
                log::log(Level::Error, &message);
                return Decision::Keep;
            }
        };
        match event.actor {
            Some(actor) if set.is_match(&actor) => Decision::Skip(format!(
                "pushed by {actor}, who matches a skipped actor pattern"
            )),
            _ => Decision::Keep,
        }
    }
}

export!(SkipBots);
