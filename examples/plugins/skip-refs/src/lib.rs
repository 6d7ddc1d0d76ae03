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

use hookvault_plugin::filter::{Decision, Filter};
use hookvault_plugin::{Event, Patterns, log};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    skip: Vec<String>,
}

struct SkipRefs;

impl Filter for SkipRefs {
    type Config = Config;

    fn filter(event: &Event, config: &Config) -> Result<Decision, String> {
        let skip = Patterns::new(&config.skip)?;
        let decision = event.keep_refs(|change| !skip.is_match(&change.name));
        if let Decision::Refs(kept) = &decision {
            let skipped: Vec<&str> = event
                .changes
                .iter()
                .map(|c| c.name.as_str())
                .filter(|name| !kept.iter().any(|k| k == name))
                .collect();
            log::info(&format!("not backing up {}", skipped.join(", ")));
        }
        Ok(decision)
    }
}

hookvault_plugin::export_filter!(SkipRefs);

#[cfg(test)]
mod tests {
    use super::*;
    use hookvault_plugin::config::parse_str;

    #[test]
    fn skips_only_matching_refs() {
        let config: Config = parse_str(r#"{"skip": ["refs/heads/wip/*"]}"#).unwrap();
        let only_wip = Event::test_push("acme/widgets").creating("refs/heads/wip/a", "1");
        assert!(matches!(
            SkipRefs::filter(&only_wip, &config),
            Ok(Decision::Skip(_))
        ));
        let both = only_wip.updating("refs/heads/main", "1", "2");
        assert_eq!(
            SkipRefs::filter(&both, &config),
            Ok(Decision::Refs(vec!["refs/heads/main".into()]))
        );
    }
}
