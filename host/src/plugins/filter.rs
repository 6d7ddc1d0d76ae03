//! The `filter` world: decide whether and what to back up, before any fetch.
//! Also home of the host side of the `log` and `config` imports, which the
//! backup world reuses.

use std::sync::Arc;

use tracing::{debug, error, info, trace, warn};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

use super::sandbox::{self, LOG_LINE_BYTES, LOG_LINES_CAP, Limits, PluginState};
use super::{PluginError, PluginSpec};
use crate::event::{Event, RefKind};

pub(super) mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/plugin@0.1.0",
        world: "filter",
    });
}

use bindings::hookvault::plugin::{config, log, types};

/// A filter's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Skip(String),
    Refs(Vec<String>),
}

impl<X: Send> types::Host for PluginState<X> {}

impl<X: Send> log::Host for PluginState<X> {
    fn log(&mut self, level: log::Level, message: String) {
        self.log_lines = self.log_lines.saturating_add(1);
        if self.log_lines > LOG_LINES_CAP {
            if self.log_lines == LOG_LINES_CAP + 1 {
                warn!(plugin = %self.plugin, "plugin log limit reached; further lines dropped");
            }
            return;
        }
        let mut message = message;
        if message.len() > LOG_LINE_BYTES {
            let mut cut = LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        let delivery_id = self.delivery_id.as_str();
        match level {
            log::Level::Trace => trace!(plugin, delivery_id, "{message}"),
            log::Level::Debug => debug!(plugin, delivery_id, "{message}"),
            log::Level::Info => info!(plugin, delivery_id, "{message}"),
            log::Level::Warn => warn!(plugin, delivery_id, "{message}"),
            log::Level::Error => error!(plugin, delivery_id, "{message}"),
        }
    }
}

impl<X: Send> config::Host for PluginState<X> {
    fn get(&mut self) -> String {
        self.config_json.to_string()
    }
}

pub(super) fn to_wit_event(event: &Event, excluded: &[String]) -> types::Event {
    types::Event {
        delivery_id: event.delivery_id.clone(),
        source: event.source.clone(),
        event_key: event.event_key.clone(),
        repository: event.repository.to_string(),
        actor: event.actor.clone(),
        changes: event
            .changes
            .iter()
            .map(|c| types::RefChange {
                name: c.name.clone(),
                kind: match c.kind {
                    RefKind::Branch => types::RefKind::Branch,
                    RefKind::Tag => types::RefKind::Tag,
                    RefKind::Other => types::RefKind::Other,
                },
                old_target: c.old_target.clone(),
                new_target: c.new_target.clone(),
                forced: c.forced,
            })
            .collect(),
        excluded_refs: excluded.to_vec(),
        received_at_ms: event.received_at_ms,
    }
}

/// A loaded filter plugin.
pub struct FilterPlugin {
    name: Arc<str>,
    config_json: Arc<str>,
    limits: Limits,
    engine: Engine,
    pre: bindings::FilterPre<PluginState<()>>,
}

impl FilterPlugin {
    pub fn load(engine: &Engine, spec: PluginSpec) -> Result<Self, PluginError> {
        let load_err = |message: String| PluginError::Load {
            plugin: spec.name.to_string(),
            world: "filter",
            message,
        };
        let component =
            Component::from_binary(engine, &spec.bytes).map_err(|e| load_err(format!("{e:#}")))?;
        let mut linker: Linker<PluginState<()>> = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| load_err(format!("{e:#}")))?;
        bindings::Filter::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| load_err(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("{e:#}")))?;
        let pre = bindings::FilterPre::new(pre).map_err(|e| load_err(format!("{e:#}")))?;
        Ok(Self {
            name: spec.name,
            config_json: spec.config_json,
            limits: spec.limits,
            engine: engine.clone(),
            pre,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Run the filter on an event. Blocking: call from a blocking thread.
    pub fn run(&self, event: &Event) -> Result<Decision, PluginError> {
        let mut store = sandbox::new_store(
            &self.engine,
            self.name.clone(),
            self.config_json.clone(),
            event.delivery_id.clone(),
            self.limits,
            (),
        )?;
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_filter(&mut store, &to_wit_event(event, &[])));
        let (stdout, stderr) = store.data().output();
        if !stdout.is_empty() || !stderr.is_empty() {
            debug!(plugin = %self.name, stdout = %stdout, stderr = %stderr, "plugin output");
        }
        let decision = result.map_err(|e| sandbox::classify(&self.name, e))?;
        Ok(match decision {
            bindings::Decision::Keep => Decision::Keep,
            bindings::Decision::Skip(reason) => Decision::Skip(reason),
            bindings::Decision::Refs(refs) => Decision::Refs(refs),
        })
    }
}
