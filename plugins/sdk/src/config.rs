//! The plugin's config: the `config = { … }` table of its `[[plugins]]`
//! entry in `hookvault.toml`, which the host hands over as JSON (`{}` when
//! there is none).

use std::fmt;

#[cfg(target_arch = "wasm32")]
use crate::filter::bindings::hookvault::plugin0_1_0::config as host;

/// A config that does not fit the plugin's type, with where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `actors[1]` (empty: the table as a whole).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid plugin config: {}", self.message)
        } else {
            write!(
                f,
                "invalid plugin config at key `{}`: {}",
                self.key, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The config of a plugin that takes none: any key is refused, by name.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The config exactly as the host holds it, as JSON text. In a native
/// build (a plugin's `cargo test`): `$HOOKVAULT_PLUGIN_CONFIG`, else `{}`.
pub fn raw() -> String {
    #[cfg(target_arch = "wasm32")]
    return host::get();
    #[cfg(not(target_arch = "wasm32"))]
    std::env::var("HOOKVAULT_PLUGIN_CONFIG").unwrap_or_else(|_| "{}".into())
}

/// The config, parsed into the plugin's own type.
pub fn parse<T: serde::de::DeserializeOwned>() -> Result<T, ConfigError> {
    parse_str(&raw())
}

/// Parse config JSON into `T` (what [`parse`] does with the host's copy;
/// callable in native tests).
pub fn parse_str<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, ConfigError> {
    let json = json.trim();
    let json = if json.is_empty() || json == "null" {
        "{}"
    } else {
        json
    };
    let mut deserializer = serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let key = e.path().to_string();
        ConfigError {
            key: if key == "." { String::new() } else { key },
            message: strip_position(&e.into_inner().to_string()),
        }
    })
}

/// serde_json ends its messages with "at line 1 column 42", which says
/// nothing about a table the operator wrote in TOML.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        actors: Vec<String>,
        #[serde(default)]
        limit: u32,
    }

    #[test]
    fn a_wrong_value_names_its_key() {
        let err = parse_str::<Settings>(r#"{"actors": ["a", 3]}"#).unwrap_err();
        assert_eq!(err.key, "actors[1]");
        assert_eq!(
            err.to_string(),
            "invalid plugin config at key `actors[1]`: invalid type: integer `3`, expected a string"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_the_expected_ones() {
        let err = parse_str::<Settings>(r#"{"actors": [], "actor": []}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown field `actor`, expected `actors` or `limit`"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_key_and_an_empty_config_read_as_such() {
        let err = parse_str::<Settings>("{}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid plugin config: missing field `actors`"
        );
        let parsed: Settings = parse_str(r#"{"actors": ["x"]}"#).unwrap();
        assert_eq!(
            parsed,
            Settings {
                actors: vec!["x".into()],
                limit: 0
            }
        );
        #[derive(serde::Deserialize)]
        struct Optional {
            #[serde(default)]
            _limit: u32,
        }
        assert!(parse_str::<Optional>("").is_ok());
        assert!(parse_str::<Optional>("null").is_ok());
    }
}
