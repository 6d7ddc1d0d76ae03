//! Skip pushes made by bots: when the actor (Bitbucket's display name, as
//! the event carries it) matches one of the patterns, the push is not
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
//! Patterns match the whole name, case-insensitively; only `*` and `?` are
//! wildcards (`*[bot]` is a name ending in `[bot]`). A push with no known
//! actor is backed up.

use hookvault_plugin::filter::{Decision, Filter};
use hookvault_plugin::{Event, Patterns};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    actors: Vec<String>,
}

struct SkipBots;

impl Filter for SkipBots {
    type Config = Config;

    fn filter(event: &Event, config: &Config) -> Result<Decision, String> {
        let bots = Patterns::wildcards(&config.actors)?;
        Ok(match &event.actor {
            Some(actor) => match bots.matching(actor) {
                Some(pattern) => Decision::Skip(format!(
                    "pushed by {actor}, who matches the skipped actor pattern {pattern:?}"
                )),
                None => Decision::Keep,
            },
            None => Decision::Keep,
        })
    }
}

hookvault_plugin::export_filter!(SkipBots);

#[cfg(test)]
mod tests {
    use super::*;
    use hookvault_plugin::config::parse_str;

    #[test]
    fn bots_are_skipped_and_people_kept() {
        let config: Config = parse_str(r#"{"actors": ["*[bot]", "renovate*"]}"#).unwrap();
        let pushed_by = |actor: &str| Event::test_push("acme/widgets").by(actor);
        for bot in ["dependabot[bot]", "Renovate Bot"] {
            let decision = SkipBots::filter(&pushed_by(bot), &config);
            assert!(
                matches!(decision, Ok(Decision::Skip(_))),
                "{bot}: {decision:?}"
            );
        }
        // A name ending in b, o or t is not a bot: `[bot]` is literal.
        for person in ["Elliot", "Dana Okafor"] {
            assert_eq!(
                SkipBots::filter(&pushed_by(person), &config),
                Ok(Decision::Keep)
            );
        }
        let nobody = Event::test_push("acme/widgets");
        assert_eq!(SkipBots::filter(&nobody, &config), Ok(Decision::Keep));
    }
}
