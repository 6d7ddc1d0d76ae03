//! `hookvault plugin test`: one webhook body through one filter plugin,
//! as `serve` would run it (the same parser, sandbox and default limits),
//! with what the call decided, wrote and cost.

use std::path::Path;

use super::filter::Trial;
use super::{FilterPlugin, PluginError, PluginSpec, inspect, new_engine};
use crate::bitbucket::normalize;
use crate::config::{PluginConfig, SourceKind};
use crate::event::Event;

#[derive(Debug, thiserror::Error)]
pub enum TrialError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{path}: {message}")]
    Payload { path: String, message: String },
    #[error(
        "{path} is a {world} plugin: `plugin test` runs filters (a backup plugin needs a source and a vault: configure it and use `serve`)"
    )]
    NotAFilter { path: String, world: &'static str },
}

/// What `plugin test` found.
#[derive(Debug)]
pub enum Tested {
    /// hookvault records this event and runs no plugin on it.
    Ignored { event_key: String },
    /// The event as the plugin saw it, and the call.
    Ran { event: Box<Event>, trial: Trial },
}

/// Run the filter at `plugin` on the webhook body at `payload`. The event
/// key is `event_key`, or the body's own `eventKey` (Data Center), or
/// `repo:push`; a body with `eventKey` is read as Data Center's.
/// `config_json` is what the plugin's config table would be, as JSON.
pub fn run_filter(
    plugin: &Path,
    payload: &Path,
    event_key: Option<&str>,
    config_json: String,
) -> Result<Tested, TrialError> {
    let bad = |message: String| TrialError::Payload {
        path: payload.display().to_string(),
        message,
    };
    let body = std::fs::read(payload).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let own_key = value.get("eventKey").and_then(|k| k.as_str());
    let source_kind = if own_key.is_some() {
        SourceKind::DataCenter
    } else {
        SourceKind::Cloud
    };
    let event_key = event_key.or(own_key).unwrap_or("repo:push").to_string();
    let envelope = normalize::Envelope {
        source: "plugin-test",
        source_kind,
        event_key: &event_key,
        delivery_id: "plugin-test",
        received_at_ms: crate::event::now_ms(),
    };
    let event = match normalize::parse(&envelope, &body).map_err(|e| bad(e.to_string()))? {
        normalize::Parsed::Event(event) => event,
        normalize::Parsed::Ignored => return Ok(Tested::Ignored { event_key }),
    };

    let engine = new_engine()?;
    let mut spec = PluginSpec::from_config(&PluginConfig::filter_at(plugin))?;
    spec.config_json = config_json.into();
    let (_, shape) = inspect::inspect(&engine, &spec.name, &spec.bytes)?;
    match shape.world {
        Some(inspect::World::Filter) => {}
        other => {
            return Err(TrialError::NotAFilter {
                path: plugin.display().to_string(),
                world: other.map_or("world-less", inspect::World::name),
            });
        }
    }
    let filter = FilterPlugin::load(&engine, spec)?;
    let trial = filter.trial(&event)?;
    Ok(Tested::Ran { event, trial })
}
