//! The `filter` world: decide whether and what to back up, before any fetch.
//! Also home of the host side of the `log` and `config` imports, which the
//! backup world reuses.

use tracing::{debug, error, info, trace, warn};
use wasmtime::Engine;
use wasmtime::component::HasSelf;

use super::sandbox::{self, LOG_LINE_BYTES, LOG_LINES_CAP, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::event::{Event, RefKind};

use super::bindings::filter as bindings;

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
        let message = sandbox::cut(message, LOG_LINE_BYTES);
        if let Some(captured) = &mut self.captured {
            captured.push(sandbox::LogLine {
                level: match level {
                    log::Level::Trace => "trace",
                    log::Level::Debug => "debug",
                    log::Level::Info => "info",
                    log::Level::Warn => "warn",
                    log::Level::Error => "error",
                },
                message: message.clone(),
            });
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
                name: c.name.to_string(),
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

/// One call of a filter, measured.
#[derive(Debug)]
pub struct Trial {
    pub decision: Result<Decision, PluginError>,
    pub report: sandbox::CallReport,
}

/// A loaded filter plugin.
pub struct FilterPlugin {
    base: Loaded,
    pre: bindings::FilterPre<PluginState<()>>,
}

impl FilterPlugin {
    pub fn load(engine: &Engine, spec: PluginSpec) -> Result<Self, PluginError> {
        let component = sandbox::compile(engine, &spec, "filter")?;
        Self::load_compiled(engine, spec, &component)
    }

    /// [`FilterPlugin::load`] of a component already compiled (by
    /// `inspect`): it is not compiled twice.
    pub fn load_compiled(
        engine: &Engine,
        spec: PluginSpec,
        component: &wasmtime::component::Component,
    ) -> Result<Self, PluginError> {
        let pre = sandbox::link(engine, &spec.name, "filter", component, |linker| {
            bindings::Filter::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
        })?;
        let pre =
            bindings::FilterPre::new(pre).map_err(sandbox::load_error(&spec.name, "filter"))?;
        Ok(Self {
            base: Loaded::new(engine, &spec),
            pre,
        })
    }

    pub fn name(&self) -> &str {
        &self.base.name
    }

    /// Run the filter as [`FilterPlugin::run`] does, and say what the call
    /// cost and said (`hookvault plugin test`).
    pub fn trial(&self, event: &Event) -> Result<Trial, PluginError> {
        let started = std::time::Instant::now();
        let mut store = self.base.store(event, ())?;
        store.data_mut().capture();
        let result = self.call(&mut store, event);
        let report = self.base.report(&mut store, started);
        let decision = self.base.finish(&store, result);
        Ok(Trial { decision, report })
    }

    fn call(
        &self,
        store: &mut wasmtime::Store<PluginState<()>>,
        event: &Event,
    ) -> wasmtime::Result<Decision> {
        let instance = self.pre.instantiate(&mut *store)?;
        Ok(
            match instance.call_filter(&mut *store, &to_wit_event(event, &[]))? {
                bindings::Decision::Keep => Decision::Keep,
                bindings::Decision::Skip(reason) => Decision::Skip(reason),
                bindings::Decision::Refs(refs) => Decision::Refs(refs),
            },
        )
    }

    /// Run the filter on an event. Blocking: call from a blocking thread.
    pub fn run(&self, event: &Event) -> Result<Decision, PluginError> {
        let mut store = self.base.store(event, ())?;
        let result = self.call(&mut store, event);
        self.base.finish(&store, result)
    }
}
