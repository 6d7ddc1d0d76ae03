//! The `filter` world: decide whether and what to back up, before any
//! fetch. A filter gets only the capabilities every world has (`log`,
//! `config`, `alerts`).

use wasmtime::Engine;

use super::caps;
use super::sandbox::{self, Loaded, PluginState};
use super::{PluginError, PluginSpec};
use crate::event::Event;

use super::bindings::filter as bindings;

/// A filter's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Skip(String),
    Refs(Vec<String>),
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
        let pre = sandbox::link(engine, &spec.name, "filter", component, |_| Ok(()))?;
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
            match instance.call_filter(&mut *store, &caps::types::to_wit(event, &[]))? {
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
